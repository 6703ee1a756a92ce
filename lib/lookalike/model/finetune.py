"""Fine-tuning: teach the backbone this shop's products with metric learning on labelled groups.

The network is split in two: a frozen *trunk* (the backbone up to its last ``train_blocks``
blocks) and a trained *tail* (those blocks, the global pooling and a new linear projection).
Each training image goes through the trunk once; its feature map is cached (``.npy``, keyed by
the model and the files), and the epochs run on the cached maps. That is what makes training
on two CPU cores take minutes: MobileNet-V2's last block is 4% of its compute.

The images are read, decoded and preprocessed by the embedding stage's own code, so the
network is trained on the tensors it will see at serving time. Losses: *normalized softmax*
(a proxy loss: one learned proxy per group, cosine logits at a temperature; Zhai & Wu, 2018)
or *triplet* with batch-hard negative mining (Hermans et al., 2017) over P groups x K images.

The result is exported as a ``lookalike-checkpoint/1`` file (headless backbone state +
projection) that ``model.checkpoint`` loads, with a JSON file beside it naming its model id.
Training is deterministic for a seed on a given machine and thread count.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from lookalike.config import FineTuneSettings
from lookalike.core.backbones import (
    CHECKPOINT_FORMAT,
    Embedder,
    build_network,
    load_embedder,
    resolve_model,
    select_device,
)
from lookalike.core.images import ImageLimits, ImageRejected, decode_rgb, read_bytes
from lookalike.model.labelled import LabelledSetError, default_limits

log = logging.getLogger(__name__)

Loss = Literal["normsoftmax", "triplet"]


# --- splitting the backbone -----------------------------------------------------------------------


def _blocks(net: nn.Module, backbone: str) -> list[nn.Module]:
    """The backbone's blocks in order, the last one feeding the global pooling."""
    if backbone == "resnet50":
        stem = [net.conv1, net.bn1, net.relu, net.maxpool]
        return [nn.Sequential(*stem), net.layer1, net.layer2, net.layer3, net.layer4]
    return list(net.features)


def split_backbone(net: nn.Module, backbone: str, train_blocks: int) -> tuple[nn.Module, nn.Module]:
    """(trunk, tail) sharing ``net``'s modules: trunk(x) is the cached map, tail gives the
    pooled features. Training the tail trains ``net`` in place, so its state dict is the export.
    """
    blocks = _blocks(net, backbone)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if train_blocks == 0:
        # The projection alone: cache pooled vectors, not whole maps.
        return nn.Sequential(*blocks, *pool), nn.Identity()
    split = len(blocks) - train_blocks
    return nn.Sequential(*blocks[:split]), nn.Sequential(*blocks[split:], *pool)


class EmbeddingModel(nn.Module):
    """Tail + projection + L2 normalisation: the trained part, fed with trunk maps."""

    def __init__(self, tail: nn.Module, in_dim: int, dim: int) -> None:
        super().__init__()
        self.tail = tail
        self.projection = nn.Linear(in_dim, dim)

    def forward(self, trunk_maps: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection(self.tail(trunk_maps)), dim=1)


# --- trunk features, computed once and cached -----------------------------------------------------


def _cache_key(model_id: str, train_blocks: int, uris: list[str]) -> str:
    digest = hashlib.sha256(f"{model_id}|trunk-{train_blocks}|".encode())
    for uri in uris:
        try:
            stat = os.stat(uri)
            version = f"{stat.st_size}|{stat.st_mtime_ns}"
        except (OSError, ValueError):
            # Remote or missing: keyed by name only (a missing one is skipped when read).
            version = "|"
        digest.update(f"{uri}|{version}\n".encode())
    return digest.hexdigest()[:20]


