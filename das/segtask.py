"""``--task segmentation``: what the segmentation task supplies to search, train, evaluate and
the ablation (see "Adding a task" in das/README.md): its data (:func:`load_seg_bundle`,
:class:`SegLoader`, :class:`SegStream`), networks (:func:`seg_search_network`,
:func:`seg_variant_network`), loss, weight step and metric (:func:`seg_loss`,
:func:`seg_weight_step`, :func:`seg_evaluate`).

* Data: :class:`das.segdata.SegmentationFolder` read through a ``torch.utils.data.DataLoader``
  whose batch sampler is a seeded permutation per (seed, stream, epoch), cut
  DistributedSampler-style into one padded shard per rank; a sample's augmentation (random
  scale 0.5-2x, crop ``--crop``, flip) is seeded by (seed, epoch, index). So every batch is a
  pure function of (seed, stream, epoch, batch index, rank) and ``--resume`` repeats an
  uninterrupted run. Evaluation reads whole images in a fixed order (nothing random).
* Networks: :class:`das.models.segmentation.SegmentationNetwork` on a dilated video ResNet
  (imagenet stem). Variants: ``das`` (the genotype's frames, logits un-warped), ``das-nounwarp``
  (the same frames, logits averaged without un-warping), ``baseline`` (2D), ``replica``
  (identical frames, nothing to un-warp), ``augment`` (one random frame of the genotype's
  video per sample while training, the middle frame in evaluation; its logits are un-warped
  with that frame's paths only), ``shuffle`` (the frames in a random order per sample; the
  predictions are put back in frame order before un-warping, so only the temporal module sees
  the shuffled order).
* Loss: cross-entropy on the (un-warped) logits, ignore id 255, plus ``--aux-weight`` times
  the auxiliary head's; metric: mIoU from one confusion matrix over the evaluated images
  (:class:`das.metrics.ConfusionMatrix`), also the score perturbation selection ranks by.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from das.cell import DASCell, DiscreteCell, Genotype, ReplicaCell, cell_edges
from das.config import ConfigError, RunConfig
from das.data import DataError
from das.data.loader import _gen
from das.engine import autocast
from das.metrics import ConfusionMatrix
from das.models import build_backbone
from das.models.segmentation import SegmentationNetwork
from das.runtime import DistEnv, all_reduce_
from das.segdata import IGNORE_INDEX, JointAugment, SegmentationFolder, collate_segmentation
from das.unwarp import path_terms, unwarp_frames
from das.variants import SEG_VARIANTS, VIDEO_VARIANTS

__all__ = [
    "STATS_IMAGES",
    "SegBundle",
    "SegLoader",
    "SegRandomFrameCell",
    "SegShuffledCell",
    "SegStream",
    "SegTrunk",
    "load_seg_bundle",
    "seg_evaluate",
    "seg_loss",
    "seg_search_network",
    "seg_variant_network",
    "seg_weight_step",
]

STATS_IMAGES = 32  # the first N training images give the per-channel mean/std
EVAL_BATCH = 8  # whole images per evaluation batch


# ----------------------------------------------------------------------------- data


@dataclass
class SegBundle:
    """A segmentation dataset: the training folder (augmented), the evaluation folder
    (``val`` or ``test``, whole images), classes and the pixel statistics."""

    train: SegmentationFolder
    val: SegmentationFolder
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    in_channels = 3

    @functools.cached_property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the first evaluation image."""
        return tuple(self.val.read(0)[0].shape[-2:])  # type: ignore[return-value]

    @property
    def image_size(self) -> int:
        return self.image_hw[0]

    @functools.cached_property
    def aspect(self) -> float:
        h, w = self.train.read(0)[0].shape[-2:]
        return w / h

    def describe(self) -> str:
        h, w = self.image_hw
        crop = self.train.augment.crop if self.train.augment else (h, w)
        return (
            f"{self.train.fmt} {self.train.root}: {len(self.train)} train / {len(self.val)} "
            f"{self.val.split}, {self.num_classes} classes (+ ignore {IGNORE_INDEX}), "
            f"3x{h}x{w}, train crop {crop[0]}x{crop[1]}"
        )


