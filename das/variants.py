"""The networks of the paper's ablations (Tables 5/10), built from a genotype.

* ``das``: the genotype's cell makes a T-frame video; video backbone with ``fusion``.
* ``baseline``: the plain 2D network (T = 1, no temporal module, no cell).
* ``augment``: the genotype's transforms as ordinary 2D augmentation: while training each
  image is replaced by ONE random frame of its DAS video; evaluation sees the middle frame
  T//2 (with centered steps the untransformed image, times the cell's constant node gain,
  so train and eval intensities agree). 2D backbone (T = 1, no fusion).
* ``replica``: T identical frames (the image repeated) + fusion: same compute, no transform.
* ``shuffle``: the DAS video with its frames in a random order per sample (training and
  evaluation; evaluation uses a fixed seed) + fusion: tests whether frame order matters.
* ``bigkernel`` / ``dilated`` (the paper's Table 4, classic ways of widening the receptive
  field): the 2D baseline with 5x5 instead of 3x3 convolutions in its first two stages, or
  with dilation 2 in the 3x3 convolutions of its last two stages (strides kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from das.cell import DiscreteCell, Genotype, ReplicaCell
from das.models import VideoNetwork, build_backbone

__all__ = [
    "DEFAULT_ABLATION",
    "NEEDS_GENOTYPE",
    "SEG_VARIANTS",
    "VARIANTS",
    "RandomFrameCell",
    "ShuffledCell",
    "build_network",
    "dilate_stages",
    "widen_kernels",
]

VARIANTS = ("das", "baseline", "augment", "replica", "shuffle", "bigkernel", "dilated")
DEFAULT_ABLATION = ("das", "baseline", "augment", "replica", "shuffle")
RF_BASELINES = {"bigkernel": "widened kernels", "dilated": "dilated convolutions"}
# segmentation: the default ablation set and das-nounwarp, the das network with frame logits
# averaged, not un-warped (no segmentation bigkernel/dilated yet)
SEG_VARIANTS = (*DEFAULT_ABLATION, "das-nounwarp")
NEEDS_GENOTYPE = ("das", "augment", "shuffle", "das-nounwarp")
VIDEO_VARIANTS = ("das", "replica", "shuffle", "das-nounwarp")  # T frames + a temporal module


class RandomFrameCell(nn.Module):
    """Training: one random frame per sample of ``cell(x)``; eval: its middle frame T//2."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor) -> Tensor:
        video = self.cell(x)
        if not self.training:
            mid = video.shape[1] // 2
            return video[:, mid : mid + 1]
        pick = torch.randint(0, video.shape[1], (video.shape[0],), device="cpu").to(x.device)
        return video[torch.arange(video.shape[0], device=x.device), pick].unsqueeze(1)


class ShuffledCell(nn.Module):
    """``cell(x)`` with the frames of every sample in a random order (fixed seed in eval)."""

    def __init__(self, cell: nn.Module, eval_seed: int = 0) -> None:
        super().__init__()
        self.cell, self.eval_seed = cell, eval_seed

    def forward(self, x: Tensor) -> Tensor:
        video = self.cell(x)
        B, T = video.shape[:2]
        gen = None if self.training else torch.Generator().manual_seed(self.eval_seed)
        order = torch.argsort(torch.rand(B, T, generator=gen), dim=1).to(x.device)
        return video[torch.arange(B, device=x.device)[:, None], order]


def build_network(
    variant: str,
    genotype: Genotype | None,
    frames: int,
    fusion: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    arch: str = "resnet_tiny",
    gsf_ratio: int = 25,
    width_mult: float = 1.0,
    aspect: float = 1.0,
    pixel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> VideoNetwork:
    """The network of `variant`; `frames`/`fusion` apply to the video variants only.
    ``pixel_stats``: the data's (mean, std) normalisation, for genotypes with colour ops."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant in NEEDS_GENOTYPE and genotype is None:
        raise ValueError(f"variant {variant!r} needs a genotype")
    cell: nn.Module | None
    if variant in ("baseline", *RF_BASELINES):
        cell = None
    elif variant == "replica":
        cell = ReplicaCell(frames)
    else:
        assert genotype is not None
        cell = DiscreteCell(genotype, aspect, *(pixel_stats or (None, None)))
        frames = genotype.frames
        if variant == "augment":
            cell = RandomFrameCell(cell)
        elif variant == "shuffle":
            cell = ShuffledCell(cell)
    video = variant in VIDEO_VARIANTS
    backbone = build_backbone(
        arch,
        num_classes,
        in_channels,
        frames if video else 1,
        fusion if video else "none",
        gsf_ratio,
        image_size=image_size,
        width_mult=width_mult,
    )
    if variant == "bigkernel":
        widen_kernels(backbone, stages=(0, 1), kernel=5)
    elif variant == "dilated":
        dilate_stages(backbone, stages=(2, 3), dilation=2)
    return VideoNetwork(cell, backbone)


def _three_by_three(backbone: nn.Module, stages: Sequence[int]) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every 3x3 convolution in the blocks of `stages`."""
    found = []
    for i in stages:
        for block in backbone.stages[i]:
            for name, child in block.named_children():
                if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                    found.append((block, name))
    return found


def widen_kernels(backbone: nn.Module, stages: Sequence[int], kernel: int = 5) -> None:
    """Replace the 3x3 convolutions of `stages` by `kernel` x `kernel` ones (fresh weights,
    the same initialisation; same strides, padding keeping the size)."""
    for block, name in _three_by_three(backbone, stages):
        old = getattr(block, name)
        new = nn.Conv2d(old.in_channels, old.out_channels, kernel, old.stride, kernel // 2,
                        bias=False)  # fmt: skip
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        setattr(block, name, new)


def dilate_stages(backbone: nn.Module, stages: Sequence[int], dilation: int = 2) -> None:
    """Dilate the 3x3 convolutions of `stages` (padding = dilation keeps the size)."""
    for block, name in _three_by_three(backbone, stages):
        conv = getattr(block, name)
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
