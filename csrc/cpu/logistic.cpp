// CPU kernels of the discretized-logistic likelihoods (csrc/include/fastvae/logistic_math.h has the per-element
// math). The build compiles this file once per instruction set (-DFV_ISA, see isa.h); its registration (the
// last line) picks one at run time.
//
// One logistic per pixel: flat loops over the row, vectorised over pixels. A mixture (logits, means, log_scales of
// shape (rows, D, K), mixture dim last): blocks of kPix pixels are transposed into K x kPix buffers (structure of
// arrays), so that every loop, the log masses, both log-sum-exps over the K components and the gradients, runs
// vectorised over pixels with contiguous loads; the gradients are transposed back. Nothing is stored between the
// forward and the backward: the backward recomputes the log masses from the inputs. (single_fwd_grad and
// mix_fwd_grad, the forwards with gradients, are the exception: they write the gradients for an incoming gradient of
// 1 in the forward's pass, for the caller to keep and scale.)
//
// Work split (deterministic for any thread count, cpu/drivers.h): a row is cut into chunks of at most
// chunk_pixels(K) pixels, and a row's loss is the sum of its chunks' sums in chunk order; rows of one chunk are
// grouped into tasks of about chunk_pixels(K) pixels.
// Every standard header before isa.h (see there).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cpu/logistic_kernels.h"  // declarations only
#include "cpu/isa.h"
#include "cpu/drivers.h"
#include "fastvae/logistic_math.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

#define FV_R __restrict__

constexpr index_t kPix = 256;           // pixels per block (a multiple of the widest vector)
constexpr index_t kTaskElems = 32768;   // pixel x component elements per parallel task (about)

index_t chunk_pixels(index_t K) {
  const index_t c = kTaskElems / std::max<index_t>(K, 1);
  return std::max<index_t>(kPix, c / kPix * kPix);
}

// ---- one logistic per pixel ------------------------------------------------------------------------------------

template <class T>
T single_fwd_block(const T* FV_R x, const T* FV_R m, const T* FV_R ls, LogisticGrid<T> g, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s -= logistic_logp<T, false>(x[t], m[t], ls[t], g, nullptr, nullptr);
  return s;
}

// gv: the row's incoming gradient, one copy per pixel (GCC does not vectorise the g == 0 select on a loop-invariant
// scalar, only on an array)
template <class T>
void single_bwd_block(const T* FV_R gv, const T* FV_R x, const T* FV_R m, const T* FV_R ls, LogisticGrid<T> g,
                      T* FV_R gm, T* FV_R gs, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    T dm, ds;
    logistic_logp<T, true>(x[t], m[t], ls[t], g, &dm, &ds);
    gm[t] = mul0(-gv[t], dm);  // a zero gradient times an overflowed derivative: 0
    gs[t] = mul0(-gv[t], ds);
  }
}

// the forward's terms (their sum returned, as single_fwd_block's: the same loop, the same sum) and the gradients of
// -log P for an incoming gradient of 1 (single_bwd_block's at gv = 1); *bad |= any of those is inf or NaN
template <class T>
T single_fwd_grad_block(const T* FV_R x, const T* FV_R m, const T* FV_R ls, LogisticGrid<T> g, T* FV_R gm,
                        T* FV_R gs, int* bad, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) {
    T dm, ds;
    s -= logistic_logp<T, true, true>(x[t], m[t], ls[t], g, &dm, &ds);
    gm[t] = -dm;
    gs[t] = -ds;
  }
  *bad |= any_nonfinite(gm, n) | any_nonfinite(gs, n);
  return s;
}

template <class T>
void fill(T v, T* FV_R out, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) out[t] = v;
}

// ---- mixtures: K x kPix buffers -----------------------------------------------------------------------------

// dst[k * kPix + p] = src[p * K + k]
template <class T>
void to_soa(const T* FV_R src, T* FV_R dst, index_t n, index_t K) {
  for (index_t p = 0; p < n; ++p)
    for (index_t k = 0; k < K; ++k) dst[k * kPix + p] = src[p * K + k];
}

template <class T>
void from_soa(const T* FV_R src, T* FV_R dst, index_t n, index_t K) {
  for (index_t p = 0; p < n; ++p)
    for (index_t k = 0; k < K; ++k) dst[p * K + k] = src[k * kPix + p];
}

// lp = logit + log P (one component, n pixels)
template <class T>
void mix_logp_row(const T* FV_R x, const T* FV_R lg, const T* FV_R m, const T* FV_R ls, LogisticGrid<T> g,
                  T* FV_R lp, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) lp[t] = lg[t] + logistic_logp<T, false>(x[t], m[t], ls[t], g, nullptr, nullptr);
}

