"""Segmentation networks: a dilated video ResNet, a PSP or DeepLabv3 head, per-frame logits
un-warped onto the image.

``image (B, C, H, W) -> cell -> video (B, T, C, H, W) -> frames folded to (B*T, ...) ->
dilated ResNet (output stride 8 or 16; the temporal modules as in classification) -> head ->
per-frame logits upsampled to (H, W) -> cell.unwarp -> (B, classes, H, W)``.

* Dilation (as torchvision's ``replace_stride_with_dilation``): the last one (OS 16) or two
  (OS 8) stages keep stride 1 and dilate their 3x3 convolutions instead (first block of a
  stage at the previous dilation, the others at the new one).
* Heads: ``psp`` (pyramid pooling over bins 1, 2, 3, 6, Zhao et al. 2017) and ``deeplabv3``
  (ASPP with rates 6/12/18 at OS 16, doubled at OS 8, plus image pooling; Chen et al. 2017);
  an auxiliary FCN head on layer3 (weight 0.4 in the loss, training only).
* ``unwarp=False`` averages the frames' logits without un-warping (the das-nounwarp
  ablation); a cell-less network (``cell=None``) is the plain 2D model.
* ``unwarp_at``: ``"input"`` upsamples every frame's logits to the image size and un-warps
  there; ``"features"`` un-warps at the head's resolution (the output stride) and upsamples
  the result (and the coverage). Both are linear in the logits and differ only by where the
  bilinear resampling happens; ``features`` costs output_stride^2 times less, which matters
  for a mixed (searched) cell with hundreds of paths (4 nodes x 5 ops: 232 distinct paths,
  ~20x the backbone's time at 128x160 when un-warped at the input size).
* ``trunk(video, size)`` (per-frame logits; what DDP wraps) + ``merge`` = ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from das.models.resnet import BasicBlock, Bottleneck, VideoResNet

__all__ = [
    "AUX_WEIGHT",
    "HEADS",
    "OUTPUT_STRIDES",
    "UNWARP_AT",
    "ASPPHead",
    "FCNHead",
    "PSPHead",
    "SegmentationNetwork",
    "dilate",
]

HEADS = ("psp", "deeplabv3")
OUTPUT_STRIDES = (8, 16)
AUX_WEIGHT = 0.4
UNWARP_AT = ("input", "features")


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _stage_stride(backbone: VideoResNet) -> int:
    stem = backbone.stem
    return 4 if any(isinstance(m, nn.MaxPool2d) for m in stem) else 1


def dilate(backbone: VideoResNet, output_stride: int) -> VideoResNet:
    """Turn the strides of the last stages into dilation so features stay at `output_stride`
    (in place; returns `backbone`). Needs the imagenet stem (stride 4) and 4 stages."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if _stage_stride(backbone) != 4 or len(backbone.stages) != 4:
        raise ValueError("dilation needs a 4-stage backbone with the imagenet stem (stride 4)")
    dilated = 2 if output_stride == 8 else 1  # stages 3-4 (OS 8) or stage 4 (OS 16)
    dilation = 1
    for stage in list(backbone.stages)[4 - dilated :]:
        previous, dilation = dilation, dilation * 2
        for b, block in enumerate(stage):
            d = previous if b == 0 else dilation
            convs = [block.conv1, block.conv2] if isinstance(block, BasicBlock) else [block.conv2]
            for conv in convs:
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            if isinstance(block, BasicBlock) and b == 0:
                block.conv2.dilation = block.conv2.padding = (dilation, dilation)
    return backbone


