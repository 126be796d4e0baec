// CUDA kernels of das_native::multi_affine_warp_{forward,backward} (schemas in das_kernels.cpp).
//
// The kernels and their launchers take raw pointers and compile without torch; the torch
// wrapper at the end (DAS_WITH_TORCH) converts tensors and registers the CUDA kernels.
// Per-pixel math (sample points, taps, interpolation, gradients) comes from
// common/multi_affine_warp.h, shared with the CPU kernels.
//
// forward:   one thread per output pixel (b, t, i, j); loops K ops, then channels.
// backward:  one thread per output pixel; per op a block reduction of the 7 sums of grad_theta
//            / grad_weights (warp shuffles), then
//              fast path:     one atomicAdd per block and value; grad_x by atomicAdd into an
//                             opmath buffer (grad_x itself for float/double);
//              deterministic: per-block partials summed in a fixed order by a second kernel;
//                             grad_x gathered per input pixel (each thread owns one pixel and
//                             visits the output pixels whose taps can reach it), no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/multi_affine_warp.h"
#include "cuda/opmath.cuh"

namespace das_kernels {
namespace cuda {

namespace warp = das_kernels::multi_affine_warp;

using warp::kReduceSlots;
using warp::Shape;

constexpr int kThreads = 256;   // threads per block (a multiple of 32)
constexpr int kChannels = 4;    // channels accumulated in registers per pass
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Base grid coordinate (affine_grid's linspace when given, else the analytic value).
template <typename T>
__device__ __forceinline__ T base_at(const T* base, int64_t j, int64_t n) {
  return base != nullptr ? base[j] : warp::base_coord<T>(j, n);
}

template <typename T>
struct Op {  // theta[b, k, t] and weights[b, k]
  T th[6];
  T wk;
};

template <typename T>
__device__ __forceinline__ Op<T> load_op(const T* theta, const T* weights, const Shape& d,
                                         int64_t b, int64_t k, int64_t t) {
  Op<T> o;
  const T* th = theta + ((b * d.K + k) * d.T + t) * 6;
#pragma unroll
  for (int q = 0; q < 6; ++q) o.th[q] = th[q];
  o.wk = weights[b * d.K + k];
  return o;
}

// Value of tap a (0 when outside the image).
template <typename scalar_t>
__device__ __forceinline__ opmath_t<scalar_t> tap_value(const scalar_t* plane,
                                                    const warp::TapOffsets& to, int a) {
  return ((to.mask >> a) & 1u) ? to_op(plane[to.off[a]]) : opmath_t<scalar_t>(0);
}

// ---------------------------------------------------------------------------- forward

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const opmath_t<scalar_t>* __restrict__ theta,
                   const opmath_t<scalar_t>* __restrict__ weights,
                   const opmath_t<scalar_t>* __restrict__ base_u,
                   const opmath_t<scalar_t>* __restrict__ base_v, scalar_t* __restrict__ out,
                   Shape d) {
  using T = opmath_t<scalar_t>;
  const int64_t HW = d.H * d.W, OHW = d.OH * d.OW;
  const int H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const T half_w = static_cast<T>(d.W) / T(2), half_h = static_cast<T>(d.H) / T(2);
  const int64_t n = d.B * d.T * OHW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pix = idx % OHW, bt = idx / OHW;
    const int64_t i = pix / d.OW, j = pix % d.OW, t = bt % d.T, b = bt / d.T;
    const T u = base_at(base_u, j, d.OW), v = base_at(base_v, i, d.OH);
    const scalar_t* xb = x + (b * d.Tx + (d.Tx == 1 ? 0 : t)) * d.C * HW;
    scalar_t* ob = out + bt * d.C * OHW + pix;
    for (int64_t c0 = 0; c0 < d.C; c0 += kChannels) {
      T acc[kChannels];
#pragma unroll
      for (int cc = 0; cc < kChannels; ++cc) acc[cc] = T(0);
      for (int64_t k = 0; k < d.K; ++k) {
        const Op<T> o = load_op(theta, weights, d, b, k, t);
        const auto q = warp::bilinear_corner(
            warp::warp_sample_point(o.th, u, v, half_w, half_h), H, W);
        if (!warp::taps_any_inside(q.x0, q.y0, H, W)) continue;
        const warp::TapOffsets to = warp::tap_offsets(q.x0, q.y0, H, W);
#pragma unroll
        for (int cc = 0; cc < kChannels; ++cc) {
          if (c0 + cc >= d.C) break;
          const scalar_t* plane = xb + (c0 + cc) * HW;
          acc[cc] += o.wk * warp::bilinear_interp(tap_value(plane, to, 0),
                                                       tap_value(plane, to, 1),
                                                       tap_value(plane, to, 2),
                                                       tap_value(plane, to, 3), q.fx, q.fy);
        }
      }
#pragma unroll
      for (int cc = 0; cc < kChannels; ++cc) {
        if (c0 + cc >= d.C) break;
        ob[(c0 + cc) * OHW] = from_op<scalar_t>(acc[cc]);
      }
    }
  }
}

// --------------------------------------------------------------------------- backward

// Sums v[0..N) over the block; the result is valid in thread 0. Fixed shuffle order, so
// deterministic for a given block size. smem holds 32 * N values.
template <typename T, int N>
__device__ __forceinline__ void block_reduce(T (&v)[N], T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int q = 0; q < N; ++q)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[q] += __shfl_down_sync(0xffffffffu, v[q], off);
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < N; ++q) smem[warp * N + q] = v[q];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      v[q] = lane < nwarps ? smem[lane * N + q] : T(0);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v[q] += __shfl_down_sync(0xffffffffu, v[q], off);
    }
  }
  __syncthreads();  // smem is reused by the next call
}

