"""Triton kernels for ``das_kernels::multi_affine_warp``: forward, backward, deterministic grad_x.

Canonical layout (validated and made contiguous by the op):
    x (B, Tx, C, H, W) with Tx in {1, T}; theta (B, K, T, 2, 3) and weights (B, K) in the
    compute dtype CT (fp32, or fp64 for fp64 x); out and grad_out (B, T, C, out_h, out_w).

Sampling is ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zeros padding,
``align_corners=False``) written in pixel space: output pixel (i, j) reads the input at
    ix = a * (j + 1/2) + b * (i + 1/2) + cx,    iy = d * (j + 1/2) + e * (i + 1/2) + cy,
which is ((theta @ (u, v, 1)) + 1) * (W, H) / 2 - 1/2 rearranged so that the identity theta
lands exactly on integer pixels. Taps use floor, as grid_sample's backward does. (The
reference's base grid is not exact: identity theta gives ix = 2.9999999999999996 at W = 6 in
fp64, so at exactly integer coordinates its one-sided theta gradient may take the other side.)

Every program owns a (BLOCK_C channels, BLOCK_P pixels) tile of one (b, frame): per k it
computes each pixel's sample position once and reads the taps of all its channels; nothing
of size K * T * pixels is materialised. Accumulation is fp32 (fp64 for fp64 x).

Backward: grad_theta / grad_weights are reduced per program (tl.sum) into (K, 7) rows, then
atomically added (default) or stored as per-program partials summed by torch in a fixed
order (deterministic mode). grad_x is scattered with fp32/fp64 atomics (default; relaxed
order, as every atomic here is a plain reduction read only after the kernel) or, in
deterministic mode, gathered: one program per tile of input pixels visits, per (t, k), the
bounding box of output pixels whose taps can touch each input pixel (the inverse-affine image
of its 2x2 neighbourhood) and accumulates in a fixed order. That costs ~ box area (9 for
scales near 1) per input pixel, up to all output pixels for a (near-)singular theta.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["multi_affine_warp_backward", "multi_affine_warp_forward"]

# (tile elements = channels x pixels, num_warps) per kernel: ~8 elements per thread and,
# by ptxas for sm_90 (fp32), 80 / 108 / 72 registers without spills. Not tuned on hardware.
_FWD = (2048, 8)
_BWD = (1024, 8)
_GATHER = (1024, 4)
_MAX_CHANNELS = 4  # channels per program; more channels -> more programs (taps recomputed)
_MAX_GROUPS = 64  # backward programs per (b, t, channel block): bounds the partials buffer


@triton.jit
def _affine_coeffs(theta_ptr, row, H, W, out_h, out_w):
    """Pixel-space map (a, b, cx, d, e, cy) of theta[row], row = (b * K + k) * T + t."""
    p = theta_ptr + row * 6
    t0 = tl.load(p)
    t1 = tl.load(p + 1)
    t2 = tl.load(p + 2)
    t3 = tl.load(p + 3)
    t4 = tl.load(p + 4)
    t5 = tl.load(p + 5)
    zero = tl.zeros([], theta_ptr.dtype.element_ty)
    fw = zero + W
    fh = zero + H
    fow = zero + out_w
    foh = zero + out_h
    a = t0 * fw / fow
    b = t1 * fw / foh
    cx = (t2 + 1.0 - t0 - t1) * (fw * 0.5) - 0.5
    d = t3 * fh / fow
    e = t4 * fh / foh
    cy = (t5 + 1.0 - t3 - t4) * (fh * 0.5) - 0.5
    return a, b, cx, d, e, cy


@triton.jit
def _floor_frac(ix, size):
    """(floor(ix) as int32, ix - floor(ix)). ix is clamped to [-2, size + 1] first: every
    tap outside (-1, size) is zero padding, so the clamp only keeps the int cast safe."""
    ix = tl.minimum(tl.maximum(ix, -2.0), size + 1.0)
    x0 = tl.floor(ix)
    return x0.to(tl.int32), ix - x0


@triton.jit
def _bilinear_taps(ix, iy, H, W, mask):
    """Top-left tap offset y0 * W + x0 (int64), masks of taps 00, 01, 10, 11, and fx, fy."""
    x0, fx = _floor_frac(ix, W)
    y0, fy = _floor_frac(iy, H)
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x0 >= -1) & (x0 < W - 1)
    in_y0 = mask & (y0 >= 0) & (y0 < H)
    in_y1 = mask & (y0 >= -1) & (y0 < H - 1)
    off = y0.to(tl.int64) * W + x0
    return off, in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1, fx, fy


@triton.jit
def _sample_taps(theta_ptr, row, jc, ic, H, W, out_h, out_w, mask):
    """Bilinear taps (see `_bilinear_taps`) of theta[row] at pixel centres (jc, ic)."""
    a, b, cx, d, e, cy = _affine_coeffs(theta_ptr, row, H, W, out_h, out_w)
    return _bilinear_taps(a * jc + b * ic + cx, d * jc + e * ic + cy, H, W, mask)


@triton.jit
def _load_taps(rows, off, W, m00, m01, m10, m11, cmask, dtype):
    """The 4 taps (BLOCK_C, BLOCK_P) in `dtype`; rows: (BLOCK_C, 1) plane pointers."""
    p = rows + off[None, :]
    v00 = tl.load(p, mask=cmask & m00[None, :], other=0.0).to(dtype)
    v01 = tl.load(p + 1, mask=cmask & m01[None, :], other=0.0).to(dtype)
    v10 = tl.load(p + W, mask=cmask & m10[None, :], other=0.0).to(dtype)
    v11 = tl.load(p + W + 1, mask=cmask & m11[None, :], other=0.0).to(dtype)
    return v00, v01, v10, v11


@triton.jit
def _lerp_x(v00, v01, v10, v11, fx):
    """Horizontal lerps (top, bottom) of the taps; fx: (BLOCK_P,)."""
    gx = 1.0 - fx[None, :]
    return v00 * gx + v01 * fx[None, :], v10 * gx + v11 * fx[None, :]


@triton.jit
def _decode(pid, n_inner, n_cblk, T, C, BLOCK_C: tl.constexpr):
    """Program id -> (inner index, b (int64), t, channels c, channel mask) for the grid
    (b, t, channel block, inner), inner fastest (a pixel tile or a group of tiles)."""
    inner = pid % n_inner
    rest = pid // n_inner
    cblk = rest % n_cblk
    bt = rest // n_cblk
    c = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    return inner, (bt // T).to(tl.int64), bt % T, c, (c < C)[:, None]


@triton.jit
def _forward_kernel(
    x_ptr, theta_ptr, w_ptr, out_ptr,
    Tx, T, K, C, H, W, out_h, out_w, n_ptiles, n_cblk,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Program (b, t, channel block, pixel tile): out = sum_k w_k * bilinear(x, theta_k)."""
    CT = theta_ptr.dtype.element_ty
    ptile, b, t, c, cmask = _decode(tl.program_id(0), n_ptiles, n_cblk, T, C, BLOCK_C)
    n_out = out_h * out_w
    p = ptile * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < n_out
    jc = (p % out_w).to(CT) + 0.5
    ic = (p // out_w).to(CT) + 0.5
    x_rows = x_ptr + ((b * Tx + t % Tx) * C + c)[:, None] * (H * W)
    acc = tl.zeros([BLOCK_C, BLOCK_P], CT)
    for k in range(K):
        row = (b * K + k) * T + t
        wk = tl.load(w_ptr + b * K + k)
        off, m00, m01, m10, m11, fx, fy = _sample_taps(
            theta_ptr, row, jc, ic, H, W, out_h, out_w, pmask
        )
        v00, v01, v10, v11 = _load_taps(x_rows, off, W, m00, m01, m10, m11, cmask, CT)
        top, bot = _lerp_x(v00, v01, v10, v11, fx)
        acc += wk * (top * (1.0 - fy[None, :]) + bot * fy[None, :])
    out_rows = out_ptr + ((b * T + t) * C + c)[:, None] * n_out
    tl.store(out_rows + p[None, :], acc.to(out_ptr.dtype.element_ty), mask=cmask & pmask[None, :])


@triton.jit
def _pack7(q, v0, v1, v2, v3, v4, v5, v6):
    """(8,) vector (v0, ..., v6, 0) selected by q = arange(8)."""
    r = tl.where(q == 6, v6, 0.0)
    r = tl.where(q == 5, v5, r)
    r = tl.where(q == 4, v4, r)
    r = tl.where(q == 3, v3, r)
    r = tl.where(q == 2, v2, r)
    r = tl.where(q == 1, v1, r)
    return tl.where(q == 0, v0, r)


@triton.jit
def _backward_kernel(
    g_ptr, x_ptr, theta_ptr, w_ptr, gx_ptr, gtheta_ptr, gw_ptr,
    Tx, T, K, C, H, W, out_h, out_w, n_groups, n_cblk, tiles_per_group,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    SCATTER_X: tl.constexpr, PARTIALS: tl.constexpr,
):  # fmt: skip
    """Program (b, t, channel block, group of pixel tiles).

    Per k: (sum g * dS/dtheta (6), sum g * S) over its pixels and channels, kept in a
    (BLOCK_K, 8) register block, then atomically added to gtheta (B, K, T, 6) and gw (B, K),
    or, if PARTIALS, stored to gtheta_ptr as rows (pid, K, 7). SCATTER_X: grad_x atomics.
    """
    CT = theta_ptr.dtype.element_ty
    pid = tl.program_id(0)
    grp, b, t, c, cmask = _decode(pid, n_groups, n_cblk, T, C, BLOCK_C)
    n_out = out_h * out_w
    x_plane = ((b * Tx + t % Tx) * C + c)[:, None] * (H * W)
    x_rows = x_ptr + x_plane
    gx_rows = gx_ptr + x_plane
    g_rows = g_ptr + ((b * T + t) * C + c)[:, None] * n_out
    zero = tl.zeros([], CT)
    half_w = (zero + W) * 0.5
    half_h = (zero + H) * 0.5
    kk = tl.arange(0, BLOCK_K)
    q = tl.arange(0, 8)
    sums = tl.zeros([BLOCK_K, 8], CT)
    for it in range(tiles_per_group):
        p = (grp * tiles_per_group + it) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < n_out
        jc = (p % out_w).to(CT) + 0.5
        ic = (p // out_w).to(CT) + 0.5
        u = jc * 2.0 / (zero + out_w) - 1.0
        v = ic * 2.0 / (zero + out_h) - 1.0
        g = tl.load(g_rows + p[None, :], mask=cmask & pmask[None, :], other=0.0).to(CT)
        for k in range(K):
            row = (b * K + k) * T + t
            wk = tl.load(w_ptr + b * K + k)
            off, m00, m01, m10, m11, fx, fy = _sample_taps(
                theta_ptr, row, jc, ic, H, W, out_h, out_w, pmask
            )
            v00, v01, v10, v11 = _load_taps(x_rows, off, W, m00, m01, m10, m11, cmask, CT)
            top, bot = _lerp_x(v00, v01, v10, v11, fx)
            gy = 1.0 - fy[None, :]
            # dS/dix, dS/diy summed over channels against g
            gix = tl.sum(g * ((v01 - v00) * gy + (v11 - v10) * fy[None, :]), axis=0)
            giy = tl.sum(g * (bot - top), axis=0)
            gs = tl.sum(g * (top * gy + bot * fy[None, :]))
            sx = wk * half_w
            sy = wk * half_h
            vals = _pack7(
                q,
                sx * tl.sum(gix * u),
                sx * tl.sum(gix * v),
                sx * tl.sum(gix),
                sy * tl.sum(giy * u),
                sy * tl.sum(giy * v),
                sy * tl.sum(giy),
                gs,
            )
            sums += tl.where(kk[:, None] == k, vals[None, :], 0.0)
            if SCATTER_X:
                # relaxed: plain reductions, ordered by the kernel boundary; the default
                # acq_rel made this kernel 3.5x slower on an H100 (27.6 vs 8.0 ms)
                gk = g * wk
                fx2 = fx[None, :]
                gxx = 1.0 - fx2
                dst = gx_rows + off[None, :]
                m = cmask & m00[None, :]
                tl.atomic_add(dst, gk * (gxx * gy), mask=m, sem="relaxed")
                m = cmask & m01[None, :]
                tl.atomic_add(dst + 1, gk * (fx2 * gy), mask=m, sem="relaxed")
                m = cmask & m10[None, :]
                tl.atomic_add(dst + W, gk * (gxx * fy[None, :]), mask=m, sem="relaxed")
                m = cmask & m11[None, :]
                tl.atomic_add(dst + W + 1, gk * (fx2 * fy[None, :]), mask=m, sem="relaxed")
    kmask = (kk < K)[:, None]
    if PARTIALS:
        dst = gtheta_ptr + (pid.to(tl.int64) * K + kk)[:, None] * 7 + q[None, :]
        tl.store(dst, sums, mask=kmask & (q < 7)[None, :])
    else:
        rows = (b * K + kk) * T + t
        dst = gtheta_ptr + rows[:, None] * 6 + q[None, :]
        tl.atomic_add(dst, sums, mask=kmask & (q < 6)[None, :], sem="relaxed")
        dst = gw_ptr + (b * K + kk)[:, None] + q[None, :] * 0
        tl.atomic_add(dst, sums, mask=kmask & (q == 6)[None, :], sem="relaxed")


@triton.jit
def _box(cen, num, adet, n):
    """Candidate output indices along one axis for the gather: per-pixel start (int32), common
    count (int32 scalar) and an 'any candidate inside the output' mask. The preimage of an
    input pixel's 2x2 neighbourhood spans cen +- num / adet (cen, (BLOCK_P,): its centre);
    a (near-)singular map (num / adet >= n / 2 - 1, adet == 0 included) gives the whole axis."""
    fn = tl.zeros([], cen.dtype) + n
    full = 2.0 * num + 2.0 * adet >= fn * adet
    half = tl.where(full, 0.0, num / tl.where(full, 1.0, adet))
    half = half * (1.0 + 1e-5) + 1e-5  # rounding slack: extra candidates have weight 0
    count = tl.where(full, fn, tl.floor(2.0 * half) + 1.0)
    lo = tl.where(full, 0.0, cen - half)
    hi = tl.where(full, 0.0, cen + half)
    start = tl.minimum(tl.maximum(tl.ceil(lo), 0.0), fn - count)
    inside = (hi >= 0.0) & (lo <= fn - 1.0)
    return start.to(tl.int32), count.to(tl.int32), inside


@triton.jit
def _grad_x_gather_kernel(
    g_ptr, theta_ptr, w_ptr, gx_ptr,
    Tx, T, K, C, H, W, out_h, out_w, n_ptiles, n_cblk,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Program (b, tx, channel block, tile of input pixels): deterministic grad_x.

    grad_x[y, x] = sum over frames t reading tx, ops k, and output pixels o whose taps
    include (y, x): w_k * tap weight * g[t, o], in a fixed order.
    """
    CT = theta_ptr.dtype.element_ty
    ptile, b, tx, c, cmask = _decode(tl.program_id(0), n_ptiles, n_cblk, Tx, C, BLOCK_C)
    n_out = out_h * out_w
    p = ptile * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < H * W
    xi = p % W
    yi = p // W
    xf = xi.to(CT)
    yf = yi.to(CT)
    acc = tl.zeros([BLOCK_C, BLOCK_P], CT)
    for s in range(T // Tx):
        t = tx + s
        g_rows = g_ptr + ((b * T + t) * C + c)[:, None] * n_out
        for k in range(K):
            row = (b * K + k) * T + t
            wk = tl.load(w_ptr + b * K + k)
            a, bb, cx, d, e, cy = _affine_coeffs(theta_ptr, row, H, W, out_h, out_w)
            # preimage of the square |ix - x| <= 1, |iy - y| <= 1 under the pixel-space map
            det = a * e - bb * d
            inv = 1.0 / tl.where(det == 0.0, 1.0, det)
            adet = tl.abs(det)
            j_cen = (e * (xf - cx) - bb * (yf - cy)) * inv - 0.5
            i_cen = (a * (yf - cy) - d * (xf - cx)) * inv - 0.5
            j0, nj, hit_j = _box(j_cen, tl.abs(e) + tl.abs(bb), adet, out_w)
            i0, ni, hit_i = _box(i_cen, tl.abs(d) + tl.abs(a), adet, out_h)
            active = pmask & hit_j & hit_i
            for di in range(ni):
                io = i0 + di
                ic = io.to(CT) + 0.5
                for dj in range(nj):
                    jo = j0 + dj
                    jc = jo.to(CT) + 0.5
                    x0, fx = _floor_frac(a * jc + bb * ic + cx, W)
                    y0, fy = _floor_frac(d * jc + e * ic + cy, H)
                    wx = tl.where(x0 == xi, 1.0 - fx, fx)
                    wy = tl.where(y0 == yi, 1.0 - fy, fy)
                    hit = (
                        active
                        & ((x0 == xi) | (x0 + 1 == xi))
                        & ((y0 == yi) | (y0 + 1 == yi))
                        & (io < out_h)
                        & (jo < out_w)
                    )
                    gv = tl.load(
                        g_rows + (io * out_w + jo)[None, :], mask=cmask & hit[None, :], other=0.0
                    ).to(CT)
                    acc += gv * (wk * (wx * wy))[None, :]
    gx_rows = gx_ptr + ((b * Tx + tx) * C + c)[:, None] * (H * W)
    tl.store(gx_rows + p[None, :], acc.to(gx_ptr.dtype.element_ty), mask=cmask & pmask[None, :])


def _tiles(C: int, n_pix: int, tile: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_P, channel blocks, pixel tiles) for `tile` elements per program."""
    block_c = min(triton.next_power_of_2(C), _MAX_CHANNELS)
    block_p = min(tile // block_c, triton.next_power_of_2(n_pix))
    return block_c, block_p, triton.cdiv(C, block_c), triton.cdiv(n_pix, block_p)


def multi_affine_warp_forward(
    x: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor, out_h: int, out_w: int
) -> torch.Tensor:
    """x (B, Tx, C, H, W), theta (B, K, T, 2, 3), weights (B, K) -> (B, T, C, out_h, out_w)."""
    B, Tx, C, H, W = x.shape
    K, T = theta.shape[1:3]
    out = torch.empty((B, T, C, out_h, out_w), dtype=x.dtype, device=x.device)
    block_c, block_p, n_cblk, n_ptiles = _tiles(C, out_h * out_w, _FWD[0])
    _forward_kernel[(B * T * n_cblk * n_ptiles,)](
        x, theta, weights, out,
        Tx, T, K, C, H, W, out_h, out_w, n_ptiles, n_cblk,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=_FWD[1],
    )  # fmt: skip
    return out


def multi_affine_warp_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    theta: torch.Tensor,
    weights: torch.Tensor,
    need_x: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out (B, T, C, out_h, out_w) -> (grad_x like x, grad_theta (B, K, T, 2, 3),
    grad_weights (B, K)); grad_x is zeros when not need_x. deterministic: no float atomics,
    results independent of scheduling (partials summed by torch, grad_x gathered)."""
    B, Tx, C, H, W = x.shape
    K, T = theta.shape[1:3]
    out_h, out_w = grad_out.shape[-2:]
    ct = theta.dtype
    grad_out = grad_out.contiguous()
    block_c, block_p, n_cblk, n_ptiles = _tiles(C, out_h * out_w, _BWD[0])
    n_groups = min(n_ptiles, _MAX_GROUPS)
    tiles_per_group = triton.cdiv(n_ptiles, n_groups)
    n_programs = B * T * n_cblk * n_groups
    scatter_x = need_x and not deterministic
    gx = torch.zeros(x.shape, dtype=ct, device=x.device) if scatter_x else theta
    if deterministic:
        gtheta = torch.empty((n_programs, K, 7), dtype=ct, device=x.device)
        gw = gtheta
    else:
        gtheta = torch.zeros((B, K, T, 2, 3), dtype=ct, device=x.device)
        gw = torch.zeros((B, K), dtype=ct, device=x.device)
    _backward_kernel[(n_programs,)](
        grad_out, x, theta, weights, gx, gtheta, gw,
        Tx, T, K, C, H, W, out_h, out_w, n_groups, n_cblk, tiles_per_group,
        BLOCK_C=block_c, BLOCK_P=block_p, BLOCK_K=triton.next_power_of_2(K),
        SCATTER_X=scatter_x, PARTIALS=deterministic, num_warps=_BWD[1],
    )  # fmt: skip
    if deterministic:
        sums = gtheta.view(B, T, n_cblk * n_groups, K, 7).sum(2)  # (B, T, K, 7)
        gtheta = sums[..., :6].transpose(1, 2).reshape(B, K, T, 2, 3).contiguous()
        gw = sums[..., 6].sum(1)
    if not need_x:
        return torch.zeros_like(x), gtheta, gw
    if scatter_x:
        return gx.to(x.dtype), gtheta, gw
    grad_x = torch.empty_like(x)
    block_c, block_p, n_cblk, n_ptiles = _tiles(C, H * W, _GATHER[0])
    _grad_x_gather_kernel[(B * Tx * n_cblk * n_ptiles,)](
        grad_out, theta, weights, grad_x,
        Tx, T, K, C, H, W, out_h, out_w, n_ptiles, n_cblk,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=_GATHER[1],
    )  # fmt: skip
    return grad_x, gtheta, gw
