"""Colour ops of the AutoAugment-like search space, differentiable in float (Pillow semantics).

Conventions:

* Images ``x`` are ``(N, C, H, W)`` floating tensors with values in ``[0, 1]``, ``C`` = 1 or 3.
* Each op takes a signed per-image amount ``a`` (a float, or an ``(N,)`` or 0-d tensor) and is
  exactly the identity at ``a = 0`` (the output values equal ``x``).
* Enhance ops (``ENHANCE_OPS``) follow ``PIL.ImageEnhance`` with factor ``f = 1 + a``:
  ``clamp(deg + f * (x - deg), 0, 1)``, computed as ``clamp(x + a * (x - deg), 0, 1)``, where the
  degenerate image ``deg`` is black (brightness), the mean luminance per image (contrast), the
  per-pixel luminance (color) or the ``ImageFilter.SMOOTH`` blur with the one-pixel border left
  unfiltered (sharpness). Luminance is ``0.299 R + 0.587 G + 0.114 B``; for ``C = 1`` it is ``x``
  itself, so color is the identity on grayscale images. Pillow rounds ``deg`` to uint8 and
  truncates the blended result; these float versions do neither.
* Fixed-strength ops blend towards the strongest ``PIL.ImageOps`` setting with weight
  ``alpha = min(|a|, 1)``: ``x + alpha * (op(x) - x)``. ``op`` is ``autocontrast(cutoff=0)``,
  ``equalize`` (256 bins, Pillow's LUT), ``solarize(threshold=128)`` or ``posterize(bits=4)``,
  each per image and channel. Equalize and posterize are piecewise constant, so they pass no
  gradient to ``x`` through ``op(x)``. Equalize leaves channels whose Pillow LUT is the identity
  equal to ``x``.
* DRA's extra ops (``DRA_EXTRA_OPS``, not in the 13-op space): ``invert`` blends towards
  ``ImageOps.invert`` (``1 - x``) like the fixed-strength ops; ``solarize_add`` is
  AutoAugment's (``x + a`` where ``x < 128/255``, clipped to 1; ``a`` the addition in [0, 1]
  pixel units, so ``a = 110/255`` is Pillow's ``addition=110``); ``cutout`` fills a square of
  side ``round(|a| * min(H, W))`` pixels with grey ``0.5`` (128/255 in Pillow), centred at a
  pixel drawn per image from ``generator`` (the image centre without one), clipped at the
  border. Cutout passes no gradient to ``a``.
* float32/float64 are computed in place; other floating dtypes in float32 and cast back.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLOUR_OPS",
    "DEFAULT_COLOUR_MAGNITUDE",
    "DRA_EXTRA_OPS",
    "ENHANCE_OPS",
    "colour_transform",
]

COLOUR_OPS: tuple[str, ...] = (
    "auto_contrast",
    "equalize",
    "solarize",
    "posterize",
    "contrast",
    "color",
    "brightness",
    "sharpness",
)
ENHANCE_OPS: tuple[str, ...] = ("contrast", "color", "brightness", "sharpness")
DRA_EXTRA_OPS: tuple[str, ...] = ("invert", "solarize_add", "cutout")
CUTOUT_FILL = 128 / 255
DEFAULT_COLOUR_MAGNITUDE: dict[str, float] = {
    op: 0.1 if op in ENHANCE_OPS else 0.25 for op in COLOUR_OPS
}  # amount per frame step: factor 1 +- 0.1 for enhance ops, blend weight 0.25 otherwise

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's RGB -> L conversion
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # ImageFilter.SMOOTH, divisor 13


def _luminance(x: Tensor) -> Tensor:
    """``(N, 1, H, W)`` luminance of ``(N, C, H, W)`` images (``x`` itself for ``C = 1``)."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _smooth(x: Tensor) -> Tensor:
    """Depthwise ``ImageFilter.SMOOTH`` of ``(N, C, H, W)``; border rows/columns stay ``x``."""
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = x.new_tensor(_SMOOTH).div(13.0).expand(c, 1, 3, 3)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x, k, groups=c)
    return out


def _degenerate(op: str, x: Tensor) -> Tensor:
    if op == "brightness":
        return torch.zeros_like(x)
    if op == "contrast":
        return _luminance(x).mean(dim=(1, 2, 3), keepdim=True)
    if op == "color":
        return _luminance(x)
    return _smooth(x)


def _auto_contrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    ok = hi > lo
    span = torch.where(ok, hi - lo, torch.ones_like(hi))
    return torch.where(ok, (x - lo) / span, x)


def _quantise(x: Tensor) -> Tensor:
    """uint8 levels ``round(x * 255)`` clamped to ``[0, 255]``, as int64."""
    return torch.round(x * 255).clamp(0, 255).long()