// lp = logit + log P with dlogP/dm and dlogP/dls; log P by the forward's own expression (kFwdValue: lp as
// mix_logp_row's, bit for bit), so that the backward's mixture weights are those of the forward with gradients
template <class T>
void mix_logp_fwd_grad_row(const T* FV_R x, const T* FV_R lg, const T* FV_R m, const T* FV_R ls, LogisticGrid<T> g,
                           T* FV_R lp, T* FV_R dm, T* FV_R ds, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    T a, b;
    lp[t] = lg[t] + logistic_logp<T, true, true>(x[t], m[t], ls[t], g, &a, &b);
    dm[t] = a;
    ds[t] = b;
  }
}

template <class T>
void max_into(const T* FV_R a, T* FV_R mx, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) mx[t] = a[t] > mx[t] ? a[t] : mx[t];
}

// a <- e^(a - mx), s += a
template <class T>
void exp_acc(T* FV_R a, const T* FV_R mx, T* FV_R s, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    const T e = fv_exp(a[t] - mx[t]);
    a[t] = e;
    s[t] += e;
  }
}

// Per pixel of the K x kPix buffer a: mx = max_k a (0 when every a is -inf), s = sum_k e^(a - mx); a is replaced
// by e^(a - mx).
template <class T>
void lse_soa(T* a, index_t K, index_t n, T* FV_R mx, T* FV_R s) {
  fill(-std::numeric_limits<T>::infinity(), mx, n);
  for (index_t k = 0; k < K; ++k) max_into(a + k * kPix, mx, n);
#pragma omp simd
  for (index_t t = 0; t < n; ++t) mx[t] = mx[t] < -std::numeric_limits<T>::max() ? T(0) : mx[t];
  fill(T(0), s, n);
  for (index_t k = 0; k < K; ++k) exp_acc(a + k * kPix, mx, s, n);
}

// sum over pixels of lse(logits) - lse(logits + log P) (mixture_nll)
template <class T>
T mix_nll_sum(const T* FV_R mx1, const T* FV_R s1, const T* FV_R mx2, const T* FV_R s2, index_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (index_t t = 0; t < n; ++t) acc += mixture_nll(mx1[t], s1[t], mx2[t], s2[t]);
  return acc;
}

// In place: e1 -> d/dlogit = g (pi - w), dm -> d/dmean = g (-w dlogP/dm), ds likewise; pi = e1 / s1, w = e2 / s2.
// g multiplies last (a zero g times an overflowed product gives 0), so that the values for g are those for 1 times g,
// bit for bit: the forward with gradients keeps them at g = 1 and its backward multiplies by g.
template <class T>
void mix_grad_row(const T* FV_R gv, T* FV_R e1, const T* FV_R e2, const T* FV_R is1, const T* FV_R is2,
                  T* FV_R dm, T* FV_R ds, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    const T w = e2[t] * is2[t];
    e1[t] = gv[t] * (e1[t] * is1[t] - w);
    dm[t] = mul0(gv[t], mul0(-w, dm[t]));
    ds[t] = mul0(gv[t], mul0(-w, ds[t]));
  }
}

template <class T>
void inverse(const T* FV_R s, T* FV_R is, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) is[t] = inverse_or_zero(s[t]);
}

// The buffers of one task: six K x kPix arrays and six of kPix. Not zeroed (every loop reads only what the block's
// loops wrote before it): a value-initialised vector cost a memset of the whole (66 KiB at K = 10) per row.
template <class T>
struct MixBuffers {
  std::unique_ptr<T[]> mem;
  T *lg, *mg, *sg, *lp, *dm, *ds, *mx1, *s1, *mx2, *s2, *gv, *xv;
  explicit MixBuffers(index_t K) : mem(new T[static_cast<size_t>((6 * K + 6) * kPix)]) {
    T* p = mem.get();
    for (T** b : {&lg, &mg, &sg, &lp, &dm, &ds}) {
      *b = p;
      p += K * kPix;
    }
    for (T** b : {&mx1, &s1, &mx2, &s2, &gv, &xv}) {
      *b = p;
      p += kPix;
    }
  }
};

// The cache lines of a[0, n) towards the cache (rw: to be written), one prefetch per 64 bytes. A block reads its
// inputs in its transposes and then computes from its buffers alone: the next block's inputs (and, in the backward,
// this block's outputs) are fetched during that compute, a K-th per component's pass, instead of the transposes
// waiting on memory (fwd+bwd at K = 10, one thread: -6 to -10%).
template <class T>
void prefetch(const T* a, index_t n, bool rw = false) {
  constexpr index_t kLine = 64 / sizeof(T);
  for (index_t i = 0; i < n; i += kLine) {
    if (rw) __builtin_prefetch(a + i, 1, 2);
    else __builtin_prefetch(a + i, 0, 2);
  }
}

