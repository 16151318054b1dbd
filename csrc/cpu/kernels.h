// The CPU kernels of both op families: raw pointers and sizes in, no framework types. One table of entry points
// per family and element type; kernels<T>() / distance_kernels<T>() return the table built for the instruction
// set in use (isa.cpp: the best of AVX-512, AVX2+FMA and baseline x86-64 the running CPU supports, or the one
// force_isa() set). The build compiles gaussian.cpp and distances.cpp once per instruction set (setup.py),
// and logistic.cpp likewise.
//
// Gaussian shapes: the main operand is (rows, D) row-major contiguous; a per-row output has `rows` entries.
// `x_rows` < rows means x is shared by rows / x_rows leading samples (row r reads x row r % x_rows).
// Optional pointers (grad outputs the caller does not need) may be null where noted.
// Distance shapes: x (B, N, d), y (B, M, d) (MmdProblem, types.h); px, py (B, L, N) are the projections of the
// sliced-Wasserstein op, one row per direction.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "fastvae/types.h"

namespace fastvae {

// Implemented by the binding layer over the framework's thread pool; kernels only see this.
void parallel_for(index_t begin, index_t end, index_t grain, const std::function<void(index_t, index_t)>& fn);

namespace cpu {

template <class T>
struct Kernels {
  const char* isa;
  // z[s, i] = mu[i] + exp(lv[i] / 2) * eps[s * numel + i], s < n_samples
  void (*reparam_fwd)(const T* mu, const T* lv, T* z, index_t numel, index_t n_samples, uint64_t key);
  // grad_lv[i] = sum_s gz[s, i] * exp(lv[i] / 2) * eps / 2; grad_mu[i] = sum_s gz[s, i] (grad_mu may be null)
  void (*reparam_bwd)(const T* gz, const T* lv, T* grad_mu, T* grad_lv, index_t numel, index_t n_samples,
                      uint64_t key);
  // z as reparam_fwd (n_samples = 1) and kl[r] = sum_i KL(N(mu, e^lv) || N(0, 1))
  void (*reparam_kl_fwd)(const T* mu, const T* lv, T* z, T* kl, index_t rows, index_t D, uint64_t key);
  void (*reparam_kl_bwd)(const T* gz, const T* gkl, const T* mu, const T* lv, T* grad_mu, T* grad_lv, index_t rows,
                         index_t D, uint64_t key);
  // out[r] = sum_i -log N(x[r % x_rows, i] | mean[r, i], e^lv)
  void (*gaussian_nll_fwd)(const T* x, const T* mean, const T* lv, Layout lv_layout, T* out, index_t rows, index_t D,
                           index_t x_rows);
  // grad_mean (rows, D) and grad_lv (shaped by lv_layout); either may be null
  void (*gaussian_nll_bwd)(const T* g, const T* x, const T* mean, const T* lv, Layout lv_layout, T* grad_mean,
                           T* grad_lv, index_t rows, index_t D, index_t x_rows);
  void (*bernoulli_nll_fwd)(const T* logits, const T* x, T* out, index_t rows, index_t D, index_t x_rows);
  void (*bernoulli_nll_bwd)(const T* g, const T* logits, const T* x, T* grad_logits, index_t rows, index_t D,
                            index_t x_rows);
  // prior operands: Layout::None (standard normal), PerFeature (D values) or Full (rows x D)
  void (*kl_normal_fwd)(const T* mu, const T* lv, const T* mp, Layout mp_layout, const T* lp, Layout lp_layout,
                        T* out, index_t rows, index_t D);
  void (*kl_normal_bwd)(const T* g, const T* mu, const T* lv, const T* mp, Layout mp_layout, const T* lp,
                        Layout lp_layout, T* grad_mu, T* grad_lv, T* grad_mp, T* grad_lp, index_t rows, index_t D);
  // z[s, r] = mu[r] + L[r] eps[s, r]; log_q[s, r] = -|eps|^2 / 2 - sum log|L_ii| - d/2 log(2 pi)
  void (*tril_fwd)(const T* mu, const T* L, T* z, T* log_q, index_t R, index_t d, index_t n_samples, uint64_t key);
  void (*tril_bwd)(const T* gz, const T* glogq, const T* L, T* grad_mu, T* grad_L, index_t R, index_t d,
                   index_t n_samples, uint64_t key);
  // eps[j] for j in [start, start + n): the raw stream, for tests
  void (*normals)(float* out, index_t start, index_t n, uint64_t key);
};

template <class T>
struct DistanceKernels {
  const char* isa;
  // out[b] = MMD^2 of batch b
  void (*mmd_fwd)(const MmdProblem<T>& pr, T* out);
  // grad_x = d(sum_b g[b] out[b]) / dx; grad_y likewise (may be null: not needed, or y is the prior)
  void (*mmd_bwd)(const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y);
  // out[b] = mean_l (1/N) sum_i |sort(px[b, l])_i - t_i|^p, t = sort(py[b, l]) or, py null, the normal
  // quantiles Phi^-1((i + 1/2) / N); perm_x / perm_y (B, L, N) receive the (stable) sorting permutations.
  void (*sw_fwd)(const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, index_t B, index_t L,
                 index_t N, double p);
  // gradients of sum_b g[b] out[b] with respect to px and py (gpy may be null)
  void (*sw_bwd)(const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y, T* gpx, T* gpy,
                 index_t B, index_t L, index_t N, double p);
};

// The discretized-logistic likelihoods (logistic.cpp): x (x_rows, D) on the grid of 2^n_bits levels in [-1, 1];
// logits, means, log_scales (rows, D, K), mixture dim last; logits null: one logistic per pixel (K = 1).
template <class T>
struct LogisticKernels {
  const char* isa;
  // out[r] = sum_i -log sum_k softmax(logits[r, i])_k P(x[r % x_rows, i] | means[r, i, k], log_scales[r, i, k])
  void (*fwd)(const T* x, const T* logits, const T* means, const T* log_scales, T* out, index_t rows, index_t D,
              index_t K, index_t x_rows, int n_bits);
  // the gradients of sum_r g[r] out[r] with respect to logits (skipped when null), means and log_scales
  void (*bwd)(const T* g, const T* x, const T* logits, const T* means, const T* log_scales, T* grad_logits,
              T* grad_means, T* grad_log_scales, index_t rows, index_t D, index_t K, index_t x_rows, int n_bits);
};

// The tables of the instruction set in use.
template <class T>
const Kernels<T>& kernels();
template <class T>
const DistanceKernels<T>& distance_kernels();
template <class T>
const LogisticKernels<T>& logistic_kernels();

std::string active_isa();
std::string best_isa();
void force_isa(const std::string& name);  // "auto", "avx512", "avx2" or "baseline"

}  // namespace cpu
}  // namespace fastvae
