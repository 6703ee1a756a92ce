"""`python -m demo [FOLDER] [--seed N]`: write the demo catalog, print its catalog.csv path."""

from __future__ import annotations

import argparse
from pathlib import Path

from demo.catalog import generate_demo_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="var/demo_catalog", help="where to write it")
    parser.add_argument("--seed", type=int, default=7, help="the same seed gives the same bytes")
    args = parser.parse_args(argv)
    catalog = generate_demo_catalog(Path(args.folder), seed=args.seed)
    print(catalog.catalog_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
