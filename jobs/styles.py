"""spark-submit entry point of the styles stage.

spark-submit jobs/styles.py --conf conf/default.yaml --run-date 2026-11-23
"""

import sys

from lookalike.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("styles"))
