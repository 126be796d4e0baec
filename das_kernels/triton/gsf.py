"""Triton kernels for ``das_kernels::gsf_pool`` and ``das_kernels::gsf_fuse`` (contracts:
``das_kernels/ops/gsf.py``; per-element math as in ``csrc/common/gsf.h``).

Layout: x (N, C, HW), N = B * T, frame n = b * T + t; gate (N, 2, HW); pooled (B, 4, G/2, T);
w (B, 2, G/2, T). Half h holds channels h * G/2 + i; its gated part y = gate * x moves from
frame s(t) = t + 1 (h = 0) or t - 1 (h = 1) to frame t, i.e. frame t gives its y to
m(t) = t - 1 or t + 1 (zero padded at clip ends). Loads are in the storage dtype, math in CT
(fp32, fp64 for fp64 x), offsets in int64.

Programs:
* pool forward: (n, h, channel block), looping over the pixels; tl.sum gives the (y, r)
  means, y stored to frame m(t)'s slot (slot t zeroed when s(t) is out of the clip).
* fuse forward: (b, h, channel chunk, pixel tile, t), t fastest so the programs that read
  frame t as their own frame and as a neighbour's source run together (L2 hits).
* backwards: (b, h, pixel tile, t), looping over all channels of the half: each program owns
  grad_gate of its tile (summed over channels in registers). grad_w (fuse) is summed over
  the tile's pixels; tiles' partials are added by torch in a fixed order. No atomics.
* pass-through channels G...C-1 (copied or zeroed): extra programs at the grid's end copy
  contiguous pieces of each frame's [G HW, C HW) span.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from das_kernels.triton.temporal_shift import copy_span

__all__ = [
    "gsf_fuse_backward",
    "gsf_fuse_forward",
    "gsf_pool_backward",
    "gsf_pool_backward_accumulate",
    "gsf_pool_forward",
]

# (elements per [channels, pixels] tile, most pixels per tile, num_warps). Not tuned on
# hardware: ~8 (pool) or ~4 (fuse, several live tiles) elements per thread.
_POOL = (2048, 512, 8)
_FUSE = (1024, 256, 4)
_COPY_BLOCK = 2048  # elements per pass-through program
_TARGET_PROGRAMS = 1024  # fuse forward splits channels until it has about this many


@triton.jit
def _neighbours(t, h, T):
    """(s, s_ok, m, m_ok): frame t's y source s(t) and target m(t); an invalid frame is
    replaced by t (any in-clip frame: its loads are masked off)."""
    d = 1 - 2 * h
    s = t + d
    m = t - d
    s_ok = (s >= 0) & (s < T)
    m_ok = (m >= 0) & (m < T)
    return tl.where(s_ok, s, t), s_ok, tl.where(m_ok, m, t), m_ok


@triton.jit
def _frame_tile(pid, T, HW, n_ptiles, n_chunks, BLOCK_P: tl.constexpr):
    """Program (b, h, channel chunk, pixel tile, t), t fastest, as (b, h, chunk, tile, n, t,
    s, m, m_ok, p, pixel masks at t, s(t) and m(t)): the masks at s or m are all false for a
    frame outside the clip (scalar & vector masks break the interpreter, hence the bounds)."""
    t = pid % T
    rest = pid // T
    tile = rest % n_ptiles
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    rest = rest // n_ptiles
    chunk = rest % n_chunks
    h = (rest // n_chunks) % 2
    b = rest // (2 * n_chunks)
    s, s_ok, m, m_ok = _neighbours(t, h, T)
    ps = p < tl.where(s_ok, HW, 0)
    pm = p < tl.where(m_ok, HW, 0)
    return b, h, chunk, tile, b * T + t, t, s, m, m_ok, p, p < HW, ps, pm


@triton.jit
def _channels(cb, h, half, BLOCK_C: tl.constexpr):
    """(i, c, co, i < half) of channel block cb of half h: index i in the half, input channel
    c, output channel co after the within-half interleave (i = a G/4 + j -> 2 j + a)."""
    i = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    quarter = half // 2
    return i, h * half + i, h * half + 2 * (i % quarter) + i // quarter, i < half


@triton.jit
def _planes(frame, C, c, HW, p):
    """int64 offsets (BLOCK_C, BLOCK_P) of pixels p of channels c of `frame`."""
    return (frame.to(tl.int64) * C + c)[:, None] * HW + p[None, :]


@triton.jit
def _pass_through(src_ptr, dst_ptr, pid, C, G, HW, n_pieces, COPY: tl.constexpr,
                  BLOCK: tl.constexpr):  # fmt: skip
    """Pass-through program `pid`: piece pid % n_pieces of frame pid // n_pieces of the
    channels [G, C): dst = src (COPY) or 0."""
    start = ((pid // n_pieces).to(tl.int64) * C + G) * HW
    copy_span(src_ptr, dst_ptr, start, start, (C - G) * HW, pid % n_pieces, COPY, BLOCK)


@triton.jit
def _pool_forward_kernel(
    x_ptr, gate_ptr, pooled_ptr, T, C, HW, half, n_cblk,
    CT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Program (n, h, channel block): y / r means of its channels over all pixels."""
    pid = tl.program_id(0)
    nh = pid // n_cblk
    h = nh % 2
    n = nh // 2
    t = n % T
    _, s_ok, m, m_ok = _neighbours(t, h, T)
    i, c, _, cmask = _channels(pid % n_cblk, h, half, BLOCK_C)
    g_row = gate_ptr + (n.to(tl.int64) * 2 + h) * HW
    acc_y = tl.zeros([BLOCK_C, BLOCK_P], CT)
    acc_r = tl.zeros([BLOCK_C, BLOCK_P], CT)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        g = tl.load(g_row + p, mask=p < HW, other=0.0).to(CT)
        mask = cmask[:, None] & (p < HW)[None, :]
        xv = tl.load(x_ptr + _planes(n, C, c, HW, p), mask=mask, other=0.0).to(CT)
        y = g[None, :] * xv
        acc_y += y
        acc_r += xv - y
    mean_y = tl.sum(acc_y, axis=1) / HW
    mean_r = tl.sum(acc_r, axis=1) / HW
    y_row = pooled_ptr + (((n // T) * 4 + 2 * h) * half + i) * T  # r row: + half * T
    dtype = pooled_ptr.dtype.element_ty
    tl.store(y_row + half * T + t, mean_r.to(dtype), mask=cmask)
    tl.store(y_row + m, mean_y.to(dtype), mask=i < tl.where(m_ok, half, 0))
    tl.store(y_row + t, tl.zeros_like(mean_y).to(dtype), mask=i < tl.where(s_ok, 0, half))


@triton.jit
def _pool_backward_kernel(
    gp_ptr, x_ptr, gate_ptr, gx_ptr, gg_ptr, T, C, G, HW, half, n_cblk, n_ptiles, n_main,
    n_pieces, CT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    COPY_BLOCK: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    """Program (b, h, pixel tile, t): grad_x = ay g + ar (1 - g) for the half's channels
    (ACCUMULATE: added to grad_x, whose other channels are left alone) and grad_gate =
    sum_c x (ay - ar), with ay = grad of frame m(t)'s y mean / HW (0 if none) and ar = grad
    of the r mean / HW."""
    pid = tl.program_id(0)
    if pid < n_main:
        b, h, _, _, n, t, _, m, m_ok, p, pmask, _, _ = _frame_tile(pid, T, HW, n_ptiles, 1, BLOCK_P)
        gg_offs = (n.to(tl.int64) * 2 + h) * HW + p
        g = tl.load(gate_ptr + gg_offs, mask=pmask, other=0.0).to(CT)[None, :]
        acc = tl.zeros([BLOCK_P], CT)
        for cb in range(n_cblk):
            i, c, co, cmask = _channels(cb, h, half, BLOCK_C)
            y_row = gp_ptr + ((b * 4 + 2 * h) * half + i) * T
            ay = tl.load(y_row + m, mask=i < tl.where(m_ok, half, 0), other=0.0).to(CT)
            ar = tl.load(y_row + half * T + t, mask=cmask, other=0.0).to(CT)
            ay = (ay / HW)[:, None]
            ar = (ar / HW)[:, None]
            mask = cmask[:, None] & pmask[None, :]
            offs = _planes(n, C, c, HW, p)
            xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CT)
            gx = ay * g + ar * (1.0 - g)
            if ACCUMULATE:
                gx += tl.load(gx_ptr + offs, mask=mask, other=0.0).to(CT)
            tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            acc += tl.sum(xv * (ay - ar), axis=0)
        tl.store(gg_ptr + gg_offs, acc.to(gg_ptr.dtype.element_ty), mask=pmask)
    else:
        _pass_through(gx_ptr, gx_ptr, pid - n_main, C, G, HW, n_pieces, False, COPY_BLOCK)


@triton.jit
def _fuse_forward_kernel(
    x_ptr, gate_ptr, w_ptr, out_ptr, T, C, G, HW, half, n_cblk, n_ptiles, n_chunks,
    chunk_blocks, n_main, n_pieces, CT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, COPY_BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (b, h, channel chunk, pixel tile, t):
    out[n, h G/2 + interleave(i)] = w (g_s x_s) + (1 - w) (1 - g) x (s = s(t), 0 if none)."""
    pid = tl.program_id(0)
    if pid < n_main:
        b, h, chunk, _, n, t, s, _, _, p, pmask, ps, _ = _frame_tile(
            pid, T, HW, n_ptiles, n_chunks, BLOCK_P
        )
        g_offs = (n.to(tl.int64) * 2 + h) * HW + p
        to_s = (s - t).to(tl.int64) * C * HW  # frame t -> frame s(t)
        g = tl.load(gate_ptr + g_offs, mask=pmask, other=0.0).to(CT)[None, :]
        gs = tl.load(gate_ptr + g_offs + (s - t) * 2 * HW, mask=ps, other=0.0).to(CT)[None, :]
        cb0 = chunk * chunk_blocks
        for cb in range(cb0, tl.minimum(cb0 + chunk_blocks, n_cblk)):
            i, c, co, cmask = _channels(cb, h, half, BLOCK_C)
            offs = _planes(n, C, c, HW, p)
            mask = cmask[:, None] & pmask[None, :]
            xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CT)
            xs = tl.load(x_ptr + offs + to_s, mask=cmask[:, None] & ps[None, :], other=0.0)
            wv = tl.load(w_ptr + ((b * 2 + h) * half + i) * T + t, mask=cmask, other=0.0)
            wv = wv.to(CT)[:, None]
            z = wv * (gs * xs.to(CT)) + (1.0 - wv) * ((1.0 - g) * xv)
            out = out_ptr + _planes(n, C, co, HW, p)
            tl.store(out, z.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        _pass_through(x_ptr, out_ptr, pid - n_main, C, G, HW, n_pieces, True, COPY_BLOCK)


@triton.jit
def _fuse_backward_kernel(
    go_ptr, x_ptr, gate_ptr, w_ptr, gx_ptr, gg_ptr, gw_ptr, T, C, G, HW, half, n_cblk,
    n_ptiles, n_main, n_pieces, CT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, COPY_BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (b, h, pixel tile, t), looping over the half's channels. With go the output
    gradient at the interleaved channel, a = go_t (1 - w_t), bm = go_m w_m (m = m(t), 0 if
    none): grad_x = a (1 - g) + bm g, grad_gate = sum_c x (bm - a), and the tile's part of
    grad_w[t] = sum_p go_t (g_s x_s - (1 - g) x), stored to gw_ptr (B, 2, G/2, T, n_ptiles)."""
    pid = tl.program_id(0)
    if pid < n_main:
        b, h, _, tile, n, t, s, m, m_ok, p, pmask, ps, pm = _frame_tile(
            pid, T, HW, n_ptiles, 1, BLOCK_P
        )
        g_offs = (n.to(tl.int64) * 2 + h) * HW + p
        to_s = (s - t).to(tl.int64) * C * HW  # frame t -> frame s(t)
        to_m = (m - t).to(tl.int64) * C * HW  # frame t -> frame m(t)
        g = tl.load(gate_ptr + g_offs, mask=pmask, other=0.0).to(CT)[None, :]
        gs = tl.load(gate_ptr + g_offs + (s - t) * 2 * HW, mask=ps, other=0.0).to(CT)[None, :]
        acc = tl.zeros([BLOCK_P], CT)
        for cb in range(n_cblk):
            i, c, co, cmask = _channels(cb, h, half, BLOCK_C)
            w_row = w_ptr + ((b * 2 + h) * half + i) * T
            wt = tl.load(w_row + t, mask=cmask, other=0.0).to(CT)[:, None]
            wm = tl.load(w_row + m, mask=i < tl.where(m_ok, half, 0), other=0.0).to(CT)[:, None]
            mask = cmask[:, None] & pmask[None, :]
            x_offs = _planes(n, C, c, HW, p)
            go_offs = _planes(n, C, co, HW, p)
            xv = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(CT)
            xs = tl.load(x_ptr + x_offs + to_s, mask=cmask[:, None] & ps[None, :], other=0.0)
            go = tl.load(go_ptr + go_offs, mask=mask, other=0.0).to(CT)
            gom = tl.load(go_ptr + go_offs + to_m, mask=cmask[:, None] & pm[None, :], other=0.0)
            a = go * (1.0 - wt)
            bm = gom.to(CT) * wm
            gx = a * (1.0 - g) + bm * g
            tl.store(gx_ptr + x_offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            acc += tl.sum(xv * (bm - a), axis=0)
            sw = tl.sum(go * (gs * xs.to(CT) - (1.0 - g) * xv), axis=1)
            dst = gw_ptr + (((b * 2 + h) * half + i) * T + t) * n_ptiles + tile
            tl.store(dst, sw, mask=cmask)
        tl.store(gg_ptr + g_offs, acc.to(gg_ptr.dtype.element_ty), mask=pmask)
    else:
        _pass_through(go_ptr, gx_ptr, pid - n_main, C, G, HW, n_pieces, True, COPY_BLOCK)


def _ct(x: torch.Tensor) -> tl.dtype:
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _tiles(HW: int, half: int, config: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_P, channel blocks per half, pixel tiles) for a [channels, pixels] tile
    of about config[0] elements with at most config[1] pixels."""
    tile, max_p, _ = config
    block_p = min(triton.next_power_of_2(HW), max_p)
    block_c = max(1, min(triton.next_power_of_2(half), tile // block_p))
    return block_c, block_p, triton.cdiv(half, block_c), triton.cdiv(HW, block_p)


def _dims(x: torch.Tensor, num_segments: int, n_gsf: int) -> tuple[int, ...]:
    """(N, C, HW, T, B, G, G/2) of x (N, C, H, W)."""
    N, C, H, W = x.shape
    return N, C, H * W, num_segments, N // num_segments, n_gsf, n_gsf // 2


def _pieces(C: int, G: int, HW: int) -> int:
    """Pass-through programs per frame."""
    return triton.cdiv((C - G) * HW, _COPY_BLOCK)


def gsf_pool_forward(
    x: torch.Tensor, gate: torch.Tensor, num_segments: int, n_gsf: int
) -> torch.Tensor:
    """x (N, C, H, W), gate (N, 2, H, W) -> pooled (B, 4, G/2, T) in x's dtype."""
    N, C, HW, T, B, G, half = _dims(x, num_segments, n_gsf)
    pooled = torch.empty((B, 4, half, T), dtype=x.dtype, device=x.device)
    block_c, block_p, n_cblk, _ = _tiles(HW, half, _POOL)
    _pool_forward_kernel[(N * 2 * n_cblk,)](
        x, gate, pooled, T, C, HW, half, n_cblk,
        CT=_ct(x), BLOCK_C=block_c, BLOCK_P=block_p, num_warps=_POOL[2],
    )  # fmt: skip
    return pooled


def gsf_pool_backward(
    grad_pooled: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, num_segments: int, n_gsf: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_pooled (B, 4, G/2, T) -> (grad_x (N, C, H, W), zero in channels G...;
    grad_gate (N, 2, H, W))."""
    grad_x = torch.empty_like(x)
    return grad_x, _pool_backward(grad_x, grad_pooled, x, gate, num_segments, n_gsf, False)


def gsf_pool_backward_accumulate(
    grad_x: torch.Tensor,
    grad_pooled: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    num_segments: int,
    n_gsf: int,
) -> torch.Tensor:
    """grad_x (N, C, H, W) += gsf_pool_backward's grad_x, in place; returns grad_gate."""
    return _pool_backward(grad_x, grad_pooled, x, gate, num_segments, n_gsf, True)


def _pool_backward(grad_x, grad_pooled, x, gate, num_segments, n_gsf, accumulate):
    N, C, HW, T, B, G, half = _dims(x, num_segments, n_gsf)
    grad_gate = torch.empty_like(gate)
    block_c, block_p, n_cblk, n_ptiles = _tiles(HW, half, _FUSE)
    n_main = N * 2 * n_ptiles
    n_pieces = 0 if accumulate else _pieces(C, G, HW)  # pass-through channels: zeroed
    _pool_backward_kernel[(n_main + N * n_pieces,)](
        grad_pooled.contiguous(), x, gate, grad_x, grad_gate,
        T, C, G, HW, half, n_cblk, n_ptiles, n_main, n_pieces,
        CT=_ct(x), BLOCK_C=block_c, BLOCK_P=block_p, COPY_BLOCK=_COPY_BLOCK,
        ACCUMULATE=accumulate, num_warps=_FUSE[2],
    )  # fmt: skip
    return grad_gate


def gsf_fuse_forward(
    x: torch.Tensor, gate: torch.Tensor, w: torch.Tensor, num_segments: int, n_gsf: int
) -> torch.Tensor:
    """x (N, C, H, W), gate (N, 2, H, W), w (B, 2, G/2, T) -> out (N, C, H, W)."""
    N, C, HW, T, B, G, half = _dims(x, num_segments, n_gsf)
    out = torch.empty_like(x)
    block_c, block_p, n_cblk, n_ptiles = _tiles(HW, half, _FUSE)
    chunks = max(1, min(n_cblk, _TARGET_PROGRAMS // (N * 2 * n_ptiles)))
    chunk_blocks = triton.cdiv(n_cblk, chunks)
    chunks = triton.cdiv(n_cblk, chunk_blocks)
    n_main = N * 2 * n_ptiles * chunks
    n_pieces = _pieces(C, G, HW)
    _fuse_forward_kernel[(n_main + N * n_pieces,)](
        x, gate, w, out, T, C, G, HW, half, n_cblk, n_ptiles, chunks, chunk_blocks,
        n_main, n_pieces,
        CT=_ct(x), BLOCK_C=block_c, BLOCK_P=block_p, COPY_BLOCK=_COPY_BLOCK,
        num_warps=_FUSE[2],
    )  # fmt: skip
    return out


def gsf_fuse_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    w: torch.Tensor,
    num_segments: int,
    n_gsf: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out (N, C, H, W) -> (grad_x (N, C, H, W), grad_gate (N, 2, H, W),
    grad_w (B, 2, G/2, T)), deterministic."""
    N, C, HW, T, B, G, half = _dims(x, num_segments, n_gsf)
    grad_x = torch.empty_like(x)
    grad_gate = torch.empty_like(gate)
    block_c, block_p, n_cblk, n_ptiles = _tiles(HW, half, _FUSE)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial_w = torch.empty((B, 2, half, T, n_ptiles), dtype=ct, device=x.device)
    n_main = N * 2 * n_ptiles
    n_pieces = _pieces(C, G, HW)
    _fuse_backward_kernel[(n_main + N * n_pieces,)](
        grad_out.contiguous(), x, gate, w, grad_x, grad_gate, partial_w,
        T, C, G, HW, half, n_cblk, n_ptiles, n_main, n_pieces,
        CT=_ct(x), BLOCK_C=block_c, BLOCK_P=block_p, COPY_BLOCK=_COPY_BLOCK,
        num_warps=_FUSE[2],
    )  # fmt: skip
    return grad_x, grad_gate, partial_w.sum(-1).to(w.dtype)