class PSPHead(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) + 3x3 conv + classifier."""

    def __init__(self, cin: int, classes: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = max(cin // len(bins), 8)
        self.bins = bins
        self.branches = nn.ModuleList(_conv_bn_relu(cin, branch) for _ in bins)
        self.fuse = _conv_bn_relu(cin + branch * len(bins), max(cin // 4, 16), 3)
        self.classify = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(max(cin // 4, 16), classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(
                b(F.adaptive_avg_pool2d(x, n)), size, mode="bilinear", align_corners=False
            )
            for n, b in zip(self.bins, self.branches)
        ]
        return self.classify(self.fuse(torch.cat([x, *pooled], 1)))


class ASPPHead(nn.Module):
    """DeepLabv3: ASPP (1x1, three dilated 3x3, image pooling) + 3x3 conv + classifier."""

    def __init__(self, cin: int, classes: int, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        width = max(cin // 2, 16)
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, width)] + [_conv_bn_relu(cin, width, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1), nn.ReLU()
        )
        self.project = nn.Sequential(
            _conv_bn_relu(width * (len(rates) + 2), width), nn.Dropout(0.1)
        )
        self.classify = nn.Sequential(_conv_bn_relu(width, width, 3), nn.Conv2d(width, classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.classify(self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1)))


class FCNHead(nn.Module):
    """The auxiliary head: 3x3 conv + dropout + classifier."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        mid = max(cin // 4, 16)
        self.layers = nn.Sequential(
            _conv_bn_relu(cin, mid, 3), nn.Dropout2d(0.1), nn.Conv2d(mid, classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SegmentationNetwork(nn.Module):
    """``forward(x (B, C, H, W)) -> {"out": (B, classes, H, W), "aux": ... (training only),
    "coverage": (B, 1, H, W)}``; ``frames(x)`` gives the per-frame logits (B, T, classes, H, W).

    ``cell``: a DAS cell with ``unwarp`` (or None: 2D); ``backbone``: a dilated VideoResNet;
    ``average``: un-warp ``logits`` or ``probs``.
    """

    def __init__(
        self,
        cell: nn.Module | None,
        backbone: VideoResNet,
        head: str,
        num_classes: int,
        output_stride: int = 8,
        aux: bool = True,
        unwarp: bool = True,
        average: str = "logits",
        unwarp_at: str = "input",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        if unwarp_at not in UNWARP_AT:
            raise ValueError(f"unwarp_at must be one of {UNWARP_AT}, got {unwarp_at!r}")
        self.unwarp_at = unwarp_at
        self.cell, self.backbone = cell, dilate(backbone, output_stride)
        # the classifier is never used here: drop it (unused parameters break DDP and would
        # be weight-decayed and counted for nothing)
        if isinstance(getattr(backbone, "fc", None), nn.Linear):
            backbone.fc = nn.Identity()
        self.unwarp, self.average = unwarp, average
        channels = [_out_channels(s) for s in backbone.stages]
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.head = (
            PSPHead(channels[3], num_classes)
            if head == "psp"
            else ASPPHead(channels[3], num_classes, rates)
        )
        self.aux_head = FCNHead(channels[2], num_classes) if aux else None
        self.num_classes = num_classes

    def _features(self, video: Tensor) -> tuple[Tensor, Tensor]:
        B, T = video.shape[:2]
        bb = self.backbone
        if bb.fusion != "none" and T != bb.frames:
            raise ValueError(f"this {bb.fusion} model expects T={bb.frames} frames, got {T}")
        x = bb.stem(video.reshape(B * T, *video.shape[2:]))
        x = bb.run_stage(bb.stages[1], bb.run_stage(bb.stages[0], x))
        layer3 = bb.run_stage(bb.stages[2], x)
        return layer3, bb.run_stage(bb.stages[3], layer3)

    def _logits(
        self, head: nn.Module, feats: Tensor, B: int, size: tuple[int, int] | None
    ) -> Tensor:
        logits = head(feats)
        if size is not None:
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        return logits.view(B, -1, *logits.shape[1:])

    def frames(self, x: Tensor) -> Tensor:
        """Per-frame logits ``(B, T, classes, H, W)`` of images ``x (B, C, H, W)``."""
        video = x.unsqueeze(1) if self.cell is None else self.cell(x)
        _, layer4 = self._features(video)
        return self._logits(self.head, layer4, x.shape[0], x.shape[-2:])

    def _merge(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        unwarps = self.cell is not None and self.unwarp and hasattr(self.cell, "unwarp")
        if not unwarps or (frames.shape[1] == 1 and not getattr(self.cell, "per_frame", False)):
            probs = torch.softmax(frames, 2) if self.average == "probs" else frames
            mean = probs.mean(1)
            return mean, mean.new_ones(mean.shape[0], 1, *mean.shape[2:])
        return self.cell.unwarp(frames, self.average)

    def merge(self, frames: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Per-frame logits (B, T, classes, h, w) from :meth:`trunk` -> (B, classes, H, W)
        and coverage (B, 1, H, W) at ``size``: un-warped (or averaged), then upsampled when
        they are at the head's resolution (``unwarp_at="features"``)."""
        out, coverage = self._merge(frames)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size, mode="bilinear", align_corners=False)
            coverage = F.interpolate(coverage, size, mode="bilinear", align_corners=False)
        return out, coverage

    def trunk(self, video: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """The backbone and heads on a video (B, T, C, H, W): per-frame logits of the head
        and (training only) of the aux head, at ``size`` (``unwarp_at="input"``) or the
        head's resolution (``"features"``)."""
        B = video.shape[0]
        at = None if self.unwarp_at == "features" else tuple(size)
        layer3, layer4 = self._features(video)
        out = self._logits(self.head, layer4, B, at)
        aux = None
        if self.aux_head is not None and self.training:
            aux = self._logits(self.aux_head, layer3, B, at)
        return out, aux

    def video(self, x: Tensor) -> Tensor:
        """The frames the backbone sees: (B, T, C, H, W)."""
        return x.unsqueeze(1) if self.cell is None else self.cell(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        out_frames, aux_frames = self.trunk(self.video(x), size)
        out, coverage = self.merge(out_frames, size)
        result = {"out": out, "coverage": coverage}
        if aux_frames is not None:
            result["aux"] = self.merge(aux_frames, size)[0]
        return result


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels
