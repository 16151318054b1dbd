// The CPU kernels of the drop-in ops (dropin.cpp; math in fastvae/dropin_math.h): raw pointers and sizes in, no
// framework types. dropin_kernels<T>() returns the table built for the instruction set in use (isa.h).
//
// Layout ("period"): the output has N elements in flat order; an operand of P elements (P divides N) is read as
// p[i % P] for output element i: P = N a full operand, P = 1 a scalar, P = the product of trailing dims a
// per-feature operand. Forward: out[r] = factor * sum of term(i) over row r, the row_len consecutive elements
// r * row_len .. (r + 1) * row_len - 1 (N / row_len entries; row_len = 1 element-wise). Backward: full-size (N)
// gradients, null where not wanted; element i's incoming gradient is factor * g[i / row_len].
#pragma once
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cpu {

// An operand in the period layout: element i of the output reads p[i % P]. p null: absent (the op's default).
template <class T>
struct Periodic {
  const T* p;
  index_t P;
};

// Normal spread parameterizations (op argument `param`).
enum class Spread : int { Scale = 0, Var = 1, LogVar = 2 };

template <class T>
struct DropinKernels {
  const char* isa;
  // term = -log N(x | loc, spread) + cst - 0.5 log(2 pi) (see dropin_math.h); floor: the variance floor (Var)
  void (*normal_nll_fwd)(Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor, T cst, T factor,
                         index_t N, index_t row_len, T* out);
  void (*normal_nll_bwd)(const T* g, Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor,
                         T factor, index_t N, index_t row_len, T* gx, T* gloc, T* gspread);
  // term = KL(N(loc_p, scale_p) || N(loc_q, scale_q))
  void (*normal_kl_fwd)(Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor, index_t N,
                        index_t row_len, T* out);
  void (*normal_kl_bwd)(const T* g, Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor,
                        index_t N, index_t row_len, T* glp, T* gsp, T* glq, T* gsq);
  // z[s, i] = loc[i] + scale[i] eps[s * numel + i] (eps: the stream of reparameterize, cpu/normals.h)
  void (*normal_rsample_fwd)(const T* loc, const T* scale, T* z, index_t numel, index_t n_samples, uint64_t key);
  // gloc[i] = sum_s gz[s, i], gscale[i] = sum_s gz[s, i] eps[s * numel + i] (either may be null)
  void (*normal_rsample_bwd)(const T* gz, T* gloc, T* gscale, index_t numel, index_t n_samples, uint64_t key);
  // term = w ((1 + (pw - 1) y) softplus(-l) + (1 - y) l); w, pw absent (null): 1
  void (*bce_fwd)(Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N, index_t row_len,
                  T* out);
  void (*bce_bwd)(const T* g, Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N,
                  index_t row_len, T* gl, T* gy);
  // The forward (out, as the *_fwd above) and, in the same pass, the gradients of the operands whose pointer is
  // non-null for an incoming gradient of 1 on every output (as the *_bwd above with g = 1); *nonfinite = 1 if any
  // of those is inf or NaN. For the CPU, where the per-element math bounds these ops: the backward then scales
  // the stored gradients (fastvae/dropin_ops.py) instead of recomputing them.
  void (*normal_nll_fwd_grad)(Periodic<T> x, Periodic<T> loc, Periodic<T> spread, Spread param, T floor, T cst,
                              T factor, index_t N, index_t row_len, T* out, T* gx, T* gloc, T* gspread,
                              int* nonfinite);
  void (*normal_kl_fwd_grad)(Periodic<T> lp, Periodic<T> sp, Periodic<T> lq, Periodic<T> sq, T factor, index_t N,
                             index_t row_len, T* out, T* glp, T* gsp, T* glq, T* gsq, int* nonfinite);
  void (*bce_fwd_grad)(Periodic<T> l, Periodic<T> y, Periodic<T> w, Periodic<T> pw, T factor, index_t N,
                       index_t row_len, T* out, T* gl, T* gy, int* nonfinite);
};

template <class T>
const DropinKernels<T>& dropin_kernels();

}  // namespace cpu
}  // namespace fastvae