@torch.no_grad()
def _equalize(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    q = _quantise(x).flatten(2)  # (N, C, P)
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(2, q, torch.ones_like(q))
    bins = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, bins, -1).amax(dim=2, keepdim=True)  # last non-zero bin
    step = (h * w - hist.gather(2, last)) // 255  # (N, C, 1)
    safe = step.clamp(min=1)
    before = hist.cumsum(dim=2) - hist  # pixels strictly below each bin
    lut = ((safe // 2 + before) // safe).clamp(max=255)
    out = lut.gather(2, q).view_as(x).to(x.dtype) / 255
    return torch.where(step.view(n, c, 1, 1) > 0, out, x)


def _solarize(x: Tensor) -> Tensor:
    return torch.where(x < 0.5, x, 1 - x)


@torch.no_grad()
def _posterize(x: Tensor) -> Tensor:
    return (_quantise(x) & 0xF0).to(x.dtype) / 255


def _invert(x: Tensor) -> Tensor:
    return 1 - x


def _solarize_add(x: Tensor, a: Tensor) -> Tensor:
    return torch.where(x < 0.5, (x + a).clamp(max=1), x)


def _cutout(x: Tensor, a: Tensor, generator: torch.Generator | None) -> Tensor:
    n, _, h, w = x.shape
    side = torch.round(a.detach().abs().reshape(-1).expand(n) * min(h, w)).long()
    if generator is None:
        cy, cx = torch.full((n,), h // 2), torch.full((n,), w // 2)
    else:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
    y0, x0 = (cy - side // 2).clamp(min=0), (cx - side // 2).clamp(min=0)
    y1, x1 = (y0 + side).clamp(max=h), (x0 + side).clamp(max=w)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside_y = (rows >= y0[:, None]) & (rows < y1[:, None])
    inside_x = (cols >= x0[:, None]) & (cols < x1[:, None])
    box = (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(x.device)
    return torch.where(box, torch.full_like(x, CUTOUT_FILL), x)


_FIXED = {
    "invert": _invert,
    "auto_contrast": _auto_contrast,
    "equalize": _equalize,
    "solarize": _solarize,
    "posterize": _posterize,
}


def _check(op: str, x: Tensor, amount: Tensor | float) -> None:
    if op not in COLOUR_OPS + DRA_EXTRA_OPS:
        names = ", ".join(COLOUR_OPS + DRA_EXTRA_OPS)
        raise ValueError(f"unknown colour op {op!r}; valid ops: {names}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got C = {x.shape[1]}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have H, W >= 1, got shape {tuple(x.shape)}")
    if isinstance(amount, Tensor):
        if not amount.is_floating_point():
            raise TypeError(f"amount must be a floating tensor, got dtype {amount.dtype}")
        if amount.dim() > 1 or (amount.dim() == 1 and amount.shape[0] != x.shape[0]):
            raise ValueError(
                f"amount must be a float or an (N,) = ({x.shape[0]},) tensor, "
                f"got shape {tuple(amount.shape)}"
            )
        if amount.device != x.device:
            raise ValueError(f"amount is on {amount.device} but x is on {x.device}")
    elif isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a real number or a tensor, got {type(amount).__name__}")


def colour_transform(
    op: str, x: Tensor, amount: Tensor | float, generator: torch.Generator | None = None
) -> Tensor:
    """Apply colour op ``op`` with signed per-image amount ``a`` to images ``x``.

    ``x``: ``(N, C, H, W)`` floating images with pixel values in ``[0, 1]``, ``C`` = 1 or 3.
    ``amount``: a float or an ``(N,)`` tensor (a 0-d tensor broadcasts), differentiable.
    ``generator``: where ``cutout`` draws its centres (CPU generator).
    Returns ``(N, C, H, W)`` with ``x``'s dtype and device; equal to ``x`` where ``a = 0``.
    """
    _check(op, x, amount)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xc = x.to(dtype)
    if isinstance(amount, Tensor):
        a = amount.to(dtype)
    else:  # a Python number, converted straight to the compute dtype (no float32 detour)
        a = torch.tensor(float(amount), dtype=dtype, device=x.device)
    a = a.reshape(-1, 1, 1, 1) if a.dim() == 1 else a
    if op in ENHANCE_OPS:
        out = (xc + a * (xc - _degenerate(op, xc))).clamp(0, 1)
    elif op == "solarize_add":
        out = _solarize_add(xc, a)
    elif op == "cutout":
        out = _cutout(xc, a, generator)
    else:
        mag = a.abs()
        alpha = torch.where(mag < 1, mag, torch.ones_like(mag))
        out = xc + alpha * (_FIXED[op](xc) - xc)
    return out.to(x.dtype)
