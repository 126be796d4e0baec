// CUDA kernel of TSM's temporal shift (contract: das_kernels/ops/temporal_shift.py; the CPU
// kernel csrc/cpu/temporal_shift.cpp has the same span layout and source-frame map).
//
// A pure data movement: each frame is three contiguous channel spans, [0, fold),
// [fold, min(2 fold, C)) and the rest, read from frame t + 1, t - 1 and t (zero past the clip
// ends; the backward reverses the shifts). The kernel copies bit patterns in units of 16
// bytes when every span boundary and both pointers are 16-byte aligned, else one element at a
// time. grid.y walks the frames, grid.x the units of a frame.
//
// Without DAS_WITH_TORCH only the CUDA runtime is needed: das_kernels::cuda::temporal_shift
// takes raw pointers, the shape and a stream. Input checks: csrc/common/checks.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/temporal_shift.h"

namespace das_kernels {
namespace cuda {

// out = shift(x) for x, out (N, C, HW) contiguous, N = B * T, fold = C / fold_div;
// reverse = true gives the backward. scalar_t: float, double, __half or __nv_bfloat16.
template <typename scalar_t>
cudaError_t temporal_shift(const scalar_t* x, scalar_t* out, int64_t N, int64_t C, int64_t HW,
                           int64_t T, int64_t fold, bool reverse, cudaStream_t stream);

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;          // units per thread
constexpr int64_t kMaxFrameBlocks = 65535;  // grid.y limit

// Copy unit of the same size as scalar_t (zero is the all-zero bit pattern in every case).
template <int Bytes>
struct Unit;
template <>
struct Unit<2> {
  using type = uint16_t;
};
template <>
struct Unit<4> {
  using type = uint32_t;
};
template <>
struct Unit<8> {
  using type = uint64_t;
};

struct Spans {
  int64_t N, T, fold;
  int64_t start2;             // first channel of span 2: min(2 fold, C)
  int64_t frame, end0, end1;  // in units: frame length, ends of spans 0 and 1
  bool reverse;
};

template <typename unit_t>
__global__ void __launch_bounds__(kThreads)
    shift_kernel(const unit_t* __restrict__ src, unit_t* __restrict__ dst, Spans s) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;
  for (int64_t n = blockIdx.y; n < s.N; n += gridDim.y) {
    const int64_t b = n / s.T, t = n % s.T;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * kThreads;
      if (e >= s.frame) break;
      // first channel of the unit's span stands for the span (as in the CPU kernel)
      const int64_t c = e < s.end0 ? 0 : (e < s.end1 ? s.fold : s.start2);
      const int64_t sf = das_kernels::temporal_shift::source_frame(t, c, s.fold, s.T, s.reverse);
      dst[n * s.frame + e] = sf < 0 ? unit_t{} : src[(b * s.T + sf) * s.frame + e];
    }
  }
}

template <typename unit_t>
cudaError_t launch(const void* x, void* out, Spans s, cudaStream_t stream) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
  const dim3 grid(static_cast<unsigned>((s.frame + per_block - 1) / per_block),
                  static_cast<unsigned>(std::min(s.N, kMaxFrameBlocks)));
  shift_kernel<unit_t><<<grid, kThreads, 0, stream>>>(static_cast<const unit_t*>(x),
                                                      static_cast<unit_t*>(out), s);
  return cudaGetLastError();
}

}  // namespace

template <typename scalar_t>
cudaError_t temporal_shift(const scalar_t* x, scalar_t* out, int64_t N, int64_t C, int64_t HW,
                           int64_t T, int64_t fold, bool reverse, cudaStream_t stream) {
  if (N == 0 || C * HW == 0) return cudaSuccess;
  const int64_t start2 = std::min(2 * fold, C), end0 = fold * HW, end1 = start2 * HW;
  Spans s{N, T, fold, start2, C * HW, end0, end1, reverse};
  constexpr int64_t vec = 16 / sizeof(scalar_t);  // elements per 16-byte unit
  const bool aligned = s.frame % vec == 0 && end0 % vec == 0 && end1 % vec == 0 &&
                       reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (aligned) {
    s.frame /= vec;
    s.end0 /= vec;
    s.end1 /= vec;
    return launch<uint4>(x, out, s, stream);
  }
  return launch<typename Unit<sizeof(scalar_t)>::type>(x, out, s, stream);
}

#define DAS_TSM_INSTANTIATE(T)                                                                 \
  template cudaError_t temporal_shift<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t,    \
                                         int64_t, bool, cudaStream_t);
DAS_TSM_INSTANTIATE(float)
DAS_TSM_INSTANTIATE(double)
DAS_TSM_INSTANTIATE(__half)
DAS_TSM_INSTANTIATE(__nv_bfloat16)
#undef DAS_TSM_INSTANTIATE

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

#include "common/checks.h"
#include "cuda/opmath.cuh"

namespace das_kernels {
namespace cuda {
namespace {

at::Tensor shift(const char* op, const at::Tensor& x, int64_t n_segments, int64_t fold_div,
                 bool reverse) {
  das_kernels::temporal_shift::check_inputs(op, x, n_segments, fold_div, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const int64_t fold = x.size(1) / fold_div;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_shift_cuda", [&] {
        using T = cuda_type_t<scalar_t>;
        C10_CUDA_CHECK(temporal_shift<T>(
            static_cast<const T*>(x.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()),
            x.size(0), x.size(1), x.size(2) * x.size(3), n_segments, fold, reverse,
            c10::cuda::getCurrentCUDAStream()));
      });
  return out;
}

at::Tensor temporal_shift_forward(const at::Tensor& x, int64_t n_segments, int64_t fold_div) {
  return shift("temporal_shift_forward", x, n_segments, fold_div, false);
}

at::Tensor temporal_shift_backward(const at::Tensor& grad_out, int64_t n_segments,
                                   int64_t fold_div) {
  return shift("temporal_shift_backward", grad_out, n_segments, fold_div, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(das_native, CUDA, m) {
  m.impl("temporal_shift_forward", &temporal_shift_forward);
  m.impl("temporal_shift_backward", &temporal_shift_backward);
}

}  // namespace cuda
}  // namespace das_kernels
#endif  // DAS_WITH_TORCH
