"""Tiny grey thumbnails that settle the duplicate descriptor's undecided pairs.

A seller's crop keeps 80-90% of each side of the original photo, wherever it likes; the
duplicate descriptor (R-MAC of three fixed views) compares such a pair at a framing that does
not match it, and lands in a grey band where distinct photos of one colour and category land
too. A 64 x 64 grey thumbnail (4 kB a SKU, taken from the image decoded for embedding) is
enough to look for the framing itself: the best normalised correlation of one thumbnail's
detail with a window of the other, over window sizes and positions that cover such crops.

Why the detail (the grey image minus its Gaussian blur) and not the grey image: product
shots share their silhouette and their plain background, which a grey correlation rewards
(distinct photos reached 0.97); the detail is what tells two products apart (distinct photos
at most 0.73, copies at least 0.85: benchmarks/duplicates_quality.py, clothing seed 7, the
pairs of descriptor similarity 0.85-0.954).

No Spark here: the duplicates stage calls ``alignment`` in a pandas UDF.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter

SIDE = 64  # pixels on each side; the whole frame squashed, as the descriptor's whole view
DETAIL_SIGMA = 2.0  # the blur the detail is taken against, in thumbnail pixels
# Window sides, as shares of the thumbnail's: a crop keeping 78-100% of each side, searched
# first in steps of 0.04, then at 0.02 around the best coarse framings.
_COARSE = (1.0, 0.96, 0.92, 0.88, 0.84, 0.80)
_FINE_STEP = 0.02
_SMALLEST = 0.78
_REFINED = 2  # coarse framings refined
_STRIDE = 2  # window positions, in thumbnail pixels


def thumbnail(image: Image.Image) -> bytes:
    """The grey thumbnail of a decoded image: SIDE x SIDE bytes, row by row."""
    grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return grey.tobytes()


def _detail(data: bytes) -> np.ndarray:
    if len(data) != SIDE * SIDE:
        raise ValueError(f"a thumbnail holds {SIDE * SIDE} bytes, not {len(data)}")
    grey = Image.frombytes("L", (SIDE, SIDE), data)
    blurred = grey.filter(ImageFilter.GaussianBlur(DETAIL_SIGMA))
    return np.asarray(grey, dtype=np.float32) - np.asarray(blurred, dtype=np.float32)


def _window_correlation(big: np.ndarray, small: np.ndarray, sx: float, sy: float) -> float:
    """The best correlation of ``small`` shrunk to (sy, sx) of the side with a window of
    ``big`` of that size, over window positions STRIDE pixels apart."""
    height, width = round(SIDE * sy), round(SIDE * sx)
    template = np.asarray(
        Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    template = template - template.mean()
    norm = float(np.linalg.norm(template))
    if norm < 1e-6:
        return -1.0
    windows = sliding_window_view(big, (height, width))[::_STRIDE, ::_STRIDE]
    centred = windows - windows.mean(axis=(2, 3), keepdims=True)
    products = np.einsum("ijkl,kl->ij", centred, template)
    norms = np.sqrt(np.einsum("ijkl,ijkl->ij", centred, centred)) * norm + 1e-6
    return float((products / norms).max())


def _best_framing(big: np.ndarray, small: np.ndarray) -> float:
    """The best correlation of ``small`` (the other photo, whole) with a window of ``big``:
    a coarse grid of window sizes, then the best few refined at the fine step."""
    coarse = {(sx, sy): _window_correlation(big, small, sx, sy) for sx in _COARSE for sy in _COARSE}
    best = max(coarse.values())
    for sx, sy in sorted(coarse, key=coarse.get, reverse=True)[:_REFINED]:
        for dx in (-_FINE_STEP, 0.0, _FINE_STEP):
            for dy in (-_FINE_STEP, 0.0, _FINE_STEP):
                fx, fy = round(sx + dx, 2), round(sy + dy, 2)
                if (fx, fy) in coarse or not (_SMALLEST <= fx <= 1.0 and _SMALLEST <= fy <= 1.0):
                    continue
                best = max(best, _window_correlation(big, small, fx, fy))
    return best


def alignment(a: bytes, b: bytes) -> float:
    """How well two thumbnails line up: the best correlation (-1 to 1) of one's detail with a
    window of the other's, either way round (either listing may be the crop), and against the
    other's mirror image."""
    x, y = _detail(a), _detail(b)
    return max(
        _best_framing(x, y),
        _best_framing(y, x),
        _best_framing(x, y[:, ::-1].copy()),
        _best_framing(y, x[:, ::-1].copy()),
    )
