"""The duplicate descriptor's computation (torch): R-MAC vectors of three views of a photo.

The embedder (``lookalike.core.backbones.Embedder``) runs one forward pass per view and keeps
both the average-pooled embedding and these regional descriptors; how two descriptors compare
is ``lookalike.core.descriptor`` (numpy, shared with the Spark stage, which needs no torch).
"""

from __future__ import annotations

import torch
from PIL import Image

from lookalike.core.descriptor import similarities


def rmac(maps: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """R-MAC descriptors (Tolias et al., 2016, without the learned whitening) of feature maps
    (N, C, H, W): the L2-normalised sum of the L2-normalised max-pooled activations of square
    regions at ``levels`` scales (the whole map, then 2x2 and 3x3 overlapping regions).

    Max-pooling over regions keeps what a part of the photo shows wherever it moved, so a
    cropped, padded or rotated copy stays close to its original where the average-pooled
    vector of similar items drifts towards other photos of the category (measured by
    benchmarks/duplicates_quality.py).
    """
    maps = maps.float()
    height, width = maps.shape[-2:]
    total = torch.zeros(maps.shape[:2], dtype=maps.dtype, device=maps.device)
    for level in range(1, levels + 1):
        side = max(1, int(2 * min(height, width) / (level + 1)))
        tops = torch.linspace(0, height - side, level).round().int().tolist()
        lefts = torch.linspace(0, width - side, level).round().int().tolist()
        if level == 1:  # one region, centred
            tops, lefts = [(height - side) // 2], [(width - side) // 2]
        for top in tops:
            for left in lefts:
                region = maps[:, :, top : top + side, left : left + side].amax(dim=(2, 3))
                total += torch.nn.functional.normalize(region, dim=1, eps=1e-12)
    return torch.nn.functional.normalize(total, dim=1, eps=1e-12)


def duplicate_descriptors(
    whole: torch.Tensor, trimmed: torch.Tensor, zoomed: torch.Tensor
) -> torch.Tensor:
    """Three-view duplicate descriptors: each row the R-MAC vectors of the whole frame, of the
    trimmed frame and of the zoomed centre, end to end, each of unit length.
    ``descriptor_similarity`` takes the best of whole to whole, trimmed to trimmed, and zoomed
    to whole either way (``VIEW_PAIRS``).

    Why these views (figures from a kept benchmarks/duplicates_quality.py set, clothing seed 7:
    the share of copies at least 0.945 alike, view by view): a seller's copy padded onto a white
    canvas moves and shrinks the product, which regional max pooling alone does not undo;
    trimmed, the copy is the original frame again (padded copies 1.00). The whole frame is
    squashed rather than centre-cropped, so no part of it is lost (re-encoded 0.95 -> 1.00,
    watermarked 0.81 -> 0.88). A crop keeping 80-90% of each side enlarges what is left: the
    original's zoomed centre meets the crop's whole frame (cropped copies 0.64 -> 0.95). The
    trimmed view of a photo with nothing to trim is its framed (centre-cropped) one, which keeps
    re-encoded copies of soft-shadowed photos matching, where trimming moves with JPEG noise."""
    return torch.cat([whole, trimmed, zoomed], dim=1)


def descriptor_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarity of duplicate descriptors row by row (``lookalike.core.descriptor.similarities``,
    the computation ``duplicates.with_cosine`` runs in Spark)."""
    return torch.from_numpy(similarities(list(a.float().numpy()), list(b.float().numpy())))


def centre(image: Image.Image, keep: float) -> Image.Image:
    """The centre of ``image`` keeping ``keep`` of each side."""
    width, height = image.size
    left, top = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
    return image.crop((left, top, max(left + 1, width - left), max(top + 1, height - top)))
