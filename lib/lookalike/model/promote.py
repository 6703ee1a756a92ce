"""Model promotion: a candidate checkpoint goes live only if it beats the current model.

Both models embed the same held-out labelled set with the embedding stage's code and are
scored on one metric (``to_reference/recall@1`` by default, any ``task/metric`` of
``lookalike.model.evaluate``). A candidate scoring below the current model plus ``min_gain`` is
refused: exit code 1 and a message with both figures. An accepted one is written to a small
state file (the promoted checkpoint, its model id and both evaluations) and the configuration
change is printed; the nightly job embeds with whatever ``model.checkpoint`` its
configuration names. Both evaluations are also recorded in the ``model_evaluations`` table.

Exit codes: 0 promoted (or would be, with ``--dry-run``), 1 refused or evaluation failed,
2 bad arguments, configuration or labelled set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.core.files import file_sha256
from lookalike.core.storage import Location

if TYPE_CHECKING:  # annotations only: declaring `lookalike promote` loads no pandas
    from lookalike.model.evaluate import Evaluation

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