// One thread per output pixel of one (b, t) plane; blocks tile the planes (a block never
// spans two planes). Per op: the pixel's sums (grad_weights, grad_theta before the
// w_k * size / 2 factors), block-reduced, then atomically added (kDeterministic: written to
// partials[(b * T + t) * tiles + tile][k][7]). kAtomicX: grad_x by atomicAdd into gx.
template <typename scalar_t, bool kDeterministic, bool kAtomicX>
__global__ void __launch_bounds__(kThreads)
    backward_pixel_kernel(const scalar_t* __restrict__ grad_out,
                          const scalar_t* __restrict__ x,
                          const opmath_t<scalar_t>* __restrict__ theta,
                          const opmath_t<scalar_t>* __restrict__ weights,
                          const opmath_t<scalar_t>* __restrict__ base_u,
                          const opmath_t<scalar_t>* __restrict__ base_v, opmath_t<scalar_t>* gx,
                          opmath_t<scalar_t>* grad_theta, opmath_t<scalar_t>* grad_weights,
                          opmath_t<scalar_t>* __restrict__ partials, Shape d, int64_t tiles) {
  using T = opmath_t<scalar_t>;
  __shared__ T smem[32 * kReduceSlots];
  const int64_t HW = d.H * d.W, OHW = d.OH * d.OW;
  const int H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const T half_w = static_cast<T>(d.W) / T(2), half_h = static_cast<T>(d.H) / T(2);
  const int64_t nblocks = d.B * d.T * tiles;
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {  // uniform per block
    const int64_t tile = blk % tiles, bt = blk / tiles;
    const int64_t t = bt % d.T, b = bt / d.T;
    const int64_t pix = tile * blockDim.x + threadIdx.x;
    const bool active = pix < OHW;
    const int64_t i = active ? pix / d.OW : 0, j = active ? pix % d.OW : 0;
    const T u = active ? base_at(base_u, j, d.OW) : T(0);
    const T v = active ? base_at(base_v, i, d.OH) : T(0);
    const int64_t btx = b * d.Tx + (d.Tx == 1 ? 0 : t);
    const scalar_t* xb = x + btx * d.C * HW;
    const scalar_t* gob = grad_out + bt * d.C * OHW + (active ? pix : 0);
    for (int64_t k = 0; k < d.K; ++k) {
      const Op<T> o = load_op(theta, weights, d, b, k, t);
      T vals[kReduceSlots];
#pragma unroll
      for (int q = 0; q < kReduceSlots; ++q) vals[q] = T(0);
      const auto q = warp::bilinear_corner(
          warp::warp_sample_point(o.th, u, v, half_w, half_h), H, W);
      if (active && warp::taps_any_inside(q.x0, q.y0, H, W)) {
        const warp::TapOffsets to = warp::tap_offsets(q.x0, q.y0, H, W);
        T sw = 0, sdx = 0, sdy = 0;
        for (int64_t c = 0; c < d.C; ++c) {
          const scalar_t* plane = xb + c * HW;
          const T g = to_op(gob[c * OHW]);
          T s, dix, diy;
          warp::bilinear_sample_grad(tap_value(plane, to, 0), tap_value(plane, to, 1),
                                          tap_value(plane, to, 2), tap_value(plane, to, 3),
                                          q.fx, q.fy, &s, &dix, &diy);
          sw += g * s;
          sdx += g * dix;
          sdy += g * diy;
          if (kAtomicX) {
            T cw[4];
            warp::bilinear_scatter(o.wk * g, q.fx, q.fy, &cw[0], &cw[1], &cw[2], &cw[3]);
            T* gplane = gx + btx * d.C * HW + c * HW;
#pragma unroll
            for (int a = 0; a < 4; ++a)
              if ((to.mask >> a) & 1u) atomicAdd(gplane + to.off[a], cw[a]);
          }
        }
        vals[0] = sw;
        vals[1] = sdx * u;
        vals[2] = sdx * v;
        vals[3] = sdx;
        vals[4] = sdy * u;
        vals[5] = sdy * v;
        vals[6] = sdy;
      }
      block_reduce(vals, smem);
      if (threadIdx.x == 0) {
        if (kDeterministic) {
          T* p = partials + ((bt * tiles + tile) * d.K + k) * kReduceSlots;
#pragma unroll
          for (int r = 0; r < kReduceSlots; ++r) p[r] = vals[r];
        } else {
          T* gth = grad_theta + ((b * d.K + k) * d.T + t) * 6;
          const T sx = o.wk * half_w, sy = o.wk * half_h;
          atomicAdd(grad_weights + b * d.K + k, vals[0]);
#pragma unroll
          for (int r = 0; r < 3; ++r) {
            atomicAdd(gth + r, sx * vals[1 + r]);
            atomicAdd(gth + 3 + r, sy * vals[4 + r]);
          }
        }
      }
    }
  }
}

