// CPU kernels of TSM's temporal shift (das_kernels/ops/temporal_shift.py has the contract).
// A pure data movement: per frame three contiguous channel blocks are copied from frame
// t + 1, t - 1 and t (or zeroed at clip boundaries); the backward is the reverse shift.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common/checks.h"
#include "common/temporal_shift.h"

namespace das_kernels {
namespace cpu {
namespace {

at::Tensor shift(const char* op, const at::Tensor& x, int64_t n_segments, int64_t fold_div,
                 bool reverse) {
  das_kernels::temporal_shift::check_inputs(op, x, n_segments, fold_div, c10::DeviceType::CPU);
  const int64_t N = x.size(0), C = x.size(1), T = n_segments;
  const int64_t plane = x.size(2) * x.size(3) * static_cast<int64_t>(x.element_size());
  const int64_t fold = C / fold_div;
  at::Tensor out = at::empty_like(x);
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  // channel blocks [0, fold), [fold, 2 fold), [2 fold, C): one source frame each
  const int64_t starts[3] = {0, std::min(fold, C), std::min(2 * fold, C)};
  const int64_t stops[3] = {starts[1], starts[2], C};
  const int64_t frame_bytes = std::max<int64_t>(1, C * plane);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE * 4 / frame_bytes);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / T, t = n % T;
      for (int k = 0; k < 3; ++k) {
        const int64_t len = (stops[k] - starts[k]) * plane;
        if (len == 0) continue;
        char* o = dst + (n * C + starts[k]) * plane;
        const int64_t s = das_kernels::temporal_shift::source_frame(t, starts[k], fold, T, reverse);
        if (s < 0) {
          std::memset(o, 0, len);
        } else {
          std::memcpy(o, src + ((b * T + s) * C + starts[k]) * plane, len);
        }
      }
    }
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

TORCH_LIBRARY_IMPL(das_native, CPU, m) {
  m.impl("temporal_shift_forward", &temporal_shift_forward);
  m.impl("temporal_shift_backward", &temporal_shift_backward);
}

}  // namespace cpu
}  // namespace das_kernels
