// CPU kernels of GSF's fused part: gsf_pool and gsf_fuse, forward and backward.
// Contracts: das_kernels/ops/gsf.py; per-element math: csrc/common/gsf.h; input checks:
// csrc/common/checks.h.
//
// Work split: the forward of gsf_fuse and both backwards run one task per (clip b, channel)
// with the T frames in order inside the task, so a plane read for frame t is still in cache
// when frame t +- 1 needs it: each tensor is read from memory once. grad_gate sums over the
// channels of a half: the backwards give each (b, half, channel chunk) task private
// accumulators and add the chunks in a fixed order afterwards (no atomics, same result for
// any thread count). Arithmetic is in opmath (float for half/bfloat16).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/checks.h"
#include "common/gsf.h"

namespace das_kernels {
namespace cpu {
namespace {

using namespace das_kernels::gsf;

struct Dims {
  int64_t N, C, HW, T, B, G, half, quarter;
};

Dims check_inputs(const char* op, const at::Tensor& x, const at::Tensor& gate, int64_t T,
                  int64_t G) {
  const Shape s = das_kernels::gsf::check_inputs(op, x, gate, T, G, c10::DeviceType::CPU);
  return Dims{s.N, s.C, s.HW, s.T, s.N / s.T, s.G, s.G / 2, s.G / 4};
}

// Tasks per parallel_for chunk so that a chunk touches about GRAIN_SIZE elements.
int64_t grain(int64_t work_per_task) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_task));
}

// Copies (or zeroes, when src is null) channels [G, C) of every frame: the pass-through part.
template <typename scalar_t>
void pass_through(const Dims& d, const scalar_t* src, scalar_t* dst) {
  const int64_t len = (d.C - d.G) * d.HW;
  if (len == 0) return;
  at::parallel_for(0, d.N, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* out = dst + (n * d.C + d.G) * d.HW;
      if (src == nullptr) {
        std::fill(out, out + len, scalar_t(0));
      } else {
        std::memcpy(out, src + (n * d.C + d.G) * d.HW, len * sizeof(scalar_t));
      }
    }
  });
}

