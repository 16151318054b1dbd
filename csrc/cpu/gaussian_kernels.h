// The CPU kernels of the Gaussian VAE ops (gaussian.cpp; math in fastvae/gaussian_math.h): raw pointers and sizes
// in, no framework types. gaussian_kernels<T>() returns the table built for the instruction set in use (isa.h).
//
// Shapes: the main operand is (rows, D) row-major contiguous; a per-row output has `rows` entries.
// `x_rows` < rows means x is shared by rows / x_rows leading samples (row r reads x row r % x_rows).
// Optional pointers (grad outputs the caller does not need) may be null where noted.
#pragma once
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cpu {

template <class T>
struct GaussianKernels {
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
};

template <class T>
const GaussianKernels<T>& gaussian_kernels();

}  // namespace cpu
}  // namespace fastvae