// Deterministic reduction, step 1: one thread per (b, k, t) sums the tiles in order.
template <typename T>
__global__ void reduce_theta_kernel(const T* __restrict__ partials, const T* __restrict__ weights,
                                    T* __restrict__ grad_theta, double* __restrict__ gw_part,
                                    Shape d, int64_t tiles) {
  const int64_t n = d.B * d.K * d.T;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx % d.T, k = (idx / d.T) % d.K, b = idx / (d.T * d.K);
    double acc[kReduceSlots] = {0, 0, 0, 0, 0, 0, 0};
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const T* p = partials + (((b * d.T + t) * tiles + tile) * d.K + k) * kReduceSlots;
#pragma unroll
      for (int r = 0; r < kReduceSlots; ++r) acc[r] += static_cast<double>(p[r]);
    }
    const double wk = static_cast<double>(weights[b * d.K + k]);
    const double sx = wk * 0.5 * static_cast<double>(d.W), sy = wk * 0.5 * static_cast<double>(d.H);
    T* gth = grad_theta + idx * 6;  // idx == (b * K + k) * T + t
#pragma unroll
    for (int r = 0; r < 3; ++r) {
      gth[r] = static_cast<T>(sx * acc[1 + r]);
      gth[3 + r] = static_cast<T>(sy * acc[4 + r]);
    }
    gw_part[idx] = acc[0];
  }
}

// Deterministic reduction, step 2: grad_weights[b, k] = sum over t in order.
template <typename T>
__global__ void reduce_weights_kernel(const double* __restrict__ gw_part,
                                      T* __restrict__ grad_weights, int64_t BK, int64_t Tn) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < BK;
       idx += int64_t(gridDim.x) * blockDim.x) {
    double acc = 0;
    for (int64_t t = 0; t < Tn; ++t) acc += gw_part[idx * Tn + t];
    grad_weights[idx] = static_cast<T>(acc);
  }
}

// Output pixels [i0, i1) x [j0, j1) whose taps can reach input pixel (y, x) under th: the
// inverse of the (affine) output -> input map applied to the square [x-1, x+1] x [y-1, y+1],
// with a margin for rounding; the whole output when the map is (nearly) singular. A
// superset is enough: the caller recomputes every candidate's taps exactly.
struct OutBox {
  int64_t i0, i1, j0, j1;
};

