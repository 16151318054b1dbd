// CPU kernels of the drop-in ops (cpu/dropin_kernels.h has the layout, fastvae/dropin_math.h the per-element
// math). The build compiles this file once per instruction set (-DFV_ISA, see isa.h); its registration (the
// last line) picks one at run time.
//
// Every op is one pass over its operands in blocks of kBlock output elements, each block a `#pragma omp simd` loop
// over restrict pointers. An operand of period P >= kBlock is read in place (a block is cut where the operand wraps
// around, at most once per period); a shorter one (a scalar, a small per-feature vector) is tiled once per task into
// a buffer of kBlock + P elements, so a block of any start reads it contiguously.
//
// Work split (deterministic for any thread count, cpu/drivers.h): element-wise (row_len 1) and backward passes are
// flat tasks of about kChunk elements; rows of at most kChunk elements are grouped into tasks of whole rows, each row
// summed block by block (a SIMD sum per block, added in double); longer rows go through row_reduce: chunks of kChunk
// summed in double, added in chunk order.
// Every standard header before isa.h (see there).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <immintrin.h>
#include <vector>

#include "cpu/dropin_kernels.h"  // declarations only
#include "cpu/isa.h"
#include "cpu/drivers.h"
#include "cpu/normals.h"
#include "fastvae/dropin_math.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

#define FV_R __restrict__

constexpr index_t kBlock = kNormalBlock;  // output elements per block (fill_normals: at most kNormalBlock)
constexpr index_t kChunk = 16384;         // elements per parallel task (about)

// ---- per-element loops (plain functions over restrict pointers: GCC vectorises these, not lambdas) --------------

template <class T, Spread S>
FV_HD T nll_term(T x, T m, T s, T floor, T c) {
  if constexpr (S == Spread::Scale) return nll_scale_term(x, m, s, c);
  else if constexpr (S == Spread::Var) return nll_var_term(x, m, s, floor, c);
  else return nll_logvar_term(x, m, s, c);
}

template <class T, Spread S>
void nll_fwd_block(const T* FV_R x, const T* FV_R m, const T* FV_R s, T floor, T c, T f, T* FV_R dst, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) dst[t] = f * nll_term<T, S>(x[t], m[t], s[t], floor, c);
}

template <class T, Spread S>
void nll_bwd_block(const T* FV_R gv, T f, const T* FV_R x, const T* FV_R m, const T* FV_R s, T floor, T* FV_R dx,
                   T* FV_R dm, T* FV_R ds, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    T a, b, c;  // locals, not &dx[t]: GCC vectorises this form
    if constexpr (S == Spread::Scale) nll_scale_grad(f * gv[t], x[t], m[t], s[t], &a, &b, &c);
    else if constexpr (S == Spread::Var) nll_var_grad(f * gv[t], x[t], m[t], s[t], floor, &a, &b, &c);
    else nll_logvar_grad(f * gv[t], x[t], m[t], s[t], &a, &b, &c);
    dx[t] = a;
    dm[t] = b;
    ds[t] = c;
  }
}

template <class T>
void kl_fwd_block(const T* FV_R lp, const T* FV_R sp, const T* FV_R lq, const T* FV_R sq, T f, T* FV_R dst,
                  index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) dst[t] = f * kl_normal_scale_term(lp[t], sp[t], lq[t], sq[t]);
}

template <class T>
void kl_bwd_block(const T* FV_R gv, T f, const T* FV_R lp, const T* FV_R sp, const T* FV_R lq, const T* FV_R sq,
                  T* FV_R dlp, T* FV_R dsp, T* FV_R dlq, T* FV_R dsq, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    T a, b, c, d;
    kl_normal_scale_grad(f * gv[t], lp[t], sp[t], lq[t], sq[t], &a, &b, &c, &d);
    dlp[t] = a;
    dsp[t] = b;
    dlq[t] = c;
    dsq[t] = d;
  }
}

// weight or pos_weight at t; kPlain: neither given (both 1: the common call, and torch.distributions' Bernoulli),
// the same formulas with the constant, without their two operand streams and multiplies (w, pw unread, null)
template <bool kPlain, class T>
T bce_weight(const T* FV_R w, index_t t) {
  if constexpr (kPlain) return T(1);
  else return w[t];
}

