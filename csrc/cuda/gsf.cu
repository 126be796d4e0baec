// CUDA kernels of GSF's fused part: gsf_pool and gsf_fuse, forward and backward.
// Contracts: das_kernels/ops/gsf.py; per-element math: csrc/common/gsf.h (shared with the
// CPU kernels in csrc/cpu/gsf.cpp, whose index math these kernels mirror).
//
// Thread blocks are kThreads = PX x CY threads: PX (a power of two in [32, 256]) consecutive
// pixels of CY planes, so every warp reads 32 consecutive pixels of one plane.
//   pool forward:   block = CY planes (n, c < G); each plane's PX threads loop over its pixels
//                   and reduce the (y, r) sums with warp shuffles + shared memory.
//   fuse forward:   one thread per (n, c, pixel); channels >= G are copied.
//   backwards:      block = (n, h, pixel tile); thread (px, cy) loops over the half's
//                   channels cy, cy + CY, ...; grad_gate of each pixel is summed over cy in
//                   shared memory by the block (its only owner). gsf_fuse's grad_w[b, h, i, t]
//                   is reduced over the tile's pixels into a workspace (B, 2, G/2, T, tiles),
//                   then summed over tiles in order by a second kernel.
// Every reduction has a single owner and a fixed order: results are deterministic. Math in
// opmath (float for half/bfloat16/float, double for double).
//
// Without DAS_WITH_TORCH this file only needs the CUDA runtime: host launchers in namespace
// das_kernels::cuda take raw pointers, the shape and a stream. With it, TORCH_LIBRARY_IMPL
// registers the das_native CUDA kernels (input checks: csrc/common/checks.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/gsf.h"
#include "cuda/opmath.cuh"

