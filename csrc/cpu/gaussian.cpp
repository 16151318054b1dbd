// CPU kernels of the Gaussian VAE ops. The build compiles this file once per instruction set (-DFV_ISA, see
// isa.h), so the same loops are vectorised for AVX-512, AVX2+FMA and baseline x86-64; its registration (the last
// line, isa.h) picks one at run time.
//
// Work split (deterministic for any thread count): a row longer than kChunk is cut into fixed chunks whose
// partial sums are added in order; shorter rows are each reduced by one task. Inside a task, blocks of
// kBlock elements go through stack buffers: first the normals of the block (Philox + Box-Muller, vectorised
// over counters), then the elementwise math and the block's sum (vectorised over elements).
// Every standard header before isa.h (see there).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <string>
#include <vector>

#include "cpu/gaussian_kernels.h"  // declarations only
#include "cpu/isa.h"
#include "cpu/drivers.h"
#include "cpu/normals.h"
#include "fastvae/gaussian_math.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

constexpr index_t kBlock = kNormalBlock;  // elements per stack-buffer block (fill_normals: at most kNormalBlock)
constexpr index_t kChunk = 8192;  // elements per parallel task on long rows

// ---------------------------------------------------------------------------------------------------------
// drivers

// Elementwise work that also sums per-column contributions over rows (the gradients of per-feature
// parameters): fn(r, i0, i1, acc) adds to acc[a * D + i] for accumulator a < n_acc and i in [i0, i1).
// Rows go to at most 32 fixed groups whose partial sums are added in group order: deterministic for any
// thread count, parallel over groups x column chunks. outs[a] receives accumulator a (D values).
template <class T, class F>
void col_reduce(index_t rows, index_t D, int n_acc, T* const* outs, const F& fn) {
  const index_t rpg = std::max<index_t>(1, (rows + 31) / 32);
  const index_t G = (rows + rpg - 1) / rpg;
  const index_t nc = (D + kChunk - 1) / kChunk;
  const index_t W = n_acc * D;
  std::vector<T> part(static_cast<size_t>(G * W), T(0));
  parallel_for(0, G * nc, 1, [&](index_t b, index_t e) {
    for (index_t t = b; t < e; ++t) {
      const index_t g = t / nc, c = t % nc;
      const index_t i0 = c * kChunk, i1 = std::min(D, i0 + kChunk);
      for (index_t r = g * rpg; r < std::min(rows, (g + 1) * rpg); ++r) fn(r, i0, i1, part.data() + g * W);
    }
  });
  parallel_for(0, W, 4096, [&](index_t b, index_t e) {
    for (index_t k = b; k < e; ++k) {
      T s = 0;
      for (index_t g = 0; g < G; ++g) s += part[g * W + k];
      outs[k / D][k % D] = s;
    }
  });
}

// Blocks of at most kBlock inside a segment: blk(b, n) for the columns [b, b + n).
template <class F>
void for_blocks(index_t i0, index_t i1, const F& blk) {
  for (index_t b = i0; b < i1; b += kBlock) blk(b, std::min(kBlock, i1 - b));
}

// ---------------------------------------------------------------------------------------------------------
// block loops: plain functions over restrict pointers (passed by value, never through a lambda's captures,
// which would make GCC reload them after every store and give up on vectorising)

#define FV_R __restrict__

template <class T>
void reparam_block(const T* FV_R mu, const T* FV_R lv, const float* FV_R eps, T* FV_R z, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) z[t] = reparam_z(mu[t], quarter_exp(lv[t]), static_cast<T>(eps[t]));
}

template <class T>
T reparam_kl_block(const T* FV_R mu, const T* FV_R lv, const float* FV_R eps, T* FV_R z, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) {
    const T q = quarter_exp(lv[t]);
    z[t] = reparam_z(mu[t], q, static_cast<T>(eps[t]));
    s += kl_std_term_q(mu[t], lv[t], q);  // e^lv from the same exp
  }
  return s;
}

template <class T>
void reparam_kl_bwd_block(const T* FV_R gz, T gk, const T* FV_R mu, const T* FV_R lv, const float* FV_R eps,
                          T* FV_R gmu, T* FV_R glv, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    const T q = quarter_exp(lv[t]);
    gmu[t] = gz[t] + gk * mu[t];
    // (gz e^(lv/2) eps + gk (e^lv - 1)) / 2, each product finite where it is (a zero gk with a huge lv: 0)
    glv[t] = T(0.5) * (mul_q2(gz[t] * static_cast<T>(eps[t]), q) + kl_std_grad_q(gk, lv[t], q));
  }
}

// acc_lv += g eps (the sum over samples is scaled by e^(lv/2) / 2 once, in reparam_bwd_finish)
template <class T>
void reparam_bwd_accum(const T* FV_R g, const float* FV_R eps, T* FV_R acc_lv, T* FV_R acc_mu, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) {
    acc_lv[t] += g[t] * static_cast<T>(eps[t]);
    acc_mu[t] += g[t];
  }
}

template <class T>
void reparam_bwd_finish(const T* FV_R acc_lv, const T* FV_R lv, T* FV_R grad_lv, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) grad_lv[t] = T(0.5) * mul_q2(acc_lv[t], quarter_exp(lv[t]));
}

template <class T>
T sq_diff_sum(const T* FV_R x, const T* FV_R m, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) {
    const T d = x[t] - m[t];
    s += d * d;
  }
  return s;
}

template <class T>
T gaussian_nll_block(const T* FV_R x, const T* FV_R m, const T* FV_R lv, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s += gaussian_nll_term(x[t], m[t], lv[t]);
  return s;
}

template <class T>
void scaled_diff_block(T g, const T* FV_R x, const T* FV_R m, T* FV_R out, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) out[t] = g * (m[t] - x[t]);
}

// The row's incoming gradient g, one copy per element of a block. The per-element gradients test g == 0 (a zero
// gradient times an overflowed derivative is 0): GCC does not vectorise that select when g is the same scalar for
// the whole loop (about 8x slower backward), but does when g is read from an array.
template <class T>
void fill_row_gradient(T g, T* FV_R gv, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) gv[t] = g;
}

// d/dmean = g (mean - x) e^-lv;  d/dlv = g (1 - (x - mean)^2 e^-lv) / 2
template <class T>
void gaussian_nll_bwd_block(T g, const T* FV_R x, const T* FV_R m, const T* FV_R lv, T* FV_R dm, T* FV_R dl,
                            index_t n) {
  alignas(64) T gv[kBlock];
  fill_row_gradient(g, gv, n);
#pragma omp simd
  for (index_t t = 0; t < n; ++t) gaussian_nll_term_grad(gv[t], x[t], m[t], lv[t], &dm[t], &dl[t]);
}

template <class T>
T bernoulli_nll_block(const T* FV_R l, const T* FV_R x, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s += bernoulli_nll_term(l[t], x[t]);
  return s;
}

template <class T>
void bernoulli_nll_bwd_block(T g, const T* FV_R l, const T* FV_R x, T* FV_R out, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) out[t] = g * (sigmoid(l[t]) - x[t]);
}

template <class T>
T kl_std_block(const T* FV_R mu, const T* FV_R lv, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s += kl_std_term(mu[t], lv[t]);
  return s;
}

template <class T>
T kl_block(const T* FV_R mu, const T* FV_R lv, const T* FV_R mp, const T* FV_R lp, index_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t t = 0; t < n; ++t) s += kl_term(mu[t], lv[t], mp[t], lp[t]);
  return s;
}

template <class T>
void kl_bwd_block(T g, const T* FV_R mu, const T* FV_R lv, const T* FV_R mp, const T* FV_R lp, T* FV_R dmu,
                  T* FV_R dlv, T* FV_R dmp, T* FV_R dlp, index_t n) {
  alignas(64) T gv[kBlock];
  fill_row_gradient(g, gv, n);
#pragma omp simd
  for (index_t t = 0; t < n; ++t) kl_term_grad(gv[t], mu[t], lv[t], mp[t], lp[t], &dmu[t], &dlv[t], &dmp[t], &dlp[t]);
}

template <class T>
void copy_block(const T* FV_R src, T* FV_R dst, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) dst[t] = src[t];
}

template <class T>
void add_block(const T* FV_R src, T* FV_R dst, index_t n) {
#pragma omp simd
  for (index_t t = 0; t < n; ++t) dst[t] += src[t];
}

// A block of zeros stands in for an absent prior operand (the standard normal's mean and log-variance).
template <class T>
const T* zeros_block() {
  static const T z[kBlock] = {};
  return z;
}