template <class T, bool kPlain>
void bce_fwd_block(const T* FV_R l, const T* FV_R y, const T* FV_R w, const T* FV_R pw, T f, T* FV_R dst,
                   index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t)
    dst[t] = f * bce_logits_term<T, kPlain>(l[t], y[t], bce_weight<kPlain>(w, t), bce_weight<kPlain>(pw, t));
}

template <class T, bool kPlain, bool kWantY>
void bce_bwd_block(const T* FV_R gv, T f, const T* FV_R l, const T* FV_R y, const T* FV_R w, const T* FV_R pw,
                   T* FV_R dl, T* FV_R dy, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    T a, b = 0;
    bce_logits_grad<kWantY, T, kPlain>(f * gv[t], l[t], y[t], bce_weight<kPlain>(w, t), bce_weight<kPlain>(pw, t), &a,
                                       &b);
    dl[t] = a;
    if (kWantY) dy[t] = b;
  }
}

// ---- forward with gradients: the terms and their derivatives (incoming gradient f) in one pass -----------------
// For the CPU, where the per-element math (not memory) bounds these ops: the backward then only scales the stored
// derivatives by the rows' gradients (fastvae/dropin_ops.py), instead of recomputing the exponentials and logs.

// kNonzeroF: the factor f != 0 (checked once per block by KlOp): the gradients without mul0's selects
template <class T, bool kNonzeroF>
void kl_fwd_grad_block(const T* FV_R lp, const T* FV_R sp, const T* FV_R lq, const T* FV_R sq, T fo, T f,
                       T* FV_R dst, T* FV_R dlp, T* FV_R dsp, T* FV_R dlq, T* FV_R dsq, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    dst[t] = fo * kl_normal_scale_term(lp[t], sp[t], lq[t], sq[t]);
    T a, b, c, d;
    kl_normal_scale_grad<T, kNonzeroF>(f, lp[t], sp[t], lq[t], sq[t], &a, &b, &c, &d);
    dlp[t] = a;
    dsp[t] = b;
    dlq[t] = c;
    dsq[t] = d;
  }
}

template <class T, bool kPlain, bool kWantY>
void bce_fwd_grad_block(const T* FV_R l, const T* FV_R y, const T* FV_R w, const T* FV_R pw, T fo, T f,
                        T* FV_R dst, T* FV_R dl, T* FV_R dy, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    const T wt = bce_weight<kPlain>(w, t), pwt = bce_weight<kPlain>(pw, t);
    dst[t] = fo * bce_logits_term<T, kPlain>(l[t], y[t], wt, pwt);
    T a, b = 0;
    bce_logits_grad<kWantY, T, kPlain>(f, l[t], y[t], wt, pwt, &a, &b);
    dl[t] = a;
    if (kWantY) dy[t] = b;
  }
}

// kBlock ones: the incoming gradient of a forward with gradients
template <class T>
struct UnitBlock {
  alignas(64) T v[kBlock];
  UnitBlock() { std::fill(v, v + kBlock, T(1)); }
};
template <class T>
const T* unit_block() {
  static const UnitBlock<T> ones;  // (initialised once, thread-safely)
  return ones.v;
}

// Whether a forward with gradients runs the forward's and the backward's loops one after the other over a block
// (double: the libm calls are not vectorised, so one loop saves nothing, and two keep the forward's values bitwise
// those of the forward alone, whatever the compiler contracts into FMAs in a longer loop body) or one loop (float).
template <class T>
constexpr bool kSeparate = std::is_same_v<T, double>;

template <class T>
T block_sum(const T* FV_R a, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s += a[t];
  return s;
}

template <class T>
void fill(T v, T* FV_R out, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) out[t] = v;
}

// ---- the ops as block functions over K operands -----------------------------------------------------------------

template <class T, Spread S>
struct NllOp {
  static constexpr int K = 3;
  T floor, cst;
  void fwd(const T* const* p, T f, T* dst, index_t n) const {
    nll_fwd_block<T, S>(p[0], p[1], p[2], floor, cst, f, dst, n);
  }
  void bwd(const T* gv, T f, const T* const* p, T* const* d, index_t n) const {
    nll_bwd_block<T, S>(gv, f, p[0], p[1], p[2], floor, d[0], d[1], d[2], n);
  }
  // two loops over the block (GCC does not vectorise the term and its gradient in one; they share one division)
  void fwd_grad(const T* const* p, T fo, T f, T* dst, T* const* d, index_t n) const {
    nll_fwd_block<T, S>(p[0], p[1], p[2], floor, cst, fo, dst, n);
    nll_bwd_block<T, S>(unit_block<T>(), f, p[0], p[1], p[2], floor, d[0], d[1], d[2], n);
  }
};

