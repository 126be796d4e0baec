// CPU kernels of das_native::multi_affine_warp_{forward,backward} (schemas in das_kernels.cpp).
//
// Layout: x is first packed (once per call) into a channels-last copy in the compute type,
// 4 channels per vector, with a 1-pixel zero border: every tap of a sample point with at
// least one tap inside the image is then one aligned vector load, out-of-bounds taps read
// the border's zeros, and no per-tap masking is needed. Both passes work on one output row
// of one (b, k, t) at a time: the row's sample corners are computed once (compute_row,
// vectorized), then each pixel interpolates all channels with vector ops.
// The backward is deterministic: every task owns its grad_x plane(s) (a padded
// channels-last accumulator) and its (b, k, t) reductions, summed in a fixed order.
// The hot loops are compiled twice, generic and AVX2+FMA, picked at run time.

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte double vectors in inline helpers
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/multi_affine_warp.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DAS_X86_DISPATCH 1
#include <immintrin.h>
#endif

#define DAS_ALWAYS_INLINE inline __attribute__((always_inline))

namespace das_kernels {
namespace cpu {
namespace {

namespace warp = das_kernels::multi_affine_warp;

using warp::kReduceSlots;
constexpr int kLanes = 4;  // channels per vector

// 4 channels of the compute type T (GCC / Clang vector extensions).
#if !defined(__GNUC__) && !defined(__clang__)
#error "csrc/cpu/multi_affine_warp.cpp needs GCC or Clang (vector extensions)"
#endif
template <typename T>
struct Vec4;
template <>
struct Vec4<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct Vec4<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using V4 = typename Vec4<T>::type;
template <typename T>
DAS_ALWAYS_INLINE T lane(const V4<T>& v, int l) {
  return v[l];
}
template <typename T>
DAS_ALWAYS_INLINE void set_lane(V4<T>& v, int l, T x) {
  v[l] = x;
}

// {a, a, a, a} (a - 0 folds away exactly, unlike 0 + a, so this is a plain broadcast)
template <typename T>
DAS_ALWAYS_INLINE V4<T> bcast(T a) {
  return a - V4<T>{};
}

template <typename T>
DAS_ALWAYS_INLINE T hsum(const V4<T>& v) {
  return (lane<T>(v, 0) + lane<T>(v, 1)) + (lane<T>(v, 2) + lane<T>(v, 3));
}

// Uninitialized 64-byte aligned scratch array (std::vector does not honour the alignment of
// vector-extension types here).
template <typename V>
class Scratch {
 public:
  explicit Scratch(int64_t n) : n_(n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(V) + 63) / 64 * 64;
    p_ = static_cast<V*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(p_ != nullptr, "multi_affine_warp: out of memory");
  }
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  V* data() { return p_; }
  void zero() { std::memset(static_cast<void*>(p_), 0, sizeof(V) * n_); }