// Where block b of row r of an operand laid out as `layout` starts (zeros when absent).
template <class T>
const T* operand_at(const T* p, Layout layout, index_t r, index_t D, index_t b) {
  if (layout == Layout::None) return zeros_block<T>();
  return layout == Layout::Full ? p + r * D + b : p + b;
}

// ---------------------------------------------------------------------------------------------------------
// reparameterize

template <class T>
void reparam_fwd(const T* mu, const T* lv, T* z, index_t numel, index_t n_samples, uint64_t key) {
  for_segments(n_samples, numel, kChunk, [&](index_t s, index_t i0, index_t i1) {
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      float eps[kBlock];
      fill_normals(key, s * numel + b, n, eps);
      reparam_block(mu + b, lv + b, eps, z + s * numel + b, n);
    });
  });
}

template <class T>
void reparam_bwd(const T* gz, const T* lv, T* grad_mu, T* grad_lv, index_t numel, index_t n_samples, uint64_t key) {
  for_segments(1, numel, kChunk, [&](index_t, index_t i0, index_t i1) {
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      T acc_lv[kBlock] = {}, acc_mu[kBlock] = {};
      for (index_t s = 0; s < n_samples; ++s) {
        float eps[kBlock];
        fill_normals(key, s * numel + b, n, eps);
        reparam_bwd_accum(gz + s * numel + b, eps, acc_lv, acc_mu, n);
      }
      reparam_bwd_finish(acc_lv, lv + b, grad_lv + b, n);
      if (grad_mu) copy_block(acc_mu, grad_mu + b, n);
    });
  });
}

template <class T>
void reparam_kl_fwd(const T* mu, const T* lv, T* z, T* kl, index_t rows, index_t D, uint64_t key) {
  row_reduce(rows, D, kChunk, kl, [&](index_t r, index_t i0, index_t i1) {
    T acc = 0;
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      const index_t o = r * D + b;
      float eps[kBlock];
      fill_normals(key, o, n, eps);
      acc += reparam_kl_block(mu + o, lv + o, eps, z + o, n);
    });
    return acc;
  });
}

template <class T>
void reparam_kl_bwd(const T* gz, const T* gkl, const T* mu, const T* lv, T* grad_mu, T* grad_lv, index_t rows, index_t D,
                    uint64_t key) {
  for_segments(rows, D, kChunk, [&](index_t r, index_t i0, index_t i1) {
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      const index_t o = r * D + b;
      float eps[kBlock];
      fill_normals(key, o, n, eps);
      reparam_kl_bwd_block(gz + o, gkl[r], mu + o, lv + o, eps, grad_mu + o, grad_lv + o, n);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Gaussian and Bernoulli likelihoods

template <class T>
void gaussian_nll_fwd(const T* x, const T* mean, const T* lv, Layout lv_layout, T* out, index_t rows, index_t D,
                      index_t x_rows) {
  row_reduce(rows, D, kChunk, out, [&](index_t r, index_t i0, index_t i1) {
    const T* xr = x + (r % x_rows) * D;
    const T* mr = mean + r * D;
    T acc = 0;
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      if (lv_layout == Layout::None)
        acc += T(0.5) * sq_diff_sum(xr + b, mr + b, n);
      else
        acc += gaussian_nll_block(xr + b, mr + b, operand_at(lv, lv_layout, r, D, b), n);
    });
    return lv_layout == Layout::None ? acc + T(0.5 * kLog2Pi) * static_cast<T>(i1 - i0) : acc;
  });
}

template <class T>
void gaussian_nll_bwd(const T* g, const T* x, const T* mean, const T* lv, Layout lv_layout, T* grad_mean, T* grad_lv,
                      index_t rows, index_t D, index_t x_rows) {
  // lv_acc: where a per-feature log-variance gradient accumulates (null unless lv is PerFeature and wanted)
  auto body = [&](index_t r, index_t i0, index_t i1, T* lv_acc) {
    const T* xr = x + (r % x_rows) * D;
    const T* mr = mean + r * D;
    T* gm = grad_mean ? grad_mean + r * D : nullptr;
    T* gl_full = lv_layout == Layout::Full && grad_lv ? grad_lv + r * D : nullptr;
    const T gr = g[r];
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      if (lv_layout == Layout::None) {
        if (gm) scaled_diff_block(gr, xr + b, mr + b, gm + b, n);
        return;
      }
      T dm[kBlock], dl[kBlock];
      gaussian_nll_bwd_block(gr, xr + b, mr + b, operand_at(lv, lv_layout, r, D, b), dm, dl, n);
      if (gm) copy_block(dm, gm + b, n);
      if (gl_full) copy_block(dl, gl_full + b, n);
      if (lv_acc) add_block(dl, lv_acc + b, n);
    });
  };
  if (lv_layout == Layout::PerFeature && grad_lv) {
    T* outs[1] = {grad_lv};
    col_reduce(rows, D, 1, outs, body);
  } else {
    for_segments(rows, D, kChunk, [&](index_t r, index_t i0, index_t i1) { body(r, i0, i1, nullptr); });
  }
}