template <typename T>
__device__ OutBox output_box(const T* th, int64_t x, int64_t y, const Shape& d) {
  const OutBox full{0, d.OH, 0, d.OW};
  const double hw = 0.5 * static_cast<double>(d.W), hh = 0.5 * static_cast<double>(d.H);
  const double au = 2.0 / static_cast<double>(d.OW), bu = 1.0 / static_cast<double>(d.OW) - 1.0;
  const double av = 2.0 / static_cast<double>(d.OH), bv = 1.0 / static_cast<double>(d.OH) - 1.0;
  const double t0 = th[0], t1 = th[1], t2 = th[2], t3 = th[3], t4 = th[4], t5 = th[5];
  // ix = a00 * j + a01 * i + c0, iy = a10 * j + a11 * i + c1
  const double a00 = hw * t0 * au, a01 = hw * t1 * av, c0 = hw * (t0 * bu + t1 * bv + t2 + 1) - 0.5;
  const double a10 = hh * t3 * au, a11 = hh * t4 * av, c1 = hh * (t3 * bu + t4 * bv + t5 + 1) - 0.5;
  const double det = a00 * a11 - a01 * a10;
  const double scale = fmax(fabs(a00) + fabs(a01), fabs(a10) + fabs(a11));
  if (!(fabs(det) > 1e-9 * scale * scale)) return full;  // also NaN
  double jlo = INFINITY, jhi = -INFINITY, ilo = INFINITY, ihi = -INFINITY;
#pragma unroll
  for (int cy = 0; cy < 2; ++cy)
#pragma unroll
    for (int cx = 0; cx < 2; ++cx) {
      const double px = static_cast<double>(x - 1 + 2 * cx) - c0;
      const double py = static_cast<double>(y - 1 + 2 * cy) - c1;
      const double jj = (a11 * px - a01 * py) / det, ii = (a00 * py - a10 * px) / det;
      jlo = fmin(jlo, jj);
      jhi = fmax(jhi, jj);
      ilo = fmin(ilo, ii);
      ihi = fmax(ihi, ii);
    }
  const double ow = static_cast<double>(d.OW), oh = static_cast<double>(d.OH);
  OutBox r;
  r.j0 = static_cast<int64_t>(fmin(fmax(floor(jlo) - 2.0, 0.0), ow));
  r.j1 = static_cast<int64_t>(fmin(fmax(ceil(jhi) + 3.0, 0.0), ow));
  r.i0 = static_cast<int64_t>(fmin(fmax(floor(ilo) - 2.0, 0.0), oh));
  r.i1 = static_cast<int64_t>(fmin(fmax(ceil(ihi) + 3.0, 0.0), oh));
  return r;
}

// Deterministic grad_x: one thread per input pixel (b, tx, y, x) sums, in a fixed order, the
// contributions of every (t, k, output pixel) whose taps include it.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gather_grad_x_kernel(const scalar_t* __restrict__ grad_out,
                         const opmath_t<scalar_t>* __restrict__ theta,
                         const opmath_t<scalar_t>* __restrict__ weights,
                         const opmath_t<scalar_t>* __restrict__ base_u,
                         const opmath_t<scalar_t>* __restrict__ base_v,
                         scalar_t* __restrict__ grad_x, Shape d) {
  using T = opmath_t<scalar_t>;
  const int64_t HW = d.H * d.W, OHW = d.OH * d.OW;
  const int H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const T half_w = static_cast<T>(d.W) / T(2), half_h = static_cast<T>(d.H) / T(2);
  const int64_t n = d.B * d.Tx * HW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % d.W, y = (idx / d.W) % d.H, btx = idx / HW;
    const int64_t tx = btx % d.Tx, b = btx / d.Tx;
    const int64_t t_begin = d.Tx == 1 ? 0 : tx, t_end = d.Tx == 1 ? d.T : tx + 1;
    for (int64_t c0 = 0; c0 < d.C; c0 += kChannels) {
      T acc[kChannels];
#pragma unroll
      for (int cc = 0; cc < kChannels; ++cc) acc[cc] = T(0);
      for (int64_t t = t_begin; t < t_end; ++t) {
        const scalar_t* gob = grad_out + (b * d.T + t) * d.C * OHW;
        for (int64_t k = 0; k < d.K; ++k) {
          const Op<T> o = load_op(theta, weights, d, b, k, t);
          const OutBox box = output_box(o.th, x, y, d);
          for (int64_t i = box.i0; i < box.i1; ++i) {
            const T v = base_at(base_v, i, d.OH);
            for (int64_t j = box.j0; j < box.j1; ++j) {
              const auto q = warp::bilinear_corner(
                  warp::warp_sample_point(o.th, base_at(base_u, j, d.OW), v, half_w,
                                               half_h),
                  H, W);
              const int64_t dx = x - q.x0, dy = y - q.y0;
              if (dx < 0 || dx > 1 || dy < 0 || dy > 1) continue;
              const T tw = o.wk * warp::tap_weight(static_cast<int>(dy * 2 + dx), q.fx, q.fy);
              const scalar_t* g = gob + i * d.OW + j;
#pragma unroll
              for (int cc = 0; cc < kChannels; ++cc) {
                if (c0 + cc >= d.C) break;
                acc[cc] += tw * to_op(g[(c0 + cc) * OHW]);
              }
            }
          }
        }
      }
#pragma unroll
      for (int cc = 0; cc < kChannels; ++cc) {
        if (c0 + cc >= d.C) break;
        grad_x[(btx * d.C + c0 + cc) * HW + y * d.W + x] = from_op<scalar_t>(acc[cc]);
      }
    }
  }
}