namespace das_kernels {
namespace cuda {

using das_kernels::gsf::Shape;

// Workspace of gsf_fuse_backward, in opmath elements: B * 2 * G/2 * T * pixel tiles.
int64_t gsf_fuse_backward_workspace(const Shape& s);

template <typename scalar_t>
cudaError_t gsf_pool_forward(const scalar_t* x, const scalar_t* gate, scalar_t* pooled,
                             const Shape& s, cudaStream_t stream);
template <typename scalar_t>
cudaError_t gsf_pool_backward(const scalar_t* grad_pooled, const scalar_t* x,
                              const scalar_t* gate, scalar_t* grad_x, scalar_t* grad_gate,
                              const Shape& s, cudaStream_t stream);
template <typename scalar_t>
cudaError_t gsf_fuse_forward(const scalar_t* x, const scalar_t* gate, const scalar_t* w,
                             scalar_t* out, const Shape& s, cudaStream_t stream);
template <typename scalar_t>
cudaError_t gsf_fuse_backward(const scalar_t* grad_out, const scalar_t* x, const scalar_t* gate,
                              const scalar_t* w, scalar_t* grad_x, scalar_t* grad_gate,
                              scalar_t* grad_w, opmath_t<scalar_t>* workspace, const Shape& s,
                              cudaStream_t stream);

namespace {

using namespace das_kernels::gsf;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Derived sizes, computed once on the host.
struct Dims {
  int64_t N, C, HW, T, B, G, half, quarter, tiles;  // tiles: pixel tiles of PX per plane
  int px, cy;                                        // block shape (PX, CY)
};

Dims make_dims(const Shape& s) {
  int px = 32;
  while (px < s.HW && px < kThreads) px *= 2;
  return Dims{s.N, s.C, s.HW, s.T, s.N / s.T, s.G, s.G / 2, s.G / 4,
              (s.HW + px - 1) / px, px, kThreads / px};
}

int blocks(int64_t n) { return static_cast<int>(n); }

// Sum of v over the blockDim.x threads of this thread's row (threadIdx.y), in a fixed order;
// the result is valid in threadIdx.x == 0. Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t row_sum(acc_t v) {
  __shared__ acc_t partial[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warps = blockDim.x / 32;
  if (threadIdx.x % 32 == 0) partial[threadIdx.y * warps + threadIdx.x / 32] = v;
  __syncthreads();
  acc_t sum = 0;
  if (threadIdx.x == 0) {
    for (int k = 0; k < warps; ++k) sum += partial[threadIdx.y * warps + k];
  }
  __syncthreads();
  return sum;
}

// Sum of v over the block's rows (threadIdx.y) for this thread's column, in a fixed order;
// the result is valid in threadIdx.y == 0. Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t column_sum(acc_t v) {
  __shared__ acc_t partial[kThreads];
  partial[threadIdx.y * blockDim.x + threadIdx.x] = v;
  __syncthreads();
  acc_t sum = 0;
  if (threadIdx.y == 0) {
    for (unsigned k = 0; k < blockDim.y; ++k) sum += partial[k * blockDim.x + threadIdx.x];
  }
  __syncthreads();
  return sum;
}

// Block (n, h, pixel tile) of the backward kernels.
struct FrameTile {
  int64_t n, b, t, h, p;
};

__device__ __forceinline__ FrameTile frame_tile(const Dims& d) {
  const int64_t tile = blockIdx.x % d.tiles, nh = blockIdx.x / d.tiles;
  const int64_t n = nh / 2;
  return FrameTile{n, n / d.T, n % d.T, nh % 2, tile * d.px + threadIdx.x};
}

// ---------------------------------------------------------------------------------------
// kernels

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                        scalar_t* __restrict__ pooled, Dims d) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * d.cy + threadIdx.y;  // n * G + c
  const bool active = row < d.N * d.G;
  const int64_t n = active ? row / d.G : 0, c = row % d.G;
  const int64_t h = c / d.half, i = c % d.half, b = n / d.T, t = n % d.T;
  acc_t sy = 0, sr = 0;
  if (active) {
    const scalar_t* xp = x + (n * d.C + c) * d.HW;
    const scalar_t* gp = gate + (n * 2 + h) * d.HW;
    for (int64_t p = threadIdx.x; p < d.HW; p += d.px) {
      acc_t y, r;
      gate_split(to_op(gp[p]), to_op(xp[p]), y, r);
      sy += y;
      sr += r;
    }
  }
  sy = row_sum(sy);
  sr = row_sum(sr);
  if (!active || threadIdx.x != 0) return;
  const acc_t inv = acc_t(1) / static_cast<acc_t>(d.HW);
  scalar_t* y_row = pooled + ((b * 4 + 2 * h) * d.half + i) * d.T;
  y_row[d.half * d.T + t] = from_op<scalar_t>(sr * inv);  // r row: (b, 2h + 1, i)
  const int64_t m = target_frame(t, h, d.T);
  if (m >= 0) y_row[m] = from_op<scalar_t>(sy * inv);
  if (source_frame(t, h, d.T) < 0) y_row[t] = from_op<scalar_t>(acc_t(0));  // zero padding
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_backward_kernel(const scalar_t* __restrict__ grad_pooled,
                         const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                         scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_gate, Dims d) {
  using acc_t = opmath_t<scalar_t>;
  const FrameTile f = frame_tile(d);
  const bool in = f.p < d.HW;
  const int64_t m = target_frame(f.t, f.h, d.T);
  const acc_t inv = acc_t(1) / static_cast<acc_t>(d.HW);
  const acc_t g = in ? to_op(gate[(f.n * 2 + f.h) * d.HW + f.p]) : acc_t(0);
  acc_t acc = 0;
  for (int64_t i = threadIdx.y; i < d.half; i += d.cy) {
    const scalar_t* gy_row = grad_pooled + ((f.b * 4 + 2 * f.h) * d.half + i) * d.T;
    const acc_t ay = m >= 0 ? to_op(gy_row[m]) * inv : acc_t(0);
    const acc_t ar = to_op(gy_row[d.half * d.T + f.t]) * inv;
    if (in) {
      const int64_t off = (f.n * d.C + f.h * d.half + i) * d.HW + f.p;
      grad_x[off] = from_op<scalar_t>(pool_grad_x(ay, ar, g));
      acc += to_op(x[off]) * (ay - ar);
    }
  }
  acc = column_sum(acc);
  if (threadIdx.y == 0 && in) grad_gate[(f.n * 2 + f.h) * d.HW + f.p] = from_op<scalar_t>(acc);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fuse_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                        const scalar_t* __restrict__ w, scalar_t* __restrict__ out, Dims d) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x / d.tiles) * d.cy + threadIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x % d.tiles) * d.px + threadIdx.x;
  if (row >= d.N * d.C || p >= d.HW) return;
  const int64_t n = row / d.C, c = row % d.C;
  if (c >= d.G) {  // pass-through channel
    out[row * d.HW + p] = x[row * d.HW + p];
    return;
  }
  const int64_t h = c / d.half, i = c % d.half, b = n / d.T, t = n % d.T;
  const int64_t co = h * d.half + out_channel(i, d.quarter);
  const int64_t s = source_frame(t, h, d.T);
  const acc_t wv = to_op(w[((b * 2 + h) * d.half + i) * d.T + t]);
  acc_t gs = 0, xs = 0;
  if (s >= 0) {
    gs = to_op(gate[((b * d.T + s) * 2 + h) * d.HW + p]);
    xs = to_op(x[((b * d.T + s) * d.C + c) * d.HW + p]);
  }
  const acc_t z =
      fuse(wv, gs, xs, to_op(gate[(n * 2 + h) * d.HW + p]), to_op(x[row * d.HW + p]));
  out[(n * d.C + co) * d.HW + p] = from_op<scalar_t>(z);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fuse_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ gate, const scalar_t* __restrict__ w,
                         scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_gate,
                         opmath_t<scalar_t>* __restrict__ partial_w, Dims d) {
  using acc_t = opmath_t<scalar_t>;
  const FrameTile f = frame_tile(d);
  const bool in = f.p < d.HW;
  const int64_t s = source_frame(f.t, f.h, d.T), m = target_frame(f.t, f.h, d.T);
  acc_t g = 0, gs = 0;
  if (in) {
    g = to_op(gate[(f.n * 2 + f.h) * d.HW + f.p]);
    if (s >= 0) gs = to_op(gate[((f.b * d.T + s) * 2 + f.h) * d.HW + f.p]);
  }
  acc_t acc = 0;
  // uniform trip count: row_sum synchronises the block
  const int64_t rounds = (d.half + d.cy - 1) / d.cy;
  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t i = k * d.cy + threadIdx.y;
    const bool active = i < d.half;
    const int64_t c = f.h * d.half + i, co = f.h * d.half + out_channel(i, d.quarter);
    const int64_t row = ((f.b * 2 + f.h) * d.half + i) * d.T;
    acc_t sw = 0;
    if (active && in) {
      const acc_t wv = to_op(w[row + f.t]);
      const acc_t wm = m >= 0 ? to_op(w[row + m]) : acc_t(0);
      const int64_t off = (f.n * d.C + c) * d.HW + f.p;
      const acc_t xv = to_op(x[off]);
      const acc_t go = to_op(grad_out[(f.n * d.C + co) * d.HW + f.p]);
      const acc_t gom =
          m >= 0 ? to_op(grad_out[((f.b * d.T + m) * d.C + co) * d.HW + f.p]) : acc_t(0);
      const acc_t xs = s >= 0 ? to_op(x[((f.b * d.T + s) * d.C + c) * d.HW + f.p]) : acc_t(0);
      const acc_t a = go * (acc_t(1) - wv), bm = gom * wm;
      grad_x[off] = from_op<scalar_t>(fuse_grad_x(a, bm, g));
      acc += xv * (bm - a);
      sw = fuse_grad_w(go, gs, xs, g, xv);
    }
    sw = row_sum(sw);
    if (active && threadIdx.x == 0) partial_w[(row + f.t) * d.tiles + blockIdx.x % d.tiles] = sw;
  }
  acc = column_sum(acc);
  if (threadIdx.y == 0 && in) grad_gate[(f.n * 2 + f.h) * d.HW + f.p] = from_op<scalar_t>(acc);
}

