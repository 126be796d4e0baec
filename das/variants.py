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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from das.cell import DiscreteCell, Genotype, ReplicaCell
from das.models import VideoNetwork, build_backbone

__all__ = [
    "NEEDS_GENOTYPE",
    "SEG_VARIANTS",
    "VARIANTS",
    "RandomFrameCell",
    "ShuffledCell",
    "build_network",
]

VARIANTS = ("das", "baseline", "augment", "replica", "shuffle")
# segmentation adds das-nounwarp: the das network with frame logits averaged, not un-warped
SEG_VARIANTS = (*VARIANTS, "das-nounwarp")
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
    if variant == "baseline":
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
    return VideoNetwork(cell, backbone)