template <typename scalar_t>
__global__ void cast_kernel(const opmath_t<scalar_t>* __restrict__ src, scalar_t* __restrict__ dst,
                            int64_t n) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x)
    dst[idx] = from_op<scalar_t>(src[idx]);
}

// ----------------------------------------------------------------------------- launchers

inline int64_t pixel_tiles(const Shape& d) { return (d.OH * d.OW + kThreads - 1) / kThreads; }

inline size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

// Bytes of device workspace that launch_backward needs.
template <typename scalar_t>
size_t backward_workspace_bytes(const Shape& d, bool need_x, bool deterministic) {
  using T = opmath_t<scalar_t>;
  size_t bytes = 0;
  if (deterministic) {
    bytes += align_up(sizeof(T) * d.B * d.T * pixel_tiles(d) * d.K * kReduceSlots);
    bytes += align_up(sizeof(double) * d.B * d.K * d.T);
  } else if (need_x && !std::is_same<T, scalar_t>::value) {
    bytes += align_up(sizeof(T) * d.B * d.Tx * d.C * d.H * d.W);
  }
  return bytes;
}

inline bool empty_shape(const Shape& d) {
  return d.B <= 0 || d.T <= 0 || d.K <= 0 || d.C <= 0 || d.H <= 0 || d.W <= 0 || d.OH <= 0 ||
         d.OW <= 0;
}

// out (B, T, C, OH, OW) from x (B, Tx, C, H, W), theta (B, K, T, 2, 3), weights (B, K).
// base_u (OW) / base_v (OH): affine_grid's base coordinates, or nullptr for the analytic ones.
template <typename scalar_t>
cudaError_t launch_forward(const scalar_t* x, const opmath_t<scalar_t>* theta,
                           const opmath_t<scalar_t>* weights, const opmath_t<scalar_t>* base_u,
                           const opmath_t<scalar_t>* base_v, scalar_t* out, const Shape& d,
                           cudaStream_t stream) {
  if (empty_shape(d)) return cudaSuccess;
  forward_kernel<scalar_t><<<blocks_for(d.B * d.T * d.OH * d.OW), kThreads, 0, stream>>>(
      x, theta, weights, base_u, base_v, out, d);
  return cudaGetLastError();
}

