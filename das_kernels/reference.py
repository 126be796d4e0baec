"""Pure-PyTorch references: the source of truth for every das_kernels op.

Every function here works in any floating dtype (float64 included) and on any device,
and is differentiable by ordinary autograd. Kernels are tested against these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "GSFReference",
    "gsf_channels",
    "gsf_fuse",
    "gsf_fuse_backward",
    "gsf_gate_taps",
    "gsf_gate_taps_backward",
    "gsf_pool",
    "gsf_pool_backward",
    "multi_affine_warp",
    "multi_affine_warp_backward",
    "temporal_shift",
    "temporal_shift_backward",
]


def _warp_operands(x, theta, out_h, out_w):
    """Per (b, k, t) source images and sampling grids, flattened to N = B*K*T (compute dtype)."""
    B, Tx, C, H, W = x.shape
    _, K, T = theta.shape[:3]
    dtype = torch.promote_types(x.dtype, torch.float32)
    src = x.to(dtype).unsqueeze(1).expand(B, K, T if Tx == 1 else Tx, C, H, W)
    grid = F.affine_grid(
        theta.to(dtype).reshape(B * K * T, 2, 3), [B * K * T, C, out_h, out_w], align_corners=False
    )
    return src.reshape(B * K * T, C, H, W), grid


def multi_affine_warp(
    x: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor, out_h: int, out_w: int
) -> torch.Tensor:
    """Softmax-weighted multi-affine warp, canonical layout.

    x: (B, Tx, C, H, W) with Tx == 1 (an image shared by all frames) or Tx == T.
    theta: (B, K, T, 2, 3) sampling matrices (normalized coords, align_corners=False).
    weights: (B, K).
    Returns (B, T, C, out_h, out_w):
    out[b, t] = sum_k weights[b, k] * grid_sample(x[b, t or 0], affine_grid(theta[b, k, t])).
    """
    B, _, C = x.shape[:3]
    K, T = theta.shape[1:3]
    src, grid = _warp_operands(x, theta, out_h, out_w)
    samples = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.view(B, K, T, C, out_h, out_w)
    out = torch.einsum("bk,bktchw->btchw", weights.to(samples.dtype), samples)
    return out.to(x.dtype)


def multi_affine_warp_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    theta: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x, theta, weights) of `multi_affine_warp`, from grid_sample's own backward.

    Explicit (no autograd) so it also runs inside a custom op's backward.
    """
    B, Tx, C, H, W = x.shape
    K, T = theta.shape[1:3]
    out_h, out_w = grad_out.shape[-2:]
    src, grid = _warp_operands(x, theta, out_h, out_w)
    dtype = src.dtype
    samples = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = grad_out.to(dtype).unsqueeze(1)  # (B, 1, T, C, h, w)
    grad_weights = (g * samples.view(B, K, T, C, out_h, out_w)).sum(dim=(2, 3, 4, 5))
    grad_samples = (weights.to(dtype).view(B, K, 1, 1, 1, 1) * g).reshape(
        src.shape[0], C, out_h, out_w
    )
    grad_src, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
        grad_samples, src, grid, 0, 0, False, [True, True]
    )
    # grid[n, i, j] = theta[n] @ (u_j, v_i, 1)
    base = F.affine_grid(
        torch.eye(2, 3, dtype=dtype, device=x.device).unsqueeze(0), [1, 1, out_h, out_w], False
    )[0]
    base = torch.cat([base, torch.ones_like(base[..., :1])], dim=-1)  # (h, w, 3)
    grad_theta = torch.einsum("nhwa,hwb->nab", grad_grid, base).view(B, K, T, 2, 3)
    grad_x = grad_src.view(B, K, T, C, H, W).sum(dim=1)
    if Tx == 1:
        grad_x = grad_x.sum(dim=1, keepdim=True)
    return grad_x.to(x.dtype), grad_theta.to(theta.dtype), grad_weights.to(weights.dtype)