 private:
  V* p_;
  int64_t n_;
};

struct Dims : warp::Shape {
  int64_t plane() const { return H * W; }
  int64_t out_plane() const { return OH * OW; }
  int64_t cblocks() const { return (C + kLanes - 1) / kLanes; }
  int64_t padded_w() const { return W + 2; }
  int64_t padded_plane() const { return (H + 2) * (W + 2); }  // in vectors
};

// Sample corners of one output row (structure of arrays, reused across rows); off: offset
// of the corner's tap in the padded planes (valid for the pixels with a tap inside).
template <typename T>
struct RowTaps {
  std::vector<int> x0, y0;
  std::vector<T> fx, fy;
  std::vector<int64_t> off;
  explicit RowTaps(int64_t n) : x0(n), y0(n), fx(n), fy(n), off(n) {}
};

// u * theta[0] and u * theta[3] per output column for each of the K ops of one (b, t).
// Kept as separate products so that the compiler cannot fuse them into the additions
// (affine_grid's bmm rounds them separately; exact tap selection depends on it).
template <typename T>
struct ColumnTerms {
  std::vector<T> ux, uy;  // (K, OW)
  int64_t OW;
  ColumnTerms(int64_t K, int64_t ow) : ux(K * ow), uy(K * ow), OW(ow) {}
  // theta(k) = theta[b, k, t]
  template <typename ThetaAt>
  void compute(int64_t K, const T* base_u, ThetaAt theta) {
    for (int64_t k = 0; k < K; ++k) {
      const T* th = theta(k);
      const T a = th[0], c = th[3];
      T* __restrict px = ux.data() + k * OW;
      T* __restrict py = uy.data() + k * OW;
      for (int64_t j = 0; j < OW; ++j) {
        px[j] = base_u[j] * a;
        py[j] = base_u[j] * c;
      }
    }
  }
};

// Pixels [lo, hi) of a row are the ones with at least one tap inside the image (sample
// coordinates are monotone along a row, so they form one interval); when `guarded`, the
// interval check failed and every pixel must be tested.
struct RowState {
  int lo, hi;
  bool guarded;
};

template <typename T>
struct Geometry {
  const T* base_u;  // (OW) affine_grid base coordinates
  const T* base_v;  // (OH)
  T half_w, half_h;
  int H, W;
};

#ifdef DAS_X86_DISPATCH
// AVX2 version of the per-pixel loop of compute_row for float, 8 pixels at a time; the
// same operations as warp::sample_point / bilinear_corner (hardware FMA and floor give
// bit-identical results). Returns the number of pixels done; adds the inside count to *count.
__attribute__((target("avx2,fma"))) inline int corners_avx2(
    const float* __restrict ux, const float* __restrict uy, float vx, float vy, float tx,
    float ty, float half_w, float half_h, int H, int W, int n, int* __restrict xs,
    int* __restrict ys, float* __restrict fxs, float* __restrict fys, int* count) {
  const __m256 one = _mm256_set1_ps(1.f), mhalf = _mm256_set1_ps(-0.5f);
  const __m256 lo = _mm256_set1_ps(-2.f);
  const __m256 hix = _mm256_set1_ps(static_cast<float>(W + 1));
  const __m256 hiy = _mm256_set1_ps(static_cast<float>(H + 1));
  const __m256 vvx = _mm256_set1_ps(vx), vvy = _mm256_set1_ps(vy);
  const __m256 vtx = _mm256_set1_ps(tx), vty = _mm256_set1_ps(ty);
  const __m256 hw = _mm256_set1_ps(half_w), hh = _mm256_set1_ps(half_h);
  const __m256i m2 = _mm256_set1_epi32(-2), iw = _mm256_set1_epi32(W),
                ih = _mm256_set1_epi32(H);
  __m256i cnt = _mm256_setzero_si256();
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(ux + j), vvx), vtx);
    const __m256 sy = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(uy + j), vvy), vty);
    // max_ps returns its second operand for NaN, like clamped_floor
    const __m256 cx = _mm256_min_ps(
        _mm256_max_ps(_mm256_fmadd_ps(_mm256_add_ps(sx, one), hw, mhalf), lo), hix);
    const __m256 cy = _mm256_min_ps(
        _mm256_max_ps(_mm256_fmadd_ps(_mm256_add_ps(sy, one), hh, mhalf), lo), hiy);
    const __m256 flx = _mm256_floor_ps(cx), fly = _mm256_floor_ps(cy);
    const __m256i x0 = _mm256_cvttps_epi32(flx), y0 = _mm256_cvttps_epi32(fly);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xs + j), x0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ys + j), y0);
    _mm256_storeu_ps(fxs + j, _mm256_sub_ps(cx, flx));
    _mm256_storeu_ps(fys + j, _mm256_sub_ps(cy, fly));
    // taps_any_inside: x0 in [-1, W - 1] and y0 in [-1, H - 1]
    const __m256i in = _mm256_and_si256(
        _mm256_and_si256(_mm256_cmpgt_epi32(x0, m2), _mm256_cmpgt_epi32(iw, x0)),
        _mm256_and_si256(_mm256_cmpgt_epi32(y0, m2), _mm256_cmpgt_epi32(ih, y0)));
    cnt = _mm256_sub_epi32(cnt, in);
  }
  alignas(32) int c[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(c), cnt);
  *count += ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7]));
  return j;
}
#endif

