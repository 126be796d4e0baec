"""``das_kernels::gsf_pool`` and ``das_kernels::gsf_fuse``: the fused part of Gate-Shift-Fuse.

GSF (Sudhakaran et al.) on a clip batch in the frame layout, with no permute copies:

    gate = tanh(gate conv(relu(bn(x[:, :G]))))   gsf_gate (ops/gsf_gate.py): (N, 2, H, W)
    pooled = gsf_pool(x, gate)                   one read of x
    w = sigmoid(grouped 3x3 conv(pooled))        tiny
    out = gsf_fuse(x, gate, w)                   one read of x, one write

Contract of the registered ops (all checks and canonicalisation are in the public wrappers):

* ``x``: (N, C, H, W), N = B * T frames, frame ``n = b * T + t`` (``T = num_segments``).
  ``G = n_gsf`` gated channels, a multiple of 4, ``G <= C``; half ``h`` in {0, 1} holds
  channels ``h * G/2 + i``, ``i < G/2``. Channels ``G ... C-1`` pass through.
* ``gate``: (N, 2, H, W), gate map of each half (the tanh output).
* ``s(t)``: the frame half ``h`` takes its gated part from: ``t + 1`` for h = 0, ``t - 1``
  for h = 1; out-of-clip frames are zero (the official zero-padded shifts).
* ``gsf_pool(x, gate, num_segments, n_gsf) -> pooled`` (B, 4, G/2, T)::

      pooled[b, 2h,     i, t] = mean_hw gate[b T + s(t), h] * x[b T + s(t), h G/2 + i]
      pooled[b, 2h + 1, i, t] = mean_hw (1 - gate[b T + t, h]) * x[b T + t, h G/2 + i]

  i.e. for each half the (y, r) 2-channel "image" over (channel, frame) that the official
  module feeds its fusion conv ``channel_conv{h+1}``.
* ``gsf_fuse(x, gate, w, num_segments, n_gsf) -> out`` (N, C, H, W), with ``w`` (B, 2, G/2, T)
  the fusion weights (sigmoid output) indexed like ``pooled``::

      z[b, t, h, i] = w * gate[s(t), h] x[s(t), c] + (1 - w) * (1 - gate[t, h]) x[t, c]
      out[b T + t, h G/2 + 2 j + a] = z[b, t, h, a G/4 + j]     (within-half interleave)
      out[:, G:] = x[:, G:]

* Backward ops (their own custom ops; they recompute y = gate x and r = x - y from the
  saved inputs, nothing else is stored)::

      gsf_pool_backward(grad_pooled, x, gate, num_segments, n_gsf) -> (grad_x, grad_gate)
      gsf_fuse_backward(grad_out, x, gate, w, num_segments, n_gsf) -> (grad_x, grad_gate, grad_w)

  ``gsf_pool_backward``'s grad_x is zero in the pass-through channels. Optional, used by
  ``gsf_shift_fuse``'s backward when a backend has it (else gsf_pool_backward + add)::

      gsf_pool_backward_accumulate(grad_x!, grad_pooled, x, gate, num_segments, n_gsf)
          -> grad_gate       (adds gsf_pool_backward's grad_x into grad_x, gated channels)

* ``gsf_shift_fuse(x, gate, fuse_weight, fuse_bias, num_segments, n_gsf) -> (out, pooled)``
  (the module's path): gsf_pool, the fusion convs (fuse_weight (2, 2, 3, 3) = the official
  channel_conv1/2 weights stacked, one grouped conv) + sigmoid, gsf_fuse, as one autograd
  node built on the kernels above; its backward yields a single x-sized gradient.
* Registered-op inputs are contiguous and share x's dtype (float16, bfloat16, float32,
  float64); outputs are in x's dtype; kernels compute in float32 (float64 for float64).

Backends: ``triton`` calls ``das_kernels.triton.gsf.<name>`` and ``cuda``/``cpp`` call
``torch.ops.das_native.<name>`` for ``<name>`` in ``gsf_pool_forward``, ``gsf_pool_backward``,
``gsf_fuse_forward``, ``gsf_fuse_backward`` (and, where ``backends.optional_kernel`` finds
it, ``gsf_pool_backward_accumulate``), with the arguments above; ``reference`` runs
``das_kernels.reference``.

The gate conv and its helper ops are in ``das_kernels.ops.gsf_gate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from das_kernels import backends, reference
from das_kernels.ops._common import (
    backend_impls,
    check_int,
    check_same_device,
    check_tensor,
    dispatch,
    register_op_name,
)

__all__ = ["check_frames", "gsf_fuse", "gsf_pool", "gsf_shift_fuse"]

for _op in ("gsf_pool", "gsf_fuse"):
    register_op_name(_op, triton_module="gsf")

POOL_FORWARD = backend_impls("gsf_pool_forward", "gsf", reference.gsf_pool)
POOL_BACKWARD = backend_impls("gsf_pool_backward", "gsf", reference.gsf_pool_backward)
FUSE_FORWARD = backend_impls("gsf_fuse_forward", "gsf", reference.gsf_fuse)
FUSE_BACKWARD = backend_impls("gsf_fuse_backward", "gsf", reference.gsf_fuse_backward)

Tensor = torch.Tensor


# --- gsf_pool ----------------------------------------------------------------------------


@torch.library.custom_op("das_kernels::gsf_pool", mutates_args=())
def _pool(x: Tensor, gate: Tensor, num_segments: int, n_gsf: int) -> Tensor:
    return dispatch("gsf_pool", x.device, POOL_FORWARD)(x, gate, num_segments, n_gsf)


@_pool.register_fake
def _(x, gate, num_segments, n_gsf):
    return x.new_empty(x.shape[0] // num_segments, 4, n_gsf // 2, num_segments)


@torch.library.custom_op("das_kernels::gsf_pool_backward", mutates_args=())
def _pool_backward(
    grad_pooled: Tensor, x: Tensor, gate: Tensor, num_segments: int, n_gsf: int
) -> tuple[Tensor, Tensor]:
    impl = dispatch("gsf_pool", x.device, POOL_BACKWARD)
    return impl(grad_pooled.contiguous(), x, gate, num_segments, n_gsf)


@_pool_backward.register_fake
def _(grad_pooled, x, gate, num_segments, n_gsf):
    return torch.empty_like(x), torch.empty_like(gate)


def _pool_setup_context(ctx, inputs, output):
    x, gate, ctx.num_segments, ctx.n_gsf = inputs
    ctx.save_for_backward(x, gate)


def _pool_autograd(ctx, grad_pooled):
    x, gate = ctx.saved_tensors
    grad_x, grad_gate = _pool_backward(grad_pooled, x, gate, ctx.num_segments, ctx.n_gsf)
    needs = ctx.needs_input_grad
    return grad_x if needs[0] else None, grad_gate if needs[1] else None, None, None


_pool.register_autograd(_pool_autograd, setup_context=_pool_setup_context)


# --- gsf_fuse ----------------------------------------------------------------------------


@torch.library.custom_op("das_kernels::gsf_fuse", mutates_args=())
def _fuse(x: Tensor, gate: Tensor, w: Tensor, num_segments: int, n_gsf: int) -> Tensor:
    return dispatch("gsf_fuse", x.device, FUSE_FORWARD)(x, gate, w, num_segments, n_gsf)


@_fuse.register_fake
def _(x, gate, w, num_segments, n_gsf):
    return torch.empty_like(x)


@torch.library.custom_op("das_kernels::gsf_fuse_backward", mutates_args=())
def _fuse_backward(
    grad_out: Tensor, x: Tensor, gate: Tensor, w: Tensor, num_segments: int, n_gsf: int
) -> tuple[Tensor, Tensor, Tensor]:
    impl = dispatch("gsf_fuse", x.device, FUSE_BACKWARD)
    return impl(grad_out.contiguous(), x, gate, w, num_segments, n_gsf)


@_fuse_backward.register_fake
def _(grad_out, x, gate, w, num_segments, n_gsf):
    return torch.empty_like(x), torch.empty_like(gate), torch.empty_like(w)


def _fuse_setup_context(ctx, inputs, output):
    x, gate, w, ctx.num_segments, ctx.n_gsf = inputs
    ctx.save_for_backward(x, gate, w)


def _fuse_autograd(ctx, grad_out):
    x, gate, w = ctx.saved_tensors
    grads = _fuse_backward(grad_out, x, gate, w, ctx.num_segments, ctx.n_gsf)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


_fuse.register_autograd(_fuse_autograd, setup_context=_fuse_setup_context)


# --- public wrappers ---------------------------------------------------------------------


def _check(
    x: Tensor, gate: Tensor, num_segments: int, n_gsf: int | None
) -> tuple[Tensor, Tensor, int, int]:
    """Validated, canonical (x, gate, num_segments, n_gsf): contiguous, gate in x's dtype."""
    check_tensor("x", x, (4,))
    check_tensor("gate", gate, (4,))
    check_same_device(x=x, gate=gate)
    N, C, H, W = x.shape
    T = check_int("num_segments", num_segments)
    G = C if n_gsf is None else check_int("n_gsf", n_gsf)
    x = check_frames(x, T, G)
    if gate.shape != (N, 2, H, W):
        raise ValueError(
            f"gate must have shape {(N, 2, H, W)} (N, 2, H, W), got {tuple(gate.shape)}"
        )
    return x, gate.to(x.dtype).contiguous(), T, G