# ---------------------------------------------------------------------------------------
# GSF (Gate-Shift-Fuse, Sudhakaran et al.) and TSM (temporal shift, Lin et al.)
#
# Layout conventions: a clip batch is (N, C, H, W) with N = B * T frames, frame n = b * T + t
# (T = num_segments). GSF works on the first G = n_gsf channels, split into two halves of
# G/2 channels (half 0 shifts y from frame t + 1, half 1 from frame t - 1); the other C - G
# channels pass through.
# ---------------------------------------------------------------------------------------


def gsf_channels(fPlane: int, gsf_ch_ratio: float = 100) -> int:
    """GSF channel count as the official module rounds it: int(fPlane * ratio / 100), made even.

    ValueError unless the result is a positive multiple of 4: the official module's
    within-half interleave (a view as (2, G/4) per half) fails for any other count.
    """
    planes = int(fPlane * gsf_ch_ratio / 100)
    planes = planes + 1 if planes % 2 else planes
    if planes < 4 or planes % 4:
        raise ValueError(
            f"GSF needs a gated channel count divisible by 4, got {planes} "
            f"(fPlane={fPlane}, gsf_ch_ratio={gsf_ch_ratio})"
        )
    return planes


def _shift_frames(v: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """out[t] = v[t + offset] along `dim`, zero where t + offset falls outside the clip."""
    T = v.shape[dim]
    k = min(abs(offset), T)
    kept = v.narrow(dim, max(offset, 0), T - k) if offset >= 0 else v.narrow(dim, 0, T - k)
    zeros = torch.zeros_like(v.narrow(dim, 0, k))
    return torch.cat([kept, zeros] if offset >= 0 else [zeros, kept], dim)


def _shift_halves(
    v: torch.Tensor, time_dim: int, half_dim: int, reverse: bool = False
) -> torch.Tensor:
    """GSF's time shift of y: half 0 takes frame t + 1, half 1 takes frame t - 1 (zero padded).
    reverse=True gives the adjoint (the shift of the gradient)."""
    first, second = v.unbind(half_dim)
    t = time_dim if time_dim < half_dim else time_dim - 1
    d = -1 if reverse else 1
    return torch.stack([_shift_frames(first, t, d), _shift_frames(second, t, -d)], half_dim)


def _split_gsf(x: torch.Tensor, gate: torch.Tensor, num_segments: int, n_gsf: int):
    """x[:, :G] as (B, T, 2, G/2, HW) and gate as (B, T, 2, 1, HW), in the compute dtype."""
    N, _, H, W = x.shape
    B, dtype = N // num_segments, torch.promote_types(x.dtype, torch.float32)
    xg = x[:, :n_gsf].to(dtype).reshape(B, num_segments, 2, n_gsf // 2, H * W)
    g = gate.to(dtype).reshape(B, num_segments, 2, 1, H * W)
    return xg, g


def gsf_pool(x: torch.Tensor, gate: torch.Tensor, num_segments: int, n_gsf: int) -> torch.Tensor:
    """Spatial means of GSF's shifted gated part and of its residual.

    x: (N, C, H, W), N = B * T; gate: (N, 2, H, W) (one map per channel half).
    Returns pooled (B, 4, G/2, T) in x's dtype, the input of GSF's fusion convs:
    pooled[b, 2h] = mean_hw shift_h(gate_h * x_h), pooled[b, 2h + 1] = mean_hw (x_h - gate_h * x_h),
    for half h (channels h*G/2 ... (h+1)*G/2 - 1), shift_0: frame t+1, shift_1: frame t-1.
    """
    xg, g = _split_gsf(x, gate, num_segments, n_gsf)
    y = g * xg
    y_mean = _shift_halves(y.mean(-1), time_dim=1, half_dim=2)  # (B, T, 2, G/2)
    r_mean = (xg - y).mean(-1)
    pooled = torch.stack([y_mean, r_mean], 3)  # (B, T, 2 halves, [y, r], G/2)
    pooled = pooled.permute(0, 2, 3, 4, 1).reshape(-1, 4, n_gsf // 2, num_segments)
    return pooled.to(x.dtype).contiguous()


def gsf_fuse(
    x: torch.Tensor, gate: torch.Tensor, w: torch.Tensor, num_segments: int, n_gsf: int
) -> torch.Tensor:
    """GSF's gate, shift, blend, within-half interleave and pass-through.

    x: (N, C, H, W); gate: (N, 2, H, W); w: (B, 2, G/2, T) fusion weights (after sigmoid),
    indexed like `gsf_pool`'s output. Returns (N, C, H, W) in x's dtype:
    z = shift(gate * x) * w + (x - gate * x) * (1 - w) per half; channel a * G/4 + j of a half
    is written to channel 2 * j + a of that half; channels G... are copied.
    """
    N, _, H, W = x.shape
    B, T, G = N // num_segments, num_segments, n_gsf
    xg, g = _split_gsf(x, gate, T, G)
    wv = w.to(xg.dtype).permute(0, 3, 1, 2).unsqueeze(-1)  # (B, T, 2, G/2, 1)
    y = g * xg
    z = _shift_halves(y, time_dim=1, half_dim=2) * wv + (xg - y) * (1 - wv)
    z = z.reshape(B, T, 2, 2, G // 4, H * W).transpose(3, 4).reshape(N, G, H, W)
    return torch.cat([z.to(x.dtype), x[:, G:]], 1)


def gsf_pool_backward(
    grad_pooled: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, num_segments: int, n_gsf: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_gate) of `gsf_pool`; grad_x is zero in the pass-through channels.

    With ay = d/d mean(y) shifted back to the frame y came from, ar = d/d mean(r), both / HW:
    grad_x = ay * gate + ar * (1 - gate), grad_gate = sum over the half's channels x (ay - ar).
    """
    N, C, H, W = x.shape
    xg, g = _split_gsf(x, gate, num_segments, n_gsf)
    gp = grad_pooled.to(xg.dtype).reshape(-1, 2, 2, n_gsf // 2, num_segments) / (H * W)
    gp = gp.permute(0, 4, 1, 3, 2)  # (B, T, 2 halves, G/2, [y, r])
    ay = _shift_halves(gp[..., 0], time_dim=1, half_dim=2, reverse=True).unsqueeze(-1)
    ar = gp[..., 1].unsqueeze(-1)
    grad_xg = (ay * g + ar * (1 - g)).reshape(N, n_gsf, H, W)
    grad_gate = (xg * (ay - ar)).sum(3).reshape(N, 2, H, W)
    grad_x = torch.cat([grad_xg, grad_xg.new_zeros(N, C - n_gsf, H, W)], 1)
    return grad_x.to(x.dtype), grad_gate.to(gate.dtype)


def gsf_fuse_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    w: torch.Tensor,
    num_segments: int,
    n_gsf: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_gate, grad_w) of `gsf_fuse`.

    With gz the output gradient before the interleave, dy = the shift adjoint of gz * w and
    dr = gz * (1 - w): grad_x = dy * gate + dr * (1 - gate) (grad_out in the pass-through
    channels), grad_gate = sum over the half's channels x (dy - dr),
    grad_w = sum over pixels gz * (shift(gate x) - (1 - gate) x).
    """
    N, C, H, W = x.shape
    B, T, G = N // num_segments, num_segments, n_gsf
    xg, g = _split_gsf(x, gate, T, G)
    wv = w.to(xg.dtype).permute(0, 3, 1, 2).unsqueeze(-1)  # (B, T, 2, G/2, 1)
    gz = grad_out[:, :G].to(xg.dtype).reshape(B, T, 2, G // 4, 2, H * W).transpose(3, 4)
    gz = gz.reshape(B, T, 2, G // 2, H * W)
    y = g * xg
    grad_w = (gz * (_shift_halves(y, time_dim=1, half_dim=2) - (xg - y))).sum(-1)
    dy = _shift_halves(gz * wv, time_dim=1, half_dim=2, reverse=True)
    dr = gz * (1 - wv)
    grad_xg = (dy * g + dr * (1 - g)).reshape(N, G, H, W)
    grad_gate = (xg * (dy - dr)).sum(3).reshape(N, 2, H, W)
    grad_x = torch.cat([grad_xg.to(x.dtype), grad_out[:, G:].to(x.dtype)], 1)
    grad_w = grad_w.permute(0, 2, 3, 1).to(w.dtype).contiguous()
    return grad_x, grad_gate.to(gate.dtype).contiguous(), grad_w


def _pad_clip(v: torch.Tensor) -> torch.Tensor:
    """(B, T, ...,  H, W) zero padded by one frame and one pixel on each side."""
    v = F.pad(v, (1, 1, 1, 1))
    zero = torch.zeros_like(v[:, :1])
    return torch.cat([zero, v, zero], 1)


def gsf_gate_taps(taps: torch.Tensor, bias: torch.Tensor, num_segments: int) -> torch.Tensor:
    """GSF's gate from the 27 tap responses of its 3x3x3 gate conv (see ops.gsf_gate.gsf_gate).

    taps: (N, 54, H, W), channel 27 g + 9 kt + 3 kh + kw = tap (kt, kh, kw) of group g;
    bias: (2,). Returns (N, 2, H, W): tanh(bias[g] + sum_k taps[frame t + kt - 1, 27 g + k]
    at pixel (h + kh - 1, w + kw - 1)), zero outside the clip and the image.
    """
    N, _, H, W = taps.shape
    T = num_segments
    padded = _pad_clip(taps.reshape(N // T, T, 2, 27, H, W))
    pre = bias.view(1, 1, 2, 1, 1).to(taps.dtype).expand(N // T, T, 2, H, W)
    for k in range(27):
        kt, kh, kw = k // 9, (k // 3) % 3, k % 3
        pre = pre + padded[:, kt : kt + T, :, k, kh : kh + H, kw : kw + W]
    return torch.tanh(pre).reshape(N, 2, H, W)


def gsf_gate_taps_backward(
    grad_gate: torch.Tensor, gate: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_taps, grad_bias) of `gsf_gate_taps`, from its output `gate`."""
    N, _, H, W = gate.shape
    T = num_segments
    pre = (grad_gate * (1 - gate * gate)).reshape(N // T, T, 2, H, W)
    padded = _pad_clip(pre)  # tap k of frame t' gets frame t' - kt + 1, pixel - (kh, kw) + 1
    grad = [
        padded[:, 2 - kt : 2 - kt + T, :, 2 - kh : 2 - kh + H, 2 - kw : 2 - kw + W]
        for kt in range(3)
        for kh in range(3)
        for kw in range(3)
    ]
    grad_taps = torch.stack(grad, 3).reshape(N, 54, H, W)
    return grad_taps, pre.sum((0, 1, 3, 4))


class GSFReference(torch.nn.Module):
    """The official GSF module (swathikirans/GSF ``gsf.py``), step by step, same parameter names.

    ``GSFReference(fPlane, num_segments, gsf_ch_ratio)`` gates the first
    ``self.fPlane = gsf_channels(fPlane, gsf_ch_ratio)`` channels of a (B*T, C, H, W) input and
    passes the rest through. It loads an official state_dict as is. The official code needs
    ``self.fPlane`` divisible by 4 (its interleave view fails otherwise); here that is a
    ValueError at construction.
    """

    def __init__(self, fPlane: int, num_segments: int = 8, gsf_ch_ratio: float = 100) -> None:
        super().__init__()
        self.fPlane = gsf_channels(fPlane, gsf_ch_ratio)
        self.num_segments = num_segments
        nn = torch.nn
        self.conv3D = nn.Conv3d(self.fPlane, 2, (3, 3, 3), stride=1, padding=(1, 1, 1), groups=2)
        self.tanh = nn.Tanh()
        self.bn = nn.BatchNorm3d(num_features=self.fPlane)
        self.relu = nn.ReLU()
        self.channel_conv1 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.channel_conv2 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.sigmoid = nn.Sigmoid()

    def clip_view(self, x_full: torch.Tensor) -> torch.Tensor:
        """The gated channels of (B*T, C, H, W) as a contiguous (B, G, T, H, W) clip."""
        x = x_full[:, : self.fPlane]
        B = x.shape[0] // self.num_segments
        return x.reshape(B, self.num_segments, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, T, H, W) gate maps from the (B, G, T, H, W) clip: tanh(conv3D(relu(bn(x))))."""
        return self.tanh(self.conv3D(self.relu(self.bn(x))))

    def forward(self, x_full: torch.Tensor) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*T, C, H, W)."""
        x = self.clip_view(x_full)
        return self.shift_fuse(x_full, x, self.gate(x))

    def shift_fuse(self, x_full: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The official steps after the gate conv: gate, shift, pool, fuse, blend, interleave."""
        B, G, T, H, W = x.shape
        half, quarter = G // 2, G // 4
        y1, y2 = gate[:, 0:1] * x[:, :half], gate[:, 1:2] * x[:, half:]
        r1, r2 = x[:, :half] - y1, x[:, half:] - y2  # (B, G/2, T, H, W)
        y1, y2 = _shift_frames(y1, 2, 1), _shift_frames(y2, 2, -1)

        def spatial_mean(v: torch.Tensor) -> torch.Tensor:  # (B, G/2, T, 1), as the official
            return v.mean(-1).mean(-1).unsqueeze(3)

        def weight(conv: torch.nn.Module, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            pooled = torch.cat([spatial_mean(y), spatial_mean(r)], 3).permute(0, 3, 1, 2)
            return self.sigmoid(conv(pooled)).squeeze(1).unsqueeze(-1).unsqueeze(-1)

        w1, w2 = weight(self.channel_conv1, y1, r1), weight(self.channel_conv2, y2, r2)
        z1, z2 = y1 * w1 + r1 * (1 - w1), y2 * w2 + r2 * (1 - w2)

        def interleave(z: torch.Tensor) -> torch.Tensor:
            z = z.view(B, 2, quarter, T, H, W).permute(0, 2, 1, 3, 4, 5)
            return z.contiguous().view(B, half, T, H, W)

        y = torch.cat([interleave(z1), interleave(z2)], 1)
        y = y.permute(0, 2, 1, 3, 4).contiguous().view(B * T, G, H, W)
        return torch.cat([y, x_full[:, G:]], 1)


def _tsm(x: torch.Tensor, n_segments: int, fold_div: int, direction: int) -> torch.Tensor:
    N, C, H, W = x.shape
    v = x.reshape(N // n_segments, n_segments, C, H, W)
    fold = C // fold_div
    out = torch.cat(
        [
            _shift_frames(v[:, :, :fold], 1, direction),
            _shift_frames(v[:, :, fold : 2 * fold], 1, -direction),
            v[:, :, 2 * fold :],
        ],
        2,
    )
    return out.reshape(N, C, H, W)


def temporal_shift(x: torch.Tensor, n_segments: int, fold_div: int = 8) -> torch.Tensor:
    """TSM's shift of (N, C, H, W), N = B * T: channels [0, C/fold_div) take frame t + 1,
    [C/fold_div, 2 C/fold_div) take frame t - 1 (zero padded), the rest are unchanged."""
    return _tsm(x, n_segments, fold_div, 1)


def temporal_shift_backward(
    grad_out: torch.Tensor, n_segments: int, fold_div: int = 8
) -> torch.Tensor:
    """grad_x of `temporal_shift`: the same shift in the opposite directions."""
    return _tsm(grad_out, n_segments, fold_div, -1)