// Runs body(b, h, i, acc) for every clip b, half h and channel i of the half; acc holds T * HW
// opmath accumulators of grad_gate[b, :, h] private to the task's channel chunk. The chunks
// are summed in a fixed order into grad_gate (N, 2, HW). The chunk count depends on the
// shape only, so the result does not depend on the number of threads.
template <typename scalar_t, typename Body>
void for_each_channel_with_gate_grad(const Dims& d, scalar_t* grad_gate, const Body& body) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t by_tasks = (64 + 2 * d.B - 1) / (2 * d.B);
  const int64_t chunks = std::max<int64_t>(1, std::min(by_tasks, d.half / 8));
  const int64_t chunk_size = (d.half + chunks - 1) / chunks;
  const int64_t plane = d.T * d.HW;
  std::unique_ptr<opmath_t[]> partial(new opmath_t[d.B * 2 * chunks * plane]);
  at::parallel_for(0, d.B * 2 * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (2 * chunks), h = (task / chunks) % 2, k = task % chunks;
      opmath_t* acc = partial.get() + task * plane;
      std::fill(acc, acc + plane, opmath_t(0));
      const int64_t stop = std::min(d.half, (k + 1) * chunk_size);
      for (int64_t i = k * chunk_size; i < stop; ++i) body(b, h, i, acc);
    }
  });
  at::parallel_for(0, d.B * 2 * d.T, grain(chunks * d.HW), [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t bh = idx / d.T, t = idx % d.T, b = bh / 2, h = bh % 2;
      const opmath_t* src = partial.get() + bh * chunks * plane + t * d.HW;
      scalar_t* dst = grad_gate + ((b * d.T + t) * 2 + h) * d.HW;
      for (int64_t p = 0; p < d.HW; ++p) {
        opmath_t s = src[p];
        for (int64_t k = 1; k < chunks; ++k) s += src[k * plane + p];
        dst[p] = static_cast<scalar_t>(s);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// gsf_pool

template <typename scalar_t>
void pool_forward_impl(const Dims& d, const scalar_t* x, const scalar_t* gate, scalar_t* pooled) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv = opmath_t(1) / static_cast<opmath_t>(d.HW);
  at::parallel_for(0, d.N * d.G, grain(d.HW), [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / d.G, c = idx % d.G;
      const int64_t h = c / d.half, i = c % d.half, b = n / d.T, t = n % d.T;
      const scalar_t* xp = x + (n * d.C + c) * d.HW;
      const scalar_t* gp = gate + (n * 2 + h) * d.HW;
      opmath_t sy = 0, sr = 0;
#pragma omp simd reduction(+ : sy, sr)
      for (int64_t p = 0; p < d.HW; ++p) {
        opmath_t y, r;
        gate_split(static_cast<opmath_t>(gp[p]), static_cast<opmath_t>(xp[p]), y, r);
        sy += y;
        sr += r;
      }
      scalar_t* y_row = pooled + ((b * 4 + 2 * h) * d.half + i) * d.T;
      y_row[d.half * d.T + t] = static_cast<scalar_t>(sr * inv);  // r row: (b, 2h + 1, i)
      const int64_t m = target_frame(t, h, d.T);
      if (m >= 0) y_row[m] = static_cast<scalar_t>(sy * inv);
    }
  });
}

at::Tensor gsf_pool_forward(const at::Tensor& x, const at::Tensor& gate, int64_t num_segments,
                            int64_t n_gsf) {
  const Dims d = check_inputs("gsf_pool_forward", x, gate, num_segments, n_gsf);
  // zeros: the shifted-y entries that receive nothing (zero padding) are never written
  at::Tensor pooled = at::zeros({d.B, 4, d.half, d.T}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_pool_forward",
                                  [&] {
                                    pool_forward_impl<scalar_t>(
                                        d, x.const_data_ptr<scalar_t>(),
                                        gate.const_data_ptr<scalar_t>(),
                                        pooled.mutable_data_ptr<scalar_t>());
                                  });
  return pooled;
}

template <typename scalar_t>
void pool_backward_impl(const Dims& d, const scalar_t* grad_pooled, const scalar_t* x,
                        const scalar_t* gate, scalar_t* grad_x, scalar_t* grad_gate,
                        bool accumulate) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv = opmath_t(1) / static_cast<opmath_t>(d.HW);
  for_each_channel_with_gate_grad<scalar_t>(d, grad_gate, [&](int64_t b, int64_t h, int64_t i,
                                                              opmath_t* acc) {
    const int64_t c = h * d.half + i;
    const scalar_t* gy_row = grad_pooled + ((b * 4 + 2 * h) * d.half + i) * d.T;
    const scalar_t* gr_row = gy_row + d.half * d.T;
    for (int64_t t = 0; t < d.T; ++t) {
      const int64_t n = b * d.T + t, m = target_frame(t, h, d.T);
      const opmath_t ay = m >= 0 ? static_cast<opmath_t>(gy_row[m]) * inv : opmath_t(0);
      const opmath_t ar = static_cast<opmath_t>(gr_row[t]) * inv;
      const scalar_t* xp = x + (n * d.C + c) * d.HW;
      const scalar_t* gp = gate + (n * 2 + h) * d.HW;
      scalar_t* gxp = grad_x + (n * d.C + c) * d.HW;
      opmath_t* accp = acc + t * d.HW;
#pragma omp simd
      for (int64_t p = 0; p < d.HW; ++p) {
        const opmath_t g = static_cast<opmath_t>(gp[p]);
        const opmath_t gx = pool_grad_x(ay, ar, g);
        gxp[p] = static_cast<scalar_t>(accumulate ? static_cast<opmath_t>(gxp[p]) + gx : gx);
        accp[p] += static_cast<opmath_t>(xp[p]) * (ay - ar);
      }
    }
  });
  if (!accumulate) pass_through<scalar_t>(d, nullptr, grad_x);
}

// grad_x (N, C, H, W): written (zero in the pass-through channels), or, when accumulate,
// added to in the gated channels only.
at::Tensor pool_backward(const char* op, const at::Tensor& grad_x, const at::Tensor& grad_pooled,
                         const at::Tensor& x, const at::Tensor& gate, int64_t num_segments,
                         int64_t n_gsf, bool accumulate) {
  const Dims d = check_inputs(op, x, gate, num_segments, n_gsf);
  check_like(op, "grad_pooled", grad_pooled, x, {d.B, 4, d.half, d.T});
  check_like(op, "grad_x", grad_x, x, x.sizes());
  at::Tensor grad_gate = at::empty_like(gate);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_pool_backward", [&] {
        pool_backward_impl<scalar_t>(d, grad_pooled.const_data_ptr<scalar_t>(),
                                     x.const_data_ptr<scalar_t>(), gate.const_data_ptr<scalar_t>(),
                                     grad_x.mutable_data_ptr<scalar_t>(),
                                     grad_gate.mutable_data_ptr<scalar_t>(), accumulate);
      });
  return grad_gate;
}