// Corners of output row `i` under th (one (b, k, t)) given its column terms.
template <bool kAvx2, typename T>
DAS_ALWAYS_INLINE RowState compute_row(const T* __restrict th, const T* __restrict ux,
                                       const T* __restrict uy, const Geometry<T>& g, int64_t i,
                                       int OW, RowTaps<T>& r) {
  const T vx = g.base_v[i] * th[1], vy = g.base_v[i] * th[4];
  const T tx = th[2], ty = th[5];
  int* __restrict xs = r.x0.data();
  int* __restrict ys = r.y0.data();
  T* __restrict fx = r.fx.data();
  T* __restrict fy = r.fy.data();
  const int H = g.H, W = g.W;
  int j = 0, count = 0;
#ifdef DAS_X86_DISPATCH
  if constexpr (kAvx2 && std::is_same_v<T, float>)
    j = corners_avx2(ux, uy, vx, vy, tx, ty, g.half_w, g.half_h, H, W, OW, xs, ys, fx, fy,
                     &count);
#endif
  for (; j < OW; ++j) {  // branch-free: vectorizes in the generic build
    const auto p = warp::sample_point(ux[j], vx, tx, uy[j], vy, ty, g.half_w, g.half_h);
    const auto q = warp::bilinear_corner(p, H, W);
    xs[j] = q.x0;
    ys[j] = q.y0;
    fx[j] = q.fx;
    fy[j] = q.fy;
    count += warp::taps_any_inside(q.x0, q.y0, H, W);
  }
  if (count == 0) return {0, 0, false};
  int lo = 0, hi = OW;
  while (!warp::taps_any_inside(xs[lo], ys[lo], H, W)) ++lo;
  while (!warp::taps_any_inside(xs[hi - 1], ys[hi - 1], H, W)) --hi;
  // offsets in the padded planes, (y0 + 1) * (W + 2) + x0 + 1; in 32 bits (vectorizes)
  // when the padded plane is small enough, which it always is in practice
  int64_t* __restrict off = r.off.data();
  const int64_t Wp = W + 2;
  if ((int64_t(H) + 3) * Wp < (int64_t(1) << 31)) {
    const int wp = static_cast<int>(Wp);
    for (int q = lo; q < hi; ++q) off[q] = (ys[q] + 1) * wp + (xs[q] + 1);
  } else {
    for (int q = lo; q < hi; ++q) off[q] = (ys[q] + int64_t(1)) * Wp + (xs[q] + 1);
  }
  return {lo, hi, count != hi - lo};
}

// acc[cb * OW + j] += wk * sample(cb, j) for pixels [j0, j1) of one row of one (b, k, t).
// kCb: the number of channel blocks when known at compile time (1: C <= 4), else 0.
template <bool Guarded, int kCb, typename T>
DAS_ALWAYS_INLINE void forward_span(const V4<T>* __restrict xc, const RowTaps<T>& r, int j0,
                                    int j1, T wk, const Dims& d, V4<T>* __restrict acc) {
  using V = V4<T>;
  const int64_t Wp = d.padded_w(), P = d.padded_plane(), OW = d.OW;
  const int64_t Cb = kCb > 0 ? kCb : d.cblocks();
  const int H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const int* __restrict x0 = r.x0.data();
  const int* __restrict y0 = r.y0.data();
  const T* __restrict fxs = r.fx.data();
  const T* __restrict fys = r.fy.data();
  const int64_t* __restrict offs = r.off.data();
  for (int j = j0; j < j1; ++j) {
    if (Guarded && !warp::taps_any_inside(x0[j], y0[j], H, W)) continue;
    const V* p = xc + offs[j];
    const T fx = fxs[j], fy = fys[j];
    V* a = acc + j;
    for (int64_t cb = 0; cb < Cb; ++cb, p += P, a += OW)
      *a += warp::bilinear_interp(p[0], p[1], p[Wp], p[Wp + 1], fx, fy) * wk;
  }
}

// Row partial sums of the backward reduction of one (b, k, t), per channel lane.
template <typename T>
struct RowSums {
  V4<T> w, dx, dxu, dy, dyu;  // g * S, g * dS/dix [* u], g * dS/diy [* u]
};

