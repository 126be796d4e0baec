"""``das_kernels::gsf_module``: the whole GSF module (BatchNorm, ReLU, gate conv, shift-fuse)
as one autograd node, for ``das_kernels.nn.GSF``.

Peak memory is the point. The official module keeps the normalised activations, the gate
conv's input and every intermediate of the shift and fusion for its backward. This node
saves only x (the caller holds it anyway), the (N, 2, H, W) gate maps, the pooled features
and the per-channel statistics. Its forward and backward recompute ``a = relu(bn(x[:, :G]))``
a few clips at a time (up to ``MAX_CHUNKS`` pieces of at least ``CHUNK_BYTES``: 4 MiB on
CPU, 128 MiB on GPUs, where launches would dominate small pieces), so no activation-sized
tensor outlives a chunk. The backward writes every input gradient into the one x-sized
``grad_x`` that ``gsf_shift_fuse``'s backward makes. BatchNorm's backward is linear in the
ReLU gradient ``dy``::

    grad_x[:, :G] += k1 * dy + k2 * x + k3      (per channel; k2 = k3 = 0 with fixed statistics)

so ``k1 * dy`` is added chunk by chunk while the per-channel sums that ``k2`` and ``k3`` need
are accumulated, then one in-place pass adds ``k2 * x + k3``.

With ``DAS_KERNELS_GSF_GATE=triton`` (opt-in, not yet timed on a GPU) there are no chunks
and no activations at all: one Triton kernel reads x and fuses the BatchNorm affine, ReLU,
gate conv, bias and tanh; one backward kernel recomputes them, adds ``k1 * dy`` into
``grad_x`` in place and returns the per-channel sums (``das_kernels.triton.gsf_gate``).

Contract of the registered op (the checks are in the public ``gsf_module``)::

    gsf_module(x, gate_weight, gate_bias, fuse_weight, fuse_bias, bn_weight, bn_bias,
               mean, invstd, batch_stats, num_segments) -> (out, gate, pooled)

``x`` (N, C, H, W) contiguous; ``gate_weight`` (2, G/2, 3, 3, 3) and ``gate_bias`` (2,) the
official ``conv3D``; ``fuse_weight`` (2, 2, 3, 3) and ``fuse_bias`` (2,) ``channel_conv1/2``
stacked; ``bn_weight``, ``bn_bias``, ``mean``, ``invstd`` (G,), the last two in float32
(float64 for float64 x). ``batch_stats``: mean and invstd are x[:, :G]'s own batch
statistics, so the backward includes their dependence on x (BatchNorm in training);
otherwise they are constants (running statistics). ``gate`` and ``pooled`` are returned for
the backward and are not differentiable.
"""

from __future__ import annotations

import torch

from das_kernels.backends import gsf_gate_path
from das_kernels.ops._common import check_int, check_same_device, check_tensor, compute_dtype
from das_kernels.ops.gsf import check_frames, shift_fuse_backward, shift_fuse_forward
from das_kernels.ops.gsf_gate import gate_backward, gsf_gate, triton_gate_kernels

__all__ = ["gsf_module"]

Tensor = torch.Tensor
MAX_CHUNKS = 8  # activations are recomputed in at most this many pieces of whole clips
# ... each of at least this many bytes of temporaries: pieces must amortise their launches
# (GPU) and Python overhead (CPU); (128, 64, 32, 32) fp32 makes 8 pieces on CPU.
CHUNK_BYTES = {"cpu": 4 << 20, "cuda": 128 << 20}


