// DAS_HOST_DEVICE: inline functions that nvcc compiles for host and device and g++ for the
// host, used by the per-element math headers in csrc/common/.
#pragma once

#ifndef DAS_HOST_DEVICE
#if defined(__CUDACC__) || defined(__HIPCC__)
#define DAS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DAS_HOST_DEVICE inline
#endif
#endif
