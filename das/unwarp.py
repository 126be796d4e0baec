"""Un-warping per-frame predictions back onto the image (segmentation with DAS frames).

Frame t of a cell's video is a weighted sum of *paths* from the image: a path is a chain of
edges ``0 -> i1 -> ... -> j`` with one op per edge; it samples the image with the composed
matrix ``M = compose(A_e1, ..., A_em)`` (``das_kernels.affine.compose``: warp with ``A_e1``
first) and carries the weight ``prod w[e, k] / nodes`` (the cell output is the mean of its
nodes). Colour ops move no pixel: their paths use the identity matrix.

Un-warping a prediction video ``f (B, T, C, H, W)`` applies each path's inverse with the same
weight, all paths and frames in ONE ``das_kernels.multi_affine_warp`` call, sums the frames,
and divides by the coverage (the same call on a ones map), so a pixel is averaged over the
frames (and paths) that see it::

    out(p) = sum_t sum_P w_P f_t(M_Pt^-1 p) / sum_t sum_P w_P [M_Pt^-1 p inside]

Sampling matrices are resolution-independent, so the frames may be logits at any size.
Pixels no path sees (coverage 0; only possible with ``forward`` frame steps, since centered
steps make the middle frame the untouched image) are 0 in ``out``: zero logits, i.e. a
uniform class distribution (or zero probability with ``average="probs"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import das_kernels
from das_kernels.affine import compose, invert

__all__ = ["AVERAGES", "path_terms", "unwarp_frames"]

AVERAGES = ("logits", "probs")


def path_terms(
    edges: Sequence[tuple[int, int]],
    nodes: int,
    theta: Tensor,
    weights: Tensor,
    merge: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Every path of a cell with its composed sampling matrix and weight.

    ``edges``: the cell's ``(i, j)`` edges in DARTS order; ``theta``: ``(E, K, T, 2, 3)``, the
    sampling matrix of op k of edge e at frame t (identity for colour ops); ``weights``:
    ``(E, K)``. Ops of weight exactly 0 (masked, or discretised away) open no path.
    ``merge`` (default: unless ``theta`` needs a gradient, i.e. learnable magnitudes) sums
    the weights of paths whose matrices are equal at every frame. Returns ``(P, T, 2, 3)``
    matrices and ``(P,)`` weights.
    """
    if theta.dim() != 5 or theta.shape[-2:] != (2, 3) or theta.shape[:2] != weights.shape:
        raise ValueError(
            f"theta must be (E, K, T, 2, 3) and weights (E, K), got {tuple(theta.shape)} "
            f"and {tuple(weights.shape)}"
        )
    if len(edges) != theta.shape[0]:
        raise ValueError(f"{len(edges)} edges but theta has {theta.shape[0]}")
    live = (weights != 0).tolist()
    incoming: dict[int, list[tuple[int, int]]] = {}
    for e, (i, j) in enumerate(edges):
        incoming.setdefault(j, []).append((e, i))
    node_theta: list[Tensor] = [theta.new_zeros(0, *theta.shape[2:])]
    node_weight: list[Tensor] = [weights.new_zeros(0)]
    for j in range(1, nodes + 1):
        thetas, ws = [], []
        for e, i in incoming.get(j, []):
            ks = [k for k, on in enumerate(live[e]) if on]
            if not ks:
                continue
            a, w = theta[e, ks], weights[e, ks]  # (K', T, 2, 3), (K',)
            if i == 0:
                thetas.append(a)
                ws.append(w)
            elif node_weight[i].numel():
                thetas.append(compose(node_theta[i][:, None], a[None]).flatten(0, 1))
                ws.append((node_weight[i][:, None] * w[None]).flatten())
        node_theta.append(torch.cat(thetas) if thetas else node_theta[0])
        node_weight.append(torch.cat(ws) if ws else node_weight[0])
    all_theta = torch.cat(node_theta[1:])
    all_weight = torch.cat(node_weight[1:]) / nodes
    if merge is None:
        merge = not theta.requires_grad
    if merge and all_weight.numel():
        all_theta, all_weight = _merge_equal(all_theta, all_weight)
    return all_theta, all_weight


def _merge_equal(theta: Tensor, weights: Tensor, decimals: int = 6) -> tuple[Tensor, Tensor]:
    """Paths with equal matrices (to `decimals`) at every frame become one; weights add."""
    keys = torch.round(theta.flatten(1).double(), decimals=decimals)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(inverse)), reduce="amin")
    merged = weights.new_zeros(len(first)).index_add_(0, inverse, weights)
    return theta[first], merged


def unwarp_frames(
    frames: Tensor, theta: Tensor, weights: Tensor, average: str = "logits"
) -> tuple[Tensor, Tensor]:
    """Un-warp per-frame predictions with the cell's paths (see the module docstring).

    ``frames``: ``(B, T, C, H, W)``; ``theta``: ``(P, T, 2, 3)`` path sampling matrices (as
    :func:`path_terms` gives); ``weights``: ``(P,)``. ``average="probs"`` un-warps
    ``softmax(frames, dim=2)`` instead of the logits. Returns ``out (B, C, H, W)`` and
    ``coverage (B, 1, H, W)`` in [0, 1]: the weighted share of paths and frames that see
    each pixel.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if frames.dim() != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
    B, T, _, H, W = frames.shape
    if theta.dim() != 4 or theta.shape[1] != T:
        raise ValueError(
            f"frames have T = {T} but the paths (P, T, 2, 3) {tuple(theta.shape)} have "
            f"{theta.shape[1] if theta.dim() == 4 else '?'} (the cell's frame count)"
        )
    if average == "probs":
        frames = torch.softmax(frames, dim=2)
    inverse = invert(theta)
    total = das_kernels.multi_affine_warp(frames, inverse, weights).sum(1)
    ones = frames.new_ones(1, 1, H, W)
    seen = das_kernels.multi_affine_warp(ones, inverse, weights).sum(1)  # (1, 1, H, W)
    covered = seen > 0
    out = total / torch.where(covered, seen, torch.ones_like(seen))
    out = torch.where(covered, out, torch.zeros_like(out))
    coverage = (seen / (T * weights.sum())).clamp(0, 1).expand(B, 1, H, W)
    return out, coverage
