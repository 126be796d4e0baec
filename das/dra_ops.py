"""The 16 operators of Differentiable RandAugment (Xiao et al., IEEE TIP 2023, Table I) and how
one operator is applied to a group of images.

A normalised magnitude ``m`` in [0, 1] maps linearly to the operator's parameter
``low + m * (high - low)``; symmetric operators (the geometric ones and the enhance factors)
multiply it by a random sign per sample. The ranges are Fast-AutoAugment's / RandAugment's
(``timm.data.auto_augment`` and the FAA ``augmentations.py``):

==============  ======================  ===============================================
op              CIFAR (``cifar``)        ImageNet (``imagenet``)
==============  ======================  ===============================================
shear_x/_y      +-0.3                    +-0.3
translate_x/_y  +-0.45 of the size       +-100/224 = +-0.446 of the size (FAA: 100 px)
rotate          +-30 degrees             +-30 degrees
solarize        threshold 256 -> 0       threshold 256 -> 0
posterize       bits 8 -> 4              bits 8 -> 4
contrast, color, brightness, sharpness   factor 1 +- 0.9 (both)
solarize_add    addition 0 -> 110        addition 0 -> 110
cutout          side 0 -> 0.2 of min(H, W)  side 0 -> 0.2 (FAA's ImageNet cutout, 0.2)
auto_contrast, equalize, invert: magnitude-free
==============  ======================  ===============================================

Geometric ops act about the image centre (Pillow's shear: about the top-left corner, a
translation apart) and fill with black (zero padding, as FAA's Pillow calls without
``fillcolor``). ``--dra-ops`` picks a subset (:func:`resolve_dra_ops`).

Images are ``(N, C, H, W)`` in [0, 1] pixel space. Affine operators are turned into
sampling matrices (:func:`affine_theta`) and warped by the caller in one
``das_kernels.multi_affine_warp`` call per layer; colour operators run here
(:func:`apply_colour`): ``das_kernels.colour.colour_transform`` for the enhance factors,
auto_contrast, equalize, invert, solarize_add and cutout (Pillow semantics), and solarize with a
threshold / posterize with a bit count written here (Pillow's LUTs on the uint8 levels,
piecewise constant in the magnitude).

Gradients to the magnitude: affine ops exactly through the warp's d(theta); the enhance
factors and solarize_add exactly through ``colour_transform``; solarize, posterize, cutout and
the magnitude-free ops by the straight-through estimate ``out = op(x, m) + (m - m.detach())``
(``EXACT`` lists which are which).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from das.cell import AUTOAUGMENT13
from das_kernels import affine
from das_kernels.colour import DRA_EXTRA_OPS, colour_transform

__all__ = [
    "AFFINE",
    "DRA_OPS",
    "ENHANCE",
    "EXACT",
    "MAGNITUDE_FREE",
    "OP_GROUPS",
    "SPACES",
    "OpSpec",
    "affine_theta",
    "apply_colour",
    "check_ops",
    "op_table",
    "parameter",
    "resolve_dra_ops",
]

# the DAS paper's 13-op space (its affine ops, then das_kernels.colour's) + DRA's three
DRA_OPS: tuple[str, ...] = (*AUTOAUGMENT13, *DRA_EXTRA_OPS)
AFFINE: frozenset[str] = frozenset(("shear_x", "shear_y", "translate_x", "translate_y", "rotate"))
ENHANCE: frozenset[str] = frozenset(("contrast", "color", "brightness", "sharpness"))
MAGNITUDE_FREE: frozenset[str] = frozenset(("auto_contrast", "equalize", "invert"))
# ops whose output depends differentiably on m (else: straight-through)
EXACT: frozenset[str] = AFFINE | ENHANCE | {"solarize_add"}


@dataclass(frozen=True)
class OpSpec:
    """One operator: its parameter at m = 0 (`low`) and m = 1 (`high`), whether a random sign
    multiplies it (`symmetric`) and the unit of the parameter."""

    name: str
    low: float
    high: float
    symmetric: bool
    unit: str

    @property
    def exact(self) -> bool:
        return self.name in EXACT


def _table(translate: float) -> dict[str, OpSpec]:
    rows = [
        OpSpec("shear_x", 0.0, 0.3, True, "shear"),
        OpSpec("shear_y", 0.0, 0.3, True, "shear"),
        OpSpec("translate_x", 0.0, translate, True, "fraction of the width"),
        OpSpec("translate_y", 0.0, translate, True, "fraction of the height"),
        OpSpec("rotate", 0.0, 30.0, True, "degrees"),
        OpSpec("auto_contrast", 0.0, 0.0, False, "-"),
        OpSpec("equalize", 0.0, 0.0, False, "-"),
        OpSpec("solarize", 256.0, 0.0, False, "threshold (uint8 levels)"),
        OpSpec("posterize", 8.0, 4.0, False, "bits"),
        OpSpec("contrast", 0.0, 0.9, True, "factor - 1"),
        OpSpec("color", 0.0, 0.9, True, "factor - 1"),
        OpSpec("brightness", 0.0, 0.9, True, "factor - 1"),
        OpSpec("sharpness", 0.0, 0.9, True, "factor - 1"),
        OpSpec("invert", 0.0, 0.0, False, "-"),
        OpSpec("solarize_add", 0.0, 110.0, False, "addition (uint8 levels)"),
        OpSpec("cutout", 0.0, 0.2, False, "side, fraction of min(H, W)"),
    ]
    return {r.name: r for r in rows}


SPACES: dict[str, dict[str, OpSpec]] = {
    "cifar": _table(0.45),
    "imagenet": _table(100.0 / 224.0),
}


def op_table(space: str) -> dict[str, OpSpec]:
    """The operator table of ``--dra-space`` `space` (cifar | imagenet)."""
    if space not in SPACES:
        raise ValueError(f"unknown DRA space {space!r}; choose from {', '.join(SPACES)}")
    return SPACES[space]


def parameter(spec: OpSpec, m: Tensor, sign: Tensor | None = None) -> Tensor:
    """The operator's parameter of magnitudes `m` (any shape, differentiable), times `sign`
    (same shape, +-1) for symmetric ops."""
    p = spec.low + m * (spec.high - spec.low)
    return p * sign if spec.symmetric and sign is not None else p


def affine_theta(spec: OpSpec, m: Tensor, sign: Tensor, aspect: float = 1.0) -> Tensor:
    """Sampling matrices ``(N, 2, 3)`` of affine op `spec` for magnitudes `m` ``(N,)`` and
    signs ``(N,)`` (``das_kernels.affine`` conventions; `aspect` = W / H)."""
    return affine.TRANSFORMS[spec.name](parameter(spec, m, sign), 1.0, aspect)


def _solarize_threshold(x: Tensor, threshold: Tensor) -> Tensor:
    """Pillow ``ImageOps.solarize``: levels >= threshold inverted; threshold ``(N,)``."""
    level = torch.round(x * 255).clamp(0, 255)
    return torch.where(level >= threshold.view(-1, 1, 1, 1), 1 - x, x)


def _posterize_bits(x: Tensor, bits: Tensor) -> Tensor:
    """Pillow ``ImageOps.posterize``: keep the top ``round(bits)`` bits of each uint8 level
    (8 bits: the image unchanged)."""
    b = torch.round(bits.detach()).clamp(1, 8).long().view(-1, 1, 1, 1)
    level = torch.round(x.detach() * 255).clamp(0, 255).long()
    mask = 256 - (1 << (8 - b))  # ~(2**(8-bits) - 1) in 8 bits
    out = ((level & mask).to(x.dtype) / 255).detach()
    return torch.where(b >= 8, x, out)


def apply_colour(
    spec: OpSpec,
    x: Tensor,
    m: Tensor,
    sign: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Colour op `spec` on images `x` ``(N, C, H, W)`` in [0, 1] with magnitudes `m` ``(N,)``
    and signs ``(N,)``; returns ``(N, C, H, W)``. Straight-through ops add ``m - m.detach()``
    per image (forward value unchanged, d out / d m = 1 on every pixel)."""
    name = spec.name
    p = parameter(spec, m, sign)
    if name in ENHANCE:
        return colour_transform(name, x, p)
    if name == "solarize_add":
        return colour_transform(name, x, p / 255.0)
    if name == "cutout":
        out = colour_transform(name, x, p.detach(), generator)
    elif name in MAGNITUDE_FREE:
        out = colour_transform(name, x, 1.0)
    elif name == "solarize":
        out = _solarize_threshold(x, p.detach())
    elif name == "posterize":
        out = _posterize_bits(x, p.detach())
    else:
        raise ValueError(f"{name!r} is not a DRA colour op")
    return out + (m - m.detach()).view(-1, 1, 1, 1).to(out.dtype)


# ``--dra-ops`` names for groups of operators
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "all": DRA_OPS,
    "affine": tuple(op for op in DRA_OPS if op in AFFINE),
    "colour": tuple(op for op in DRA_OPS if op not in AFFINE),
}


def resolve_dra_ops(spec: str) -> tuple[str, ...]:
    """``--dra-ops``: a group (``all``, ``affine``, ``colour``) or a comma list of op names ->
    the op names in order; ValueError naming unknown, repeated or no names."""
    if spec in OP_GROUPS:
        return OP_GROUPS[spec]
    return check_ops([op.strip() for op in spec.split(",") if op.strip()])


def check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """`ops` as a tuple, ValueError naming unknown or repeated names."""
    unknown = [op for op in ops if op not in DRA_OPS]
    if unknown or not ops or len(set(ops)) != len(ops):
        raise ValueError(
            f"DRA ops must be distinct names from {', '.join(DRA_OPS)}; got {list(ops)}"
        )
    return tuple(ops)
