"""Temporal modules for the video backbones: GSF, TSM or none, from ``das_kernels.nn``.

``das_kernels.nn.GSF(fPlane, num_segments, gsf_ch_ratio)`` (the official constructor) and
``das_kernels.nn.TemporalShift(n_segment, n_div)`` work on ``(B*T, C, H, W)`` tensors.
"""

from __future__ import annotations

from torch import nn

from das_kernels.nn import GSF, TemporalShift

__all__ = ["FUSIONS", "make_temporal"]

FUSIONS = ("gsf", "tsm", "none")


def make_temporal(
    fusion: str, channels: int, frames: int, gsf_ratio: int = 25, tsm_fold_div: int = 8
) -> nn.Module | None:
    """The temporal module for `channels` channels of a (B*T, C, H, W) tensor, or None."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if fusion == "none":
        return None
    if fusion == "gsf":
        return GSF(fPlane=channels, num_segments=frames, gsf_ch_ratio=gsf_ratio)
    return TemporalShift(n_segment=frames, n_div=tsm_fold_div)