// sum over pixels [0, n) of the block of the mixture's -log P (n_next: the next block's pixels, 0 for none)
template <class T>
T mix_fwd_block(MixBuffers<T>& b, const T* x, const T* logits, const T* means, const T* ls, LogisticGrid<T> g,
                index_t n, index_t K, index_t n_next) {
  to_soa(logits, b.lg, n, K);
  to_soa(means, b.mg, n, K);
  to_soa(ls, b.sg, n, K);
  for (index_t k = 0; k < K; ++k) {
    const index_t c = n * K + k * n_next;  // the next block's inputs, a K-th per pass
    prefetch(logits + c, n_next);
    prefetch(means + c, n_next);
    prefetch(ls + c, n_next);
    mix_logp_row(x, b.lg + k * kPix, b.mg + k * kPix, b.sg + k * kPix, g, b.lp + k * kPix, n);
  }
  lse_soa(b.lg, K, n, b.mx1, b.s1);
  lse_soa(b.lp, K, n, b.mx2, b.s2);
  return mix_nll_sum(b.mx1, b.s1, b.mx2, b.s2, n);
}

// The backward's pass over a block (kFwdValue: the forward with gradients', which also returns the sum of the block's
// -log P; else 0): the log masses with their derivatives, both log-sum-exps, then the gradients for the incoming
// gradient gr, transposed back.
template <class T, bool kFwdValue>
T mix_grad_block(MixBuffers<T>& b, T gr, const T* x, const T* logits, const T* means, const T* ls,
                 LogisticGrid<T> g, T* glog, T* gmean, T* gls, index_t n, index_t K, index_t n_next) {
  to_soa(logits, b.lg, n, K);
  to_soa(means, b.mg, n, K);
  to_soa(ls, b.sg, n, K);
  for (index_t k = 0; k < K; ++k) {
    const index_t c = n * K + k * n_next;
    prefetch(logits + c, n_next);
    prefetch(means + c, n_next);
    prefetch(ls + c, n_next);
    if (glog) prefetch(glog + k * n, n, true);
    prefetch(gmean + k * n, n, true);
    prefetch(gls + k * n, n, true);
    mix_logp_fwd_grad_row(x, b.lg + k * kPix, b.mg + k * kPix, b.sg + k * kPix, g, b.lp + k * kPix,
                          b.dm + k * kPix, b.ds + k * kPix, n);
  }
  lse_soa(b.lg, K, n, b.mx1, b.s1);
  lse_soa(b.lp, K, n, b.mx2, b.s2);
  const T sum = kFwdValue ? mix_nll_sum(b.mx1, b.s1, b.mx2, b.s2, n) : T(0);
  inverse(b.s1, b.mx1, n);  // mx1, mx2 now hold 1 / s1, 1 / s2
  inverse(b.s2, b.mx2, n);
  fill(gr, b.gv, n);
  for (index_t k = 0; k < K; ++k)
    mix_grad_row(b.gv, b.lg + k * kPix, b.lp + k * kPix, b.mx1, b.mx2, b.dm + k * kPix, b.ds + k * kPix, n);
  if (glog) from_soa(b.lg, glog, n, K);
  from_soa(b.dm, gmean, n, K);
  from_soa(b.ds, gls, n, K);
  return sum;
}

// ---- the ops (their work split: cpu/drivers.h) -----------------------------------------------------------------

template <class T>
void logistic_fwd(const T* x, const T* logits, const T* means, const T* ls, T* out, index_t rows, index_t D,
                  index_t K, index_t x_rows, int n_bits) {
  const LogisticGrid<T> g = logistic_grid<T>(n_bits);
  const index_t chunk = chunk_pixels(K);
  if (!logits) {  // K == 1
    row_reduce(rows, D, chunk, out, [&](index_t r, index_t p0, index_t p1) {
      const T* xr = x + (r % x_rows) * D;
      T acc = 0;
      for (index_t p = p0; p < p1; p += kPix)
        acc += single_fwd_block(xr + p, means + r * D + p, ls + r * D + p, g, std::min(kPix, p1 - p));
      return acc;
    });
    return;
  }
  row_reduce(rows, D, chunk, out, [&](index_t r, index_t p0, index_t p1) {
    MixBuffers<T> b(K);
    const T* xr = x + (r % x_rows) * D;
    const index_t o = r * D * K;
    T acc = 0;
    for (index_t p = p0; p < p1; p += kPix)
      acc += mix_fwd_block(b, xr + p, logits + o + p * K, means + o + p * K, ls + o + p * K, g,
                           std::min(kPix, p1 - p), K, std::max<index_t>(0, std::min(kPix, p1 - p - kPix)));
    return acc;
  });
}