template <class T>
struct KlOp {
  static constexpr int K = 4;
  void fwd(const T* const* p, T f, T* dst, index_t n) const { kl_fwd_block(p[0], p[1], p[2], p[3], f, dst, n); }
  void bwd(const T* gv, T f, const T* const* p, T* const* d, index_t n) const {
    kl_bwd_block(gv, f, p[0], p[1], p[2], p[3], d[0], d[1], d[2], d[3], n);
  }
  void fwd_grad(const T* const* p, T fo, T f, T* dst, T* const* d, index_t n) const {
    if constexpr (kSeparate<T>) {
      fwd(p, fo, dst, n);
      bwd(unit_block<T>(), f, p, d, n);
    } else {
      if (f != T(0)) kl_fwd_grad_block<T, true>(p[0], p[1], p[2], p[3], fo, f, dst, d[0], d[1], d[2], d[3], n);
      else kl_fwd_grad_block<T, false>(p[0], p[1], p[2], p[3], fo, f, dst, d[0], d[1], d[2], d[3], n);
    }
  }
};

// kPlain: no weight and no pos_weight, the operands (logits, target) only
template <class T, bool kPlain>
struct BceOp {
  static constexpr int K = kPlain ? 2 : 4;
  bool want_y;  // d/dtarget wanted (else not computed)
  static const T* w(const T* const* p) {
    if constexpr (kPlain) return nullptr;
    else return p[2];
  }
  static const T* pw(const T* const* p) {
    if constexpr (kPlain) return nullptr;
    else return p[3];
  }
  void fwd(const T* const* p, T f, T* dst, index_t n) const {
    bce_fwd_block<T, kPlain>(p[0], p[1], w(p), pw(p), f, dst, n);
  }
  void bwd(const T* gv, T f, const T* const* p, T* const* d, index_t n) const {
    if (want_y) bce_bwd_block<T, kPlain, true>(gv, f, p[0], p[1], w(p), pw(p), d[0], d[1], n);
    else bce_bwd_block<T, kPlain, false>(gv, f, p[0], p[1], w(p), pw(p), d[0], d[1], n);
  }
  void fwd_grad(const T* const* p, T fo, T f, T* dst, T* const* d, index_t n) const {
    if constexpr (kSeparate<T>) {
      fwd(p, fo, dst, n);
      bwd(unit_block<T>(), f, p, d, n);
    } else if (want_y) {
      bce_fwd_grad_block<T, kPlain, true>(p[0], p[1], w(p), pw(p), fo, f, dst, d[0], d[1], n);
    } else {
      bce_fwd_grad_block<T, kPlain, false>(p[0], p[1], w(p), pw(p), fo, f, dst, d[0], d[1], n);
    }
  }
};

// ---- operands in the period layout --------------------------------------------------------------------------------

// Where each of K operands' values for the output elements [b, b + n) start. One per task (the tiles of the short
// operands are built once).
template <class T, int K>
struct Window {
  Periodic<T> op[K];
  alignas(64) T tile[K][2 * kBlock];

  explicit Window(const Periodic<T>* ops) {
    for (int k = 0; k < K; ++k) {
      op[k] = ops[k];
      if (op[k].P < kBlock)
        for (index_t j = 0; j < kBlock + op[k].P - 1; ++j) tile[k][j] = op[k].p[j % op[k].P];
    }
  }
  // the length of the block at b: at most n, cut where an operand read in place wraps around
  index_t len(index_t b, index_t n) const {
    for (int k = 0; k < K; ++k)
      if (op[k].P >= kBlock) n = std::min(n, op[k].P - b % op[k].P);
    return n;
  }
  void at(index_t b, const T** p) const {
    for (int k = 0; k < K; ++k) p[k] = (op[k].P < kBlock ? tile[k] : op[k].p) + b % op[k].P;
  }
};

