"""Triton kernels for GSF's gate conv read straight from x: BatchNorm affine + ReLU + grouped
3x3x3 conv + bias + tanh in one forward kernel, and one backward kernel (the
``DAS_KERNELS_GSF_GATE=triton`` path of ``das_kernels.ops.gsf_gate``; opt-in: not yet timed on
a GPU, so the defaults stay ``gemm`` on CPU and ``conv`` on GPUs).

Math (x (N, C, H, W), N = B * T, frame n = b * T + t; G gated channels; group g in {0, 1}
holds channels k = g G/2 + c, c < G/2; tap = 9 kt + 3 kh + kw, offsets d = (kt, kh, kw) - 1)::

    a[n, k, p]  = relu(x[n, k, p] * scale[k] + shift[k])     (RELU; else without the relu),
                  0 outside the image and for frames outside the clip
    gate[n, g]  = tanh(bias[g] + sum_{c, tap} weight[g, c, tap] a[n + dt, k, p + d])
    gp          = grad_gate (1 - gate^2)                     (torch, (N, 2, H, W), CT)
    grad_a[n, k, p]     = sum_tap weight[g, c, tap] gp[n - dt, g, p - d]
    grad_weight[g, c, tap] = sum_{n, p} a[n, k, p] gp[n - dt, g, p - d]
    dy = grad_a where a > 0 else 0 (RELU; else dy = grad_a)
    grad_x[:, :G] += scale dy (in place, optional); sum_dy[k] = sum dy; sum_dy_x[k] = sum dy x

Layout: x and grad_x (N, C, HW) contiguous, gate and gp (N, 2, HW), weight (2, G/2, 27).
Loads are in the storage dtype, math in CT (fp32, fp64 for fp64 x), offsets in int64, every
access masked; a frame outside the clip folds into the row bound (scalar & vector masks
break the interpreter).

Programs:
* forward: (n, g, pixel tile), looping over the 27 taps (unrolled; outermost, so one tap's
  mask is live at a time: no register spills on sm_90) and the group's channel blocks:
  shifted [BLOCK_C, BLOCK_P] loads of x, the affine + ReLU recomputed per tap (cache hits),
  products accumulated per channel in CT and summed over channels at the end. No
  activation is materialised.
* backward: (clip b, g, channel block, pixel tile), looping over the clip's T frames: a is
  recomputed from x once per frame; each tap's shifted gp row (shared by the block's
  channels) serves both grad_a and grad_weight. Per-program partials of grad_weight
  ([BLOCK_C, 27], kept in registers over the frames), sum_dy and sum_dy_x go to buffers
  (B * pixel tiles, ...) that torch sums in a fixed order: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from das_kernels.triton.gsf import _ct, _planes, _tiles

__all__ = ["gsf_gate_backward", "gsf_gate_forward"]

# (elements per [channels, pixels] tile, most pixels per tile, num_warps). Not tuned on
# hardware: a few live tiles per program (x, a, accumulator).
_GATE = (1024, 256, 4)
_TAPS = 32  # grad_weight's tap axis in registers (27 used)


@triton.jit
def _tap(t, T, row, col, H, W, pmask, TAP: tl.constexpr, SIGN: tl.constexpr):
    """(frame step, pixel step, mask) of tap TAP = 9 kt + 3 kh + kw: the source of pixels
    (row, col) of frame t is frame t + SIGN (kt - 1), pixel (row, col) + SIGN (kh - 1, kw - 1);
    the mask is false outside the image and everywhere when that frame is outside the clip."""
    dt = SIGN * (TAP // 9 - 1)
    dh = SIGN * (TAP // 3 % 3 - 1)
    dw = SIGN * (TAP % 3 - 1)
    rows = tl.where((t + dt >= 0) & (t + dt < T), H, 0)
    r = row + dh
    c = col + dw
    return dt, dh * W + dw, pmask & (r >= 0) & (r < rows) & (c >= 0) & (c < W)


@triton.jit
def _pixels(tile, W, HW, BLOCK_P: tl.constexpr):
    """(p, p < HW, row, col) of pixel tile `tile`."""
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p < HW, p // W, p % W


@triton.jit
def _group_channels(cb, g, half, scale_ptr, shift_ptr, CT: tl.constexpr, BLOCK_C: tl.constexpr):
    """(k, k < G's group end, scale, shift) of channel block cb of group g: channels
    k = g G/2 + c for c in the block, with their affine (0 for masked channels)."""
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < half
    k = g * half + c
    sc = tl.load(scale_ptr + k, mask=cmask, other=0.0).to(CT)
    sh = tl.load(shift_ptr + k, mask=cmask, other=0.0).to(CT)
    return k, cmask, sc, sh


@triton.jit
def _activation(xv, sc, sh, mask, RELU: tl.constexpr):
    """a = (relu)(x * scale + shift) per channel row, 0 where masked."""
    a = xv * sc[:, None] + sh[:, None]
    if RELU:
        a = tl.maximum(a, 0.0)
    return tl.where(mask, a, 0.0)


@triton.jit
def _tanh(z):
    """tanh from one exp, odd-symmetric (no overflow)."""
    e = tl.exp(-2.0 * tl.abs(z))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -r, r)


@triton.jit
def _gate_forward_kernel(
    x_ptr, scale_ptr, shift_ptr, w_ptr, bias_ptr, gate_ptr, T, C, H, W, half, n_ptiles,
    RELU: tl.constexpr, CT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Program (n, g, pixel tile): gate[n, g, tile] = tanh(bias[g] + the group's 27-tap sum)."""
    pid = tl.program_id(0)
    tile = pid % n_ptiles
    g = (pid // n_ptiles) % 2
    n = pid // (2 * n_ptiles)
    t = n % T
    HW = H * W
    p, pmask, row, col = _pixels(tile, W, HW, BLOCK_P)
    acc = tl.zeros([BLOCK_C, BLOCK_P], CT)
    # taps outside: one tap's mask is live at a time (channel blocks outside would keep all
    # 27 masks in registers, hoisted out of their loop)
    for tap in tl.static_range(27):
        dt, dp, ok = _tap(t, T, row, col, H, W, pmask, tap, 1)
        for cb in range(tl.cdiv(half, BLOCK_C)):
            k, cmask, sc, sh = _group_channels(cb, g, half, scale_ptr, shift_ptr, CT, BLOCK_C)
            mask = cmask[:, None] & ok[None, :]
            xv = tl.load(x_ptr + _planes(n + dt, C, k, HW, p + dp), mask=mask, other=0.0)
            wv = tl.load(w_ptr + k * 27 + tap, mask=cmask, other=0.0).to(CT)
            acc += wv[:, None] * _activation(xv.to(CT), sc, sh, mask, RELU)
    pre = tl.sum(acc, axis=0) + tl.load(bias_ptr + g).to(CT)
    out = gate_ptr + (n.to(tl.int64) * 2 + g) * HW + p
    tl.store(out, _tanh(pre).to(gate_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def _gate_backward_kernel(
    x_ptr, scale_ptr, shift_ptr, w_ptr, gp_ptr, gx_ptr, gw_ptr, sums_ptr, T, C, H, W, G,
    half, n_cblk, n_ptiles, RELU: tl.constexpr, ACCUMULATE: tl.constexpr, CT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, TAPS: tl.constexpr,
):  # fmt: skip
    """Program (b, g, channel block, pixel tile), looping over the clip's frames: dy (added
    as scale dy into grad_x when ACCUMULATE) and the tile's partials of grad_weight
    (gw_ptr (B * n_ptiles, G, 27)), sum_dy and sum_dy_x (sums_ptr (B * n_ptiles, 2, G))."""
    pid = tl.program_id(0)
    tile = pid % n_ptiles
    cb = (pid // n_ptiles) % n_cblk
    g = (pid // (n_ptiles * n_cblk)) % 2
    b = pid // (2 * n_ptiles * n_cblk)
    HW = H * W
    p, pmask, row, col = _pixels(tile, W, HW, BLOCK_P)
    k, cmask, sc, sh = _group_channels(cb, g, half, scale_ptr, shift_ptr, CT, BLOCK_C)
    mask = cmask[:, None] & pmask[None, :]
    taps = tl.arange(0, TAPS)[None, :]
    gw = tl.zeros([BLOCK_C, TAPS], CT)
    sum_dy = tl.zeros([BLOCK_C], CT)
    sum_dy_x = tl.zeros([BLOCK_C], CT)
    for t in range(T):
        n = b * T + t
        offs = _planes(n, C, k, HW, p)
        xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CT)
        a = _activation(xv, sc, sh, mask, RELU)
        grad_a = tl.zeros([BLOCK_C, BLOCK_P], CT)
        for tap in tl.static_range(27):
            dt, dp, ok = _tap(t, T, row, col, H, W, pmask, tap, -1)
            src = gp_ptr + ((n + dt).to(tl.int64) * 2 + g) * HW
            gpv = tl.load(src + p + dp, mask=ok, other=0.0).to(CT)[None, :]
            wv = tl.load(w_ptr + k * 27 + tap, mask=cmask, other=0.0).to(CT)
            grad_a += wv[:, None] * gpv
            gw = tl.where(taps == tap, gw + tl.sum(a * gpv, axis=1)[:, None], gw)
        dy = grad_a
        if RELU:
            dy = tl.where(a > 0, grad_a, 0.0)
        sum_dy += tl.sum(dy, axis=1)
        sum_dy_x += tl.sum(dy * xv, axis=1)
        if ACCUMULATE:
            gx = tl.load(gx_ptr + offs, mask=mask, other=0.0).to(CT) + sc[:, None] * dy
            tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    part = b * n_ptiles + tile
    gw_offs = (part.to(tl.int64) * G + k)[:, None] * 27 + taps
    tl.store(gw_ptr + gw_offs, gw, mask=cmask[:, None] & (taps < 27))
    sums = sums_ptr + part.to(tl.int64) * 2 * G + k
    tl.store(sums, sum_dy, mask=cmask)
    tl.store(sums + G, sum_dy_x, mask=cmask)


def _config(x: torch.Tensor, n_gsf: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_P, channel blocks per group, pixel tiles) of x (N, C, H, W)."""
    return _tiles(x.shape[2] * x.shape[3], n_gsf // 2, _GATE)


def gsf_gate_forward(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_segments: int,
    n_gsf: int,
    relu: bool,
) -> torch.Tensor:
    """gate (N, 2, H, W) in x's dtype = tanh(conv3D((relu)(x[:, :G] * scale + shift))).

    x (N, C, H, W), G = n_gsf <= C; scale, shift (G,) (fp32/fp64); weight (2, G/2, 3, 3, 3)
    and bias (2,) the official ``conv3D``. relu=False with scale 1 and shift 0 is the plain
    gate conv of activations x."""
    N, C, H, W = x.shape
    gate = x.new_empty(N, 2, H, W)
    block_c, block_p, _, n_ptiles = _config(x, n_gsf)
    _gate_forward_kernel[(N * 2 * n_ptiles,)](
        x.contiguous(), scale.contiguous(), shift.contiguous(), weight.contiguous(),
        bias.contiguous(), gate, num_segments, C, H, W, n_gsf // 2, n_ptiles,
        RELU=relu, CT=_ct(x), BLOCK_C=block_c, BLOCK_P=block_p, num_warps=_GATE[2],
    )  # fmt: skip
    return gate


def gsf_gate_backward(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    grad_gate: torch.Tensor,
    num_segments: int,
    n_gsf: int,
    relu: bool,
    grad_x: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_weight (2, G/2, 3, 3, 3), grad_bias (2,), sum_dy (G,), sum_dy_x (G,)), all in
    fp32 (fp64 for fp64 x), of ``gsf_gate_forward`` given its output gate and grad_gate.
    dy: the gradient at the affine output (through the ReLU when relu). With grad_x
    (N, C, H, W) contiguous, scale * dy is added into grad_x[:, :G] in place. Deterministic."""
    N, C, H, W = x.shape
    T, G = num_segments, n_gsf
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    gp = (grad_gate.to(ct) * (1 - gate.to(ct).square())).contiguous()  # through the tanh
    block_c, block_p, n_cblk, n_ptiles = _config(x, G)
    parts = (N // T) * n_ptiles
    partial_w = x.new_empty(parts, G, 27, dtype=ct)
    partial_sums = x.new_empty(parts, 2, G, dtype=ct)
    if grad_x is not None and not grad_x.is_contiguous():
        raise ValueError("grad_x must be contiguous (it is written in place)")
    _gate_backward_kernel[(parts * 2 * n_cblk,)](
        x.contiguous(), scale.contiguous(), shift.contiguous(), weight.contiguous(), gp,
        x if grad_x is None else grad_x, partial_w, partial_sums, T, C, H, W, G, G // 2,
        n_cblk, n_ptiles, RELU=relu, ACCUMULATE=grad_x is not None, CT=_ct(x),
        BLOCK_C=block_c, BLOCK_P=block_p, TAPS=_TAPS, num_warps=_GATE[2],
    )  # fmt: skip
    grad_weight = partial_w.sum(0).view(2, G // 2, 3, 3, 3)
    return grad_weight, gp.sum((0, 2, 3)), partial_sums[:, 0].sum(0), partial_sums[:, 1].sum(0)