template <class T>
void logistic_bwd(const T* gout, const T* x, const T* logits, const T* means, const T* ls, T* glog, T* gmean, T* gls,
                  index_t rows, index_t D, index_t K, index_t x_rows, int n_bits) {
  const LogisticGrid<T> g = logistic_grid<T>(n_bits);
  const index_t chunk = chunk_pixels(K);
  if (!logits) {
    for_segments(rows, D, chunk, [&](index_t r, index_t p0, index_t p1) {
      alignas(64) T gv[kPix];
      fill(gout[r], gv, std::min(kPix, p1 - p0));
      const T* xr = x + (r % x_rows) * D;
      for (index_t p = p0; p < p1; p += kPix) {
        const index_t o = r * D + p;
        single_bwd_block(gv, xr + p, means + o, ls + o, g, gmean + o, gls + o, std::min(kPix, p1 - p));
      }
    });
    return;
  }
  for_segments(rows, D, chunk, [&](index_t r, index_t p0, index_t p1) {
    MixBuffers<T> b(K);
    const T* xr = x + (r % x_rows) * D;
    for (index_t p = p0; p < p1; p += kPix) {
      const index_t o = (r * D + p) * K;
      mix_grad_block<T, false>(b, gout[r], xr + p, logits + o, means + o, ls + o, g, glog + o, gmean + o, gls + o,
                               std::min(kPix, p1 - p), K, std::max<index_t>(0, std::min(kPix, p1 - p - kPix)));
    }
  });
}

template <class T>
void single_fwd_grad(const T* x, const T* means, const T* ls, T* out, T* gmean, T* gls, index_t rows, index_t D,
                     index_t x_rows, int n_bits, int* nonfinite) {
  const LogisticGrid<T> g = logistic_grid<T>(n_bits);
  std::atomic<int> bad{0};
  row_reduce(rows, D, chunk_pixels(1), out, [&](index_t r, index_t p0, index_t p1) {
    const T* xr = x + (r % x_rows) * D;
    T acc = 0;
    int nf = 0;
    for (index_t p = p0; p < p1; p += kPix) {
      const index_t o = r * D + p;
      acc += single_fwd_grad_block(xr + p, means + o, ls + o, g, gmean + o, gls + o, &nf, std::min(kPix, p1 - p));
    }
    if (nf) bad.store(1, std::memory_order_relaxed);
    return acc;
  });
  *nonfinite = bad.load();
}

// The mixture's forward with gradients: logistic_fwd's out (the same values: the same log masses, sums and chunks)
// and logistic_bwd's gradients at g = 1 on every row (the same values); *nonfinite = 1 if any of those is inf or NaN.
template <class T>
void mix_fwd_grad(const T* x, const T* logits, const T* means, const T* ls, T* out, T* glog, T* gmean, T* gls,
                  index_t rows, index_t D, index_t K, index_t x_rows, int n_bits, int* nonfinite) {
  const LogisticGrid<T> g = logistic_grid<T>(n_bits);
  std::atomic<int> bad{0};
  row_reduce(rows, D, chunk_pixels(K), out, [&](index_t r, index_t p0, index_t p1) {
    MixBuffers<T> b(K);
    const T* xr = x + (r % x_rows) * D;
    T acc = 0;
    int nf = 0;
    for (index_t p = p0; p < p1; p += kPix) {
      const index_t o = (r * D + p) * K, n = std::min(kPix, p1 - p);
      acc += mix_grad_block<T, true>(b, T(1), xr + p, logits + o, means + o, ls + o, g, glog + o, gmean + o, gls + o,
                                     n, K, std::max<index_t>(0, std::min(kPix, p1 - p - kPix)));
      nf |= any_nonfinite(glog + o, n * K) | any_nonfinite(gmean + o, n * K) | any_nonfinite(gls + o, n * K);
    }
    if (nf) bad.store(1, std::memory_order_relaxed);
    return acc;
  });
  *nonfinite = bad.load();
}

// One read of x, vectorised over blocks of kPix values; the block holding the first refused value is searched again.
template <class T>
index_t first_off_grid(const T* x, index_t n, int n_bits) {
  const LogisticGrid<T> g = logistic_grid<T>(n_bits);
  for (index_t p = 0; p < n; p += kPix) {
    const index_t e = std::min(kPix, n - p);
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (index_t t = 0; t < e; ++t) bad |= static_cast<int>(logistic_off_grid(x[p + t], g));
    if (bad)
      for (index_t t = 0; t < e; ++t)
        if (logistic_off_grid(x[p + t], g)) return p + t;
  }
  return -1;
}

template <class T>
constexpr LogisticKernels<T> make_table(const char* isa) {
  return LogisticKernels<T>{isa, &logistic_fwd<T>, &logistic_bwd<T>, &first_off_grid<T>, &single_fwd_grad<T>,
                            &mix_fwd_grad<T>};
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae

FV_REGISTER_KERNELS(LogisticKernels, logistic_kernels, make_table)