// Backward of pixels [j0, j1) of one row of one (b, k, t): adds w_k * g * tap weight to the
// padded grad_x accumulator gxc (when NeedX) and the row's partial sums to `s`.
template <bool Guarded, bool NeedX, int kCb, typename T>
DAS_ALWAYS_INLINE void backward_span(const V4<T>* __restrict xc, const V4<T>* __restrict gor,
                                     const RowTaps<T>& r, int j0, int j1,
                                     const T* __restrict base_u, T wk, const Dims& d,
                                     V4<T>* __restrict gxc, RowSums<T>& s) {
  using V = V4<T>;
  const int64_t Wp = d.padded_w(), P = d.padded_plane(), OW = d.OW;
  const int64_t Cb = kCb > 0 ? kCb : d.cblocks();
  const int H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const int* __restrict x0 = r.x0.data();
  const int* __restrict y0 = r.y0.data();
  const T* __restrict fxs = r.fx.data();
  const T* __restrict fys = r.fy.data();
  const int64_t* __restrict offs = r.off.data();
  V s_w = s.w, s_dx = s.dx, s_dxu = s.dxu, s_dy = s.dy, s_dyu = s.dyu;
  // Neighbouring pixels usually share taps: visiting the row with a stride keeps each
  // scatter from waiting on the previous pixel's store to the same address.
  constexpr int kStride = NeedX ? 4 : 1;
  for (int phase = 0; phase < kStride; ++phase) {
    for (int j = j0 + phase; j < j1; j += kStride) {
      if (Guarded && !warp::taps_any_inside(x0[j], y0[j], H, W)) continue;
      const int64_t o = offs[j];
      const T fx = fxs[j], fy = fys[j], u = base_u[j];
      const V* p = xc + o;
      const V* gp = gor + j;
      V* q = NeedX ? gxc + o : nullptr;
      for (int64_t cb = 0; cb < Cb; ++cb, p += P, gp += OW) {
        V sv, dix, diy;
        warp::bilinear_sample_grad(p[0], p[1], p[Wp], p[Wp + 1], fx, fy, &sv, &dix, &diy);
        const V g = *gp;
        const V gdx = g * dix, gdy = g * diy;
        s_w += g * sv;
        s_dx += gdx;
        s_dxu += gdx * u;
        s_dy += gdy;
        s_dyu += gdy * u;
        if (NeedX) {
          // border taps land in the padding, which is discarded
          V c00, c01, c10, c11;
          warp::bilinear_scatter(g * wk, fx, fy, &c00, &c01, &c10, &c11);
          q[0] += c00;
          q[1] += c01;
          q[Wp] += c10;
          q[Wp + 1] += c11;
          q += P;
        }
      }
    }
  }
  s = {s_w, s_dx, s_dxu, s_dy, s_dyu};
}

// forward_span / backward_span over the interval of a row, picking the instantiation.
template <typename T>
DAS_ALWAYS_INLINE void forward_row(const V4<T>* xc, const RowTaps<T>& r, const RowState& st,
                                   T wk, const Dims& d, V4<T>* acc) {
  const bool one = d.cblocks() == 1;
  if (st.guarded) {
    if (one) return forward_span<true, 1>(xc, r, st.lo, st.hi, wk, d, acc);
    return forward_span<true, 0>(xc, r, st.lo, st.hi, wk, d, acc);
  }
  if (one) return forward_span<false, 1>(xc, r, st.lo, st.hi, wk, d, acc);
  forward_span<false, 0>(xc, r, st.lo, st.hi, wk, d, acc);
}

template <bool NeedX, typename T>
DAS_ALWAYS_INLINE RowSums<T> backward_row(const V4<T>* xc, const V4<T>* gor, const RowTaps<T>& r,
                                          const RowState& st, const T* base_u, T wk,
                                          const Dims& d, V4<T>* gxc) {
  RowSums<T> s = {};
  const bool one = d.cblocks() == 1;
  if (st.guarded) {
    if (one)
      backward_span<true, NeedX, 1>(xc, gor, r, st.lo, st.hi, base_u, wk, d, gxc, s);
    else
      backward_span<true, NeedX, 0>(xc, gor, r, st.lo, st.hi, base_u, wk, d, gxc, s);
  } else {
    if (one)
      backward_span<false, NeedX, 1>(xc, gor, r, st.lo, st.hi, base_u, wk, d, gxc, s);
    else
      backward_span<false, NeedX, 0>(xc, gor, r, st.lo, st.hi, base_u, wk, d, gxc, s);
  }
  return s;
}

// ---- packing between NCHW (scalar_t) and padded channels-last blocks (V4<T>) ----

// x (N, C, H, W) -> (N, Cb, H + 2, W + 2) vectors with a zero border and zero extra lanes.
template <typename scalar_t, typename T>
void pack_input(const scalar_t* x, V4<T>* xc, int64_t N, const Dims& d) {
  const int64_t Cb = d.cblocks(), Hp = d.H + 2, Wp = d.padded_w(), HW = d.plane();
  at::parallel_for(0, N * Cb * Hp, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t yy = r % Hp, ncb = r / Hp, cb = ncb % Cb, n = ncb / Cb;
      V4<T>* row = xc + r * Wp;
      std::memset(static_cast<void*>(row), 0, sizeof(V4<T>) * Wp);
      if (yy == 0 || yy == Hp - 1) continue;
      for (int l = 0; l < kLanes && cb * kLanes + l < d.C; ++l) {
        const scalar_t* src = x + (n * d.C + cb * kLanes + l) * HW + (yy - 1) * d.W;
        for (int64_t xx = 0; xx < d.W; ++xx) set_lane<T>(row[xx + 1], l, static_cast<T>(src[xx]));
      }
    }
  });
}

