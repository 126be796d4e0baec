// Per-pixel math of multi_affine_warp shared by the CPU and CUDA kernels (no torch headers).
//
// Conventions follow F.affine_grid + F.grid_sample (bilinear, zeros padding,
// align_corners=False) bit for bit where it decides which taps are used:
//   base grid  u_j = linspace(-1, 1, OW)[j] * (OW - 1) / OW (computed by the caller; the
//              analytic value (2j + 1) / OW - 1 is the fallback),
//   xs         = (u * th0 + v * th1) + th2 (affine_grid's bmm order),
//   ix         = fma(xs + 1, W / 2, -0.5)  (grid_sample's unnormalize, contracted as in ATen),
//   x0         = floor(ix), fx = ix - x0.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef HOST_DEVICE
#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif
#endif

namespace das_kernels {
namespace multi_affine_warp {

// Sizes of one call: x (B, Tx, C, H, W) with Tx in {1, T}, theta (B, K, T, 2, 3), out
// (B, T, C, OH, OW).
struct Shape {
  int64_t B, Tx, T, K, C, H, W, OH, OW;
};

// Analytic base coordinate of pixel `j` of `n` (align_corners=False).
template <typename T>
HOST_DEVICE inline T base_coord(int64_t j, int64_t n) {
  return static_cast<T>(2 * j + 1) / static_cast<T>(n) - T(1);
}

// a * b + c with a single rounding (the host float version is exact through double: the
// product of two floats fits in a double).
HOST_DEVICE inline float fused_mul_add(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) +
                            static_cast<double>(c));
#endif
}