// grad_x (like x; zeros when !need_x), grad_theta (like theta), grad_weights (like weights),
// all written in full. workspace: backward_workspace_bytes(d, need_x, deterministic) bytes.
template <typename scalar_t>
cudaError_t launch_backward(const scalar_t* grad_out, const scalar_t* x,
                            const opmath_t<scalar_t>* theta, const opmath_t<scalar_t>* weights,
                            const opmath_t<scalar_t>* base_u, const opmath_t<scalar_t>* base_v,
                            scalar_t* grad_x, opmath_t<scalar_t>* grad_theta,
                            opmath_t<scalar_t>* grad_weights, void* workspace, const Shape& d,
                            bool need_x, bool deterministic, cudaStream_t stream) {
  using T = opmath_t<scalar_t>;
  constexpr bool kDirect = std::is_same<T, scalar_t>::value;
  const size_t x_bytes = sizeof(scalar_t) * d.B * d.Tx * d.C * d.H * d.W;
  cudaError_t err = cudaSuccess;
  if (!need_x || (!deterministic && kDirect)) {
    err = cudaMemsetAsync(grad_x, 0, x_bytes, stream);
    if (err != cudaSuccess) return err;
  }
  if (!deterministic) {
    err = cudaMemsetAsync(grad_theta, 0, sizeof(T) * d.B * d.K * d.T * 6, stream);
    if (err == cudaSuccess) err = cudaMemsetAsync(grad_weights, 0, sizeof(T) * d.B * d.K, stream);
    if (err != cudaSuccess) return err;
  }
  if (empty_shape(d)) return cudaSuccess;

  const int64_t tiles = pixel_tiles(d);
  const int grid = static_cast<int>(std::min<int64_t>(d.B * d.T * tiles, kMaxBlocks));
  if (deterministic) {
    char* ws = static_cast<char*>(workspace);
    T* partials = reinterpret_cast<T*>(ws);
    double* gw_part = reinterpret_cast<double*>(
        ws + align_up(sizeof(T) * d.B * d.T * tiles * d.K * kReduceSlots));
    backward_pixel_kernel<scalar_t, true, false><<<grid, kThreads, 0, stream>>>(
        grad_out, x, theta, weights, base_u, base_v, nullptr, nullptr, nullptr, partials, d,
        tiles);
    reduce_theta_kernel<T><<<blocks_for(d.B * d.K * d.T), kThreads, 0, stream>>>(
        partials, weights, grad_theta, gw_part, d, tiles);
    reduce_weights_kernel<T><<<blocks_for(d.B * d.K), kThreads, 0, stream>>>(
        gw_part, grad_weights, d.B * d.K, d.T);
    if (need_x)
      gather_grad_x_kernel<scalar_t><<<blocks_for(d.B * d.Tx * d.H * d.W), kThreads, 0, stream>>>(
          grad_out, theta, weights, base_u, base_v, grad_x, d);
    return cudaGetLastError();
  }
  if (!need_x) {
    backward_pixel_kernel<scalar_t, false, false><<<grid, kThreads, 0, stream>>>(
        grad_out, x, theta, weights, base_u, base_v, nullptr, grad_theta, grad_weights, nullptr,
        d, tiles);
    return cudaGetLastError();
  }
  const int64_t nx = d.B * d.Tx * d.C * d.H * d.W;
  T* gx = nullptr;
  if (kDirect) {
    gx = reinterpret_cast<T*>(grad_x);
  } else {
    gx = static_cast<T*>(workspace);
    err = cudaMemsetAsync(gx, 0, sizeof(T) * nx, stream);
    if (err != cudaSuccess) return err;
  }
  backward_pixel_kernel<scalar_t, false, true><<<grid, kThreads, 0, stream>>>(
      grad_out, x, theta, weights, base_u, base_v, gx, grad_theta, grad_weights, nullptr, d,
      tiles);
  if (!kDirect) cast_kernel<scalar_t><<<blocks_for(nx), kThreads, 0, stream>>>(gx, grad_x, nx);
  return cudaGetLastError();
}

#define DAS_INSTANTIATE(scalar_t)                                                                \
  template size_t backward_workspace_bytes<scalar_t>(const Shape&, bool, bool);                  \
  template cudaError_t launch_forward<scalar_t>(                                                 \
      const scalar_t*, const opmath_t<scalar_t>*, const opmath_t<scalar_t>*,                     \
      const opmath_t<scalar_t>*, const opmath_t<scalar_t>*, scalar_t*, const Shape&,            \
      cudaStream_t);                                                                             \
  template cudaError_t launch_backward<scalar_t>(                                                \
      const scalar_t*, const scalar_t*, const opmath_t<scalar_t>*, const opmath_t<scalar_t>*,    \
      const opmath_t<scalar_t>*, const opmath_t<scalar_t>*, scalar_t*, opmath_t<scalar_t>*,      \
      opmath_t<scalar_t>*, void*, const Shape&, bool, bool, cudaStream_t);
DAS_INSTANTIATE(float)
DAS_INSTANTIATE(double)
DAS_INSTANTIATE(__half)
DAS_INSTANTIATE(__nv_bfloat16)
#undef DAS_INSTANTIATE

}  // namespace cuda
}  // namespace das_kernels