// One row of (C, rows, OW) NCHW data <-> (Cb, OW) vectors (extra lanes 0).
template <typename scalar_t, typename T>
DAS_ALWAYS_INLINE void pack_row(const scalar_t* src, int64_t plane, const Dims& d, V4<T>* dst) {
  const int64_t Cb = d.cblocks(), OW = d.OW;
  std::memset(static_cast<void*>(dst), 0, sizeof(V4<T>) * Cb * OW);
  for (int64_t cb = 0; cb < Cb; ++cb)
    for (int l = 0; l < kLanes && cb * kLanes + l < d.C; ++l) {
      const scalar_t* s = src + (cb * kLanes + l) * plane;
      for (int64_t j = 0; j < OW; ++j) set_lane<T>(dst[cb * OW + j], l, static_cast<T>(s[j]));
    }
}

template <typename scalar_t, typename T>
DAS_ALWAYS_INLINE void unpack_row(const V4<T>* src, const Dims& d, scalar_t* dst, int64_t plane) {
  const int64_t Cb = d.cblocks(), OW = d.OW;
  for (int64_t cb = 0; cb < Cb; ++cb)
    for (int l = 0; l < kLanes && cb * kLanes + l < d.C; ++l) {
      scalar_t* o = dst + (cb * kLanes + l) * plane;
      for (int64_t j = 0; j < OW; ++j) o[j] = static_cast<scalar_t>(lane<T>(src[cb * OW + j], l));
    }
}

// Padded accumulator (Cb, H + 2, W + 2) -> (C, H, W), border dropped.
template <typename out_t, typename T>
void unpack_plane(const V4<T>* src, const Dims& d, out_t* dst) {
  const int64_t Cb = d.cblocks(), Wp = d.padded_w(), P = d.padded_plane();
  for (int64_t cb = 0; cb < Cb; ++cb)
    for (int l = 0; l < kLanes && cb * kLanes + l < d.C; ++l)
      for (int64_t y = 0; y < d.H; ++y) {
        const V4<T>* s = src + cb * P + (y + 1) * Wp + 1;
        out_t* o = dst + ((cb * kLanes + l) * d.H + y) * d.W;
        for (int64_t xx = 0; xx < d.W; ++xx) o[xx] = static_cast<out_t>(lane<T>(s[xx], l));
      }
}

// ---- the two passes, compiled per instruction set ----

template <typename scalar_t>
struct ForwardArgs {
  using T = at::opmath_type<scalar_t>;
  const V4<T>* xc;  // packed x
  const T* theta;
  const T* weights;
  scalar_t* out;
  Geometry<T> g;
  Dims d;
};

template <bool kAvx2, typename scalar_t>
DAS_ALWAYS_INLINE void forward_rows_impl(const ForwardArgs<scalar_t>& a, int64_t r0, int64_t r1) {
  using T = at::opmath_type<scalar_t>;
  const Dims& d = a.d;
  const int OW = static_cast<int>(d.OW);
  const int64_t Cb = d.cblocks();
  RowTaps<T> taps(d.OW);
  ColumnTerms<T> cols(d.K, d.OW);
  Scratch<V4<T>> acc(Cb * d.OW);
  int64_t cols_bt = -1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r % d.OH, bt = r / d.OH;
    const int64_t t = bt % d.T, b = bt / d.T;
    const V4<T>* xc = a.xc + (b * d.Tx + (d.Tx == 1 ? 0 : t)) * Cb * d.padded_plane();
    const T* th_bt = a.theta + (b * d.K * d.T + t) * 6;  // + k * T * 6
    if (bt != cols_bt) {
      cols.compute(d.K, a.g.base_u, [&](int64_t k) { return th_bt + k * d.T * 6; });
      cols_bt = bt;
    }
    acc.zero();
    for (int64_t k = 0; k < d.K; ++k) {
      const T* th = th_bt + k * d.T * 6;
      const RowState st = compute_row<kAvx2>(th, cols.ux.data() + k * d.OW,
                                             cols.uy.data() + k * d.OW, a.g, i, OW, taps);
      forward_row(xc, taps, st, a.weights[b * d.K + k], d, acc.data());
    }
    unpack_row<scalar_t, T>(acc.data(), d, a.out + bt * d.C * d.out_plane() + i * d.OW,
                            d.out_plane());
  }
}