template <class T>
void bernoulli_nll_fwd(const T* logits, const T* x, T* out, index_t rows, index_t D, index_t x_rows) {
  row_reduce(rows, D, kChunk, out, [&](index_t r, index_t i0, index_t i1) {
    const T* xr = x + (r % x_rows) * D;
    const T* lr = logits + r * D;
    T acc = 0;
    for_blocks(i0, i1, [&](index_t b, index_t n) { acc += bernoulli_nll_block(lr + b, xr + b, n); });
    return acc;
  });
}

template <class T>
void bernoulli_nll_bwd(const T* g, const T* logits, const T* x, T* grad_logits, index_t rows, index_t D,
                       index_t x_rows) {
  for_segments(rows, D, kChunk, [&](index_t r, index_t i0, index_t i1) {
    bernoulli_nll_bwd_block(g[r], logits + r * D + i0, x + (r % x_rows) * D + i0, grad_logits + r * D + i0, i1 - i0);
  });
}

// ---------------------------------------------------------------------------------------------------------
// KL between diagonal Gaussians

template <class T>
void kl_normal_fwd(const T* mu, const T* lv, const T* mp, Layout mp_layout, const T* lp, Layout lp_layout, T* out,
                   index_t rows, index_t D) {
  const bool standard = mp_layout == Layout::None && lp_layout == Layout::None;
  row_reduce(rows, D, kChunk, out, [&](index_t r, index_t i0, index_t i1) {
    T acc = 0;
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      const index_t o = r * D + b;
      if (standard)
        acc += kl_std_block(mu + o, lv + o, n);
      else
        acc += kl_block(mu + o, lv + o, operand_at(mp, mp_layout, r, D, b), operand_at(lp, lp_layout, r, D, b), n);
    });
    return acc;
  });
}

template <class T>
void kl_normal_bwd(const T* g, const T* mu, const T* lv, const T* mp, Layout mp_layout, const T* lp, Layout lp_layout,
                   T* grad_mu, T* grad_lv, T* grad_mp, T* grad_lp, index_t rows, index_t D) {
  // Prior gradients are written per element (Full) or summed over rows into a D-vector (PerFeature).
  const bool feat_mp = mp_layout == Layout::PerFeature && grad_mp;
  const bool feat_lp = lp_layout == Layout::PerFeature && grad_lp;
  auto body = [&](index_t r, index_t i0, index_t i1, T* acc_mp, T* acc_lp) {
    const index_t o = r * D;
    T* gmp_full = mp_layout == Layout::Full && grad_mp ? grad_mp + o : nullptr;
    T* glp_full = lp_layout == Layout::Full && grad_lp ? grad_lp + o : nullptr;
    for_blocks(i0, i1, [&](index_t b, index_t n) {
      T dmu[kBlock], dlv[kBlock], dmp[kBlock], dlp[kBlock];
      kl_bwd_block(g[r], mu + o + b, lv + o + b, operand_at(mp, mp_layout, r, D, b), operand_at(lp, lp_layout, r, D, b),
                   dmu, dlv, dmp, dlp, n);
      if (grad_mu) copy_block(dmu, grad_mu + o + b, n);
      if (grad_lv) copy_block(dlv, grad_lv + o + b, n);
      if (gmp_full) copy_block(dmp, gmp_full + b, n);
      if (glp_full) copy_block(dlp, glp_full + b, n);
      if (acc_mp) add_block(dmp, acc_mp + b, n);
      if (acc_lp) add_block(dlp, acc_lp + b, n);
    });
  };
  if (feat_mp || feat_lp) {
    // accumulator 0 is the first per-feature prior gradient requested, accumulator 1 the second
    T* outs[2] = {feat_mp ? grad_mp : grad_lp, grad_lp};
    const int n_acc = feat_mp && feat_lp ? 2 : 1;
    col_reduce(rows, D, n_acc, outs, [&](index_t r, index_t i0, index_t i1, T* acc) {
      body(r, i0, i1, feat_mp ? acc : nullptr, feat_lp ? acc + (n_acc - 1) * D : nullptr);
    });
  } else {
    for_segments(rows, D, kChunk, [&](index_t r, index_t i0, index_t i1) { body(r, i0, i1, nullptr, nullptr); });
  }
}

