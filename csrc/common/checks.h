// Host-side input checks of the native ops, shared by the torch wrappers of csrc/cpu/<op>.cpp
// and csrc/cuda/<op>.cu. Needs ATen, so it is empty without DAS_WITH_TORCH (the CUDA sources
// must compile without torch). `type` is the kernel's device type (CPU or CUDA).
#pragma once

#ifdef DAS_WITH_TORCH
#include <ATen/ATen.h>

#include <cstdint>

#include "common/gsf.h"
#include "common/multi_affine_warp.h"

namespace das_kernels {

// t is a `type` tensor on x's device.
inline bool on_device(const at::Tensor& t, const at::Tensor& x, c10::DeviceType type) {
  return t.device().type() == type && t.device() == x.device();
}

namespace multi_affine_warp {

// affine_grid's base coordinates: linspace(-1, 1, n) * (n - 1) / n, by the same ATen ops
// (on the device of `opts`).
inline at::Tensor base_coords(int64_t n, const at::TensorOptions& opts) {
  if (n <= 1) return at::zeros({n}, opts);
  return at::linspace(-1, 1, n, opts).mul(n - 1).div(n);
}

// Shape of a call (OH = OW = 0, set by the caller); x, theta and weights in the canonical
// layout of das_kernels/ops/multi_affine_warp.py.
inline Shape check_inputs(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& weights,
                          c10::DeviceType type) {
  TORCH_CHECK(on_device(x, x, type) && on_device(theta, x, type) && on_device(weights, x, type),
              "multi_affine_warp (", c10::DeviceTypeName(type), " kernel): all inputs must be ",
              c10::DeviceTypeName(type), " tensors on one device");
  TORCH_CHECK(x.dim() == 5, "multi_affine_warp: x must be (B, Tx, C, H, W), got ", x.sizes());
  TORCH_CHECK(theta.dim() == 5 && theta.size(3) == 2 && theta.size(4) == 3,
              "multi_affine_warp: theta must be (B, K, T, 2, 3), got ", theta.sizes());
  TORCH_CHECK(weights.dim() == 2, "multi_affine_warp: weights must be (B, K), got ",
              weights.sizes());
  Shape d{x.size(0), x.size(1), theta.size(2), theta.size(1), x.size(2),
          x.size(3), x.size(4), 0,             0};
  TORCH_CHECK(theta.size(0) == d.B && weights.size(0) == d.B && weights.size(1) == d.K,
              "multi_affine_warp: batch / K mismatch between x ", x.sizes(), ", theta ",
              theta.sizes(), " and weights ", weights.sizes());
  TORCH_CHECK(d.Tx == 1 || d.Tx == d.T, "multi_affine_warp: x has ", d.Tx,
              " frames, expected 1 or T=", d.T);
  TORCH_CHECK(d.H < (int64_t(1) << 30) && d.W < (int64_t(1) << 30),
              "multi_affine_warp: input too large");
  const auto op = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(theta.scalar_type() == op && weights.scalar_type() == op,
              "multi_affine_warp: theta and weights must be ", op, " for x of dtype ",
              x.scalar_type());
  return d;
}

}  // namespace multi_affine_warp

namespace gsf {

// Shape of a gsf_pool / gsf_fuse call: x (N, C, H, W) and gate (N, 2, H, W) contiguous, of
// one dtype, G = n_gsf a multiple of 4 in [4, C], N a multiple of T = num_segments.
inline Shape check_inputs(const char* op, const at::Tensor& x, const at::Tensor& gate, int64_t T,
                          int64_t G, c10::DeviceType type) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(on_device(x, x, type) && on_device(gate, x, type), op, ": x and gate must be ",
              c10::DeviceTypeName(type), " tensors on one device");
  TORCH_CHECK(x.is_contiguous() && gate.is_contiguous(), op, ": x and gate must be contiguous");
  TORCH_CHECK(gate.scalar_type() == x.scalar_type(), op, ": gate must have x's dtype");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(T > 0 && N % T == 0, op, ": N=", N, " is not a multiple of num_segments=", T);
  TORCH_CHECK(G >= 4 && G % 4 == 0 && G <= C, op, ": n_gsf=", G,
              " must be a multiple of 4 in [4, C=", C, "]");
  TORCH_CHECK(gate.sizes() == at::IntArrayRef({N, 2, H, W}), op, ": gate must be (N, 2, H, W) = (",
              N, ", 2, ", H, ", ", W, "), got ", gate.sizes());
  TORCH_CHECK(H * W > 0, op, ": x must have pixels, got ", x.sizes());
  return Shape{N, C, H * W, T, G};
}

// t (argument `name` of `op`) has shape `sizes`, x's dtype and device, and is contiguous.
inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                       at::IntArrayRef sizes) {
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype");
  TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), op, ": ", name,
              " must be contiguous and on x's device");
}

}  // namespace gsf

namespace temporal_shift {

// x (N, C, H, W) contiguous on `type`, N a multiple of n_segments, fold_div > 0.
inline void check_inputs(const char* op, const at::Tensor& x, int64_t n_segments,
                         int64_t fold_div, c10::DeviceType type) {
  TORCH_CHECK(x.dim() == 4, op, ": expects (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.device().type() == type && x.is_contiguous(), op, ": expects a contiguous ",
              c10::DeviceTypeName(type), " tensor");
  TORCH_CHECK(n_segments > 0 && x.size(0) % n_segments == 0, op, ": N=", x.size(0),
              " is not a multiple of n_segments=", n_segments);
  TORCH_CHECK(fold_div > 0, op, ": fold_div must be positive, got ", fold_div);
}

}  // namespace temporal_shift
}  // namespace das_kernels
#endif  // DAS_WITH_TORCH