def _clip_slices(x: Tensor, T: int, G: int) -> list[slice]:
    """Pieces of whole clips of x's frames for the recomputation of the activations."""
    clips = x.shape[0] // T
    # per frame: the activations (G channels) and the gate's 54 tap maps (GEMM path)
    nbytes = x.shape[0] * (G + 54) * x.shape[2] * x.shape[3] * x.element_size()
    chunks = max(1, min(MAX_CHUNKS, clips, nbytes // CHUNK_BYTES.get(x.device.type, 4 << 20)))
    per = -(-clips // chunks)
    return [slice(c * T, min(clips, c + per) * T) for c in range(0, clips, per)]


def _bn_affine(weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, shift) with bn(x) = x * scale + shift per channel, in invstd's dtype."""
    scale = weight.to(invstd.dtype) * invstd
    return scale, bias.to(invstd.dtype) - mean * scale


def _bn_relu(xg: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """relu(xg * scale + shift) per channel, in xg's dtype (computed in scale's)."""
    a = torch.addcmul(shift.view(1, -1, 1, 1), xg, scale.view(1, -1, 1, 1)).relu_()
    return a.to(xg.dtype)


@torch.library.custom_op("das_kernels::gsf_module", mutates_args=())
def _gsf_module(
    x: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    mean: Tensor,
    invstd: Tensor,
    batch_stats: bool,
    num_segments: int,
) -> tuple[Tensor, Tensor, Tensor]:
    T, G = num_segments, 2 * gate_weight.shape[1]
    scale, shift = _bn_affine(bn_weight, bn_bias, mean, invstd)
    gate = _gate(x, gate_weight, gate_bias, scale, shift, T)
    out, pooled = shift_fuse_forward(x, gate, fuse_weight, fuse_bias, T, G)
    return out, gate, pooled


def _gate(
    x: Tensor, gate_weight: Tensor, gate_bias: Tensor, scale: Tensor, shift: Tensor, T: int
) -> Tensor:
    """tanh(conv3D(relu(x[:, :G] * scale + shift))): one Triton kernel on x (``triton`` gate
    path), else gsf_gate on activations recomputed a few clips at a time."""
    G = 2 * gate_weight.shape[1]
    if gsf_gate_path(x.device) == "triton":
        kernels = triton_gate_kernels(x.device)
        return kernels.gsf_gate_forward(x, scale, shift, gate_weight, gate_bias, T, G, True)
    weight, bias = gate_weight.to(x.dtype), gate_bias.to(x.dtype)
    gate = x.new_empty(x.shape[0], 2, *x.shape[2:])
    for s in _clip_slices(x, T, G):
        gate[s] = gsf_gate(_bn_relu(x[s, :G], scale, shift), weight, bias, T)
    return gate


@_gsf_module.register_fake
def _(x, gate_weight, gate_bias, fuse_weight, fuse_bias, bn_weight, bn_bias, mean, invstd, *rest):
    T, G = rest[1], 2 * gate_weight.shape[1]
    N, _, H, W = x.shape
    return torch.empty_like(x), x.new_empty(N, 2, H, W), x.new_empty(N // T, 4, G // 2, T)


def _setup_context(ctx, inputs, output):
    *tensors, ctx.batch_stats, ctx.num_segments = inputs
    _, gate, pooled = output
    ctx.mark_non_differentiable(gate, pooled)
    ctx.save_for_backward(*tensors, gate, pooled)


def _backward(ctx, grad_out, _gate, _pooled):
    x, gate_w, gate_b, fuse_w, fuse_b, bn_w, bn_b, mean, invstd, gate, pooled = ctx.saved_tensors
    T, G = ctx.num_segments, 2 * gate_w.shape[1]
    grad_x, grad_gate, grad_fuse_w, grad_fuse_b = shift_fuse_backward(
        grad_out, x, gate, fuse_w, fuse_b, pooled, T, G
    )
    scale, shift = _bn_affine(bn_w, bn_b, mean, invstd)
    grad_gate_w, grad_gate_b, sum_dy, sum_dy_x = _gate_grads(
        x, gate_w, scale, shift, gate, grad_gate, grad_x, T
    )
    sum_dy_xhat = (sum_dy_x - mean * sum_dy) * invstd
    if ctx.batch_stats:  # the statistics' dependence on x
        count = x.shape[0] * x.shape[2] * x.shape[3]
        k2 = -scale * invstd * sum_dy_xhat / count
        k3 = -scale * sum_dy / count - k2 * mean
        for s in _clip_slices(x, T, G):
            grad_x[s, :G].addcmul_(x[s, :G], k2.view(1, -1, 1, 1)).add_(k3.view(1, -1, 1, 1))
    return (
        grad_x,
        grad_gate_w.to(gate_w.dtype),
        grad_gate_b.to(gate_b.dtype),
        grad_fuse_w,
        grad_fuse_b,
        sum_dy_xhat.to(bn_w.dtype),
        sum_dy.to(bn_b.dtype),
        None,
        None,
        None,
        None,
    )


def _gate_grads(
    x: Tensor,
    gate_w: Tensor,
    scale: Tensor,
    shift: Tensor,
    gate: Tensor,
    grad_gate: Tensor,
    grad_x: Tensor,
    T: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_gate_w, grad_gate_b, sum_dy, sum_dy_x) in scale's dtype, with dy the gradient
    at the BatchNorm output; adds ``scale * dy`` into grad_x[:, :G] in place. One Triton
    kernel on x (``triton`` gate path), else the gate path's backward a few clips at a time."""
    G = 2 * gate_w.shape[1]
    if gsf_gate_path(x.device) == "triton":
        return _triton_gate_grads(grad_x, x, scale, shift, gate_w, gate, grad_gate, T)
    acc = scale.dtype
    weight = gate_w.to(x.dtype)
    grad_gate_w = torch.zeros_like(gate_w, dtype=acc)
    grad_gate_b = torch.zeros(2, dtype=acc, device=x.device)
    sum_dy, sum_dy_x = torch.zeros_like(scale), torch.zeros_like(scale)
    for s in _clip_slices(x, T, G):
        xg = x[s, :G]
        a = _bn_relu(xg, scale, shift)
        dy, gw, gb = gate_backward(a, weight, gate[s], grad_gate[s], T)
        dy = torch.ops.aten.threshold_backward(dy, a, 0)  # through the ReLU
        grad_gate_w += gw
        grad_gate_b += gb
        sum_dy += dy.sum((0, 2, 3), dtype=acc)
        sum_dy_x += (dy.to(acc) * xg.to(acc)).sum((0, 2, 3))
        grad_x[s, :G].add_(dy.mul_(scale.view(1, -1, 1, 1)))
    return grad_gate_w, grad_gate_b, sum_dy, sum_dy_x


# a registered op, not a bare kernel call: gsf_module's backward is traced by torch.compile
@torch.library.custom_op("das_kernels::gsf_gate_fused_backward", mutates_args=("grad_x",))
def _triton_gate_grads(
    grad_x: Tensor,
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    gate_w: Tensor,
    gate: Tensor,
    grad_gate: Tensor,
    num_segments: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The triton gate path of ``_gate_grads``: one kernel on x (gradients in scale's dtype)."""
    kernels = triton_gate_kernels(x.device)
    G = 2 * gate_w.shape[1]
    return kernels.gsf_gate_backward(
        x, scale, shift, gate_w, gate, grad_gate, num_segments, G, True, grad_x
    )


@_triton_gate_grads.register_fake
def _(grad_x, x, scale, shift, gate_w, gate, grad_gate, num_segments):
    return (
        gate_w.new_empty(gate_w.shape, dtype=scale.dtype),
        scale.new_empty(2),
        *(torch.empty_like(scale) for _ in range(2)),
    )


_gsf_module.register_autograd(_backward, setup_context=_setup_context)


def _channel_var_mean(xg: Tensor, acc: torch.dtype, slices: list[slice]) -> tuple[Tensor, Tensor]:
    """Biased variance and mean per channel of (N, G, H, W), in `acc`: centred sums of
    squares per (frame, channel) plane, combined exactly; a slice of frames at a time, so
    half inputs make no x-sized float copy (and it is several times faster than var_mean)."""
    N, G, H, W = xg.shape
    plane_means, squares = [], 0
    for s in slices:
        planes = xg[s].reshape(-1, G, H * W).to(acc)
        means = planes.mean(2)
        norms = torch.linalg.vector_norm(planes - means.unsqueeze(2), dim=2)
        squares = squares + norms.square().sum(0)
        plane_means.append(means)
    means = torch.cat(plane_means)
    mean = means.mean(0)
    return (squares / (H * W) + (means - mean).square().sum(0)) / N, mean


def _statistics(
    xg: Tensor,
    num_segments: int,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
) -> tuple[Tensor, Tensor, bool]:
    """(mean, invstd, batch_stats) as ``F.batch_norm`` uses them; updates the running
    statistics in place in training, like ``nn.BatchNorm``."""
    acc = compute_dtype(xg)
    batch_stats = training or running_mean is None
    with torch.no_grad():
        if not batch_stats:
            mean, var = running_mean.to(acc), running_var.to(acc)
        else:
            count = xg.shape[0] * xg.shape[2] * xg.shape[3]
            if count <= 1:
                raise ValueError(
                    f"BatchNorm needs more than 1 value per channel in training, got x of "
                    f"shape {tuple(xg.shape)} (gated part)"
                )
            var, mean = _channel_var_mean(xg, acc, _clip_slices(xg, num_segments, xg.shape[1]))
            if training and running_mean is not None:
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(1)
                factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
                running_mean.lerp_(mean.to(running_mean.dtype), factor)
                unbiased = var * (count / (count - 1))
                running_var.lerp_(unbiased.to(running_var.dtype), factor)
        return mean, torch.rsqrt(var + eps), batch_stats


def gsf_module(
    x: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor | None,
    fuse_weight: Tensor,
    fuse_bias: Tensor | None,
    bn_weight: Tensor | None,
    bn_bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_segments: int,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: Tensor | None = None,
) -> Tensor:
    """The official GSF forward on (B*T, C, H, W) frames as one autograd node.

    ``out = shift_fuse(x, tanh(conv3D(relu(bn(x[:, :G])))))`` with G = 2 * gate_weight.shape[1]
    gated channels (a multiple of 4); gate_weight/bias: the official ``conv3D`` (2, G/2, 3,
    3, 3), (2,); fuse_weight/bias: ``channel_conv1`` and ``channel_conv2`` stacked, (2, 2,
    3, 3), (2,); the BatchNorm arguments as ``F.batch_norm`` takes them (running statistics
    updated in place in training; ``momentum=None`` is the cumulative average over
    ``num_batches_tracked``). Returns (B*T, C, H, W) in x's dtype.
    """
    check_tensor("x", x, (4,))
    check_tensor("gate_weight", gate_weight, (5,))
    check_tensor("fuse_weight", fuse_weight, (4,))
    G = 2 * gate_weight.shape[1]
    T = check_int("num_segments", num_segments)
    x = check_frames(x, T, G)
    if gate_weight.shape != (2, G // 2, 3, 3, 3):
        raise ValueError(f"gate_weight must be (2, G/2, 3, 3, 3), got {tuple(gate_weight.shape)}")
    if fuse_weight.shape != (2, 2, 3, 3):
        raise ValueError(f"fuse_weight must be (2, 2, 3, 3), got {tuple(fuse_weight.shape)}")
    check_same_device(x=x, gate_weight=gate_weight, fuse_weight=fuse_weight)
    gate_bias = gate_weight.new_zeros(2) if gate_bias is None else gate_bias
    fuse_bias = fuse_weight.new_zeros(2) if fuse_bias is None else fuse_bias
    bn_weight = x.new_ones(G, dtype=gate_weight.dtype) if bn_weight is None else bn_weight
    bn_bias = torch.zeros_like(bn_weight) if bn_bias is None else bn_bias
    for name, t, shape in (
        ("gate_bias", gate_bias, (2,)),
        ("fuse_bias", fuse_bias, (2,)),
        ("bn_weight", bn_weight, (G,)),
        ("bn_bias", bn_bias, (G,)),
    ):
        check_tensor(name, t, (1,))
        if t.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    mean, invstd, batch_stats = _statistics(
        x[:, :G], T, running_mean, running_var, num_batches_tracked, training, momentum, eps
    )
    out, _, _ = _gsf_module(
        x,
        gate_weight,
        gate_bias,
        fuse_weight,
        fuse_bias.to(fuse_weight.dtype),
        bn_weight,
        bn_bias,
        mean,
        invstd,
        batch_stats,
        T,
    )
    return out
