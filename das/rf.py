"""Receptive fields: theoretical (Eq. 8), reshaped by the cell's frames (Eq. 9), effective
(Luo et al. 2016), and numbers that tell a reshape from a resize.

* ``layer_specs(backbone, stage)``: (kernel, stride) of every layer on the main path up to
  ``stage`` (1..4), dilation folded into the kernel; ``theoretical_rf(specs)`` is Eq. 8,
  ``r0 = sum_l (k_l - 1) prod_{j<l} s_j + 1``; ``unit_centre`` is where a unit's field is
  centred in the image (``layer_geometry`` adds the paddings), the origin of the radii and of
  the centroid offset.
* ``reshaped_field(r0, matrices)``: the union of one r0 x r0 field per frame, each mapped into
  the image by that frame's pixel-space sampling matrix (frame pixel q shows image point
  ``M q``); its area in pixels (measured on a 1/16-pixel raster, exact for axis-aligned
  squares) and mask. A unit mixes ``min(T, 1 + 2 * temporal modules passed)`` frames.
* ``effective_rf(network, images, stage)``: |d(sum_c relu(feature[c]) at the centre of the
  middle frame) / d image|, summed over channels, one map per image, through the cell
  (warp) and the temporal modules.
* ``rf_metrics(map)``: radii holding 20/50/90 % of the mass around the unit, area above
  ``e^-2`` of the maximum, centroid offset, covariance axes, anisotropy and orientation;
  ``js_divergence``; ``bootstrap`` intervals over the images.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from das.models.resnet import BasicBlock, Bottleneck, VideoResNet

__all__ = [
    "bootstrap",
    "effective_rf",
    "js_divergence",
    "layer_geometry",
    "layer_specs",
    "reshaped_field",
    "rf_metrics",
    "temporal_modules_passed",
    "theoretical_rf",
    "unit_centre",
]

MASS_LEVELS = (0.2, 0.5, 0.9)


def _geometry(layer: nn.Module) -> tuple[int, int, int]:
    k, s, d, p = layer.kernel_size, layer.stride, getattr(layer, "dilation", 1), layer.padding
    k, s, d, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, d, p))
    return d * (k - 1) + 1, s, p


def layer_geometry(backbone: VideoResNet, stage: int = 4) -> list[tuple[int, int, int]]:
    """(effective kernel, stride, padding) along the main path through ``stage`` stages
    (0: the stem), dilation folded into the kernel."""
    if not 0 <= stage <= len(backbone.stages):
        raise ValueError(f"stage must be 0..{len(backbone.stages)}, got {stage}")
    layers = [_geometry(m) for m in backbone.stem if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    for block_stage in list(backbone.stages)[:stage]:
        for block in block_stage:
            convs = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
            layers += [_geometry(getattr(block, name)) for name in convs]
    return layers


def layer_specs(backbone: VideoResNet, stage: int = 4) -> list[tuple[int, int]]:
    """(effective kernel, stride) along the main path through ``stage`` stages (0: the stem)."""
    return [(k, s) for k, s, _ in layer_geometry(backbone, stage)]


def unit_centre(geometry: Sequence[tuple[int, int, int]], index: int) -> float:
    """Input coordinate (pixel centres at integers) of the centre of the field of feature
    ``index`` after the layers ``geometry`` ((kernel, stride, padding) each): output o of a
    layer is centred on input ``o * s - p + (k - 1) / 2``. With stride 2 and 'same' padding the
    central unit of an even-sized map sits half a pixel off the image's middle."""
    x = float(index)
    for k, s, p in reversed(list(geometry)):
        x = x * s - p + (k - 1) / 2
    return x


def theoretical_rf(specs: Sequence[tuple[int, int]]) -> int:
    """Eq. 8: ``r0 = sum_l (k_l - 1) prod_{j<l} s_j + 1``."""
    r0, jump = 1, 1
    for k, s in specs:
        r0 += (k - 1) * jump
        jump *= s
    return r0


def temporal_modules_passed(backbone: VideoResNet, stage: int = 4) -> int:
    """GSF / TSM modules on the path through ``stage`` stages."""
    return sum(
        int(getattr(block, "gsf", None) is not None or getattr(block, "shift", None) is not None)
        for block_stage in list(backbone.stages)[:stage]
        for block in block_stage
        if isinstance(block, (BasicBlock, Bottleneck))
    )