// out[r] = factor * sum over row r of the terms (see dropin_kernels.h), each block of terms computed by
// blk(p, fo, dst, b, n): dst[0, n) = fo * the terms of elements [b, b + n), p their operands.
template <class T, int K, class Blk>
void rows_driver(const Blk& blk, const Periodic<T>* in, T factor, index_t N, index_t R, T* out) {
  if (N == 0) return;
  if (R == 1) {  // element-wise: the terms go straight to out
    for_segments(1, N, kChunk, [&](index_t, index_t i0, index_t i1) {
      Window<T, K> w(in);
      const T* p[K];
      for (index_t b = i0, n; b < i1; b += n) {
        n = w.len(b, std::min(kBlock, i1 - b));
        w.at(b, p);
        blk(p, factor, out + b, b, n);
      }
    });
    return;
  }
  const double f = static_cast<double>(factor);
  if (R <= kChunk) {  // tasks of whole rows; a block may end or start rows anywhere
    for_segments(1, N, kChunk / R * R, [&](index_t, index_t i0, index_t i1) {
      Window<T, K> w(in);
      const T* p[K];
      alignas(64) T tb[kBlock];
      double acc = 0;
      for (index_t b = i0, n; b < i1; b += n) {
        n = w.len(b, std::min(kBlock, i1 - b));
        w.at(b, p);
        blk(p, T(1), tb, b, n);
        for (index_t pos = b, re; pos < b + n; pos = re) {  // the runs of the block's rows
          const index_t row = pos / R, row_end = (row + 1) * R;
          re = std::min(b + n, row_end);
          acc += static_cast<double>(block_sum(tb + (pos - b), re - pos));
          if (re == row_end) {
            out[row] = static_cast<T>(f * acc);
            acc = 0;
          }
        }
      }
    });
    return;
  }
  const index_t rows = N / R;
  std::vector<double> tot(static_cast<size_t>(rows));
  row_reduce(rows, R, kChunk, tot.data(), [&](index_t r, index_t c0, index_t c1) {
    Window<T, K> w(in);
    const T* p[K];
    alignas(64) T tb[kBlock];
    double acc = 0;
    for (index_t b = r * R + c0, n; b < r * R + c1; b += n) {
      n = w.len(b, std::min(kBlock, r * R + c1 - b));
      w.at(b, p);
      blk(p, T(1), tb, b, n);
      acc += static_cast<double>(block_sum(tb, n));
    }
    return acc;
  });
  for (index_t r = 0; r < rows; ++r) out[r] = static_cast<T>(f * tot[r]);
}

template <class T, class Op>
void fwd_driver(const Op& op, const Periodic<T>* in, T factor, index_t N, index_t R, T* out) {
  rows_driver<T, Op::K>([&](const T* const* p, T fo, T* dst, index_t, index_t n) { op.fwd(p, fo, dst, n); }, in,
                        factor, N, R, out);
}

// The forward and, for each operand k with grads[k] non-null, d out[r] / d operand at element i (full size N): the
// backward's gradient for an incoming gradient of 1 on every row. *nonfinite = 1 if any of them is inf or NaN (the
// backward then recomputes, where a zero incoming gradient must give 0, not 0 * inf).
template <class T, class Op>
void fwd_grad_driver(const Op& op, const Periodic<T>* in, T factor, index_t N, index_t R, T* out, T* const* grads,
                     int* nonfinite) {
  constexpr int K = Op::K;
  std::atomic<int> bad{0};
  rows_driver<T, K>(
      [&](const T* const* p, T fo, T* dst, index_t b, index_t n) {
        alignas(64) T scratch[K][kBlock];  // where an unwanted derivative goes
        T* d[K];
        for (int k = 0; k < K; ++k) d[k] = grads[k] ? grads[k] + b : scratch[k];
        op.fwd_grad(p, fo, factor, dst, d, n);
        int any = 0;
        for (int k = 0; k < K; ++k)
          if (grads[k]) any |= any_nonfinite(d[k], n);
        if (any) bad.store(1, std::memory_order_relaxed);
      },
      in, factor, N, R, out);
  *nonfinite = bad.load();
}

// grads[k] (N elements, or null) = the gradient of sum_r g[r] out[r] with respect to operand k, per output element
template <class T, class Op>
void bwd_driver(const Op& op, const T* g, const Periodic<T>* in, T factor, index_t N, index_t R, T* const* grads) {
  constexpr int K = Op::K;
  if (N == 0) return;
  for_segments(1, N, R <= kChunk ? kChunk / R * R : kChunk, [&](index_t, index_t i0, index_t i1) {
    Window<T, K> w(in);
    const T* p[K];
    T* d[K];
    alignas(64) T gv[kBlock];
    alignas(64) T scratch[K][kBlock];  // where an unwanted gradient goes
    for (index_t b = i0, n; b < i1; b += n) {
      n = w.len(b, std::min(kBlock, i1 - b));
      w.at(b, p);
      for (int k = 0; k < K; ++k) d[k] = grads[k] ? grads[k] + b : scratch[k];
      if (R == 1) {
        op.bwd(g + b, factor, p, d, n);
        continue;
      }
      // the row's gradient, one copy per element (GCC vectorises the g == 0 select on an array, not on a scalar)
      for (index_t pos = b, re; pos < b + n; pos = re) {
        const index_t row = pos / R;
        re = std::min(b + n, (row + 1) * R);
        fill(g[row], gv + (pos - b), re - pos);
      }
      op.bwd(gv, factor, p, d, n);
    }
  });
}

