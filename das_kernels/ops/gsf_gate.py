"""``das_kernels.ops.gsf_gate``: GSF's gate conv, ``tanh(conv3D(a))`` in the frame layout.

``gsf_gate(a, weight, bias, num_segments)`` with ``a = relu(bn(x[:, :G]))`` (N, G, H, W),
the official grouped 3x3x3 ``conv3D`` (weight (2, G/2, 3, 3, 3), bias (2,), zero padded at
clip boundaries) -> gate (N, 2, H, W), and ``gate_backward`` (for ``gsf_module``'s
backward, which recomputes ``a``). Four paths, chosen by ``backends.gsf_gate_path``
(``DAS_KERNELS_GSF_GATE`` overrides the per-device default): ``gemm``, ``conv``,
``conv3d`` (PyTorch) and ``triton`` (``das_kernels.triton.gsf_gate``).

``das_kernels::gsf_gate_taps(taps, bias, num_segments) -> gate`` is the ``gemm`` path's tap
sum, a helper outside the Triton/CUDA contract (backend: ``backends.resolve_helper``). Its
native kernels: ``gsf_gate_taps_forward(taps, bias, num_segments) -> gate`` with taps (N,
54, H, W), channel ``27 g + 9 kt + 3 kh + kw`` = tap (kt, kh, kw) of group g of the 3x3x3
gate conv, and ``gate[n, g] = tanh(bias[g] + sum of the 27 taps shifted by (kt, kh, kw) -
1)`` (zero padded in time and space); ``gsf_gate_taps_backward(grad_gate, gate,
num_segments) -> (grad_taps, grad_bias)`` needs only the output.

``das_kernels::gsf_gate_triton(a, weight, bias, num_segments) -> gate`` (and its
``gsf_gate_triton_backward(a, weight, gate, grad_gate, num_segments) -> (grad_a,
grad_weight, grad_bias)``) is the opt-in ``triton`` path (not yet timed on a GPU):
``das_kernels.triton.gsf_gate``'s kernels with an identity affine and no ReLU;
``gsf_module`` runs them on x with the BatchNorm affine and ReLU fused.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from das_kernels import backends, reference
from das_kernels.ops._common import (
    backend_impls,
    check_int,
    check_same_device,
    check_tensor,
    compute_dtype,
)

__all__ = ["gate_backward", "gsf_gate", "triton_gate_kernels"]

Tensor = torch.Tensor


# --- gsf_gate_taps: the tap sum of the gemm path ------------------------------------------

TAPS_FORWARD = backend_impls("gsf_gate_taps_forward", "gsf", reference.gsf_gate_taps)
TAPS_BACKWARD = backend_impls("gsf_gate_taps_backward", "gsf", reference.gsf_gate_taps_backward)


@torch.library.custom_op("das_kernels::gsf_gate_taps", mutates_args=())
def _taps(taps: Tensor, bias: Tensor, num_segments: int) -> Tensor:
    impl = TAPS_FORWARD[backends.resolve_helper(taps.device, "gsf_gate_taps")]
    return impl(taps, bias, num_segments)


@_taps.register_fake
def _(taps, bias, num_segments):
    return taps.new_empty(taps.shape[0], 2, *taps.shape[2:])


@torch.library.custom_op("das_kernels::gsf_gate_taps_backward", mutates_args=())
def _taps_backward(grad_gate: Tensor, gate: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    impl = TAPS_BACKWARD[backends.resolve_helper(gate.device, "gsf_gate_taps")]
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


# --- the gate conv -------------------------------------------------------------------


def gsf_gate(a: Tensor, weight: Tensor, bias: Tensor | None, num_segments: int) -> Tensor:
    """GSF's gate maps tanh(conv3D(a)) with the official grouped 3x3x3 Conv3d.

    a: (B*T, G, H, W) activations, relu(bn(x[:, :G])); weight: (2, G/2, 3, 3, 3) and bias:
    (2,) of the official ``conv3D`` (groups=2, padding 1, zero padded at clip boundaries).
    Returns (B*T, 2, H, W), in the frame layout. Paths (``backends.gsf_gate_path``): on
    GPUs one grouped Conv2d gives the 3 temporal taps per group, summed over frames t-1, t,
    t+1 (no clip permute). On CPU, where oneDNN's backward of that conv is ~10x slower than
    a GEMM: one batched GEMM gives the 27 tap responses per group,
    ``das_kernels::gsf_gate_taps`` sums them. ``conv3d``: the official Conv3d on a
    transposed clip view. ``triton`` (opt-in, not yet timed on a GPU): one Triton kernel for
    the conv + tanh and one for its backward (``das_kernels.triton.gsf_gate``; on CPU only
    under ``TRITON_INTERPRET=1``).
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
    return GATE_PATHS[backends.gsf_gate_path(a.device)][0](a, weight, bias, T)


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
    ``gate`` and ``grad_gate``, by the same path (``backends.gsf_gate_path``); a, weight
    and gate share one dtype. Used by ``gsf_module``'s backward, which recomputes ``a``."""
    return GATE_PATHS[backends.gsf_gate_path(a.device)][1](a, weight, gate, grad_gate, num_segments)


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


# --- the triton path: das_kernels.triton.gsf_gate on activations a -----------------------
# The kernels take x and a per-channel affine (+ ReLU); here the affine is the identity and
# the ReLU is off, so they run the plain gate conv of a. gsf_module calls them on x itself.


def triton_gate_kernels(device: torch.device) -> ModuleType:
    """The module ``das_kernels.triton.gsf_gate``; ``BackendUnavailable`` naming the reason
    when Triton cannot run on `device` (on CPU it needs ``TRITON_INTERPRET=1``)."""
    return backends.triton_kernels("gsf_gate", device, f"{backends.GSF_GATE_ENV}=triton")


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

# name -> (forward, backward) of the gate conv (chosen by backends.gsf_gate_path)
GATE_PATHS = {
    "gemm": (_gate_gemm, _gate_gemm_backward),
    "conv": (_gate_conv, _gate_conv_backward),
    "conv3d": (_gate_conv3d, _gate_conv3d_backward),
    "triton": (_gate_triton, _gate_triton_backward),
}