template <typename scalar_t>
struct BackwardArgs {
  using T = at::opmath_type<scalar_t>;
  const V4<T>* xc;  // packed x
  const scalar_t* grad_out;
  const T* theta;
  const T* weights;
  Geometry<T> g;
  Dims d;
  int64_t S;            // frame chunks per (b, tx)
  scalar_t* grad_x;     // written directly when S == 1 (else nullptr)
  T* grad_x_chunks;     // (B * Tx * S, C, H, W) when S > 1 (else nullptr)
  T* grad_theta;
  double* gw_part;      // (B, T, K)
};

template <bool kAvx2, typename scalar_t, bool NeedX>
DAS_ALWAYS_INLINE void backward_tasks_impl(const BackwardArgs<scalar_t>& a, int64_t task0,
                                           int64_t task1) {
  using T = at::opmath_type<scalar_t>;
  using V = V4<T>;
  const Dims& d = a.d;
  const int OW = static_cast<int>(d.OW);
  const int64_t Cb = d.cblocks(), P = d.padded_plane(), S = a.S;
  RowTaps<T> taps(d.OW);
  ColumnTerms<T> cols(d.K, d.OW);
  Scratch<V> gor(Cb * d.OW);
  Scratch<V> gxc(NeedX ? Cb * P : 0);
  std::vector<double> acc(d.K * kReduceSlots);
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t s = task % S, btx = task / S;
    const int64_t tx = btx % d.Tx, b = btx / d.Tx;
    const int64_t t_begin = d.Tx == 1 ? s * d.T / S : tx;
    const int64_t t_end = d.Tx == 1 ? (s + 1) * d.T / S : tx + 1;
    const V* xc = a.xc + btx * Cb * P;
    if (NeedX) gxc.zero();
    for (int64_t t = t_begin; t < t_end; ++t) {
      const scalar_t* go_t = a.grad_out + (b * d.T + t) * d.C * d.out_plane();
      const T* th_t = a.theta + (b * d.K * d.T + t) * 6;  // + k * T * 6
      std::fill(acc.begin(), acc.end(), 0.0);
      cols.compute(d.K, a.g.base_u, [&](int64_t k) { return th_t + k * d.T * 6; });
      for (int64_t i = 0; i < d.OH; ++i) {
        pack_row<scalar_t, T>(go_t + i * d.OW, d.out_plane(), d, gor.data());
        const double v = a.g.base_v[i];
        for (int64_t k = 0; k < d.K; ++k) {
          const RowState st = compute_row<kAvx2>(th_t + k * d.T * 6, cols.ux.data() + k * d.OW,
                                                 cols.uy.data() + k * d.OW, a.g, i, OW, taps);
          if (st.hi <= st.lo) continue;
          const RowSums<T> rs = backward_row<NeedX>(xc, gor.data(), taps, st, a.g.base_u,
                                                    a.weights[b * d.K + k], d, gxc.data());
          double* ak = acc.data() + k * kReduceSlots;
          const double sdx = hsum<T>(rs.dx), sdy = hsum<T>(rs.dy);
          ak[0] += hsum<T>(rs.w);
          ak[1] += hsum<T>(rs.dxu);
          ak[2] += v * sdx;
          ak[3] += sdx;
          ak[4] += hsum<T>(rs.dyu);
          ak[5] += v * sdy;
          ak[6] += sdy;
        }
      }
      const double sx = a.g.half_w, sy = a.g.half_h;
      for (int64_t k = 0; k < d.K; ++k) {
        const double* ak = acc.data() + k * kReduceSlots;
        const double wk = a.weights[b * d.K + k];
        a.gw_part[(b * d.T + t) * d.K + k] = ak[0];
        T* gth = a.grad_theta + ((b * d.K + k) * d.T + t) * 6;
        for (int q = 0; q < 3; ++q) {
          gth[q] = static_cast<T>(wk * sx * ak[1 + q]);
          gth[3 + q] = static_cast<T>(wk * sy * ak[4 + q]);
        }
      }
    }
    if (NeedX) {
      if (S == 1)
        unpack_plane<scalar_t, T>(gxc.data(), d, a.grad_x + btx * d.C * d.plane());
      else
        unpack_plane<T, T>(gxc.data(), d, a.grad_x_chunks + task * d.C * d.plane());
    }
  }
}

template <typename scalar_t>
void forward_rows_generic(const ForwardArgs<scalar_t>& a, int64_t r0, int64_t r1) {
  forward_rows_impl<false>(a, r0, r1);
}
template <typename scalar_t, bool NeedX>
void backward_tasks_generic(const BackwardArgs<scalar_t>& a, int64_t t0, int64_t t1) {
  backward_tasks_impl<false, scalar_t, NeedX>(a, t0, t1);
}

