// Per-element math of GSF (gsf_pool, gsf_fuse, the gsf_gate_taps helper), shared by the CPU
// (csrc/cpu/gsf.cpp) and CUDA (csrc/cuda/gsf.cu) kernels. No torch headers: plain C++ that
// nvcc and g++ both compile.
//
// Layout (see das_kernels/ops/gsf.py for the full op contracts):
//   x, out, grad_x: (N, C, H, W), N = B * T, frame n = b * T + t (T = num_segments).
//   gate: (N, 2, H, W), one gate map per channel half.
//   pooled, w: (B, 4, G/2, T) and (B, 2, G/2, T): per (half h, channel i of the half, frame t).
// GSF gates the first G channels: half h holds channels h * G/2 ... (h + 1) * G/2 - 1.
// Half 0 takes its gated part y from frame t + 1, half 1 from frame t - 1 (zero padded).
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace das_kernels {
namespace gsf {

// Sizes of one GSF call: x (N, C, HW), N = B * T, G gated channels (a multiple of 4 <= C).
struct Shape {
  int64_t N, C, HW, T, G;
};

// Frame whose gated part y frame t of half h receives (t + 1 or t - 1), or -1 (zero padding).
DAS_HOST_DEVICE int64_t source_frame(int64_t t, int64_t h, int64_t T) {
  const int64_t s = h == 0 ? t + 1 : t - 1;
  return (s >= 0 && s < T) ? s : -1;
}

// The inverse map: the frame that receives frame t's gated part y, or -1 when none does.
DAS_HOST_DEVICE int64_t target_frame(int64_t t, int64_t h, int64_t T) {
  const int64_t s = h == 0 ? t - 1 : t + 1;
  return (s >= 0 && s < T) ? s : -1;
}

// Within-half interleave: blended channel i = a * G/4 + j of a half is written to 2 * j + a.
DAS_HOST_DEVICE int64_t out_channel(int64_t i, int64_t quarter) {
  return 2 * (i % quarter) + i / quarter;
}

// Forward blend of one pixel: z = w * (g_s * x_s) + (1 - w) * (1 - g) * x, where (g_s, x_s)
// are the gate and input at the source frame (0 when zero padded).
template <typename T>
DAS_HOST_DEVICE T fuse(T w, T gs, T xs, T g, T x) {
  return w * (gs * xs) + (T(1) - w) * ((T(1) - g) * x);
}

// Gated part and residual of one pixel: y = g * x, r = x - y.
template <typename T>
DAS_HOST_DEVICE void gate_split(T g, T x, T& y, T& r) {
  y = g * x;
  r = x - y;
}

// gsf_fuse backward of one pixel (x at frame t; the frame m = target_frame(t) got its y):
//   a = go_t * (1 - w_t) (residual path), b = go_m * w_m (shifted path, 0 when m = -1)
//   grad_x = a * (1 - g) + b * g;  grad_gate += x * (b - a)
//   grad_w_t += go_t * (g_s * x_s - (1 - g) * x)   (summed over the pixels of the plane)
template <typename T>
DAS_HOST_DEVICE T fuse_grad_x(T a, T b, T g) {
  return a * (T(1) - g) + b * g;
}

template <typename T>
DAS_HOST_DEVICE T fuse_grad_w(T go, T gs, T xs, T g, T x) {
  return go * (gs * xs - (T(1) - g) * x);
}

// gsf_pool backward of one pixel: ay = d loss / d mean(y) of the frame that received this
// frame's y, divided by H*W (0 when none), ar = d loss / d mean(r) / (H*W):
//   grad_x = ay * g + ar * (1 - g);  grad_gate += x * (ay - ar)
template <typename T>
DAS_HOST_DEVICE T pool_grad_x(T ay, T ar, T g) {
  return ay * g + ar * (T(1) - g);
}

// Gate taps (CPU helper gsf_gate_taps): the official 3x3x3 gate conv as a GEMM giving, per
// frame, group g and tap k = kt * 9 + kh * 3 + kw, the response plane taps[n, 27 g + k]; the
// gate sums the 27 shifted planes: frame t reads frame t + kt - 1 of its clip and pixel
// (h, w) reads (h + kh - 1, w + kw - 1), zero outside. This gives the range of output rows
// (or columns) [lo, hi) whose source row (column) i + k - 1 lies in [0, n).
DAS_HOST_DEVICE void tap_range(int64_t k, int64_t n, int64_t& lo, int64_t& hi) {
  lo = k == 0 ? 1 : 0;
  hi = k == 2 ? n - 1 : n;
}

// d tanh(u) / du from the output g = tanh(u).
template <typename T>
DAS_HOST_DEVICE T tanh_grad(T g) {
  return T(1) - g * g;
}

}  // namespace gsf
}  // namespace das_kernels
