// Compute types of the CUDA kernels: opmath_t<scalar_t> is float for float, __half and
// __nv_bfloat16 and double for double; to_op / from_op convert loads and stores (round to
// nearest even). With DAS_WITH_TORCH, cuda_type_t maps ATen's scalar types to CUDA's for the
// torch wrappers (AT_DISPATCH_FLOATING_TYPES_AND2 gives at::Half / at::BFloat16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace das_kernels {
namespace cuda {

template <typename scalar_t>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename scalar_t>
using opmath_t = typename OpMath<scalar_t>::type;

__device__ __forceinline__ float to_op(float v) { return v; }
__device__ __forceinline__ double to_op(double v) { return v; }
__device__ __forceinline__ float to_op(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_op(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_op(opmath_t<scalar_t> v) {
  return static_cast<scalar_t>(v);
}
template <>
__device__ __forceinline__ __half from_op<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_op<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace cuda
}  // namespace das_kernels

#ifdef DAS_WITH_TORCH
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace das_kernels {
namespace cuda {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename scalar_t>
using cuda_type_t = typename CudaType<scalar_t>::type;

}  // namespace cuda
}  // namespace das_kernels
#endif  // DAS_WITH_TORCH
