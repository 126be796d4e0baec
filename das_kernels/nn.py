"""Thin nn.Modules over the das_kernels ops: no logic beyond holding arguments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from das_kernels.ops import gsf_module, multi_affine_warp, temporal_shift
from das_kernels.reference import gsf_channels

__all__ = ["GSF", "MultiAffineWarp", "TemporalShift"]


class MultiAffineWarp(nn.Module):
    """``forward(x, theta, weights)`` = ``das_kernels.multi_affine_warp`` at `out_size`."""

    def __init__(self, out_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.out_size = out_size

    def forward(self, x: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return multi_affine_warp(x, theta, weights, self.out_size)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}"


class _FramesBatchNorm3d(nn.BatchNorm3d):
    """The official BatchNorm3d (same type, parameters and statistics) applied to frames:
    per-channel statistics over (B*T, H, W) equal those over (B, T, H, W) of the clip."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected (B*T, C, H, W) frames, got shape {tuple(input.shape)}")


class GSF(nn.Module):
    """Gate-Shift-Fuse on (B*T, C, H, W) frames; a drop-in for the official ``GSF`` module.

    Same constructor, attributes (``fPlane`` = gated channels G, ``num_segments``), submodule
    types and state_dict as the official module (swathikirans/GSF): ``conv3D`` (Conv3d,
    weight (2, G/2, 3, 3, 3)), ``bn`` (BatchNorm3d, run on the B*T frames: the same statistics
    as over (B, C, T, H, W)), ``channel_conv1`` and ``channel_conv2``; official weights load as
    they are and ``state_dict()`` round-trips in the official format. ``forward`` is one
    autograd node, ``das_kernels.gsf_module``: BatchNorm, ReLU, the gate conv in the frame
    layout (``das_kernels.ops.gsf_gate``, path per ``backends.gsf_gate_path``; no clip
    permute) and the fused shift-fuse (``gsf_pool``, fusion convs, ``gsf_fuse``), with the
    activations recomputed in the backward. Channels G ... C-1 pass through.
    """

    def __init__(self, fPlane: int, num_segments: int = 8, gsf_ch_ratio: float = 100) -> None:
        super().__init__()
        self.fPlane = gsf_channels(fPlane, gsf_ch_ratio)
        self.num_segments = num_segments
        # parameter holders with the official names, shapes and initialisation
        self.conv3D = nn.Conv3d(self.fPlane, 2, (3, 3, 3), padding=(1, 1, 1), groups=2)
        self.bn = _FramesBatchNorm3d(self.fPlane)
        self.channel_conv1 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.channel_conv2 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*T, C, H, W), C >= fPlane."""
        convs, bn = (self.channel_conv1, self.channel_conv2), self.bn
        return gsf_module(
            x,
            self.conv3D.weight,
            self.conv3D.bias,
            torch.cat([c.weight for c in convs]),
            torch.cat([c.bias for c in convs]),
            bn.weight,
            bn.bias,
            bn.running_mean,
            bn.running_var,
            self.num_segments,
            training=bn.training or not bn.track_running_stats,
            momentum=bn.momentum,
            eps=bn.eps,
            num_batches_tracked=bn.num_batches_tracked,
        )

    def extra_repr(self) -> str:
        return f"fPlane={self.fPlane}, num_segments={self.num_segments}"


class TemporalShift(nn.Module):
    """TSM's temporal shift of (B*T, C, H, W) frames (``das_kernels.temporal_shift``).

    Names follow TSM's ``TemporalShift``: ``n_segment`` frames per clip, ``fold_div``
    (the ``n_div`` argument). Shift only: wrapping a residual branch is the model's job.
    """

    def __init__(self, n_segment: int = 8, n_div: int = 8) -> None:
        super().__init__()
        self.n_segment = n_segment
        self.fold_div = n_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.n_segment, self.fold_div)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}"