def trunk_features(
    uris: list[str],
    settings: FineTuneSettings,
    *,
    cache_dir: str | Path | None = None,
    limits: ImageLimits | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(maps, ok): the trunk's output for every image that decodes, and which ones did.

    Cached under ``cache_dir`` by model id, split point and the files' sizes and mtimes.
    """
    limits = limits or default_limits()
    embedder = load_embedder(settings.model_settings())
    key = _cache_key(embedder.model_id, settings.train_blocks, uris)
    cached = Path(cache_dir) / f"trunk-{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached) as saved:
            return saved["maps"], saved["ok"]
    trunk, _ = split_backbone(embedder.model, settings.backbone, settings.train_blocks)
    maps, ok = _run_trunk(uris, embedder, trunk, limits, progress)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial.npz")
        np.savez(partial, maps=maps, ok=ok)
        os.replace(partial, cached)
    return maps, ok


@torch.inference_mode()
def _run_trunk(
    uris: list[str],
    embedder: Embedder,
    trunk: nn.Module,
    limits: ImageLimits,
    progress: Callable[[str], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    ok = np.zeros(len(uris), dtype=bool)
    outputs: list[np.ndarray] = []
    started = time.perf_counter()
    batch: list[torch.Tensor] = []

    def flush() -> None:
        stacked = torch.stack(batch).to(embedder.device, memory_format=torch.channels_last)
        outputs.append(trunk(stacked).float().contiguous().cpu().numpy())
        batch.clear()

    for i, uri in enumerate(uris):
        try:
            data = read_bytes(uri, limits)
            image = decode_rgb(data, limits.max_pixels, draft_size=embedder.draft_size)
        except ImageRejected as rejected:
            log.warning("skipped %s: %s", uri, rejected)
            continue
        batch.append(embedder.prepare(image))
        ok[i] = True
        if len(batch) == embedder.batch_size:
            flush()
        if progress and (i + 1) % 500 == 0:
            progress(
                f"trunk features: {i + 1}/{len(uris)} images, {time.perf_counter() - started:.0f} s"
            )
    if batch:
        flush()
    if not outputs:
        raise LabelledSetError("no training image could be decoded")
    return np.concatenate(outputs), ok


# --- losses ---------------------------------------------------------------------------------------


class NormSoftmaxLoss(nn.Module):
    """Cross-entropy over cosine similarities to one learned proxy per group."""

    def __init__(self, n_groups: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(n_groups, dim) / dim**0.5)
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = embeddings @ nn.functional.normalize(self.proxies, dim=1).T
        return nn.functional.cross_entropy(logits / self.temperature, labels)


class BatchHardTripletLoss(nn.Module):
    """For each anchor: its farthest positive and nearest negative in the batch, with a margin."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distances = 1.0 - embeddings @ embeddings.T  # cosine distance of unit vectors
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positives = torch.where(same & ~eye, distances, torch.full_like(distances, -1.0))
        negatives = torch.where(~same, distances, torch.full_like(distances, 4.0))
        hardest_positive = positives.max(dim=1).values
        hardest_negative = negatives.min(dim=1).values
        valid = (hardest_positive >= 0) & (hardest_negative <= 2.0)
        losses = nn.functional.relu(hardest_positive - hardest_negative + self.margin)
        return losses[valid].mean() if valid.any() else embeddings.sum() * 0.0


# --- batches --------------------------------------------------------------------------------------


def _shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n - 1, batch_size) if n - i >= 2]