def _pixel_stats(folder: SegmentationFolder, n: int = STATS_IMAGES) -> tuple[tuple, tuple]:
    """Per-channel mean and std over the first `n` images (unaugmented)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in range(min(n, len(folder))):
        image = folder.read(i)[0].double()
        total += image.sum((1, 2))
        squares += (image**2).sum((1, 2))
        count += image.shape[1] * image.shape[2]
    mean = total / count
    std = (squares / count - mean**2).clamp(min=1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_seg_bundle(cfg: RunConfig, source: str | None = None, split: str = "val") -> SegBundle:
    """The segmentation data of `cfg` (``source`` replaces its path): the train split with
    joint augmentation (crop ``--crop``, flips unless ``--flip off``), seeded by ``--seed``."""
    assert cfg.task is not None
    data, root = cfg.data, source or cfg.data.data
    crop = cfg.task.crop_size
    train = SegmentationFolder(root, "train", limit=data.limit_train, seed=cfg.seed)
    if crop is None:
        crop = tuple(train.read(0)[0].shape[-2:])
    train.augment = JointAugment(crop, flip=data.flip != "off")  # type: ignore[arg-type]
    val = SegmentationFolder(root, split, limit=data.limit_val)
    if val.fmt != train.fmt:
        raise DataError(f"{root}: split {split!r} is {val.fmt}, train is {train.fmt}")
    mean, std = _pixel_stats(train)
    return SegBundle(train, val, tuple(train.classes), mean, std)


class _EpochItems(Dataset):
    """``dataset[(epoch, i)]``: item i of `folder` as augmented in `epoch`."""

    def __init__(self, folder: SegmentationFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        self.folder.set_epoch(epoch)
        return self.folder[index]


class SegLoader:
    """Batches ``(images (B, 3, H, W) normalised, masks (B, H, W) int64, 255 = ignore)`` of
    the items ``indices`` (default all) of a folder, through a DataLoader.

    ``train=True``: a seeded permutation per epoch (``seed``, ``stream``), padded and sharded
    over ``world`` ranks, the folder's augmentation, ``drop_last``; else a fixed order, the
    folder read without augmentation, unpadded shards."""

    def __init__(
        self,
        folder: SegmentationFolder,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int = 0,
        stream: int = 0,
        indices: Tensor | None = None,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
    ) -> None:
        self.folder, self.train, self.seed, self.stream = folder, train, seed, stream
        self.indices = torch.arange(len(folder)) if indices is None else indices.long()
        if not len(self.indices):
            raise DataError(f"no images to read from {folder.root} ({folder.split})")
        self.batch_size = min(batch_size, len(self.indices)) if train else batch_size
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.num_workers = num_workers
        self.items = _EpochItems(folder) if train else _Plain(folder)

    @property
    def data(self) -> Tensor:  # what das.report counts
        return self.indices

    def epoch_order(self, epoch: int) -> Tensor:
        n = len(self.indices)
        if not self.train:
            return self.indices[self.rank :: self.world]
        perm = torch.randperm(n, generator=_gen(self.seed, self.stream, epoch, 17))
        if self.world > 1:
            total = -(-n // self.world) * self.world
            perm = torch.cat([perm, perm[: total - n]]) if total > n else perm
            perm = perm[self.rank :: self.world]
        return self.indices[perm]

    def __len__(self) -> int:
        n = len(self.indices)
        if self.train:
            return (-(-n // self.world)) // self.batch_size
        return -(-len(range(self.rank, n, self.world)) // self.batch_size)

    def epoch_batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches `start`.. of `epoch`."""
        order, bs = self.epoch_order(epoch).tolist(), self.batch_size
        plan = [[(epoch, j) for j in order[i * bs : (i + 1) * bs]] for i in range(start, len(self))]
        loader = DataLoader(
            self.items,
            batch_sampler=plan,
            collate_fn=collate_segmentation,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),  # never the global RNG
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            yield (x - self.mean) / self.std, y.to(self.device, non_blocking=True)


