"""Images/s of the worker-side embedding function on one device (GPU or CPU), no Spark.

What one Spark Python worker does per Arrow batch, timed: read the files, decode (in
``--decode-threads`` threads, overlapping the network), preprocess, batch, run the backbone
(float16 autocast and channels-last on a GPU), L2-normalise, copy back. Spark itself is too
large to carry to the GPU machine; this is the function its UDF calls.

Usage:
  .venv/bin/python benchmarks/embed_device.py --backbone resnet50 --device cuda --images 2000
  .venv/bin/python benchmarks/embed_device.py --device cpu --images 200
  .venv/bin/python benchmarks/embed_device.py --smoke   (16 images through MobileNet-V2 on the
      CPU: seconds, to show the benchmark still runs)

Weights: ``--weights random`` (the default here) builds the network untrained: speed does not
depend on the weights, and no ResNet-50 weights can be had offline (environment notes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "clothing-small"
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--decode-threads", type=int, default=0, help="0: the stage's default")
    parser.add_argument("--image-dir", type=Path, default=DATASET)
    parser.add_argument("--smoke", action="store_true", help="16 images on the CPU: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.backbone, args.device, args.images, args.batch_size = "mobilenet_v2", "cpu", 16, 8

    import torch

    from lookalike.config import ModelSettings
    from lookalike.core.backbones import load_embedder
    from lookalike.core.embedding import decode_threads, embed_uris
    from lookalike.core.images import ImageLimits

    paths = sorted(str(p) for p in args.image_dir.rglob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg under {args.image_dir}")
    # Repeat the photos when asked for more than there are: the files are read every time.
    uris = [paths[i % len(paths)] for i in range(args.images)]
    settings = ModelSettings(
        backbone=args.backbone,
        weights=args.weights,
        allow_random_weights=args.weights == "random",
        device=args.device,
        batch_size=args.batch_size,
    )
    embedder = load_embedder(settings)
    threads = decode_threads(args.decode_threads, embedder)
    limits = ImageLimits(50_000_000, 64_000_000)
    name = torch.cuda.get_device_name(embedder.device) if embedder.device.type == "cuda" else "CPU"
    print(f"device: {embedder.device} ({name}); torch {torch.__version__}")
    print(
        f"model: {embedder.model_id}; batch {args.batch_size}; decode threads {threads}; "
        f"torch threads {torch.get_num_threads()}"
    )
    embed_uris(uris[: args.batch_size], embedder, limits, threads)  # warm-up: kernels, caches
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = embed_uris(uris, embedder, limits, threads)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rejected = int(result["reject_reason"].notna().sum())
    print(
        f"{len(uris)} images ({rejected} rejected) in {seconds:.1f} s: "
        f"{len(uris) / seconds:.1f} images/s, read + decode + preprocess + model included"
    )


if __name__ == "__main__":
    main()
