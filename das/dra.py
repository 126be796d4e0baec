"""The Differentiable RandAugment policy (Xiao et al., IEEE TIP 2023): D layers of N
operators (:mod:`das.dra_ops`), each layer with selecting logits ``w``, magnitude means ``mu``
and standard deviations ``sigma`` (3 x D x N parameters).

Per layer and sample: one operator drawn by a hard Gumbel-softmax (temperature 0.5) of ``w``,
straight-through: only the drawn operator is computed and its output is multiplied by the
drawn entry of ``hard - soft.detach() + soft`` (1 in the forward; in the backward the relaxed
weight, so every logit gets a gradient through the softmax, the paper's Eq. 3/5); magnitude
``m = clip(mu + eps * sigma, 0, 1)`` (reparameterised, ``eps ~ N(0, 1)``); the layer is applied
with probability ``p ~ U(0.2, 0.8)`` drawn per sample (else the sample passes unchanged).
Affine operators of a layer are ONE ``das_kernels.multi_affine_warp`` call on the whole batch
(per-sample theta, identity for the samples whose operator is not affine), so d(mu, sigma) is
exact through the warp's d(theta); colour operators as described in :mod:`das.dra_ops`.

``DRAPolicy.load(path).augment(x01, generator)`` applies a searched ``policy.json`` as a 2D
augmentation: ``x01`` ``(B, C, H, W)`` in [0, 1] -> the same shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from das.dra_ops import AFFINE, DRA_OPS, affine_theta, apply_colour, check_ops, op_table
from das.runtime import atomic_write_text
from das_kernels import multi_affine_warp

__all__ = ["DRAPolicy", "LayerDraw"]


@dataclass
class LayerDraw:
    """The randomness of one layer for a batch of B samples: Gumbel noise ``(B, N)``,
    magnitude noise ``eps`` ``(B,)``, signs ``(B,)`` (+-1) and whether the layer applies
    (``apply``, ``(B,)`` bool)."""

    gumbel: Tensor
    eps: Tensor
    sign: Tensor
    apply: Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> LayerDraw:
        return LayerDraw(
            self.gumbel.to(device, dtype),
            self.eps.to(device, dtype),
            self.sign.to(device, dtype),
            self.apply.to(device),
        )


class DRAPolicy(nn.Module):
    """D layers x N operators: ``logits`` (D, N) init 0, ``mu`` (D, N) init 0.5, ``sigma``
    (D, N) init 0.1. ``forward(x01)``: ``(B, C, H, W)`` in [0, 1] -> the augmented batch,
    differentiable in the three parameters. The images may live on another device or dtype
    than the parameters (they are moved per call, differentiably)."""

    def __init__(
        self,
        ops: Sequence[str] = DRA_OPS,
        space: str = "cifar",
        layers: int = 2,
        temperature: float = 0.5,
        apply_prob: tuple[float, float] = (0.2, 0.8),
        mu_init: float = 0.5,
        sigma_init: float = 0.1,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        lo, hi = apply_prob
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"apply_prob must be 0 <= low <= high <= 1, got {apply_prob}")
        self.ops = check_ops(list(ops))
        self.space = space
        self.specs = [op_table(space)[op] for op in self.ops]
        self.temperature = float(temperature)
        self.apply_prob = (float(lo), float(hi))
        shape = (layers, len(self.ops))
        self.logits = nn.Parameter(torch.zeros(shape))
        self.mu = nn.Parameter(torch.full(shape, float(mu_init)))
        self.sigma = nn.Parameter(torch.full(shape, float(sigma_init)))
        self.register_buffer(
            "is_affine", torch.tensor([op in AFFINE for op in self.ops]), persistent=False
        )

    @property
    def layers(self) -> int:
        return self.logits.shape[0]

    def weights(self) -> Tensor:
        """Selecting probabilities softmax(w), ``(D, N)``."""
        return self.logits.softmax(dim=-1)

    # -- randomness --------------------------------------------------------------------
    def draw(self, batch: int, generator: torch.Generator | None = None) -> list[LayerDraw]:
        """The randomness of a forward pass over `batch` samples, one LayerDraw per layer
        (drawn on the CPU from `generator`, or torch's global generator without one)."""
        lo, hi = self.apply_prob
        out = []
        for _ in range(self.layers):
            u = torch.rand(batch, len(self.ops), generator=generator, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
            eps = torch.randn(batch, generator=generator, dtype=torch.float64)
            sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
            p = lo + (hi - lo) * torch.rand(batch, generator=generator, dtype=torch.float64)
            apply = torch.rand(batch, generator=generator, dtype=torch.float64) < p
            out.append(LayerDraw(gumbel, eps, sign, apply))
        return out

    # -- forward -----------------------------------------------------------------------
    def forward(
        self,
        x01: Tensor,
        draws: list[LayerDraw] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Augment `x01` ``(B, C, H, W)`` in [0, 1]; `draws` (default: drawn now from
        `generator`, which also places cutout squares) fixes the randomness. Returns
        ``(B, C, H, W)``."""
        if x01.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x01.shape)}")
        draws = draws if draws is not None else self.draw(x01.shape[0], generator)
        if len(draws) != self.layers:
            raise ValueError(f"got {len(draws)} layer draws for {self.layers} layers")
        x = x01
        for d, draw in enumerate(draws):
            x = self._layer(d, x, draw.to(x.device, x.dtype), generator)
        return x

    def select(self, d: int, gumbel: Tensor) -> tuple[Tensor, Tensor]:
        """Layer `d`'s hard Gumbel-softmax draw from noise `gumbel` ``(B, N)``: the drawn op
        per sample ``(B,)`` (long) and its straight-through gate ``(B,)``, the drawn entry of
        ``hard - soft.detach() + soft`` (1 forward, the relaxed weight's gradient)."""
        logits = self.logits[d].to(gumbel.device, gumbel.dtype)
        soft = F.softmax((logits + gumbel) / self.temperature, dim=-1)  # (B, N)
        k = soft.argmax(dim=-1)
        hard = F.one_hot(k, len(self.ops)).to(soft.dtype)
        return k, (hard - soft.detach() + soft).gather(1, k[:, None]).squeeze(1)

    def _layer(
        self, d: int, x: Tensor, draw: LayerDraw, generator: torch.Generator | None
    ) -> Tensor:
        k, gate = self.select(d, draw.gumbel.to(x.dtype))
        mu, sigma = self.mu[d].to(x.device, x.dtype), self.sigma[d].to(x.device, x.dtype)
        is_affine = self.is_affine.to(x.device)
        m = (mu[k] + draw.eps * sigma[k]).clamp(0, 1)
        out = x
        warp = draw.apply & is_affine[k]
        if bool(warp.any()):
            theta = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(len(k), 2, 3)
            aspect = x.shape[-1] / x.shape[-2]
            for j in torch.unique(k[warp]).tolist():
                rows = (warp & (k == j))[:, None, None]
                theta = torch.where(rows, affine_theta(self.specs[j], m, draw.sign, aspect), theta)
            w = torch.where(warp, gate, torch.ones_like(gate))[:, None]  # (B, 1)
            warped = multi_affine_warp(x, theta[:, None, None], w)[:, 0]
            out = torch.where(warp[:, None, None, None], warped, out)
        colour = draw.apply & ~is_affine[k]
        for j in torch.unique(k[colour]).tolist():
            rows = torch.nonzero(colour & (k == j)).squeeze(1)
            piece = apply_colour(self.specs[j], x[rows], m[rows], draw.sign[rows], generator)
            out = out.index_copy(0, rows, piece * gate[rows].view(-1, 1, 1, 1))
        return out

    @torch.no_grad()
    def project_(self) -> None:
        """Keep mu in [0, 1] and sigma >= 0 (after each optimiser step: m is clipped to
        [0, 1] anyway, and a mu outside it would get no gradient)."""
        self.mu.clamp_(0, 1)
        self.sigma.clamp_(min=0)

    @torch.no_grad()
    def augment(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training-time use, no gradients: `x01` ``(B, C, H, W)`` in [0, 1] -> the same
        shape, randomness from `generator` (CPU) or torch's global generator."""
        return self(x01, generator=generator).clamp(0, 1)

    # -- summaries and files -----------------------------------------------------------
    def layer_rows(self) -> list[dict[str, list[float]]]:
        """Per layer: softmax weights, logits, mu, sigma (lists over the ops)."""
        with torch.no_grad():
            w = self.weights()
            return [
                {
                    "weights": w[d].tolist(),
                    "logits": self.logits[d].tolist(),
                    "mu": self.mu[d].tolist(),
                    "sigma": self.sigma[d].tolist(),
                }
                for d in range(self.layers)
            ]

    def top_ops(self, k: int = 3) -> list[list[tuple[str, float, float, float]]]:
        """Per layer the `k` heaviest ops as (name, weight, mu, sigma)."""
        out = []
        for row in self.layer_rows():
            order = sorted(range(len(self.ops)), key=lambda i: -row["weights"][i])[:k]
            out.append(
                [(self.ops[i], row["weights"][i], row["mu"][i], row["sigma"][i]) for i in order]
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "dra",
            "space": self.space,
            "ops": list(self.ops),
            "apply_prob": list(self.apply_prob),
            "temperature": self.temperature,
            "layers": self.layer_rows(),
        }

    def save(self, path: str | Path) -> None:
        """``policy.json`` (atomic): method, space, ops, apply_prob, temperature, layers."""
        atomic_write_text(json.dumps(self.to_dict(), indent=1) + "\n", Path(path))

    @classmethod
    def from_dict(cls, d: Any, where: str = "policy") -> DRAPolicy:
        if not isinstance(d, dict) or d.get("method") != "dra":
            raise ValueError(f'{where}: not a DRA policy (expected "method": "dra")')
        missing = [k for k in ("space", "ops", "apply_prob", "temperature", "layers") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        layers = d["layers"]
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"{where}: 'layers' must be a non-empty list")
        try:
            policy = cls(
                d["ops"], d["space"], len(layers), d["temperature"], tuple(d["apply_prob"])
            )
            n = len(policy.ops)
            with torch.no_grad():
                for i, row in enumerate(layers):
                    for name in ("logits", "mu", "sigma"):
                        values = torch.tensor(row[name], dtype=torch.float32)
                        if values.shape != (n,) or not bool(torch.isfinite(values).all()):
                            raise ValueError(f"layers[{i}].{name}: expected {n} finite numbers")
                        getattr(policy, name)[i] = values
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        return policy

    @classmethod
    def load(cls, path: str | Path) -> DRAPolicy:
        """A policy saved by :meth:`save` (ValueError naming the file when it is not one)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        return cls.from_dict(d, where=str(path))
