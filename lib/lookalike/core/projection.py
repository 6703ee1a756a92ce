"""An optional PCA projection of the vectors before indexing (``index.pca_dim``).

Fitted by the index stage on a sample of the run's vectors, stored beside the shards as
``projection-<fingerprint>.npz`` with the model id it was fitted for, applied to every
shard's vectors and to their queries.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.core.ann import unit_rows
from lookalike.core.storage import Location


@dataclass(frozen=True)
class Projection:
    """Centre, rotate onto the top principal axes, optionally whiten; then unit length."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (dim, d)
    scale: np.ndarray  # (dim,): 1/sqrt(eigenvalue) when whitening, ones otherwise
    model_id: str

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        projected = (np.asarray(vectors, np.float32) - self.mean) @ self.components.T
        return unit_rows(projected * self.scale)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            components=self.components,
            scale=self.scale,
            model_id=np.array(self.model_id),
        )
        return buffer.getvalue()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def save(self, folder: Path | Location) -> Location:
        path = Location.of(folder) / f"projection-{self.fingerprint}.npz"
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: Path | Location) -> Projection:
        with np.load(io.BytesIO(Location.of(path).read_bytes()), allow_pickle=False) as data:
            return cls(data["mean"], data["components"], data["scale"], str(data["model_id"]))