def _group_batches(
    labels: np.ndarray, batch_size: int, per_group: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """P groups x K images per batch (groups with a single image cannot be anchors)."""
    members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    members = [m for m in members if len(m) >= 2]
    if len(members) < 2:
        raise ValueError("triplet loss needs at least two groups with two images each")
    groups_per_batch = max(2, batch_size // per_group)
    # Each group contributes its images in chunks of K, shuffled; chunks are dealt into batches.
    chunks = []
    for m in members:
        perm = m[torch.randperm(len(m), generator=generator).numpy()]
        for start in range(0, len(perm), per_group):
            chunk = perm[start : start + per_group]
            if len(chunk) < 2:
                chunk = np.concatenate([chunk, perm[: 2 - len(chunk)]])
            chunks.append(chunk)
    order = torch.randperm(len(chunks), generator=generator).numpy()
    batches = []
    for start in range(0, len(order), groups_per_batch):
        picked = [chunks[j] for j in order[start : start + groups_per_batch]]
        if len(picked) >= 2:
            batches.append(torch.from_numpy(np.concatenate(picked)))
    return batches


# --- training -------------------------------------------------------------------------------------


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float


@dataclass
class TrainedModel:
    """The whole network after training: ``net`` (headless backbone, trained blocks in place)
    and ``model`` (the trained tail + projection, sharing ``net``'s modules)."""

    settings: FineTuneSettings
    net: nn.Module
    model: EmbeddingModel
    groups: list[str]
    history: list[EpochStats] = field(default_factory=list)
    train_seconds: float = 0.0

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every trained tensor, on the CPU (what the determinism test compares)."""
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "projection": {
                k: v.detach().cpu().clone() for k, v in self.model.projection.state_dict().items()
            },
        }


def _training_device(setting: str) -> torch.device:
    return select_device(setting)


def train(
    maps: np.ndarray,
    labels: list[str] | np.ndarray,
    settings: FineTuneSettings,
    *,
    progress: Callable[[EpochStats], None] | None = None,
) -> TrainedModel:
    """Train the tail and projection on cached trunk maps of labelled images.

    ``maps[i]`` is ``trunk_features``' output for an image of group ``labels[i]``.
    """
    if len(maps) != len(labels):
        raise ValueError(f"{len(maps)} feature maps but {len(labels)} labels")
    groups, label_ids = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    if len(groups) < 2:
        raise ValueError(f"training needs at least two groups, got {len(groups)}")
    device = _training_device(settings.device)
    spec = resolve_model(settings.model_settings())
    net = build_network(spec)
    torch.manual_seed(settings.seed)
    _, tail = split_backbone(net, settings.backbone, settings.train_blocks)
    model = EmbeddingModel(tail, spec.backbone.dim, settings.dim).to(device)
    criterion: nn.Module = (
        NormSoftmaxLoss(len(groups), settings.dim, settings.temperature)
        if settings.loss == "normsoftmax"
        else BatchHardTripletLoss(settings.margin)
    ).to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    tail_params = [p for p in tail.parameters()]
    for p in tail_params:
        p.requires_grad_(settings.backbone_lr > 0)
    param_groups = [
        {"params": [*model.projection.parameters(), *criterion.parameters()], "lr": settings.lr}
    ]
    if tail_params and settings.backbone_lr > 0:
        param_groups.append({"params": tail_params, "lr": settings.backbone_lr})
    optimizer = torch.optim.AdamW(param_groups, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    x_all = torch.from_numpy(maps)
    y_all = torch.from_numpy(label_ids.astype(np.int64))
    steps_per_epoch = len(
        _shuffled_batches(len(maps), settings.batch_size, torch.Generator().manual_seed(0))
        if settings.loss == "normsoftmax"
        else _group_batches(
            label_ids,
            settings.batch_size,
            settings.images_per_group,
            torch.Generator().manual_seed(0),
        )
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in param_groups],
        total_steps=settings.epochs * steps_per_epoch + 1,
        pct_start=0.1,
    )
    trained = TrainedModel(settings, net, model, [str(g) for g in groups])
    # BatchNorm keeps its ImageNet statistics (eval mode): small batches of a few groups
    # would make poor estimates, and eval mode keeps training deterministic.
    model.eval()
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        batches = (
            _shuffled_batches(len(maps), settings.batch_size, generator)
            if settings.loss == "normsoftmax"
            else _group_batches(
                label_ids, settings.batch_size, settings.images_per_group, generator
            )
        )
        total, count = 0.0, 0
        for index in batches[:steps_per_epoch]:
            x = x_all[index]
            if settings.flip and x.ndim == 4:
                mirrored = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
            x = x.to(device, memory_format=torch.channels_last) if x.ndim == 4 else x.to(device)
            y = y_all[index].to(device)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
            count += len(index)
        stats = EpochStats(epoch, total / max(count, 1), time.perf_counter() - epoch_started)
        trained.history.append(stats)
        if progress:
            progress(stats)
    trained.train_seconds = time.perf_counter() - started
    model.cpu()
    net.cpu()
    return trained


@torch.inference_mode()
def embed_maps(trained: TrainedModel, maps: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The trained model's vectors of cached trunk maps (what the checkpoint will give)."""
    trained.model.eval()
    out = [
        trained.model(torch.from_numpy(maps[i : i + batch_size])).numpy()
        for i in range(0, len(maps), batch_size)
    ]
    return np.concatenate(out)


# --- export ---------------------------------------------------------------------------------------


def export_checkpoint(
    trained: TrainedModel, path: str | Path, *, extra: dict | None = None
) -> dict:
    """Write the ``lookalike-checkpoint/1`` file and ``<path>.json`` beside it.

    Returns the JSON's content: the model id the embedding stage will stamp on every vector
    it makes with this checkpoint, the configuration that loads it, and how it was trained.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = trained.state()
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "backbone": trained.settings.backbone,
        # Only the headless backbone: its classifier was replaced by Identity (no tensors).
        "state_dict": state["state_dict"],
        "projection": state["projection"],
    }
    # Serialised in memory: torch.save names the archive's records after the file, so equal
    # weights saved under two names would get two sha256 sums, hence two model ids.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, path)
    model_settings = trained.settings.model_settings(str(path.resolve()))
    info = {
        "model_id": resolve_model(model_settings).model_id,
        "checkpoint": str(path.resolve()),
        "config": {
            "model": {
                "backbone": model_settings.backbone,
                "weights": model_settings.weights,
                "trim_borders": model_settings.trim_borders,
                "image_size": model_settings.image_size,
                "checkpoint": str(path.resolve()),
            }
        },
        "training": {
            "settings": trained.settings.model_dump(),
            "groups": len(trained.groups),
            "train_seconds": round(trained.train_seconds, 1),
            "history": [asdict(h) for h in trained.history],
        },
        **(extra or {}),
    }
    Path(f"{path}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def fine_tune(
    frame: pd.DataFrame,
    label: str,
    settings: FineTuneSettings,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Trunk features, training and export for a labelled set; returns the exported info.

    Progress goes to ``say`` (default: stdout, flushed line by line, so a log shows it live).
    """
    say = say or (lambda message: print(message, flush=True))
    frame = frame[frame[label].notna()].reset_index(drop=True)
    if frame.empty:
        raise LabelledSetError(f"no image has a {label}")
    started = time.perf_counter()
    maps, ok = trunk_features(
        frame["image_uri"].tolist(), settings, cache_dir=cache_dir, progress=say
    )
    feature_seconds = time.perf_counter() - started
    labels = frame[label].to_numpy()[ok]
    say(
        f"trunk features: {len(maps)} images ({(~ok).sum()} skipped), "
        f"{len(np.unique(labels))} groups, {feature_seconds:.1f} s"
    )

    def show(stats: EpochStats) -> None:
        say(
            f"epoch {stats.epoch:3d}/{settings.epochs}  "
            f"loss {stats.loss:.4f}  {stats.seconds:5.1f} s"
        )

    trained = train(maps, labels, settings, progress=show)
    say(f"training: {trained.train_seconds:.1f} s on {_training_device(settings.device)}")
    return export_checkpoint(
        trained,
        out,
        extra={
            "trained_on": {"images": int(len(maps)), "label": label},
            "feature_seconds": round(feature_seconds, 1),
        },
    )
