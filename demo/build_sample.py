"""Rebuild demo/sample/, the real product photos the demo catalog is made of.

    python demo/build_sample.py [--source ../shared/datasets/clothing-small] [--check]

The photos come from the clothing dataset (CC0; see demo/sample/README.md and LICENSE), subset
"clothing-small": ten categories. From each category's `train` folder this takes the first
`PER_CATEGORY` photos in the order of the SHA-256 of their file names (a spread over the folder
that no renaming of other files changes), leaves out the few listed in `EXCLUDED` (each with its
reason), and writes each one downscaled to `LONG_SIDE` pixels on its long
side, EXIF orientation applied and metadata dropped, as a baseline JPEG of quality `QUALITY`.
The same source always gives byte-identical files; `--check` rebuilds into a temporary folder
and compares with the committed sample instead of writing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = HERE / "sample"
DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "clothing-small"

CATEGORIES = (
    "dress",
    "hat",
    "longsleeve",
    "outwear",
    "pants",
    "shirt",
    "shoes",
    "shorts",
    "skirt",
    "t-shirt",
)
PER_CATEGORY = 25
LONG_SIDE = 320
QUALITY = 85
MANIFEST_HEADER = ("file", "category", "source", "source_sha256")
# Left out by hand, with the reason (by the source file's stem).
EXCLUDED: dict[str, str] = {
    "e4bee2e0-0ccb-4a3a-af3b-5d02a6456e92": "a cap printed with a swear word: not for a shop demo",
}


def selected(source: Path) -> list[tuple[str, Path]]:
    """(category, source file) of every photo of the sample, in a fixed order."""
    chosen = []
    for category in CATEGORIES:
        folder = source / "train" / category
        files = sorted(folder.glob("*.jpg"), key=lambda p: _sha256(p.name.encode()))
        files = [p for p in files if p.stem not in EXCLUDED]
        if len(files) < PER_CATEGORY:
            raise SystemExit(f"{folder}: {len(files)} photos, the sample needs {PER_CATEGORY}")
        chosen += [(category, p) for p in files[:PER_CATEGORY]]
    return chosen


def downscaled(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    scale = LONG_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # Fixed settings, no optimize/progressive: the same pixels give the same bytes.
    image.save(out, "JPEG", quality=QUALITY, subsampling=2, optimize=False)
    return out.getvalue()


def build(source: Path, out: Path) -> int:
    if not (source / "train").is_dir():
        raise SystemExit(f"{source}/train is missing: pass --source, the clothing-small folder")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for category, path in selected(source):
        data = path.read_bytes()
        rel = f"{category}/{path.stem[:8]}.jpg"
        (out / category).mkdir(exist_ok=True)
        (out / rel).write_bytes(downscaled(data))
        rows.append((rel, category, str(path.relative_to(source)), _sha256(data)))
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_HEADER)
        writer.writerows(rows)
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    return len(rows)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(args.source, Path(tmp))
            want, have = _files(Path(tmp)), _files(SAMPLE)
        differ = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
        print("sample is up to date" if not differ else f"differs: {', '.join(differ[:10])}")
        return 1 if differ else 0
    for old in SAMPLE.glob("*"):
        if old.is_dir():
            shutil.rmtree(old)
    n = build(args.source, SAMPLE)
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*.jpg"))
    print(f"{n} photos, {size / 1e6:.2f} MB in {SAMPLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