class _Plain(Dataset):
    """``dataset[(epoch, i)]``: item i of `folder`, unaugmented."""

    def __init__(self, folder: SegmentationFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        return self.folder.read(key[1])


class SegStream:
    """An endless iterator over a :class:`SegLoader` (next data epoch when one ends); its
    position is ``state()`` / ``load_state()`` (the search's persistent iterators)."""

    def __init__(self, loader: SegLoader) -> None:
        self.loader, self.epoch, self.index = loader, 0, 0
        self._it: Iterator | None = None

    def __iter__(self) -> SegStream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.index >= len(self.loader):
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._it = self.loader.epoch_batches(self.epoch, self.index)
        out = next(self._it)
        self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None


# ----------------------------------------------------------------------------- networks


def _backbone(cfg: RunConfig, classes: int, frames: int, fusion: str) -> nn.Module:
    m = cfg.model
    return build_backbone(
        m.arch, classes, 3, frames, fusion, m.gsf_ratio, stem="imagenet", width_mult=m.width_mult
    )


def _segnet(cfg: RunConfig, cell: nn.Module | None, backbone: nn.Module, classes: int, **kw):
    t = cfg.task
    assert t is not None
    return SegmentationNetwork(
        cell,
        backbone,
        t.head,
        classes,
        t.output_stride,
        aux=t.aux_weight > 0,
        average=t.unwarp_average,
        unwarp_at=UNWARP_AT,
        **kw,
    )


UNWARP_AT = "features"  # see das.models.segmentation: un-warp at the head's resolution


def seg_search_network(cfg: RunConfig, bundle: SegBundle) -> SegmentationNetwork:
    """The supernet: a mixed :class:`DASCell` + the dilated video backbone + head."""
    model, cell = cfg.model, cfg.cell
    assert cell is not None and model.frames is not None
    das_cell = DASCell(
        model.frames,
        cell.nodes,
        cell.ops,
        cell.learn_magnitudes,
        model.step_mode,
        aspect=bundle.aspect,
        pixel_mean=bundle.mean,
        pixel_std=bundle.std,
    )
    backbone = _backbone(cfg, bundle.num_classes, model.frames, model.fusion)
    return _segnet(cfg, das_cell, backbone, bundle.num_classes)


class SegRandomFrameCell(nn.Module):
    """The ``augment`` variant: training sees one random frame of ``cell(x)`` per sample,
    evaluation the middle frame T//2; ``unwarp`` maps each sample's logits back with the
    paths of the frame it saw (and divides by that frame's coverage)."""

    per_frame = True  # un-warp even a one-frame video

    def __init__(self, cell: DiscreteCell) -> None:
        super().__init__()
        self.cell = cell
        self.frames = 1
        self._pick: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        video = self.cell(x)
        B, T = video.shape[:2]
        if self.training:
            pick = torch.randint(0, T, (B,), device="cpu")
        else:
            pick = torch.full((B,), T // 2, dtype=torch.long)
        self._pick = pick
        return video[torch.arange(B, device=x.device), pick.to(x.device)].unsqueeze(1)

    def unwarp(self, frames: Tensor, average: str = "logits") -> tuple[Tensor, Tensor]:
        assert self._pick is not None and len(self._pick) == frames.shape[0]
        cell = self.cell
        theta, weights = path_terms(
            cell_edges(cell.nodes), cell.nodes, cell.theta, cell.one.expand(len(cell.theta), 1)
        )
        out = frames.new_zeros(frames.shape[0], *frames.shape[2:])
        coverage = frames.new_zeros(frames.shape[0], 1, *frames.shape[3:])
        for t in self._pick.unique().tolist():
            rows = (self._pick == t).nonzero().flatten().to(frames.device)
            o, c = unwarp_frames(frames[rows], theta[:, t : t + 1], weights, average)
            out, coverage = out.index_copy(0, rows, o), coverage.index_copy(0, rows, c)
        return out, coverage


class SegShuffledCell(nn.Module):
    """The ``shuffle`` variant: ``cell(x)`` with each sample's frames in a random order
    (a fixed seed in evaluation); ``unwarp`` puts the predictions back in frame order first,
    so only the temporal modules see the shuffled order."""

    def __init__(self, cell: DiscreteCell, eval_seed: int = 0) -> None:
        super().__init__()
        self.cell, self.eval_seed, self.frames = cell, eval_seed, cell.frames
        self._order: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        video = self.cell(x)
        B, T = video.shape[:2]
        gen = None if self.training else torch.Generator().manual_seed(self.eval_seed)
        order = torch.argsort(torch.rand(B, T, generator=gen), dim=1).to(x.device)
        self._order = order
        return video[torch.arange(B, device=x.device)[:, None], order]

    def unwarp(self, frames: Tensor, average: str = "logits") -> tuple[Tensor, Tensor]:
        assert self._order is not None and self._order.shape == frames.shape[:2]
        back = torch.argsort(self._order, dim=1)
        rows = torch.arange(frames.shape[0], device=frames.device)[:, None]
        return self.cell.unwarp(frames[rows, back], average)


def seg_variant_network(
    cfg: RunConfig, genotype: Genotype | None, num_classes: int, aspect: float, stats: tuple
) -> SegmentationNetwork:
    """The segmentation network of ``cfg.train.variant`` (see the module docstring)."""
    assert cfg.train is not None
    variant = cfg.train.variant
    if variant not in SEG_VARIANTS:
        raise ConfigError(f"--variant {variant}: not a segmentation variant")
    frames = cfg.model.frames or (genotype.frames if genotype else 4)
    cell: nn.Module | None = None
    if variant == "replica":
        cell = ReplicaCell(frames)
    elif variant != "baseline":
        if genotype is None:
            raise ConfigError(f"--variant {variant} needs --genotype")
        cell = DiscreteCell(genotype, aspect, *stats)
        frames = genotype.frames
        if variant == "augment":
            cell = SegRandomFrameCell(cell)
        elif variant == "shuffle":
            cell = SegShuffledCell(cell)
    video = variant in VIDEO_VARIANTS
    backbone = _backbone(
        cfg, num_classes, frames if video else 1, cfg.model.fusion if video else "none"
    )
    return _segnet(cfg, cell, backbone, num_classes, unwarp=variant != "das-nounwarp")


class SegTrunk(nn.Module):
    """The trainable part of a :class:`SegmentationNetwork` (backbone, heads): video ->
    per-frame logits (``net.trunk``). What DDP wraps and the weight optimiser updates; the
    cell (architecture parameters) stays outside."""

    def __init__(self, net: SegmentationNetwork) -> None:
        super().__init__()
        self.backbone, self.head, self.aux_head = net.backbone, net.head, net.aux_head
        object.__setattr__(self, "_net", net)  # not a submodule

    def forward(self, video: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        return self._net.trunk(video, size)


# ----------------------------------------------------------------------------- loss, metric


def seg_loss(out: Tensor, aux: Tensor | None, y: Tensor, aux_weight: float) -> Tensor:
    """Cross-entropy (ignore id 255) on the logits, + aux_weight x that of the aux logits;
    0 (with a graph) for a batch without a labelled pixel."""
    if not bool((y != IGNORE_INDEX).any()):
        return out.sum() * 0.0
    loss = F.cross_entropy(out.float(), y, ignore_index=IGNORE_INDEX)
    if aux is not None and aux_weight > 0:
        loss = loss + aux_weight * F.cross_entropy(aux.float(), y, ignore_index=IGNORE_INDEX)
    return loss


def pixel_counts(labels: Tensor, y: Tensor) -> tuple[int, int]:
    """(correct, labelled) pixels of predicted `labels` (B, H, W) against `y`."""
    keep = y != IGNORE_INDEX
    return int((labels[keep] == y[keep]).sum()), int(keep.sum())


@contextlib.contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """`params` treated as constants (no gradient) inside."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def seg_forward(
    net: SegmentationNetwork, trunk: nn.Module, x: Tensor, amp: bool
) -> tuple[Tensor, Tensor | None]:
    """(out, aux) logits of images x: the cell without autograd, `trunk` (maybe DDP) with it,
    the un-warp with the cell's weights as constants."""
    size = tuple(x.shape[-2:])
    with torch.no_grad():
        video = net.video(x)
    with autocast(x.device, amp):
        out_frames, aux_frames = trunk(video, size)
    cell_params = list(net.cell.parameters()) if net.cell is not None else []
    with frozen(cell_params):
        out = net.merge(out_frames.float(), size)[0]
        aux = None if aux_frames is None else net.merge(aux_frames.float(), size)[0]
    return out, aux


def seg_weight_step(
    net: SegmentationNetwork,
    trunk: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    aux_weight: float,
    clip: float = 0.0,
    amp: bool = False,
    confusion: ConfusionMatrix | None = None,
) -> tuple[float, int, int]:
    """One SGD step of the trunk on (x, y): (loss, correct pixels, labelled pixels)."""
    out, aux = seg_forward(net, trunk, x, amp)
    loss = seg_loss(out, aux, y, aux_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    labels = out.detach().argmax(1)
    if confusion is not None:
        confusion.update(labels, y)
    correct, n = pixel_counts(labels, y)
    return float(loss.detach()), correct, n


@torch.no_grad()
def seg_evaluate(
    network: SegmentationNetwork,
    batches: Iterator[tuple[Tensor, Tensor]],
    env: DistEnv,
    classes: int,
    amp: bool = False,
) -> dict[str, Any]:
    """Over every batch and rank: the cross-entropy per labelled pixel, and from one
    confusion matrix mIoU (``miou``, also ``acc``: the score selection ranks by), pixel
    accuracy, per-class IoU (NaN: absent from truth and prediction, left out of the mean)."""
    was_training = network.training
    network.eval()
    confusion = ConfusionMatrix(classes, IGNORE_INDEX)
    totals = torch.zeros(2, dtype=torch.float64)
    try:
        for x, y in batches:
            with autocast(x.device, amp):
                out = network(x)["out"].float()
            loss = F.cross_entropy(out, y, ignore_index=IGNORE_INDEX, reduction="sum")
            totals += torch.tensor([float(loss), float((y != IGNORE_INDEX).sum())])
            confusion.update(out, y)
    finally:
        network.train(was_training)
    all_reduce_([totals], env, average=False)
    if env.distributed:
        confusion.all_reduce()
    miou = confusion.miou
    return {
        "loss": totals[0].item() / max(totals[1].item(), 1.0),
        "acc": 0.0 if math.isnan(miou) else miou,
        "miou": miou,
        "pixel_acc": confusion.pixel_accuracy,
        "class_iou": confusion.class_iou(),
        "absent": confusion.absent_classes(),
        "pixels": int(totals[1].item()),
    }


def describe_eval(ev: dict[str, Any], class_names: Sequence[str]) -> str:
    """mIoU, pixel accuracy and per-class IoU as text (what das.evaluate prints)."""
    lines = [
        f"mIoU {100 * ev['miou']:.2f} %  pixel accuracy {100 * ev['pixel_acc']:.2f} %  "
        f"({ev['pixels']} labelled pixels; one confusion matrix over the split at the masks' "
        "resolution, ignore pixels excluded)",
    ]
    for name, iou in zip(class_names, ev["class_iou"]):
        lines.append(f"  {name:>12s}  " + ("absent" if math.isnan(iou) else f"{100 * iou:6.2f}"))
    if ev["absent"]:
        names = ", ".join(class_names[c] for c in ev["absent"])
        lines.append(
            f"classes absent from both truth and prediction, left out of the mean: {names}"
        )
    return "\n".join(lines)


def json_ready(ev: dict[str, Any]) -> dict[str, Any]:
    """NaN (an absent class) as None, for JSON."""
    out = dict(ev)
    out["class_iou"] = [None if math.isnan(v) else v for v in ev["class_iou"]]
    if isinstance(out.get("miou"), float) and math.isnan(out["miou"]):
        out["miou"] = None
    return out


def predictions(network: SegmentationNetwork, x: Tensor) -> tuple[Tensor, Tensor]:
    """(per-frame labels (N, T, H, W) in each frame's own coordinates, un-warped labels
    (N, H, W)) of images x, in eval mode."""
    was = network.training
    network.eval()
    try:
        with torch.no_grad():
            frames = network.frames(x)
            out = network(x)["out"]
    finally:
        network.train(was)
    return frames.argmax(2), out.argmax(1)


def first_items(folder: SegmentationFolder, n: int) -> tuple[Tensor, Tensor]:
    """The first `n` images (pixels in [0, 1]) and masks of a folder, unaugmented."""
    items = [folder.read(i) for i in range(min(n, len(folder)))]
    return collate_segmentation(items)
