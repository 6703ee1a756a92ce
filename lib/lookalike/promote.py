"""Model promotion: a candidate checkpoint goes live only if it beats the current model.

Both models embed the same held-out labelled set with the embedding stage's code and are
scored on one metric (``to_reference/recall@1`` by default, any ``task/metric`` of
``lookalike.evaluate``). A candidate scoring below the current model plus ``min_gain`` is
refused: exit code 1 and a message with both figures. An accepted one is written to a small
state file (the promoted checkpoint, its model id and both evaluations) and the configuration
change is printed; the nightly job embeds with whatever ``model.checkpoint`` its
configuration names. Both evaluations are also recorded in the ``model_evaluations`` table.

Exit codes: 0 promoted (or would be, with ``--dry-run``), 1 refused or evaluation failed,
2 bad arguments, configuration or labelled set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lookalike.config import ConfigError, ModelSettings, load_config
from lookalike.core.files import file_sha256
from lookalike.core.storage import Location
from lookalike.evaluate import (
    Evaluation,
    evaluate_model,
    format_evaluation,
    record_evaluation,
    write_report,
)
from lookalike.labelled import LabelledSetError, read_labelled_images

log = logging.getLogger(__name__)

DEFAULT_METRIC = "to_reference/recall@1"


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    candidate: float
    current: float
    min_gain: float
    message: str


def decide(
    candidate: Evaluation, current: Evaluation, metric: str = DEFAULT_METRIC, min_gain: float = 0.0
) -> Decision:
    """Promote when the candidate's ``metric`` is at least the current one's plus ``min_gain``.

    Raises ValueError when the two were not measured on the same set or lack the metric: such
    figures cannot be compared.
    """
    if (candidate.dataset, candidate.split) != (current.dataset, current.split):
        raise ValueError(
            f"evaluated on different sets: candidate {candidate.dataset}/{candidate.split}, "
            f"current {current.dataset}/{current.split}"
        )
    values = {}
    for role, evaluation in (("candidate", candidate), ("current", current)):
        value = evaluation.metric(metric)
        if value is None:
            raise ValueError(f"{role} model {evaluation.model_id} has no metric {metric}")
        values[role] = value
    if candidate.model_id == current.model_id:
        return Decision(
            False,
            metric,
            values["candidate"],
            values["current"],
            min_gain,
            f"refused: the candidate is the current model ({current.model_id})",
        )
    promote = values["candidate"] >= values["current"] + min_gain
    verb = "promoted" if promote else "refused"
    relation = ">=" if promote else "<"
    message = (
        f"{verb}: candidate {candidate.model_id} {metric} = {values['candidate']:.4f} "
        f"{relation} current {current.model_id} {metric} = {values['current']:.4f}"
        + (f" + min gain {min_gain:.4f}" if min_gain else "")
        + f" (on {current.dataset}/{current.split})"
    )
    return Decision(promote, metric, values["candidate"], values["current"], min_gain, message)


def write_state(
    path: str | Path | Location,
    checkpoint: str,
    candidate: Evaluation,
    current: Evaluation,
    decision: Decision,
) -> Location:
    """The promotion state file: what is live now, why, and what it replaced (atomic write)."""
    path = Location.of(path)
    state = {
        "promoted_at": datetime.now(UTC).isoformat(),
        "model_id": candidate.model_id,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "metric": decision.metric,
        "candidate_value": decision.candidate,
        "replaced": {"model_id": current.model_id, "value": decision.current},
        "evaluated_on": {"dataset": current.dataset, "split": current.split},
    }
    path.write_text(json.dumps(state, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike promote",
        description="Evaluate a candidate checkpoint against the configured model on held-out "
        "data; promote it only if it is not worse.",
    )
    parser.add_argument("--conf", default="conf/default.yaml", help="the job's configuration")
    parser.add_argument("--candidate", required=True, help="checkpoint file to promote")
    parser.add_argument("--images", required=True, help="held-out labelled-set CSV")
    parser.add_argument("--dataset", required=True, help="name of the held-out set")
    parser.add_argument("--split", default="heldout", help="which part of it")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"default {DEFAULT_METRIC}")
    parser.add_argument("--min-gain", type=float, default=0.0, help="required improvement")
    parser.add_argument(
        "--state", help="promotion state file (default: <output.root>/models/promoted.json)"
    )
    parser.add_argument("--output", help="folder for both models' metrics.json and plots")
    parser.add_argument("--table", help="model_evaluations table (default: under output.root)")
    parser.add_argument("--dry-run", action="store_true", help="decide, but write no state")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lookalike.layout import RunLayout

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.conf)
        candidate_path = Path(args.candidate).resolve()
        if not candidate_path.is_file():
            raise ValueError(f"--candidate: no such file: {args.candidate}")
        current_model: ModelSettings = config.model
        candidate_model = current_model.model_copy(update={"checkpoint": str(candidate_path)})
        frame = read_labelled_images(args.images)
        if "/" not in args.metric:
            raise ValueError(f"--metric: expected task/metric such as {DEFAULT_METRIC}")
    except (ConfigError, LabelledSetError, ValueError) as err:
        print(f"lookalike.promote: {err}", file=sys.stderr)
        return 2
    evaluations = {}
    try:
        for role, model in (("current", current_model), ("candidate", candidate_model)):
            evaluations[role] = evaluate_model(
                model, frame, dataset=args.dataset, split=args.split, index=None
            )
            print(f"{role}: {format_evaluation(evaluations[role])}")
        decision = decide(
            evaluations["candidate"], evaluations["current"], args.metric, args.min_gain
        )
    except (LabelledSetError, ValueError, RuntimeError, OSError) as err:
        print(f"lookalike.promote: evaluation failed: {err}", file=sys.stderr)
        return 1
    layout = RunLayout(config.output_root, "")
    if args.output:
        write_report([evaluations["current"], evaluations["candidate"]], args.output)
    table = Location.of(args.table) if args.table else layout.table("model_evaluations")
    for evaluation in evaluations.values():
        record_evaluation(table, evaluation)
    if not decision.promote:
        print(f"lookalike.promote: {decision.message}", file=sys.stderr)
        return 1
    print(decision.message)
    if args.dry_run:
        print("dry run: no state written")
        return 0
    state = Location.of(args.state or config.output_root / "models" / "promoted.json")
    write_state(
        state, str(candidate_path), evaluations["candidate"], evaluations["current"], decision
    )
    print(f"state: {state}")
    print(
        "configuration change for the nightly job:\n"
        f"  model:\n    backbone: {candidate_model.backbone}\n"
        f"    weights: {candidate_model.weights}\n    checkpoint: {candidate_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
