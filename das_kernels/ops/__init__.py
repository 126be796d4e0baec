"""Registered ops (``torch.ops.das_kernels.*``) and their public wrappers."""

from das_kernels.ops.gsf import gsf_fuse, gsf_pool, gsf_shift_fuse
from das_kernels.ops.gsf_gate import gsf_gate
from das_kernels.ops.gsf_module import gsf_module
from das_kernels.ops.multi_affine_warp import multi_affine_warp, softmax_affine_warp
from das_kernels.ops.temporal_shift import temporal_shift

__all__ = [
    "gsf_fuse",
    "gsf_gate",
    "gsf_module",
    "gsf_pool",
    "gsf_shift_fuse",
    "multi_affine_warp",
    "softmax_affine_warp",
    "temporal_shift",
]