def check_frames(x: Tensor, num_segments: int, n_gsf: int) -> Tensor:
    """x checked as non-empty (B*T, C, H, W) frames with n_gsf gated channels; contiguous."""
    N, C = x.shape[:2]
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if n_gsf % 4 or n_gsf > C:
        raise ValueError(
            f"n_gsf (gated channels) must be a multiple of 4 and at most x's channels: "
            f"x has {C} channels, n_gsf={n_gsf}"
        )
    if N % num_segments:
        raise ValueError(f"x has {N} frames (dim 0), not divisible by num_segments={num_segments}")
    return x.contiguous()


def gsf_pool(x: Tensor, gate: Tensor, num_segments: int, n_gsf: int | None = None) -> Tensor:
    """Spatial means of GSF's shifted gated part and of its residual, in one read of x.

    x: (B*T, C, H, W) float; gate: (B*T, 2, H, W) gate maps of the two channel halves;
    n_gsf: gated channels G (multiple of 4, default C). Returns (B, 4, G/2, T) in x's dtype:
    channels (2h, 2h + 1) are the (shifted y, r) means of half h (see the module docstring).
    """
    x, gate, T, G = _check(x, gate, num_segments, n_gsf)
    return _pool(x, gate, T, G)


def gsf_fuse(
    x: Tensor, gate: Tensor, w: Tensor, num_segments: int, n_gsf: int | None = None
) -> Tensor:
    """GSF's gate, shift, blend, within-half interleave and pass-through, in one pass.

    x: (B*T, C, H, W); gate: (B*T, 2, H, W); w: (B, 2, G/2, T) fusion weights (sigmoid
    output, laid out like `gsf_pool`'s result). Returns (B*T, C, H, W) in x's dtype.
    """
    x, gate, T, G = _check(x, gate, num_segments, n_gsf)
    check_tensor("w", w, (4,))
    check_same_device(x=x, w=w)
    want = (x.shape[0] // T, 2, G // 2, T)
    if w.shape != want:
        raise ValueError(f"w must have shape {want} (B, 2, G/2, T), got {tuple(w.shape)}")
    return _fuse(x, gate, w.to(x.dtype).contiguous(), T, G)


def gsf_shift_fuse(
    x: Tensor,
    gate: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor | None,
    num_segments: int,
    n_gsf: int | None = None,
) -> Tensor:
    """Everything of GSF after the gate conv: pool, fusion convs + sigmoid, fuse.

    x: (B*T, C, H, W); gate: (B*T, 2, H, W); fuse_weight: (2, 2, 3, 3) and fuse_bias: (2,),
    the official ``channel_conv1`` and ``channel_conv2`` stacked (one grouped conv).
    Returns (B*T, C, H, W). Equals gsf_pool -> conv -> sigmoid -> gsf_fuse, as one autograd
    node whose backward adds the two ops' input gradients in place (one x-sized buffer less).
    """
    x, gate, T, G = _check(x, gate, num_segments, n_gsf)
    check_tensor("fuse_weight", fuse_weight, (4,))
    if fuse_weight.shape != (2, 2, 3, 3):
        raise ValueError(f"fuse_weight must be (2, 2, 3, 3), got {tuple(fuse_weight.shape)}")
    if fuse_bias is None:
        fuse_bias = fuse_weight.new_zeros(2)
    check_tensor("fuse_bias", fuse_bias, (1,))
    if fuse_bias.shape != (2,):
        raise ValueError(f"fuse_bias must be (2,), got {tuple(fuse_bias.shape)}")
    check_same_device(x=x, fuse_weight=fuse_weight, fuse_bias=fuse_bias)
    out, _ = _shift_fuse(x, gate, fuse_weight, fuse_bias.to(fuse_weight.dtype), T, G)
    return out


def _fusion_weights(pooled: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(B, 2, G/2, T) sigmoid(grouped 3x3 conv): the official channel_conv1/2 per half."""
    return torch.sigmoid(F.conv2d(pooled.to(weight.dtype), weight, bias, padding=1, groups=2))


def shift_fuse_forward(
    x: Tensor, gate: Tensor, weight: Tensor, bias: Tensor, num_segments: int, n_gsf: int
) -> tuple[Tensor, Tensor]:
    """``das_kernels::gsf_shift_fuse`` without the op's dispatch (for other ops' bodies)."""
    pooled = dispatch("gsf_pool", x.device, POOL_FORWARD)(x, gate, num_segments, n_gsf)
    w = _fusion_weights(pooled, weight, bias).to(x.dtype).contiguous()
    out = dispatch("gsf_fuse", x.device, FUSE_FORWARD)(x, gate, w, num_segments, n_gsf)
    return out, pooled


@torch.library.custom_op("das_kernels::gsf_shift_fuse", mutates_args=())
def _shift_fuse(
    x: Tensor, gate: Tensor, weight: Tensor, bias: Tensor, num_segments: int, n_gsf: int
) -> tuple[Tensor, Tensor]:
    """-> (out, pooled); pooled is returned for the backward only (not differentiable)."""
    return shift_fuse_forward(x, gate, weight, bias, num_segments, n_gsf)


@_shift_fuse.register_fake
def _(x, gate, weight, bias, num_segments, n_gsf):
    return torch.empty_like(x), x.new_empty(x.shape[0] // num_segments, 4, n_gsf // 2, num_segments)


def _shift_fuse_setup_context(ctx, inputs, output):
    x, gate, weight, bias, ctx.num_segments, ctx.n_gsf = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, gate, weight, bias, output[1])


def _shift_fuse_autograd(ctx, grad_out, _):
    x, gate, weight, bias, pooled = ctx.saved_tensors
    grad_x, grad_gate, grad_weight, grad_bias = shift_fuse_backward(
        grad_out, x, gate, weight, bias, pooled, ctx.num_segments, ctx.n_gsf
    )
    return grad_x, grad_gate, grad_weight, grad_bias, None, None


def shift_fuse_backward(
    grad_out: Tensor,
    x: Tensor,
    gate: Tensor,
    weight: Tensor,
    bias: Tensor,
    pooled: Tensor,
    num_segments: int,
    n_gsf: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``gsf_shift_fuse`` for (x, gate, fuse_weight, fuse_bias) from its saved
    inputs and ``pooled``; one x-sized buffer (grad_x)."""
    T, G = num_segments, n_gsf
    w = _fusion_weights(pooled, weight, bias)
    grad_x, grad_gate, grad_w = _fuse_backward(grad_out, x, gate, w.to(x.dtype), T, G)
    grad_pre = grad_w.to(w.dtype) * w * (1 - w)  # through the sigmoid
    grad_pooled, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_pre,
        pooled.to(weight.dtype),
        weight,
        [2],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        2,
        [True, True, True],
    )
    # adds the pool's input gradient into grad_x in place: no second x-sized gradient
    # (registered ops, not their bodies: this backward is traced by torch.compile/opcheck)
    grad_gate_pool = _pool_backward_accumulate(grad_x, grad_pooled.to(x.dtype), x, gate, T, G)
    return grad_x, grad_gate + grad_gate_pool, grad_weight, grad_bias


@torch.library.custom_op("das_kernels::gsf_pool_backward_accumulate", mutates_args=("grad_x",))
def _pool_backward_accumulate(
    grad_x: Tensor, grad_pooled: Tensor, x: Tensor, gate: Tensor, num_segments: int, n_gsf: int
) -> Tensor:
    """grad_x += gsf_pool_backward's grad_x (gated channels); returns its grad_gate. Runs the
    backend's ``gsf_pool_backward_accumulate`` kernel where it has one, else
    ``gsf_pool_backward`` and an add."""
    backend = backends.resolve(x.device, "gsf_pool")
    args = (grad_pooled.contiguous(), x, gate, num_segments, n_gsf)
    kernel = backends.optional_kernel("gsf_pool_backward_accumulate", backend)
    if kernel is not None:
        return kernel(grad_x, *args)
    grad_x_pool, grad_gate = POOL_BACKWARD[backend](*args)
    grad_x.add_(grad_x_pool)
    return grad_gate


@_pool_backward_accumulate.register_fake
def _(grad_x, grad_pooled, x, gate, num_segments, n_gsf):
    return torch.empty_like(gate)


_shift_fuse.register_autograd(_shift_fuse_autograd, setup_context=_shift_fuse_setup_context)