HOST_DEVICE inline double fused_mul_add(double a, double b, double c) {
#ifdef __CUDA_ARCH__
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Separately rounded product and sum: nvcc would otherwise contract them into FMAs, maybe
// differently in different kernels (the host code keeps them apart by construction).
HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
HOST_DEVICE inline double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// Normalized coordinate -> input pixel coordinate; half_size = size / 2.
template <typename T>
HOST_DEVICE inline T unnormalize(T coord, T half_size) {
  return fused_mul_add(add_rn(coord, T(1)), half_size, T(-0.5));
}

template <typename T>
struct SamplePoint {
  T ix, iy;  // input pixel coordinates
};

// Sample point from the four products of affine_grid's bmm, xs = (u*th0 + v*th1) + th2 and
// ys = (u*th3 + v*th4) + th5, rounded separately as ATen's CPU bmm does (a caller may
// precompute the u products per column and the v products per row).
template <typename T>
HOST_DEVICE inline SamplePoint<T> sample_point(T u_th0, T v_th1, T th2, T u_th3, T v_th4, T th5,
                                               T half_w, T half_h) {
  return {unnormalize(add_rn(add_rn(u_th0, v_th1), th2), half_w),
          unnormalize(add_rn(add_rn(u_th3, v_th4), th5), half_h)};
}

// Where output base point (u, v) samples the input under th = theta[b, k, t] (row-major 2x3).
template <typename T>
HOST_DEVICE inline SamplePoint<T> warp_sample_point(const T* th, T u, T v, T half_w, T half_h) {
  return sample_point(mul_rn(u, th[0]), mul_rn(v, th[1]), th[2], mul_rn(u, th[3]),
                      mul_rn(v, th[4]), th[5], half_w, half_h);
}

// floor() of a coordinate clamped to [-2, size + 1]: outside that range every tap is out of
// bounds anyway, and the clamp keeps the int conversion defined (NaN maps to -2).
template <typename T>
HOST_DEVICE inline int clamped_floor(T c, int size, T* frac) {
  const T lo = T(-2), hi = static_cast<T>(size + 1);
  c = c > lo ? c : lo;
  c = c < hi ? c : hi;
  int i = static_cast<int>(c);  // truncation; fix up negatives below
  i -= static_cast<T>(i) > c ? 1 : 0;
  *frac = c - static_cast<T>(i);
  return i;
}

HOST_DEVICE inline int clamp_index(int i, int size) {
  return i < 0 ? 0 : (i >= size ? size - 1 : i);
}

// Top-left tap and fractional parts of a sample point.
template <typename T>
struct BilinearCorner {
  int x0, y0;
  T fx, fy;
};

template <typename T>
HOST_DEVICE inline BilinearCorner<T> bilinear_corner(SamplePoint<T> p, int H, int W) {
  BilinearCorner<T> q;
  q.x0 = clamped_floor(p.ix, W, &q.fx);
  q.y0 = clamped_floor(p.iy, H, &q.fy);
  return q;
}

// The 4 taps of corner (x0, y0), in the order (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
// off[a] is always a readable offset into an H x W plane (clamped); bit a of mask says
// whether tap a is inside the image (out-of-bounds taps read as 0).
struct TapOffsets {
  int64_t off[4];
  unsigned mask;
};

HOST_DEVICE inline TapOffsets tap_offsets(int x0, int y0, int H, int W) {
  const int x1 = x0 + 1, y1 = y0 + 1;
  const unsigned vx0 = x0 >= 0 && x0 < W, vx1 = x1 >= 0 && x1 < W;
  const unsigned vy0 = y0 >= 0 && y0 < H, vy1 = y1 >= 0 && y1 < H;
  const int64_t r0 = static_cast<int64_t>(clamp_index(y0, H)) * W;
  const int64_t r1 = static_cast<int64_t>(clamp_index(y1, H)) * W;
  const int c0 = clamp_index(x0, W), c1 = clamp_index(x1, W);
  TapOffsets t;
  t.off[0] = r0 + c0;
  t.off[1] = r0 + c1;
  t.off[2] = r1 + c0;
  t.off[3] = r1 + c1;
  t.mask = (vy0 & vx0) | (vy0 & vx1) << 1 | (vy1 & vx0) << 2 | (vy1 & vx1) << 3;
  return t;
}

// 1 when at least one tap of corner (x0, y0) is inside the image (no short circuit, so
// loops over it vectorize).
HOST_DEVICE inline int taps_any_inside(int x0, int y0, int H, int W) {
  return (x0 >= -1) & (x0 < W) & (y0 >= -1) & (y0 < H);
}

// Bilinear weight of tap a (0..3) given the fractional parts.
template <typename T>
HOST_DEVICE inline T tap_weight(int a, T fx, T fy) {
  const T wx = (a & 1) ? fx : T(1) - fx;
  const T wy = (a & 2) ? fy : T(1) - fy;
  return wx * wy;
}

// Bilinear interpolation of the 4 tap values (0 for out-of-bounds taps). V is the value
// type: a scalar, or a small vector of channels (GCC vector extension) on the CPU.
template <typename V, typename T>
HOST_DEVICE inline V bilinear_interp(V v00, V v01, V v10, V v11, T fx, T fy) {
  const V a = v00 + (v10 - v00) * fy;  // column x0, interpolated in y
  const V b = v01 + (v11 - v01) * fy;  // column x0 + 1
  return a + (b - a) * fx;
}

// The interpolated sample and its derivatives along ix and iy (same expressions as
// bilinear_interp for the sample).
template <typename V, typename T>
HOST_DEVICE inline void bilinear_sample_grad(V v00, V v01, V v10, V v11, T fx, T fy, V* s,
                                             V* dix, V* diy) {
  const V d0 = v10 - v00, d1 = v11 - v01;
  const V a = v00 + d0 * fy, b = v01 + d1 * fy;
  *dix = b - a;
  *s = a + (b - a) * fx;
  *diy = d0 + (d1 - d0) * fx;
}

// Scatter of gw (= w_k * grad) to the 4 taps: c_a = gw * tap_weight(a, fx, fy).
template <typename V, typename T>
HOST_DEVICE inline void bilinear_scatter(V gw, T fx, T fy, V* c00, V* c01, V* c10, V* c11) {
  const V r = gw * fx, l = gw - r;  // columns x0 + 1 and x0
  *c10 = l * fy;
  *c00 = l - *c10;
  *c11 = r * fy;
  *c01 = r - *c11;
}

// Per (b, k, t) accumulators of the backward reduction, in this order:
// grad_weights, then d/dtheta[0..5] before the w_k * size / 2 factors.
constexpr int kReduceSlots = 7;

}  // namespace multi_affine_warp
}  // namespace das_kernels
