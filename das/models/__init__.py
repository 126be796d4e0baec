"""Video backbones and the image -> video -> logits network.

``build_backbone(arch, ...)``: ``resnet18``, ``resnet34``, ``resnet50`` (standard widths)
and ``resnet_tiny`` (BasicBlock [1, 1, 1, 1], widths 16-128: the CPU-minutes default), each
with ``fusion`` in ``gsf``, ``tsm``, ``none``.
"""

from __future__ import annotations

from torch import Tensor, nn

from das.models.resnet import BasicBlock, Bottleneck, VideoResNet
from das.models.temporal import FUSIONS
from das_kernels.reference import gsf_channels

__all__ = [
    "ARCHS",
    "FUSIONS",
    "VideoNetwork",
    "VideoResNet",
    "backbone_widths",
    "build_backbone",
    "gsf_problem",
]

ARCHS: dict[str, tuple[type[nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    "resnet_tiny": (BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128)),
    "resnet18": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": (BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": (Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
}


def build_backbone(
    arch: str = "resnet_tiny",
    num_classes: int = 10,
    in_channels: int = 3,
    frames: int = 1,
    fusion: str = "none",
    gsf_ratio: int = 25,
    stem: str = "auto",
    image_size: int = 32,
    width_mult: float = 1.0,
) -> VideoResNet:
    """A video ResNet by name. ``stem="auto"``: cifar stem up to 64 px, imagenet above.

    Widths are scaled by ``width_mult`` and rounded to multiples of 8, at least 16 (so GSF
    at ratio 25 gates a channel count divisible by 4).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    block, layers, _ = ARCHS[arch]
    widths = backbone_widths(arch, width_mult)
    if stem == "auto":
        stem = "cifar" if image_size <= 64 else "imagenet"
    return VideoResNet(
        block, layers, num_classes, in_channels, widths, stem, fusion, frames, gsf_ratio
    )


def backbone_widths(arch: str, width_mult: float = 1.0) -> tuple[int, ...]:
    """The stage widths of `arch` scaled by `width_mult`: multiples of 8, at least 16."""
    return tuple(max(16, int(round(w * width_mult / 8)) * 8) for w in ARCHS[arch][2])


def gsf_problem(arch: str, width_mult: float = 1.0, gsf_ratio: int = 25) -> str | None:
    """None when GSF at `gsf_ratio` can be built in every stage of `arch` at `width_mult`,
    else which stage fails and why (GSF gates a channel count divisible by 4)."""
    if arch not in ARCHS:
        return f"unknown arch {arch!r}"
    block = ARCHS[arch][0]
    for stage, width in enumerate(backbone_widths(arch, width_mult), 1):
        channels = width * block.expansion  # GSF sits after the block's last convolution
        try:
            gsf_channels(channels, gsf_ratio)
        except ValueError:
            gated = int(channels * gsf_ratio / 100)
            gated += gated % 2
            return (
                f"GSF would gate {gated} of the {channels} channels of stage {stage} of {arch} "
                "(it needs a positive multiple of 4)"
            )
    return None


class VideoNetwork(nn.Module):
    """image (B, C, H, W) -> ``cell`` -> video (B, T, C, H, W) -> ``backbone`` -> logits.

    ``cell=None`` gives the plain 2D network (a one-frame video).
    """

    def __init__(self, cell: nn.Module | None, backbone: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.backbone = backbone

    def video(self, x: Tensor) -> Tensor:
        """The frames the backbone sees: (B, T, C, H, W)."""
        return x.unsqueeze(1) if self.cell is None else self.cell(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.video(x))
