"""Small file helpers shared by the stages."""

from __future__ import annotations

from pathlib import Path

from lookalike.core.storage import Location


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (index files can be large)."""
    return Location.of(path).sha256()