template <class T>
const T* ones() {
  static const T one[1] = {T(1)};
  return one;
}

template <class T>
Periodic<T> or_one(Periodic<T> a) {
  return a.p ? a : Periodic<T>{ones<T>(), 1};
}

// ---- the ops ------------------------------------------------------------------------------------------------------

template <class T>
void normal_nll_fwd(Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor, T cst, T factor,
                    index_t N, index_t R, T* out) {
  const Periodic<T> in[3] = {x, loc, spread};
  switch (param) {
    case Spread::Scale: fwd_driver(NllOp<T, Spread::Scale>{floor, cst}, in, factor, N, R, out); break;
    case Spread::Var: fwd_driver(NllOp<T, Spread::Var>{floor, cst}, in, factor, N, R, out); break;
    case Spread::LogVar: fwd_driver(NllOp<T, Spread::LogVar>{floor, cst}, in, factor, N, R, out); break;
  }
}

template <class T>
void normal_nll_bwd(const T* g, Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor, T factor,
                    index_t N, index_t R, T* gx, T* gloc, T* gspread) {
  const Periodic<T> in[3] = {x, loc, spread};
  T* const grads[3] = {gx, gloc, gspread};
  switch (param) {
    case Spread::Scale: bwd_driver(NllOp<T, Spread::Scale>{floor, T(0)}, g, in, factor, N, R, grads); break;
    case Spread::Var: bwd_driver(NllOp<T, Spread::Var>{floor, T(0)}, g, in, factor, N, R, grads); break;
    case Spread::LogVar: bwd_driver(NllOp<T, Spread::LogVar>{floor, T(0)}, g, in, factor, N, R, grads); break;
  }
}

template <class T>
void normal_kl_fwd(Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor, index_t N, index_t R,
                   T* out) {
  const Periodic<T> in[4] = {lp, sp, lq, sq};
  fwd_driver(KlOp<T>{}, in, factor, N, R, out);
}

template <class T>
void normal_kl_bwd(const T* g, Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor, index_t N,
                   index_t R, T* glp, T* gsp, T* glq, T* gsq) {
  const Periodic<T> in[4] = {lp, sp, lq, sq};
  T* const grads[4] = {glp, gsp, glq, gsq};
  bwd_driver(KlOp<T>{}, g, in, factor, N, R, grads);
}

template <class T>
void bce_fwd(Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N, index_t R, T* out) {
  if (!w.p && !pw.p) {
    const Periodic<T> in[2] = {l, y};
    return fwd_driver(BceOp<T, true>{false}, in, factor, N, R, out);
  }
  const Periodic<T> in[4] = {l, y, or_one(w), or_one(pw)};
  fwd_driver(BceOp<T, false>{false}, in, factor, N, R, out);
}

template <class T>
void bce_bwd(const T* g, Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N, index_t R,
             T* gl, T* gy) {
  if (!w.p && !pw.p) {
    const Periodic<T> in[2] = {l, y};
    T* const grads[2] = {gl, gy};
    return bwd_driver(BceOp<T, true>{gy != nullptr}, g, in, factor, N, R, grads);
  }
  const Periodic<T> in[4] = {l, y, or_one(w), or_one(pw)};
  T* const grads[4] = {gl, gy, nullptr, nullptr};
  bwd_driver(BceOp<T, false>{gy != nullptr}, g, in, factor, N, R, grads);
}

