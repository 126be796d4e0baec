"""``das_kernels::gsf_pool`` and ``das_kernels::gsf_fuse``: the fused part of Gate-Shift-Fuse.

GSF (Sudhakaran et al.) on a clip batch in the frame layout, with no permute copies:

    gate = tanh(gate conv(relu(bn(x[:, :G]))))   gsf_gate: (N, 2, H, W); GPU: grouped Conv2d,
                                                 CPU: batched GEMM + gsf_gate_taps;
                                                 opt-in: Triton (DAS_KERNELS_GSF_GATE)
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
``gsf_fuse_forward``, ``gsf_fuse_backward`` (and, optionally,
``gsf_pool_backward_accumulate``), with the arguments above; ``reference`` runs
``das_kernels.reference``.

``das_kernels::gsf_gate_taps(taps, bias, num_segments) -> gate`` is a CPU helper of
``gsf_gate``, outside the Triton/CUDA contract. Its native kernels:
``gsf_gate_taps_forward(taps, bias, num_segments) -> gate`` with taps (N, 54, H, W), channel
``27 g + 9 kt + 3 kh + kw`` = tap (kt, kh, kw) of group g of the 3x3x3 gate conv, and
``gate[n, g] = tanh(bias[g] + sum of the 27 taps shifted by (kt, kh, kw) - 1)`` (zero padded
in time and space); ``gsf_gate_taps_backward(grad_gate, gate, num_segments) ->
(grad_taps, grad_bias)`` needs only the output.

``das_kernels::gsf_gate_triton(a, weight, bias, num_segments) -> gate`` (and its
``gsf_gate_triton_backward(a, weight, gate, grad_gate, num_segments) -> (grad_a,
grad_weight, grad_bias)``) is ``gsf_gate``'s opt-in ``triton`` path
(``DAS_KERNELS_GSF_GATE=triton``, not yet timed on a GPU): ``das_kernels.triton.gsf_gate``'s
kernels with an identity affine and no ReLU; ``gsf_module`` runs them on x with the
BatchNorm affine and ReLU fused.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
import torch.nn.functional as F

from das_kernels import backends, reference
from das_kernels.ops._common import (
    backend_impls,
    check_int,
    check_same_device,
    check_tensor,
    compute_dtype,
    dispatch,
    register_op_name,
)

__all__ = ["gsf_fuse", "gsf_gate", "gsf_pool", "gsf_shift_fuse"]

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


# --- gsf_gate_taps: the tap sum of gsf_gate's CPU path ------------------------------------
# Not one of the fused ops and outside the Triton/CUDA contract (gsf_gate uses a grouped
# Conv2d on GPUs). Runs the C++ kernel when the native ops are loaded, unless the reference
# backend is forced; else the PyTorch reference. Saves only its output.

TAPS_FORWARD = backend_impls("gsf_gate_taps_forward", "gsf", reference.gsf_gate_taps)
TAPS_BACKWARD = backend_impls("gsf_gate_taps_backward", "gsf", reference.gsf_gate_taps_backward)


def _taps_backend(device: torch.device) -> str:
    if (
        device.type == "cpu"
        and backends.requested() != "reference"
        and backends.unavailable_reason("cpp", "cpu", "gsf_gate_taps") is None
    ):
        return "cpp"
    return "reference"


@torch.library.custom_op("das_kernels::gsf_gate_taps", mutates_args=())
def _taps(taps: Tensor, bias: Tensor, num_segments: int) -> Tensor:
    return TAPS_FORWARD[_taps_backend(taps.device)](taps, bias, num_segments)


@_taps.register_fake
def _(taps, bias, num_segments):
    return taps.new_empty(taps.shape[0], 2, *taps.shape[2:])


@torch.library.custom_op("das_kernels::gsf_gate_taps_backward", mutates_args=())
def _taps_backward(grad_gate: Tensor, gate: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    impl = TAPS_BACKWARD[_taps_backend(gate.device)]
    return impl(grad_gate.contiguous(), gate, num_segments)


@_taps_backward.register_fake
def _(grad_gate, gate, num_segments):
    return gate.new_empty(gate.shape[0], 54, *gate.shape[2:]), gate.new_empty(2)


def _taps_setup_context(ctx, inputs, output):
    ctx.num_segments = inputs[2]
    ctx.save_for_backward(output)


def _taps_autograd(ctx, grad_gate):
    (gate,) = ctx.saved_tensors
    grad_taps, grad_bias = _taps_backward(grad_gate, gate, ctx.num_segments)
    needs = ctx.needs_input_grad
    return grad_taps if needs[0] else None, grad_bias if needs[1] else None, None


_taps.register_autograd(_taps_autograd, setup_context=_taps_setup_context)


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


def gsf_gate(a: Tensor, weight: Tensor, bias: Tensor | None, num_segments: int) -> Tensor:
    """GSF's gate maps tanh(conv3D(a)) with the official grouped 3x3x3 Conv3d.

    a: (B*T, G, H, W) activations, relu(bn(x[:, :G])); weight: (2, G/2, 3, 3, 3) and bias:
    (2,) of the official ``conv3D`` (groups=2, padding 1, zero padded at clip boundaries).
    Returns (B*T, 2, H, W), in the frame layout. Paths (``gate_path``): on GPUs one grouped
    Conv2d gives the 3 temporal taps per group, summed over frames t-1, t, t+1 (no clip
    permute). On CPU, where oneDNN's backward of that conv is ~10x slower than a GEMM: one
    batched GEMM gives the 27 tap responses per group, ``das_kernels::gsf_gate_taps`` sums
    them. ``conv3d``: the official Conv3d on a transposed clip view. ``triton`` (opt-in, not
    yet timed on a GPU): one Triton kernel for the conv + tanh and one for its backward
    (``das_kernels.triton.gsf_gate``; on CPU only under ``TRITON_INTERPRET=1``).
    """
    check_tensor("a", a, (4,))
    check_tensor("weight", weight, (5,))
    check_same_device(a=a, weight=weight)
    N, G, H, W = a.shape
    T = check_int("num_segments", num_segments)
    if weight.shape != (2, G // 2, 3, 3, 3) or G % 2:
        raise ValueError(f"weight must be (2, G/2, 3, 3, 3) for G={G}, got {tuple(weight.shape)}")
    if N % T:
        raise ValueError(f"a has {N} frames (dim 0), not divisible by num_segments={T}")
    bias = weight.new_zeros(2) if bias is None else bias
    return GATE_PATHS[gate_path(a.device)][0](a, weight, bias, T)


def gate_path(device: torch.device) -> str:
    """The gate conv's implementation on `device`: ``gemm`` (batched GEMM + gsf_gate_taps;
    CPU default), ``conv`` (grouped Conv2d over the frames; GPU default), ``conv3d`` (the
    official grouped Conv3d on a transposed clip view) or ``triton`` (Triton kernels; in
    ``gsf_module`` they read x and fuse the BatchNorm affine and ReLU; opt-in until timed on
    a GPU); ``DAS_KERNELS_GSF_GATE`` overrides the default. ``triton`` where Triton cannot
    run raises ``BackendUnavailable`` with the reason."""
    forced = os.environ.get("DAS_KERNELS_GSF_GATE")
    if forced is not None:
        if forced not in GATE_PATHS:
            raise ValueError(
                f"DAS_KERNELS_GSF_GATE must be one of {', '.join(GATE_PATHS)}, got {forced!r}"
            )
        if forced == "triton":
            triton_gate_kernels(device)  # raises with the reason where Triton cannot run
        return forced
    return "gemm" if device.type == "cpu" else "conv"


def _gate_gemm(a: Tensor, weight: Tensor, bias: Tensor, T: int) -> Tensor:
    """One batched GEMM gives the 27 tap responses per group; gsf_gate_taps sums them."""
    N, G, H, W = a.shape
    # taps[n, g, 9 kt + 3 kh + kw] = sum_c weight[g, c, kt, kh, kw] a[n, g G/2 + c]
    kernel = weight.reshape(2, G // 2, 27).transpose(1, 2)
    taps = torch.matmul(kernel, a.reshape(N, 2, G // 2, H * W))
    return _taps(taps.view(N, 54, H, W), bias.to(taps.dtype).contiguous(), T)


def _gate_conv(a: Tensor, weight: Tensor, bias: Tensor, T: int) -> Tensor:
    """One grouped Conv2d gives 3 temporal taps per group, summed over t-1, t, t+1."""
    N, G, H, W = a.shape
    # output channel 3 g + k of the Conv2d is temporal tap k (frame t + k - 1) of group g
    weight2d = weight.permute(0, 2, 1, 3, 4).reshape(6, G // 2, 3, 3)
    taps = F.conv2d(a, weight2d, None, padding=1, groups=2).view(N // T, T, 2, 3, H, W)
    zero = taps.new_zeros(N // T, 1, 2, H, W)
    gate = (
        torch.cat([zero, taps[:, :-1, :, 0]], 1)  # tap 0 of frame t - 1
        + taps[:, :, :, 1]
        + torch.cat([taps[:, 1:, :, 2], zero], 1)  # tap 2 of frame t + 1
    )
    return torch.tanh(gate + bias.view(1, 1, 2, 1, 1)).reshape(N, 2, H, W)


def gate_backward(
    a: Tensor, weight: Tensor, gate: Tensor, grad_gate: Tensor, num_segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``gsf_gate(a, weight, bias)`` for (a, weight, bias) given its output
    ``gate`` and ``grad_gate``, by the same path (``gate_path``); a, weight
    and gate share one dtype. Used by ``gsf_module``'s backward, which recomputes ``a``."""
    return GATE_PATHS[gate_path(a.device)][1](a, weight, gate, grad_gate, num_segments)


