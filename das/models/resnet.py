"""Video ResNets: a 2D ResNet over folded frames with a temporal module per block.

Input ``(B, T, C, H, W)`` -> frames folded to ``(B*T, C, H, W)`` -> per-frame logits ->
averaged over T. Temporal modules are placed as their authors do:

* GSF (swathikirans/GSF, ``backbones/resnetGSFModels.py``): Bottleneck ``conv3 -> GSF ->
  bn3 -> + identity``. The official repository ships only the Bottleneck; for the
  BasicBlock we apply the same rule to its last convolution: ``conv2 -> GSF -> bn2 ->
  + identity``. Channel ratio 25 (the official ResNet default).
* TSM (Lin et al., residual shift): ``shift`` on the residual branch before ``conv1``,
  the identity path unshifted; fold_div 8.
* none: the plain 2D network (frames are independent until the logit average).

Stems: ``cifar`` (3x3 conv, stride 1, no max-pool) for small images, ``imagenet``
(7x7/2 conv + 3x3/2 max-pool); ``auto`` picks cifar for images up to 64 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from das.models.memory import MEMORY_MODES, recompute
from das.models.temporal import make_temporal

__all__ = ["BasicBlock", "Bottleneck", "VideoResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        fusion: str = "none",
        frames: int = 1,
        gsf_ratio: int = 25,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.shift = make_temporal("tsm", inplanes, frames) if fusion == "tsm" else None
        self.gsf = make_temporal("gsf", planes, frames, gsf_ratio) if fusion == "gsf" else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x if self.shift is None else self.shift(x)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.conv2(out)
        if self.gsf is not None:
            out = self.gsf(out)
        out = self.bn2(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        fusion: str = "none",
        frames: int = 1,
        gsf_ratio: int = 25,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.shift = make_temporal("tsm", inplanes, frames) if fusion == "tsm" else None
        self.gsf = make_temporal("gsf", out_planes, frames, gsf_ratio) if fusion == "gsf" else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x if self.shift is None else self.shift(x)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.conv3(out)
        if self.gsf is not None:
            out = self.gsf(out)
        out = self.bn3(out)
        return self.relu(out + identity)


class VideoResNet(nn.Module):
    """``forward(video (B, T, C, H, W)) -> logits (B, classes)`` averaged over frames.

    A 4-D ``(B, C, H, W)`` input is a one-frame video. ``frames`` is the T the temporal
    modules expect (GSF/TSM reshape ``B*T`` by it).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "cifar",
        fusion: str = "none",
        frames: int = 1,
        gsf_ratio: int = 25,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.memory = "normal"  # "lean": blocks recomputed in the backward (das.models.memory)
        if len(layers) != len(widths):
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} differ in length")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.frames, self.fusion, self.num_classes = frames, fusion, num_classes
        w0 = widths[0]
        if stem == "cifar":
            self.stem = nn.Sequential(
                _conv3x3(in_channels, w0), nn.BatchNorm2d(w0), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        self._inplanes = w0
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            stages.append(
                self._make_stage(block, w, n, 1 if i == 0 else 2, fusion, frames, gsf_ratio)
            )
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self._inplanes, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(
        self, block, planes, blocks, stride, fusion, frames, gsf_ratio
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample, fusion, frames, gsf_ratio)]
        self._inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self._inplanes, planes, 1, None, fusion, frames, gsf_ratio))
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        temporal = {id(m) for blk in self.modules() for m in _temporal_modules(blk)}
        for m in self.modules():
            if id(m) in temporal:
                continue  # temporal modules keep their own initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5:
            raise ValueError(f"expected a video (B, T, C, H, W), got shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        if self.fusion != "none" and T != self.frames:
            raise ValueError(f"this {self.fusion} model expects T={self.frames} frames, got {T}")
        feats = self.stem(x.reshape(B * T, *x.shape[2:]))
        for stage in self.stages:
            feats = self.run_stage(stage, feats)
        logits = self.fc(torch.flatten(self.pool(feats), 1))
        return logits.view(B, T, -1).mean(1)

    def run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        """One stage on folded frames; with ``memory="lean"`` each block is recomputed in the
        backward instead of storing its activations."""
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {self.memory!r}")
        for block in stage:
            x = recompute(block, x) if self.memory == "lean" else block(x)
        return x


def _temporal_modules(block: nn.Module) -> list[nn.Module]:
    found = []
    for name in ("shift", "gsf"):
        mod = getattr(block, name, None) if isinstance(block, (BasicBlock, Bottleneck)) else None
        if isinstance(mod, nn.Module):
            found.extend(mod.modules())
    return found