std::tuple<at::Tensor, at::Tensor> gsf_pool_backward(const at::Tensor& grad_pooled,
                                                     const at::Tensor& x, const at::Tensor& gate,
                                                     int64_t num_segments, int64_t n_gsf) {
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gate = pool_backward("gsf_pool_backward", grad_x, grad_pooled, x, gate,
                                       num_segments, n_gsf, false);
  return {grad_x, grad_gate};
}

at::Tensor gsf_pool_backward_accumulate(at::Tensor& grad_x, const at::Tensor& grad_pooled,
                                        const at::Tensor& x, const at::Tensor& gate,
                                        int64_t num_segments, int64_t n_gsf) {
  return pool_backward("gsf_pool_backward_accumulate", grad_x, grad_pooled, x, gate,
                       num_segments, n_gsf, true);
}

// ---------------------------------------------------------------------------------------
// gsf_fuse

template <typename scalar_t>
void fuse_forward_impl(const Dims& d, const scalar_t* x, const scalar_t* gate, const scalar_t* w,
                       scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const std::vector<scalar_t> zeros(d.HW, scalar_t(0));  // stands in for padded frames
  at::parallel_for(0, d.B * d.G, grain(d.T * d.HW), [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / d.G, c = idx % d.G, h = c / d.half, i = c % d.half;
      const int64_t co = h * d.half + out_channel(i, d.quarter);
      const scalar_t* w_row = w + ((b * 2 + h) * d.half + i) * d.T;
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t n = b * d.T + t, s = source_frame(t, h, d.T);
        const scalar_t* xp = x + (n * d.C + c) * d.HW;
        const scalar_t* gp = gate + (n * 2 + h) * d.HW;
        const scalar_t* xs = s >= 0 ? x + ((b * d.T + s) * d.C + c) * d.HW : zeros.data();
        const scalar_t* gs = s >= 0 ? gate + ((b * d.T + s) * 2 + h) * d.HW : zeros.data();
        scalar_t* op = out + (n * d.C + co) * d.HW;
        const opmath_t wv = static_cast<opmath_t>(w_row[t]);
#pragma omp simd
        for (int64_t p = 0; p < d.HW; ++p) {
          op[p] = static_cast<scalar_t>(fuse(wv, static_cast<opmath_t>(gs[p]),
                                             static_cast<opmath_t>(xs[p]),
                                             static_cast<opmath_t>(gp[p]),
                                             static_cast<opmath_t>(xp[p])));
        }
      }
    }
  });
  pass_through<scalar_t>(d, x, out);
}

at::Tensor gsf_fuse_forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w,
                            int64_t num_segments, int64_t n_gsf) {
  const Dims d = check_inputs("gsf_fuse_forward", x, gate, num_segments, n_gsf);
  check_like("gsf_fuse_forward", "w", w, x, {d.B, 2, d.half, d.T});
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_fuse_forward",
                                  [&] {
                                    fuse_forward_impl<scalar_t>(
                                        d, x.const_data_ptr<scalar_t>(),
                                        gate.const_data_ptr<scalar_t>(),
                                        w.const_data_ptr<scalar_t>(),
                                        out.mutable_data_ptr<scalar_t>());
                                  });
  return out;
}