def reshaped_field(
    r0: float, matrices: Tensor, raster: float = 1 / 16, extent: float | None = None
) -> tuple[float, Tensor]:
    """Area (pixels) and raster mask of the union over frames of ``M_t [-r0/2, r0/2]^2``.

    ``matrices``: (F, 2, 3) pixel-space sampling matrices about the unit (frame point q shows
    image point ``M q``), one per frame the unit mixes."""
    if matrices.dim() != 3 or matrices.shape[1:] != (2, 3):
        raise ValueError(f"matrices must be (F, 2, 3), got {tuple(matrices.shape)}")
    m = matrices.double()
    corners = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64) * r0 / 2
    mapped = corners @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    half = extent if extent is not None else float(mapped.abs().max()) + 1
    n = int(math.ceil(2 * half / raster))
    axis = (torch.arange(n, dtype=torch.float64) + 0.5) * raster - half
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], -1)  # image points p
    inside = torch.zeros(n, n, dtype=torch.bool)
    for frame in m:  # p is in frame t's field when M_t^-1 p lies in the square
        full = torch.cat([frame, frame.new_tensor([[0, 0, 1]])])
        q = points @ torch.linalg.inv(full)[:2].T
        inside |= (q.abs() <= r0 / 2).all(-1)
    return float(inside.sum()) * raster**2, inside


def effective_rf(features: Callable[[Tensor], Tensor], images: Tensor, frames: int = 1) -> Tensor:
    """|gradient| maps (N, H, W) of the central unit of ``features(images)`` w.r.t. images.

    ``features``: images (N, C, H, W) -> folded per-frame features (N*T, C', h, w); the unit
    is ``sum_c relu(f[c, h//2, w//2])`` of the middle frame T//2 of each image."""
    x = images.detach().clone().requires_grad_()
    f = features(x)
    N = x.shape[0]
    f = f.view(N, frames, *f.shape[1:])[:, frames // 2]
    h, w = f.shape[-2:]
    unit = torch.relu(f[:, :, h // 2, w // 2]).sum()
    (grad,) = torch.autograd.grad(unit, x)
    return grad.abs().sum(1)


def _normalised(m: Tensor) -> Tensor:
    m = m.double().clamp_min(0)
    total = m.sum()
    if total <= 0:
        raise ValueError("the map has no mass (all zero gradients)")
    return m / total


def rf_metrics(m: Tensor, centre: tuple[float, float] | None = None) -> dict[str, float]:
    """Numbers of one (H, W) map; ``centre`` (row, col) of the unit, default the middle."""
    p = _normalised(m)
    H, W = p.shape
    cy, cx = centre if centre is not None else ((H - 1) / 2, (W - 1) / 2)
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    my, mx = float((p * yy).sum()), float((p * xx).sum())
    dy, dx = yy - my, xx - mx
    cov = torch.stack(
        [torch.stack([(p * dx * dx).sum(), (p * dx * dy).sum()]),
         torch.stack([(p * dx * dy).sum(), (p * dy * dy).sum()])]
    )  # fmt: skip
    values, vectors = torch.linalg.eigh(cov)
    major, minor = math.sqrt(max(float(values[1]), 0)), math.sqrt(max(float(values[0]), 0))
    vx, vy = float(vectors[0, 1]), float(vectors[1, 1])
    radius = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt().flatten()
    order = radius.argsort()
    cumulative = p.flatten()[order].cumsum(0)
    out = {
        f"r{int(q * 100)}": float(radius[order][int(torch.searchsorted(cumulative, q))])
        for q in MASS_LEVELS
    }
    out.update(
        area_e2=float((p > p.max() * math.exp(-2)).sum()),
        centroid_dx=mx - cx,
        centroid_dy=my - cy,
        axis_major=major,
        axis_minor=minor,
        anisotropy=major / minor if minor > 0 else math.inf,
        orientation_deg=math.degrees(math.atan2(vy, vx)) % 180,
    )
    return out


def js_divergence(a: Tensor, b: Tensor) -> float:
    """Jensen-Shannon divergence (bits, in [0, 1]) between two maps taken as distributions."""
    p, q = _normalised(a).flatten(), _normalised(b).flatten()
    mid = (p + q) / 2

    def kl(x: Tensor) -> float:
        keep = x > 0
        return float((x[keep] * (x[keep] / mid[keep]).log2()).sum())

    return (kl(p) + kl(q)) / 2


def bootstrap(
    maps: Tensor,
    statistic: Callable[[Tensor], dict[str, float]],
    samples: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """``{name: (value, low, high)}``: the statistic of the mean map and its 95 % interval
    over images resampled with replacement (``maps``: (N, H, W))."""
    g = torch.Generator().manual_seed(seed)
    value = statistic(maps.mean(0))
    draws: dict[str, list[float]] = {k: [] for k in value}
    for _ in range(samples):
        pick = torch.randint(0, maps.shape[0], (maps.shape[0],), generator=g)
        for k, v in statistic(maps[pick].mean(0)).items():
            draws[k].append(v)
    out = {}
    for k, v in value.items():
        ordered = sorted(draws[k])
        lo, hi = ordered[int(0.025 * (samples - 1))], ordered[int(0.975 * (samples - 1))]
        out[k] = (v, lo, hi)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m das.rf CKPT [CKPT ...] --out DIR`` (see :mod:`das.rf_report`)."""
    from das.rf_report import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