#ifdef DAS_X86_DISPATCH
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void forward_rows_avx2(const ForwardArgs<scalar_t>& a,
                                                           int64_t r0, int64_t r1) {
  forward_rows_impl<true>(a, r0, r1);
}
template <typename scalar_t, bool NeedX>
__attribute__((target("avx2,fma"))) void backward_tasks_avx2(const BackwardArgs<scalar_t>& a,
                                                             int64_t t0, int64_t t1) {
  backward_tasks_impl<true, scalar_t, NeedX>(a, t0, t1);
}
#endif

// AVX2+FMA kernels when the CPU has them (DAS_KERNELS_CPU_SIMD=0 forces the generic ones).
bool use_avx2() {
#ifdef DAS_X86_DISPATCH
  static const bool ok = [] {
    const char* env = std::getenv("DAS_KERNELS_CPU_SIMD");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

template <typename scalar_t>
void forward_rows(const ForwardArgs<scalar_t>& a, int64_t r0, int64_t r1) {
#ifdef DAS_X86_DISPATCH
  if (use_avx2()) return forward_rows_avx2(a, r0, r1);
#endif
  forward_rows_generic(a, r0, r1);
}

template <typename scalar_t>
void backward_tasks(const BackwardArgs<scalar_t>& a, bool need_x, int64_t t0, int64_t t1) {
#ifdef DAS_X86_DISPATCH
  if (use_avx2()) {
    if (need_x) return backward_tasks_avx2<scalar_t, true>(a, t0, t1);
    return backward_tasks_avx2<scalar_t, false>(a, t0, t1);
  }
#endif
  if (need_x) return backward_tasks_generic<scalar_t, true>(a, t0, t1);
  backward_tasks_generic<scalar_t, false>(a, t0, t1);
}

// ---- op entry points ----

using warp::base_coords;

Dims check_inputs(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& weights) {
  return Dims{warp::check_inputs(x, theta, weights, c10::DeviceType::CPU)};
}

template <typename T>
Geometry<T> make_geometry(const Dims& d, const at::Tensor& bu, const at::Tensor& bv) {
  return {bu.data_ptr<T>(), bv.data_ptr<T>(), static_cast<T>(d.W) / T(2),
          static_cast<T>(d.H) / T(2), static_cast<int>(d.H), static_cast<int>(d.W)};
}

// Packed x: (B * Tx, Cb, H + 2, W + 2) vectors of the compute type.
template <typename scalar_t>
at::Tensor packed_input(const at::Tensor& x, const Dims& d) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = d.B * d.Tx;
  at::Tensor xc = at::empty({N * d.cblocks() * d.padded_plane() * kLanes},
                            x.options().dtype(c10::CppTypeToScalarType<T>::value));
  pack_input<scalar_t, T>(x.const_data_ptr<scalar_t>(),
                          reinterpret_cast<V4<T>*>(xc.mutable_data_ptr<T>()), N, d);
  return xc;
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& theta_in,
                       const at::Tensor& weights_in, int64_t out_h, int64_t out_w) {
  Dims d = check_inputs(x_in, theta_in, weights_in);
  TORCH_CHECK(out_h > 0 && out_w > 0 && out_w < (int64_t(1) << 30),
              "multi_affine_warp: bad output size ", out_h, "x", out_w);
  d.OH = out_h;
  d.OW = out_w;
  const at::Tensor x = x_in.contiguous(), theta = theta_in.contiguous(),
                   weights = weights_in.contiguous();
  at::Tensor out = at::empty({d.B, d.T, d.C, d.OH, d.OW}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor bu = base_coords(d.OW, theta.options());
  const at::Tensor bv = base_coords(d.OH, theta.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "multi_affine_warp_forward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const at::Tensor xc = packed_input<scalar_t>(x, d);
        const ForwardArgs<scalar_t> args{reinterpret_cast<const V4<T>*>(xc.const_data_ptr<T>()),
                                         theta.const_data_ptr<T>(),
                                         weights.const_data_ptr<T>(),
                                         out.mutable_data_ptr<scalar_t>(),
                                         make_geometry<T>(d, bu, bv),
                                         d};
        const int64_t work_per_row = std::max<int64_t>(1, d.K * d.cblocks() * d.OW);
        const int64_t grain = std::max<int64_t>(1, 8192 / work_per_row);
        at::parallel_for(0, d.B * d.T * d.OH, grain, [&](int64_t r0, int64_t r1) {
          forward_rows(args, r0, r1);
        });
      });
  return out;
}

// Image input with a small batch: split the T frames into this many chunks per sample so
// that there are enough tasks (fixed by the shapes, not the thread count, so results do not
// depend on the number of threads).
int64_t frame_chunks(const Dims& d) {
  constexpr int64_t kMinTasks = 16;
  if (d.Tx != 1 || d.B >= kMinTasks) return 1;
  return std::min(d.T, (kMinTasks + d.B - 1) / d.B);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& theta_in,
    const at::Tensor& weights_in, bool need_x, bool /*deterministic: always on CPU*/) {
  Dims d = check_inputs(x_in, theta_in, weights_in);
  TORCH_CHECK(grad_out_in.dim() == 5 && grad_out_in.size(0) == d.B &&
                  grad_out_in.size(1) == d.T && grad_out_in.size(2) == d.C,
              "multi_affine_warp_backward: grad_out must be (B, T, C, out_h, out_w), got ",
              grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == x_in.scalar_type(),
              "multi_affine_warp_backward: grad_out must have x's dtype");
  d.OH = grad_out_in.size(3);
  d.OW = grad_out_in.size(4);
  TORCH_CHECK(d.OW < (int64_t(1) << 30), "multi_affine_warp_backward: output too wide");
  const at::Tensor grad_out = grad_out_in.contiguous(), x = x_in.contiguous(),
                   theta = theta_in.contiguous(), weights = weights_in.contiguous();
  at::Tensor grad_theta = at::zeros_like(theta);
  at::Tensor grad_weights = at::zeros_like(weights);
  if (grad_out.numel() == 0 || x.numel() == 0) {
    return {at::zeros_like(x), grad_theta, grad_weights};
  }
  const int64_t S = frame_chunks(d);
  at::Tensor grad_x = need_x && S == 1 ? at::empty_like(x) : at::zeros_like(x);
  const at::Tensor bu = base_coords(d.OW, theta.options());
  const at::Tensor bv = base_coords(d.OH, theta.options());
  at::Tensor gw_part = at::zeros({d.B, d.T, d.K}, theta.options().dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "multi_affine_warp_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const at::Tensor xc = packed_input<scalar_t>(x, d);
        const int64_t CHW = d.C * d.plane();
        at::Tensor chunks;
        if (need_x && S > 1) chunks = at::empty({d.B * d.Tx * S * CHW}, theta.options());
        const BackwardArgs<scalar_t> args{
            reinterpret_cast<const V4<T>*>(xc.const_data_ptr<T>()),
            grad_out.const_data_ptr<scalar_t>(),
            theta.const_data_ptr<T>(),
            weights.const_data_ptr<T>(),
            make_geometry<T>(d, bu, bv),
            d,
            S,
            need_x && S == 1 ? grad_x.mutable_data_ptr<scalar_t>() : nullptr,
            chunks.defined() ? chunks.mutable_data_ptr<T>() : nullptr,
            grad_theta.mutable_data_ptr<T>(),
            gw_part.mutable_data_ptr<double>()};
        at::parallel_for(0, d.B * d.Tx * S, 1, [&](int64_t t0, int64_t t1) {
          backward_tasks(args, need_x, t0, t1);
        });
        // grad_weights[b, k] = sum over t (fixed order)
        const double* gwp = gw_part.const_data_ptr<double>();
        T* gwout = grad_weights.mutable_data_ptr<T>();
        for (int64_t b = 0; b < d.B; ++b)
          for (int64_t k = 0; k < d.K; ++k) {
            double acc = 0;
            for (int64_t t = 0; t < d.T; ++t) acc += gwp[(b * d.T + t) * d.K + k];
            gwout[b * d.K + k] = static_cast<T>(acc);
          }
        // grad_x with frame chunks: sum the chunks in order
        if (chunks.defined()) {
          const T* src = chunks.const_data_ptr<T>();
          scalar_t* gxo = grad_x.mutable_data_ptr<scalar_t>();
          at::parallel_for(0, d.B * d.Tx * CHW, 16384, [&](int64_t e0, int64_t e1) {
            for (int64_t e = e0; e < e1; ++e) {
              const T* c = src + (e / CHW) * S * CHW + e % CHW;
              T acc = 0;
              for (int64_t q = 0; q < S; ++q) acc += c[q * CHW];
              gxo[e] = static_cast<scalar_t>(acc);
            }
          });
        }
      });
  return {grad_x, grad_theta, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(das_native, CPU, m) {
  m.impl("multi_affine_warp_forward", &forward_cpu);
  m.impl("multi_affine_warp_backward", &backward_cpu);
}

}  // namespace cpu
}  // namespace das_kernels