template <class T>
void normal_nll_fwd_grad(Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor, T cst, T factor,
                         index_t N, index_t R, T* out, T* gx, T* gloc, T* gspread, int* nonfinite) {
  const Periodic<T> in[3] = {x, loc, spread};
  T* const grads[3] = {gx, gloc, gspread};
  switch (param) {
    case Spread::Scale:
      fwd_grad_driver(NllOp<T, Spread::Scale>{floor, cst}, in, factor, N, R, out, grads, nonfinite);
      break;
    case Spread::Var:
      fwd_grad_driver(NllOp<T, Spread::Var>{floor, cst}, in, factor, N, R, out, grads, nonfinite);
      break;
    case Spread::LogVar:
      fwd_grad_driver(NllOp<T, Spread::LogVar>{floor, cst}, in, factor, N, R, out, grads, nonfinite);
      break;
  }
}

template <class T>
void normal_kl_fwd_grad(Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor, index_t N,
                        index_t R, T* out, T* glp, T* gsp, T* glq, T* gsq, int* nonfinite) {
  const Periodic<T> in[4] = {lp, sp, lq, sq};
  T* const grads[4] = {glp, gsp, glq, gsq};
  fwd_grad_driver(KlOp<T>{}, in, factor, N, R, out, grads, nonfinite);
}

template <class T>
void bce_fwd_grad(Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N, index_t R, T* out,
                  T* gl, T* gy, int* nonfinite) {
  if (!w.p && !pw.p) {
    const Periodic<T> in[2] = {l, y};
    T* const grads[2] = {gl, gy};
    return fwd_grad_driver(BceOp<T, true>{gy != nullptr}, in, factor, N, R, out, grads, nonfinite);
  }
  const Periodic<T> in[4] = {l, y, or_one(w), or_one(pw)};
  T* const grads[4] = {gl, gy, nullptr, nullptr};
  fwd_grad_driver(BceOp<T, false>{gy != nullptr}, in, factor, N, R, out, grads, nonfinite);
}

// ---- rsample: the stream of reparameterize ------------------------------------------------------------------------

template <class T>
void rsample_block(const T* FV_R loc, const T* FV_R scale, const float* FV_R eps, T* FV_R z, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) z[t] = loc[t] + scale[t] * static_cast<T>(eps[t]);
}

template <class T>
void rsample_accum(const T* FV_R g, const float* FV_R eps, T* FV_R acc_loc, T* FV_R acc_scale, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    acc_loc[t] += g[t];
    acc_scale[t] += g[t] * static_cast<T>(eps[t]);
  }
}

template <class T>
void normal_rsample_fwd(const T* loc, const T* scale, T* z, index_t numel, index_t n_samples, uint64_t key) {
  if (numel == 0) return;
  for_segments(n_samples, numel, kChunk, [&](index_t s, index_t i0, index_t i1) {
    for (index_t b = i0; b < i1; b += kBlock) {
      const index_t n = std::min(kBlock, i1 - b);
      alignas(64) float eps[kBlock];
      fill_normals(key, s * numel + b, n, eps);
      rsample_block(loc + b, scale + b, eps, z + s * numel + b, n);
    }
  });
}

template <class T>
void normal_rsample_bwd(const T* gz, T* gloc, T* gscale, index_t numel, index_t n_samples, uint64_t key) {
  if (numel == 0) return;
  for_segments(1, numel, kChunk, [&](index_t, index_t i0, index_t i1) {
    for (index_t b = i0; b < i1; b += kBlock) {
      const index_t n = std::min(kBlock, i1 - b);
      alignas(64) T acc_loc[kBlock] = {}, acc_scale[kBlock] = {};
      for (index_t s = 0; s < n_samples; ++s) {
        alignas(64) float eps[kBlock];
        if (gscale) fill_normals(key, s * numel + b, n, eps);
        else fill(0.0f, eps, n);
        rsample_accum(gz + s * numel + b, eps, acc_loc, acc_scale, n);
      }
      if (gloc) std::copy(acc_loc, acc_loc + n, gloc + b);
      if (gscale) std::copy(acc_scale, acc_scale + n, gscale + b);
    }
  });
}

template <class T>
constexpr DropinKernels<T> make_table(const char* isa) {
  return DropinKernels<T>{isa,
                          &normal_nll_fwd<T>,
                          &normal_nll_bwd<T>,
                          &normal_kl_fwd<T>,
                          &normal_kl_bwd<T>,
                          &normal_rsample_fwd<T>,
                          &normal_rsample_bwd<T>,
                          &bce_fwd<T>,
                          &bce_bwd<T>,
                          &normal_nll_fwd_grad<T>,
                          &normal_kl_fwd_grad<T>,
                          &bce_fwd_grad<T>};
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae

FV_REGISTER_KERNELS(DropinKernels, dropin_kernels, make_table)