template <typename scalar_t>
void fuse_backward_impl(const Dims& d, const scalar_t* grad_out, const scalar_t* x,
                        const scalar_t* gate, const scalar_t* w, scalar_t* grad_x,
                        scalar_t* grad_gate, scalar_t* grad_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  const std::vector<scalar_t> zeros(d.HW, scalar_t(0));
  for_each_channel_with_gate_grad<scalar_t>(d, grad_gate, [&](int64_t b, int64_t h, int64_t i,
                                                              opmath_t* acc) {
    const int64_t c = h * d.half + i, co = h * d.half + out_channel(i, d.quarter);
    const int64_t row = ((b * 2 + h) * d.half + i) * d.T;
    for (int64_t t = 0; t < d.T; ++t) {
      const int64_t n = b * d.T + t;
      const int64_t s = source_frame(t, h, d.T), m = target_frame(t, h, d.T);
      const scalar_t* xp = x + (n * d.C + c) * d.HW;
      const scalar_t* gp = gate + (n * 2 + h) * d.HW;
      const scalar_t* gop = grad_out + (n * d.C + co) * d.HW;
      const scalar_t* xs = s >= 0 ? x + ((b * d.T + s) * d.C + c) * d.HW : zeros.data();
      const scalar_t* gs = s >= 0 ? gate + ((b * d.T + s) * 2 + h) * d.HW : zeros.data();
      const scalar_t* gom = m >= 0 ? grad_out + ((b * d.T + m) * d.C + co) * d.HW : zeros.data();
      const opmath_t wv = static_cast<opmath_t>(w[row + t]);
      const opmath_t wm = m >= 0 ? static_cast<opmath_t>(w[row + m]) : opmath_t(0);
      scalar_t* gxp = grad_x + (n * d.C + c) * d.HW;
      opmath_t* accp = acc + t * d.HW;
      opmath_t sw = 0;
#pragma omp simd reduction(+ : sw)
      for (int64_t p = 0; p < d.HW; ++p) {
        const opmath_t g = static_cast<opmath_t>(gp[p]), xv = static_cast<opmath_t>(xp[p]);
        const opmath_t go = static_cast<opmath_t>(gop[p]);
        const opmath_t a = go * (opmath_t(1) - wv), bm = static_cast<opmath_t>(gom[p]) * wm;
        gxp[p] = static_cast<scalar_t>(fuse_grad_x(a, bm, g));
        accp[p] += xv * (bm - a);
        sw += fuse_grad_w(go, static_cast<opmath_t>(gs[p]), static_cast<opmath_t>(xs[p]), g, xv);
      }
      grad_w[row + t] = static_cast<scalar_t>(sw);
    }
  });
  pass_through<scalar_t>(d, grad_out, grad_x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gsf_fuse_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w,
    int64_t num_segments, int64_t n_gsf) {
  const Dims d = check_inputs("gsf_fuse_backward", x, gate, num_segments, n_gsf);
  check_like("gsf_fuse_backward", "w", w, x, {d.B, 2, d.half, d.T});
  check_like("gsf_fuse_backward", "grad_out", grad_out, x, x.sizes());
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gate = at::empty_like(gate);
  at::Tensor grad_w = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gsf_fuse_backward", [&] {
        fuse_backward_impl<scalar_t>(
            d, grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            gate.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
            grad_x.mutable_data_ptr<scalar_t>(), grad_gate.mutable_data_ptr<scalar_t>(),
            grad_w.mutable_data_ptr<scalar_t>());
      });
  return {grad_x, grad_gate, grad_w};
}

// ---------------------------------------------------------------------------------------
// gsf_gate_taps (CPU helper of das_kernels.ops.gsf_gate.gsf_gate)

void check_gate_taps(const char* op, const at::Tensor& t, int64_t channels, int64_t T) {
  TORCH_CHECK(t.dim() == 4 && t.size(1) == channels, op, ": expected (N, ", channels,
              ", H, W), got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), op, ": expects contiguous CPU tensors");
  TORCH_CHECK(T > 0 && t.size(0) % T == 0, op, ": N=", t.size(0),
              " is not a multiple of num_segments=", T);
}

template <typename scalar_t>
void gate_taps_forward_impl(const scalar_t* taps, const scalar_t* bias, scalar_t* gate,
                            int64_t N, int64_t T, int64_t H, int64_t W) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  at::parallel_for(0, N * 2, grain(27 * HW), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(HW);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / 2, g = idx % 2, t = n % T;
      std::fill(acc.begin(), acc.end(), static_cast<opmath_t>(bias[g]));
      for (int64_t kt = 0; kt < 3; ++kt) {
        if (t + kt - 1 < 0 || t + kt - 1 >= T) continue;  // zero padding in time
        const scalar_t* src = taps + ((n + kt - 1) * 54 + g * 27 + kt * 9) * HW;
        for (int64_t kh = 0; kh < 3; ++kh) {
          int64_t h0, h1;
          tap_range(kh, H, h0, h1);
          for (int64_t kw = 0; kw < 3; ++kw) {
            int64_t w0, w1;
            tap_range(kw, W, w0, w1);
            const scalar_t* plane = src + (kh * 3 + kw) * HW + (kh - 1) * W + (kw - 1);
            for (int64_t h = h0; h < h1; ++h) {
              opmath_t* a = acc.data() + h * W;
              const scalar_t* row = plane + h * W;
#pragma omp simd
              for (int64_t w = w0; w < w1; ++w) a[w] += static_cast<opmath_t>(row[w]);
            }
          }
        }
      }
      scalar_t* out = gate + idx * HW;
      for (int64_t p = 0; p < HW; ++p) out[p] = static_cast<scalar_t>(std::tanh(acc[p]));
    }
  });
}