// grad_w[j] = sum over the pixel tiles of partial_w[j, :], in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sum_tiles_kernel(const opmath_t<scalar_t>* __restrict__ partial, scalar_t* __restrict__ out,
                     int64_t rows, int64_t tiles) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= rows) return;
  opmath_t<scalar_t> sum = 0;
  for (int64_t k = 0; k < tiles; ++k) sum += partial[j * tiles + k];
  out[j] = from_op<scalar_t>(sum);
}

// dst[n, G:] = src[n, G:] (or 0 when src is null) for every frame n.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pass_through_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, Dims d) {
  const int64_t rest = d.C - d.G;
  const int64_t row = static_cast<int64_t>(blockIdx.x / d.tiles) * d.cy + threadIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x % d.tiles) * d.px + threadIdx.x;
  if (row >= d.N * rest || p >= d.HW) return;
  const int64_t off = ((row / rest) * d.C + d.G + row % rest) * d.HW + p;
  dst[off] = src != nullptr ? src[off] : from_op<scalar_t>(opmath_t<scalar_t>(0));
}

template <typename scalar_t>
cudaError_t pass_through(const scalar_t* src, scalar_t* dst, const Dims& d,
                         cudaStream_t stream) {
  if (d.C == d.G) return cudaSuccess;
  const int64_t rows = d.N * (d.C - d.G);
  pass_through_kernel<scalar_t><<<blocks((rows + d.cy - 1) / d.cy * d.tiles),
                                  dim3(d.px, d.cy), 0, stream>>>(src, dst, d);
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// host launchers

int64_t gsf_fuse_backward_workspace(const Shape& s) {
  const Dims d = make_dims(s);
  return d.B * 2 * d.half * d.T * d.tiles;
}

template <typename scalar_t>
cudaError_t gsf_pool_forward(const scalar_t* x, const scalar_t* gate, scalar_t* pooled,
                             const Shape& s, cudaStream_t stream) {
  const Dims d = make_dims(s);
  pool_forward_kernel<scalar_t>
      <<<blocks((d.N * d.G + d.cy - 1) / d.cy), dim3(d.px, d.cy), 0, stream>>>(x, gate, pooled,
                                                                                 d);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t gsf_pool_backward(const scalar_t* grad_pooled, const scalar_t* x,
                              const scalar_t* gate, scalar_t* grad_x, scalar_t* grad_gate,
                              const Shape& s, cudaStream_t stream) {
  const Dims d = make_dims(s);
  pool_backward_kernel<scalar_t><<<blocks(d.N * 2 * d.tiles), dim3(d.px, d.cy), 0, stream>>>(
      grad_pooled, x, gate, grad_x, grad_gate, d);
  const cudaError_t err = cudaGetLastError();
  return err != cudaSuccess ? err : pass_through<scalar_t>(nullptr, grad_x, d, stream);
}

template <typename scalar_t>
cudaError_t gsf_fuse_forward(const scalar_t* x, const scalar_t* gate, const scalar_t* w,
                             scalar_t* out, const Shape& s, cudaStream_t stream) {
  const Dims d = make_dims(s);
  fuse_forward_kernel<scalar_t><<<blocks((d.N * d.C + d.cy - 1) / d.cy * d.tiles),
                                  dim3(d.px, d.cy), 0, stream>>>(x, gate, w, out, d);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t gsf_fuse_backward(const scalar_t* grad_out, const scalar_t* x, const scalar_t* gate,
                              const scalar_t* w, scalar_t* grad_x, scalar_t* grad_gate,
                              scalar_t* grad_w, opmath_t<scalar_t>* workspace, const Shape& s,
                              cudaStream_t stream) {
  const Dims d = make_dims(s);
  fuse_backward_kernel<scalar_t><<<blocks(d.N * 2 * d.tiles), dim3(d.px, d.cy), 0, stream>>>(
      grad_out, x, gate, w, grad_x, grad_gate, workspace, d);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t rows = d.B * 2 * d.half * d.T;
  sum_tiles_kernel<scalar_t>
      <<<blocks((rows + kThreads - 1) / kThreads), kThreads, 0, stream>>>(workspace, grad_w,
                                                                           rows, d.tiles);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : pass_through<scalar_t>(grad_out, grad_x, d, stream);
}

#define DAS_GSF_INSTANTIATE(T)                                                                   \
  template cudaError_t gsf_pool_forward<T>(const T*, const T*, T*, const Shape&,              \
                                           cudaStream_t);                                        \
  template cudaError_t gsf_pool_backward<T>(const T*, const T*, const T*, T*, T*,                \
                                            const Shape&, cudaStream_t);                      \
  template cudaError_t gsf_fuse_forward<T>(const T*, const T*, const T*, T*, const Shape&,    \
                                           cudaStream_t);                                        \
  template cudaError_t gsf_fuse_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, \
                                            opmath_t<T>*, const Shape&, cudaStream_t);
DAS_GSF_INSTANTIATE(float)
DAS_GSF_INSTANTIATE(double)
DAS_GSF_INSTANTIATE(__half)
DAS_GSF_INSTANTIATE(__nv_bfloat16)
#undef DAS_GSF_INSTANTIATE

}  // namespace cuda
}  // namespace das_kernels

