"""``das_kernels::multi_affine_warp``: softmax-weighted multi-affine warp of an image or video.

Registered op (canonical layout, all checks done by the public wrapper):
    x (B, Tx, C, H, W) with Tx in {1, T}; theta (B, K, T, 2, 3) and weights (B, K) in the
    compute dtype (fp32, fp64 for fp64 x), contiguous -> out (B, T, C, out_h, out_w).
The backward is its own op and recomputes the samples from (x, theta, weights).

Backends: ``triton`` calls ``das_kernels.triton.multi_affine_warp.<name>`` and
``cuda``/``cpp`` call ``torch.ops.das_native.<name>`` for ``<name>`` in
``multi_affine_warp_forward(x, theta, weights, out_h, out_w)`` and
``multi_affine_warp_backward(grad_out, x, theta, weights, need_x, deterministic) ->
(grad_x, grad_theta, grad_weights)`` (grad_x zeros when not need_x; deterministic:
``torch.are_deterministic_algorithms_enabled()``); ``reference`` runs
``das_kernels.reference``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch

from das_kernels import reference
from das_kernels.ops._common import (
    backend_impls,
    check_same_device,
    check_tensor,
    compute_dtype,
    dispatch,
    has_values,
    register_op_name,
)

__all__ = ["multi_affine_warp", "softmax_affine_warp"]

OP = "multi_affine_warp"
register_op_name(OP)


def _reference_backward(grad_out, x, theta, weights, need_x, deterministic):
    return reference.multi_affine_warp_backward(grad_out, x, theta, weights)


FORWARD = backend_impls("multi_affine_warp_forward", OP, reference.multi_affine_warp)
BACKWARD = backend_impls("multi_affine_warp_backward", OP, _reference_backward)


@torch.library.custom_op("das_kernels::multi_affine_warp", mutates_args=())
def _warp(
    x: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor, out_h: int, out_w: int
) -> torch.Tensor:
    return dispatch(OP, x.device, FORWARD)(x, theta, weights, out_h, out_w)


@_warp.register_fake
def _(x, theta, weights, out_h, out_w):
    B, _, C = x.shape[:3]
    return x.new_empty(B, theta.shape[2], C, out_h, out_w)


@torch.library.custom_op("das_kernels::multi_affine_warp_backward", mutates_args=())
def _warp_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    theta: torch.Tensor,
    weights: torch.Tensor,
    need_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad_x, grad_theta, grad_weights = dispatch(OP, x.device, BACKWARD)(
        grad_out.contiguous(), x, theta, weights, need_x, deterministic
    )
    return grad_x.to(x.dtype), grad_theta, grad_weights


@_warp_backward.register_fake
def _(grad_out, x, theta, weights, need_x):
    return torch.empty_like(x), torch.empty_like(theta), torch.empty_like(weights)


def _setup_context(ctx, inputs, output):
    x, theta, weights, _, _ = inputs
    ctx.save_for_backward(x, theta, weights)


def _backward(ctx, grad_out):
    x, theta, weights = ctx.saved_tensors
    grad_x, grad_theta, grad_weights = _warp_backward(
        grad_out, x, theta, weights, ctx.needs_input_grad[0]
    )
    return (
        grad_x if ctx.needs_input_grad[0] else None,
        grad_theta if ctx.needs_input_grad[1] else None,
        grad_weights if ctx.needs_input_grad[2] else None,
        None,
        None,
    )


_warp.register_autograd(_backward, setup_context=_setup_context)


MAX_PIXELS = 2**31 - 1  # output pixels per frame: the kernels index them with int32


def _size_int(value: Any) -> int | None:
    """`value` as an int if it is an integer (numpy integers too), not a bool; else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _out_size(out_size: Any, H: int, W: int) -> tuple[int, int]:
    if out_size is None:
        return H, W
    single = _size_int(out_size)
    if single is not None:
        size = [single, single]
    elif isinstance(out_size, (tuple, list)) and len(out_size) == 2:
        size = [_size_int(s) for s in out_size]
    else:
        raise TypeError(
            f"out_size must be an int or (height, width) ints, got {out_size!r} "
            f"({type(out_size).__name__})"
        )
    if any(s is None for s in size):
        raise TypeError(f"out_size must hold ints, got {out_size!r}")
    if any(s <= 0 for s in size):
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    if size[0] * size[1] > MAX_PIXELS:
        raise ValueError(f"out_size {tuple(size)} has more than 2**31 - 1 pixels per frame")
    return size[0], size[1]


