"""lookalike: similar items and duplicate listings from product photos, on Apache Spark."""

__version__ = "0.1.0"