def _gate_gemm_backward(
    a: Tensor, weight: Tensor, gate: Tensor, grad_gate: Tensor, T: int
) -> tuple[Tensor, Tensor, Tensor]:
    N, G, H, W = a.shape
    grad_taps, grad_bias = _taps_backward(grad_gate, gate, T)
    grad_taps = grad_taps.view(N, 2, 27, H * W)
    kernel = weight.reshape(2, G // 2, 27)  # (group, channel, tap)
    grad_a = torch.matmul(kernel, grad_taps).view(N, G, H, W)
    grad_kernel = torch.matmul(a.reshape(N, 2, G // 2, H * W), grad_taps.transpose(2, 3)).sum(0)
    return grad_a, grad_kernel.view(weight.shape), grad_bias


def _gate_conv_backward(
    a: Tensor, weight: Tensor, gate: Tensor, grad_gate: Tensor, T: int
) -> tuple[Tensor, Tensor, Tensor]:
    N, G, H, W = a.shape
    grad_pre = (grad_gate * (1 - gate * gate)).view(N // T, T, 2, H, W)  # through the tanh
    zero = grad_pre.new_zeros(N // T, 1, 2, H, W)
    # tap 0 of frame t feeds frame t + 1, tap 1 frame t, tap 2 frame t - 1
    grad_taps = torch.stack(
        [torch.cat([grad_pre[:, 1:], zero], 1), grad_pre, torch.cat([zero, grad_pre[:, :-1]], 1)],
        dim=3,
    )
    weight2d = weight.permute(0, 2, 1, 3, 4).reshape(6, G // 2, 3, 3)
    grad_a, grad_weight2d, _ = torch.ops.aten.convolution_backward(
        grad_taps.view(N, 6, H, W),
        a,
        weight2d,
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        2,
        [True, True, False],
    )
    grad_weight = grad_weight2d.view(2, 3, G // 2, 3, 3).permute(0, 2, 1, 3, 4)
    return grad_a, grad_weight, grad_pre.sum((0, 1, 3, 4))


def _clip_view(frames: Tensor, T: int) -> Tensor:
    """(B*T, C, H, W) frames as a (B, C, T, H, W) clip view (no copy)."""
    N, C, H, W = frames.shape
    return frames.view(N // T, T, C, H, W).transpose(1, 2)


def _gate_conv3d(a: Tensor, weight: Tensor, bias: Tensor, T: int) -> Tensor:
    """The official grouped Conv3d on the clip view of a."""
    pre = F.conv3d(_clip_view(a, T), weight, bias, padding=1, groups=2)
    return torch.tanh(pre).transpose(1, 2).reshape(a.shape[0], 2, *a.shape[2:])


def _gate_conv3d_backward(
    a: Tensor, weight: Tensor, gate: Tensor, grad_gate: Tensor, T: int
) -> tuple[Tensor, Tensor, Tensor]:
    grad_pre = _clip_view(grad_gate * (1 - gate * gate), T)  # through the tanh
    grad_clip, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_pre,
        _clip_view(a, T),
        weight,
        [2],
        [1, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
        False,
        [0, 0, 0],
        2,
        [True, True, True],
    )
    return grad_clip.transpose(1, 2).reshape(a.shape), grad_weight, grad_bias


# --- the triton gate path: das_kernels.triton.gsf_gate on activations a ------------------
# The kernels take x and a per-channel affine (+ ReLU); here the affine is the identity and
# the ReLU is off, so they run the plain gate conv of a. gsf_module calls them on x itself.


def triton_gate_kernels(device: torch.device):
    """The module ``das_kernels.triton.gsf_gate``; ``BackendUnavailable`` naming the reason
    when Triton cannot run on `device` (on CPU it needs ``TRITON_INTERPRET=1``)."""
    reason = backends.unavailable_reason("triton", torch.device(device).type)
    if reason is not None:
        raise backends.BackendUnavailable(
            f"DAS_KERNELS_GSF_GATE=triton cannot run on {torch.device(device).type}: {reason}"
        )
    return importlib.import_module("das_kernels.triton.gsf_gate")


def _identity_affine(a: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, shift) = (1, 0) per channel of a, in its compute dtype."""
    ones = a.new_ones(a.shape[1], dtype=compute_dtype(a))
    return ones, torch.zeros_like(ones)


@torch.library.custom_op("das_kernels::gsf_gate_triton", mutates_args=())
def _gate_triton(a: Tensor, weight: Tensor, bias: Tensor, num_segments: int) -> Tensor:
    kernels = triton_gate_kernels(a.device)
    scale, shift = _identity_affine(a)
    return kernels.gsf_gate_forward(a, scale, shift, weight, bias, num_segments, a.shape[1], False)


@_gate_triton.register_fake
def _(a, weight, bias, num_segments):
    return a.new_empty(a.shape[0], 2, *a.shape[2:])


@torch.library.custom_op("das_kernels::gsf_gate_triton_backward", mutates_args=())
def _gate_triton_backward(
    a: Tensor, weight: Tensor, gate: Tensor, grad_gate: Tensor, num_segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    kernels = triton_gate_kernels(a.device)
    scale, shift = _identity_affine(a)
    grad_a = a.new_zeros(a.shape)  # contiguous; the kernel adds grad_a into it
    grad_weight, grad_bias, _, _ = kernels.gsf_gate_backward(
        a, scale, shift, weight, gate, grad_gate, num_segments, a.shape[1], False, grad_a
    )
    return grad_a, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


@_gate_triton_backward.register_fake
def _(a, weight, gate, grad_gate, num_segments):
    return torch.empty_like(a), torch.empty_like(weight), weight.new_empty(2)


def _gate_triton_setup_context(ctx, inputs, output):
    a, weight, _, ctx.num_segments = inputs
    ctx.save_for_backward(a, weight, output)


def _gate_triton_autograd(ctx, grad_gate):
    a, weight, gate = ctx.saved_tensors
    grads = _gate_triton_backward(a, weight, gate, grad_gate, ctx.num_segments)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None)


_gate_triton.register_autograd(_gate_triton_autograd, setup_context=_gate_triton_setup_context)

# name -> (forward, backward) of the gate conv (see gate_path)
GATE_PATHS = {
    "gemm": (_gate_gemm, _gate_gemm_backward),
    "conv": (_gate_conv, _gate_conv_backward),
    "conv3d": (_gate_conv3d, _gate_conv3d_backward),
    "triton": (_gate_triton, _gate_triton_backward),
}


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
    kernel = _accumulate_kernel(backend)
    if kernel is not None:
        return kernel(grad_x, *args)
    grad_x_pool, grad_gate = POOL_BACKWARD[backend](*args)
    grad_x.add_(grad_x_pool)
    return grad_gate


@_pool_backward_accumulate.register_fake
def _(grad_x, grad_pooled, x, gate, num_segments, n_gsf):
    return torch.empty_like(gate)


@functools.cache
def _accumulate_kernel(backend: str):
    name = "gsf_pool_backward_accumulate"
    if backend in ("cpp", "cuda"):
        key = "CPU" if backend == "cpp" else "CUDA"
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"das_native::{name}", key):
            return getattr(torch.ops.das_native, name)
    elif backend == "triton":
        from das_kernels.triton import gsf as triton_gsf

        return getattr(triton_gsf, name, None)
    return None


_shift_fuse.register_autograd(_shift_fuse_autograd, setup_context=_shift_fuse_setup_context)