def multi_affine_warp(
    x: torch.Tensor,
    theta: torch.Tensor,
    weights: torch.Tensor,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Weighted sum of K affine warps of every frame, all T frames in one pass.

    x: (B, C, H, W) image (read once, every frame samples it) or (B, T, C, H, W) video
       (frame t samples input frame t); float16, bfloat16, float32 or float64.
    theta: (K, T, 2, 3) shared by the batch or (B, K, T, 2, 3) per sample: sampling
       matrices in normalized coordinates, ``F.affine_grid`` convention,
       ``align_corners=False`` (output (u, v, 1) samples the input at theta @ (u, v, 1)).
    weights: (K,) or (B, K), any real numbers (softmax, masked softmax, one-hot).
    out_size: output (H', W'), default the input size.
    Returns (B, T, C, H', W') in x's dtype:
    ``out[b, t] = sum_k weights[b, k] * bilinear_zeros(x[b(, t)], theta[b, k, t])``.
    Differentiable in x, theta and weights.
    """
    check_tensor("x", x, (4, 5))
    check_tensor("theta", theta, (4, 5))
    check_tensor("weights", weights, (1, 2))
    check_same_device(x=x, theta=theta, weights=weights)
    if theta.dtype != weights.dtype:
        raise TypeError(
            f"theta and weights must share a dtype, got {theta.dtype} and {weights.dtype}"
        )
    if theta.shape[-2:] != (2, 3):
        raise ValueError(f"theta must end in (2, 3), got shape {tuple(theta.shape)}")
    B = x.shape[0]
    K, T = theta.shape[-4], theta.shape[-3]
    C, H, W = x.shape[-3:]
    if math.prod(x.shape) == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if K == 0 or T == 0:
        raise ValueError(
            f"theta needs K >= 1 ops and T >= 1 frames, got shape {tuple(theta.shape)}"
        )
    if x.dim() == 5 and x.shape[1] != T:
        raise ValueError(f"video x has {x.shape[1]} frames but theta has T={T}")
    if theta.dim() == 5 and theta.shape[0] != B:
        raise ValueError(f"theta has batch {theta.shape[0]} but x has batch {B}")
    if weights.shape[-1] != K:
        raise ValueError(f"weights has K={weights.shape[-1]} but theta has K={K}")
    if weights.dim() == 2 and weights.shape[0] != B:
        raise ValueError(f"weights has batch {weights.shape[0]} but x has batch {B}")
    if has_values(theta) and not bool(torch.isfinite(theta).all()):
        raise ValueError("theta contains NaN or infinite values")
    out_h, out_w = _out_size(out_size, H, W)

    dtype = compute_dtype(x)
    x5 = (x.unsqueeze(1) if x.dim() == 4 else x).contiguous()
    theta5 = theta.to(dtype).expand(B, K, T, 2, 3).contiguous()
    weights2 = weights.to(dtype).expand(B, K).contiguous()
    return _warp(x5, theta5, weights2, out_h, out_w)


def softmax_affine_warp(
    x: torch.Tensor,
    theta: torch.Tensor,
    tau: torch.Tensor,
    mask: torch.Tensor | None = None,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """`multi_affine_warp` with weights = softmax(tau) over K; masked-out ops get weight 0.

    tau: (K,) or (B, K) logits. mask: bool or 0/1, broadcastable to tau; no
    renormalisation after masking (what perturbation-based selection needs).
    """
    check_tensor("tau", tau, (1, 2))
    weights = torch.softmax(tau, dim=-1)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        try:
            fits = torch.broadcast_shapes(mask.shape, tau.shape) == tau.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to tau's {tuple(tau.shape)}"
            )
        weights = weights * mask.to(device=weights.device, dtype=weights.dtype)
    if isinstance(theta, torch.Tensor) and theta.is_floating_point():
        weights = weights.to(theta.dtype)
    return multi_affine_warp(x, theta, weights, out_size)
