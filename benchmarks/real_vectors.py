"""Real MobileNet-V2 vectors of the shared photo sets, cached for the index benchmarks.

Embeds every photo of clothing-small (train, validation, test) and of grocery-store (train,
val, test, iconic images) through the embedding stage's own loader (``embed_labelled``), with
the ImageNet MobileNet-V2 the job ships by default, and saves (vectors, category) to one
``.npz``, with each vector's photo and product (grocery's fine class; empty for clothing):
the real 1280-d embeddings that ``benchmarks/pca_real.py``, ``benchmarks/pca_decision.py``
and ``benchmarks/exact_vs_annoy.py --real`` measure recall, speed, index size and retrieval
quality on.

Usage:  .venv/bin/python benchmarks/real_vectors.py [--out /tmp/lookalike-bench/real_vectors.npz]
        .venv/bin/python benchmarks/real_vectors.py --smoke   (4 photos of each split, into a
            temporary file read back: seconds, to show the script still runs)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

DEFAULT_OUT = "/tmp/lookalike-bench/real_vectors.npz"


def load_real_vectors(path: str | Path = DEFAULT_OUT) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, 1280), categories) from the cache this script writes."""
    path = Path(path)
    if not path.exists():
        sys.exit(f"{path} missing: run benchmarks/real_vectors.py first")
    data = np.load(path, allow_pickle=False)
    return data["vectors"], data["category"]


def load_real_rows(path: str | Path = DEFAULT_OUT) -> tuple[np.ndarray, pd.DataFrame]:
    """(vectors, rows): each vector's image_uri, product_id (None for clothing), category."""
    vectors, category = load_real_vectors(path)
    data = np.load(Path(path), allow_pickle=False)
    if "image_uri" not in data:
        sys.exit(f"{path} holds no image_uri: written by an older real_vectors.py, run it again")
    product = [p or None for p in data["product_id"].tolist()]
    rows = pd.DataFrame(
        {"image_uri": data["image_uri"], "product_id": product, "category": category}
    )
    return vectors, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a few photos: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.out = Path(tempfile.mkdtemp(prefix="lookalike-vectors-smoke-")) / "vectors.npz"
    from lookalike.config import ModelSettings
    from lookalike.core.backbones import load_embedder
    from lookalike.model.labelled import embed_labelled, grocery_store, image_folders

    torch.set_num_threads(args.threads)
    frames = [
        image_folders(DATASETS / "clothing-small" / s) for s in ("train", "validation", "test")
    ]
    frames += [
        grocery_store(DATASETS / "grocery-store", s, with_references=False)
        for s in ("train", "val")
    ]
    if args.smoke:
        frames = [f.head(4) for f in frames]
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("image_uri", ignore_index=True)
    frame["category"] = frame["category"].fillna("unknown")
    embedder = load_embedder(ModelSettings(device="cpu"))
    started = time.perf_counter()
    vectors, rows = embed_labelled(frame, embedder)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        vectors=vectors,
        category=rows["category"].to_numpy(dtype=str),
        image_uri=rows["image_uri"].to_numpy(dtype=str),
        product_id=rows["product_id"].fillna("").to_numpy(dtype=str),
    )
    print(
        f"{len(vectors)} photos embedded ({vectors.shape[1]}-d, {embedder.model_id}) in "
        f"{seconds:.0f} s -> {out}"
    )
    if args.smoke:
        loaded, category = load_real_vectors(out)
        print(f"read back: {loaded.shape[0]} vectors of {loaded.shape[1]}, {len(category)} labels")
        shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
