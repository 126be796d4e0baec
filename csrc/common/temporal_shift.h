// Per-element math of TSM's temporal shift (temporal_shift), shared by the CPU
// (csrc/cpu/temporal_shift.cpp) and CUDA (csrc/cuda/temporal_shift.cu) kernels. No torch
// headers: plain C++ that nvcc and g++ both compile.
//
// Layout (see das_kernels/ops/temporal_shift.py for the op contract): x, out (N, C, H, W),
// N = B * T, frame n = b * T + t, fold = C / fold_div.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace das_kernels {
namespace temporal_shift {

// Channels [0, fold) of frame t read frame t + 1, [fold, 2 fold) read frame t - 1, the rest
// frame t; -1 means zero padding. reverse = true gives the adjoint map (the backward).
DAS_HOST_DEVICE int64_t source_frame(int64_t t, int64_t c, int64_t fold, int64_t T, bool reverse) {
  int64_t d = 0;
  if (c < fold) {
    d = 1;
  } else if (c < 2 * fold) {
    d = -1;
  }
  const int64_t s = t + (reverse ? -d : d);
  return (s >= 0 && s < T) ? s : -1;
}

}  // namespace temporal_shift
}  // namespace das_kernels