#ifdef DAS_WITH_TORCH
// ------------------------------------------------------------------------- torch wrapper
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream, without cuBLAS/cuSPARSE
#include <torch/library.h>

#include "common/checks.h"

namespace das_kernels {
namespace cuda {
namespace {

using warp::base_coords;

Shape check_inputs(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& weights) {
  const Shape d = warp::check_inputs(x, theta, weights, c10::DeviceType::CUDA);
  TORCH_CHECK(x.is_contiguous() && theta.is_contiguous() && weights.is_contiguous(),
              "multi_affine_warp: inputs must be contiguous");
  return d;
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& weights,
                        int64_t out_h, int64_t out_w) {
  Shape d = check_inputs(x, theta, weights);
  TORCH_CHECK(out_h > 0 && out_w > 0, "multi_affine_warp: bad output size ", out_h, "x", out_w);
  d.OH = out_h;
  d.OW = out_w;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({d.B, d.T, d.C, d.OH, d.OW}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor bu = base_coords(d.OW, theta.options());
  const at::Tensor bv = base_coords(d.OH, theta.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "multi_affine_warp_forward_cuda", [&] {
        using cuda_t = cuda_type_t<scalar_t>;
        using T = opmath_t<cuda_t>;
        const cudaError_t err = launch_forward<cuda_t>(
            reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>()),
            theta.const_data_ptr<T>(), weights.const_data_ptr<T>(), bu.const_data_ptr<T>(),
            bv.const_data_ptr<T>(), reinterpret_cast<cuda_t*>(out.mutable_data_ptr<scalar_t>()),
            d, stream);
        TORCH_CHECK(err == cudaSuccess, "multi_affine_warp_forward: ", cudaGetErrorString(err));
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x, const at::Tensor& theta,
    const at::Tensor& weights, bool need_x, bool deterministic) {
  Shape d = check_inputs(x, theta, weights);
  TORCH_CHECK(grad_out_in.is_cuda() && grad_out_in.device() == x.device(),
              "multi_affine_warp_backward: grad_out must be on x's device");
  TORCH_CHECK(grad_out_in.dim() == 5 && grad_out_in.size(0) == d.B &&
                  grad_out_in.size(1) == d.T && grad_out_in.size(2) == d.C,
              "multi_affine_warp_backward: grad_out must be (B, T, C, out_h, out_w), got ",
              grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == x.scalar_type(),
              "multi_affine_warp_backward: grad_out must have x's dtype");
  d.OH = grad_out_in.size(3);
  d.OW = grad_out_in.size(4);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_theta = at::empty_like(theta);
  at::Tensor grad_weights = at::empty_like(weights);
  const at::Tensor bu = base_coords(std::max<int64_t>(d.OW, 1), theta.options());
  const at::Tensor bv = base_coords(std::max<int64_t>(d.OH, 1), theta.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "multi_affine_warp_backward_cuda", [&] {
        using cuda_t = cuda_type_t<scalar_t>;
        using T = opmath_t<cuda_t>;
        const size_t bytes =
            backward_workspace_bytes<cuda_t>(d, need_x, deterministic);
        at::Tensor ws = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                                  x.options().dtype(at::kByte));
        const cudaError_t err = launch_backward<cuda_t>(
            reinterpret_cast<const cuda_t*>(grad_out.const_data_ptr<scalar_t>()),
            reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>()),
            theta.const_data_ptr<T>(), weights.const_data_ptr<T>(), bu.const_data_ptr<T>(),
            bv.const_data_ptr<T>(), reinterpret_cast<cuda_t*>(grad_x.mutable_data_ptr<scalar_t>()),
            grad_theta.mutable_data_ptr<T>(), grad_weights.mutable_data_ptr<T>(),
            ws.mutable_data_ptr(), d, need_x, deterministic, stream);
        TORCH_CHECK(err == cudaSuccess, "multi_affine_warp_backward: ", cudaGetErrorString(err));
      });
  return {grad_x, grad_theta, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(das_native, CUDA, m) {
  m.impl("multi_affine_warp_forward", &forward_cuda);
  m.impl("multi_affine_warp_backward", &backward_cuda);
}

}  // namespace cuda
}  // namespace das_kernels
#endif  // DAS_WITH_TORCH