// ---------------------------------------------------------------------------------------
// torch bindings

#ifdef DAS_WITH_TORCH
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"

namespace das_kernels {
namespace cuda {
namespace {

using das_kernels::gsf::check_inputs;
using das_kernels::gsf::check_like;
constexpr auto kCUDA = c10::DeviceType::CUDA;

template <typename T>
const T* in(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* out(at::Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

at::Tensor pool_forward(const at::Tensor& x, const at::Tensor& gate, int64_t num_segments,
                        int64_t n_gsf) {
  const Shape s = check_inputs("gsf_pool_forward", x, gate, num_segments, n_gsf, kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor pooled = at::empty({s.N / s.T, 4, s.G / 2, s.T}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_pool_forward_cuda", [&] {
        using T = cuda_type_t<scalar_t>;
        C10_CUDA_CHECK(gsf_pool_forward<T>(in<T>(x), in<T>(gate), out<T>(pooled), s,
                                           c10::cuda::getCurrentCUDAStream()));
      });
  return pooled;
}

std::tuple<at::Tensor, at::Tensor> pool_backward(const at::Tensor& grad_pooled,
                                                 const at::Tensor& x, const at::Tensor& gate,
                                                 int64_t num_segments, int64_t n_gsf) {
  const Shape s = check_inputs("gsf_pool_backward", x, gate, num_segments, n_gsf, kCUDA);
  check_like("gsf_pool_backward", "grad_pooled", grad_pooled, x, {s.N / s.T, 4, s.G / 2, s.T});
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gate = at::empty_like(gate);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_pool_backward_cuda", [&] {
        using T = cuda_type_t<scalar_t>;
        C10_CUDA_CHECK(gsf_pool_backward<T>(in<T>(grad_pooled), in<T>(x), in<T>(gate),
                                            out<T>(grad_x), out<T>(grad_gate), s,
                                            c10::cuda::getCurrentCUDAStream()));
      });
  return {grad_x, grad_gate};
}

at::Tensor fuse_forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w,
                        int64_t num_segments, int64_t n_gsf) {
  const Shape s = check_inputs("gsf_fuse_forward", x, gate, num_segments, n_gsf, kCUDA);
  check_like("gsf_fuse_forward", "w", w, x, {s.N / s.T, 2, s.G / 2, s.T});
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor result = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_fuse_forward_cuda", [&] {
        using T = cuda_type_t<scalar_t>;
        C10_CUDA_CHECK(gsf_fuse_forward<T>(in<T>(x), in<T>(gate), in<T>(w), out<T>(result), s,
                                           c10::cuda::getCurrentCUDAStream()));
      });
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fuse_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w,
    int64_t num_segments, int64_t n_gsf) {
  const Shape s = check_inputs("gsf_fuse_backward", x, gate, num_segments, n_gsf, kCUDA);
  check_like("gsf_fuse_backward", "w", w, x, {s.N / s.T, 2, s.G / 2, s.T});
  check_like("gsf_fuse_backward", "grad_out", grad_out, x, x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gate = at::empty_like(gate);
  at::Tensor grad_w = at::empty_like(w);
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor workspace =
      at::empty({gsf_fuse_backward_workspace(s)}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_fuse_backward_cuda", [&] {
        using T = cuda_type_t<scalar_t>;
        using A = opmath_t<T>;
        C10_CUDA_CHECK(gsf_fuse_backward<T>(
            in<T>(grad_out), in<T>(x), in<T>(gate), in<T>(w), out<T>(grad_x), out<T>(grad_gate),
            out<T>(grad_w), out<A>(workspace), s, c10::cuda::getCurrentCUDAStream()));
      });
  return {grad_x, grad_gate, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(das_native, CUDA, m) {
  m.impl("gsf_pool_forward", &pool_forward);
  m.impl("gsf_pool_backward", &pool_backward);
  m.impl("gsf_fuse_forward", &fuse_forward);
  m.impl("gsf_fuse_backward", &fuse_backward);
}

}  // namespace cuda
}  // namespace das_kernels
#endif  // DAS_WITH_TORCH