// ---------------------------------------------------------------------------------------------------------
// full-covariance reparameterization: z = mu + L eps (L lower triangular, d x d per row)

template <class T>
void tril_fwd(const T* mu, const T* L, T* z, T* log_q, index_t R, index_t d, index_t n_samples, uint64_t key) {
  parallel_for(0, n_samples * R, std::max<index_t>(1, 4096 / std::max<index_t>(d * d, 1)), [&](index_t b, index_t e) {
    std::vector<float> eps(static_cast<size_t>(d));
    for (index_t t = b; t < e; ++t) {
      const index_t r = t % R;
      const T* Lr = L + r * d * d;
      for (index_t j0 = 0; j0 < d; j0 += kBlock) fill_normals(key, t * d + j0, std::min(kBlock, d - j0), &eps[j0]);
      T sq = 0, logdet = 0;
      for (index_t i = 0; i < d; ++i) {
        const T* row = Lr + i * d;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (index_t j = 0; j <= i; ++j) acc += row[j] * static_cast<T>(eps[j]);
        z[t * d + i] = mu[r * d + i] + acc;
        sq += static_cast<T>(eps[i]) * static_cast<T>(eps[i]);
        logdet += std::log(std::abs(row[i]));
      }
      log_q[t] = -T(0.5) * sq - logdet - T(0.5 * kLog2Pi) * static_cast<T>(d);
    }
  });
}

template <class T>
void tril_bwd(const T* gz, const T* glogq, const T* L, T* grad_mu, T* grad_L, index_t R, index_t d,
              index_t n_samples, uint64_t key) {
  parallel_for(0, R, std::max<index_t>(1, 4096 / std::max<index_t>(d * d, 1)), [&](index_t b, index_t e) {
    std::vector<float> eps(static_cast<size_t>(d));
    for (index_t r = b; r < e; ++r) {
      T* gL = grad_L + r * d * d;
      T* gm = grad_mu + r * d;
      std::fill(gL, gL + d * d, T(0));
      std::fill(gm, gm + d, T(0));
      T gq = 0;
      for (index_t s = 0; s < n_samples; ++s) {
        const index_t t = s * R + r;
        for (index_t j0 = 0; j0 < d; j0 += kBlock) fill_normals(key, t * d + j0, std::min(kBlock, d - j0), &eps[j0]);
        const T* g = gz + t * d;
        for (index_t i = 0; i < d; ++i) {
          T* row = gL + i * d;
          const T gi = g[i];
          gm[i] += gi;
#pragma omp simd
          for (index_t j = 0; j <= i; ++j) row[j] += gi * static_cast<T>(eps[j]);
        }
        gq += glogq[t];
      }
      const T* Lr = L + r * d * d;
      for (index_t i = 0; i < d; ++i) gL[i * d + i] -= gq / Lr[i * d + i];
    }
  });
}

template <class T>
constexpr GaussianKernels<T> make_table(const char* isa) {
  return GaussianKernels<T>{isa,
                    &reparam_fwd<T>,
                    &reparam_bwd<T>,
                    &reparam_kl_fwd<T>,
                    &reparam_kl_bwd<T>,
                    &gaussian_nll_fwd<T>,
                    &gaussian_nll_bwd<T>,
                    &bernoulli_nll_fwd<T>,
                    &bernoulli_nll_bwd<T>,
                    &kl_normal_fwd<T>,
                    &kl_normal_bwd<T>,
                    &tril_fwd<T>,
                    &tril_bwd<T>};
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae

FV_REGISTER_KERNELS(GaussianKernels, gaussian_kernels, make_table)