template <typename scalar_t>
void gate_taps_backward_impl(const scalar_t* grad_gate, const scalar_t* gate, scalar_t* grad_taps,
                             scalar_t* grad_bias, int64_t N, int64_t T, int64_t H, int64_t W) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  // grad of the pre-tanh sum, and its per-plane sums for the bias (added in a fixed order)
  std::vector<opmath_t> pre(N * 2 * HW), sums(N * 2);
  at::parallel_for(0, N * 2, grain(HW), [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      opmath_t s = 0;
      opmath_t* dst = pre.data() + idx * HW;
      const scalar_t* gg = grad_gate + idx * HW;
      const scalar_t* gt = gate + idx * HW;
#pragma omp simd reduction(+ : s)
      for (int64_t p = 0; p < HW; ++p) {
        dst[p] = static_cast<opmath_t>(gg[p]) * tanh_grad(static_cast<opmath_t>(gt[p]));
        s += dst[p];
      }
      sums[idx] = s;
    }
  });
  for (int64_t g = 0; g < 2; ++g) {
    opmath_t s = 0;
    for (int64_t n = 0; n < N; ++n) s += sums[n * 2 + g];
    grad_bias[g] = static_cast<scalar_t>(s);
  }
  // taps[n', 27 g + k] fed gate[n' - kt + 1, g] shifted by (1 - kh, 1 - kw): gather it back
  at::parallel_for(0, N * 2, grain(27 * HW), [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / 2, g = idx % 2, t = n % T;
      for (int64_t k = 0; k < 27; ++k) {
        const int64_t kt = k / 9, kh = (k / 3) % 3, kw = k % 3;
        scalar_t* dst = grad_taps + (n * 54 + g * 27 + k) * HW;
        std::fill(dst, dst + HW, scalar_t(0));
        if (t - kt + 1 < 0 || t - kt + 1 >= T) continue;
        const opmath_t* src = pre.data() + ((n - kt + 1) * 2 + g) * HW - (kh - 1) * W - (kw - 1);
        int64_t h0, h1, w0, w1;
        tap_range(2 - kh, H, h0, h1);
        tap_range(2 - kw, W, w0, w1);
        for (int64_t h = h0; h < h1; ++h) {
#pragma omp simd
          for (int64_t w = w0; w < w1; ++w) dst[h * W + w] = static_cast<scalar_t>(src[h * W + w]);
        }
      }
    }
  });
}

at::Tensor gsf_gate_taps_forward(const at::Tensor& taps, const at::Tensor& bias,
                                 int64_t num_segments) {
  check_gate_taps("gsf_gate_taps_forward", taps, 54, num_segments);
  TORCH_CHECK(bias.numel() == 2 && bias.is_contiguous() && bias.scalar_type() == taps.scalar_type(),
              "gsf_gate_taps_forward: bias must be 2 contiguous values of taps' dtype");
  const int64_t N = taps.size(0), H = taps.size(2), W = taps.size(3);
  at::Tensor gate = at::empty({N, 2, H, W}, taps.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, taps.scalar_type(),
                                  "gsf_gate_taps_forward", [&] {
                                    gate_taps_forward_impl<scalar_t>(
                                        taps.const_data_ptr<scalar_t>(),
                                        bias.const_data_ptr<scalar_t>(),
                                        gate.mutable_data_ptr<scalar_t>(), N, num_segments, H, W);
                                  });
  return gate;
}

std::tuple<at::Tensor, at::Tensor> gsf_gate_taps_backward(const at::Tensor& grad_gate,
                                                          const at::Tensor& gate,
                                                          int64_t num_segments) {
  check_gate_taps("gsf_gate_taps_backward", gate, 2, num_segments);
  check_like("gsf_gate_taps_backward", "grad_gate", grad_gate, gate, gate.sizes());
  const int64_t N = gate.size(0), H = gate.size(2), W = gate.size(3);
  at::Tensor grad_taps = at::empty({N, 54, H, W}, gate.options());
  at::Tensor grad_bias = at::empty({2}, gate.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, gate.scalar_type(), "gsf_gate_taps_backward", [&] {
        gate_taps_backward_impl<scalar_t>(
            grad_gate.const_data_ptr<scalar_t>(), gate.const_data_ptr<scalar_t>(),
            grad_taps.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), N,
            num_segments, H, W);
      });
  return {grad_taps, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(das_native, CPU, m) {
  m.impl("gsf_gate_taps_forward", &gsf_gate_taps_forward);
  m.impl("gsf_gate_taps_backward", &gsf_gate_taps_backward);
  m.impl("gsf_pool_forward", &gsf_pool_forward);
  m.impl("gsf_pool_backward", &gsf_pool_backward);
  m.impl("gsf_pool_backward_accumulate", &gsf_pool_backward_accumulate);
  m.impl("gsf_fuse_forward", &gsf_fuse_forward);
  m.impl("gsf_fuse_backward", &gsf_fuse_backward);
}

}  // namespace cpu
}  // namespace das_kernels
