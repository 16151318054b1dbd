// The discretized-logistic likelihoods (schemas in schema.cpp), written once for every backend: checks, contiguity,
// outputs and shapes. A backend (cpu.cpp, cuda.cpp) turns the prepared tensors into raw pointers and sizes and calls
// its kernels; `typename B::Guard` sets the device for the call.
#pragma once
#include "torch/checks.h"

namespace fastvae {

// x (x_rows, D); the parameters (rows, D, K) with rows = x_rows or k x_rows (a leading sample dim).
struct LogisticShape {
  int64_t rows, D, K, x_rows;
  std::vector<int64_t> out_shape;  // (B,) or (k, B)
};

template <class B>
struct LogisticOps {
  using Guard = typename B::Guard;

  static LogisticShape check(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& logits,
                             const at::Tensor& means, const at::Tensor& ls, int64_t n_bits) {
    check_main<B>(op, means, "means");
    check_like(op, means, "means", x, "x");
    check_like(op, means, "means", ls, "log_scales");
    TORCH_CHECK_VALUE(x.dim() >= 1, "fastvae.", op, ": x must have a batch dimension; got a 0-dim tensor");
    const bool sampled = means.dim() == x.dim() + 2;
    bool ok = means.dim() == x.dim() + 1 || sampled;
    for (int64_t i = 0; ok && i < x.dim(); ++i) ok = means.size(i + (sampled ? 1 : 0)) == x.size(i);
    TORCH_CHECK_VALUE(ok && means.size(-1) >= 1, "fastvae.", op, ": means must have shape (*x.shape, K) or ",
                      "(k, *x.shape, K) with K >= 1, x of shape ", x.sizes(), "; got ", means.sizes());
    check_shape(op, ls, "log_scales", means.sizes());
    if (logits) {
      check_like(op, means, "means", *logits, "logit_probs");
      check_shape(op, *logits, "logit_probs", means.sizes());
    } else {
      TORCH_CHECK_VALUE(means.size(-1) == 1, "fastvae.", op, ": without logit_probs means must have K = 1 ",
                        "component (a trailing dim of 1); got ", means.sizes());
    }
    TORCH_CHECK_VALUE(n_bits >= 1 && n_bits <= 16, "fastvae.", op, ": n_bits must be in [1, 16]; got ", n_bits);
    LogisticShape s;
    s.x_rows = x.size(0);
    s.D = per_row(x);
    s.K = means.size(-1);
    s.rows = sampled ? means.size(0) * x.size(0) : x.size(0);
    if (sampled) s.out_shape = {means.size(0), x.size(0)};
    else s.out_shape = {x.size(0)};
    return s;
  }

  static at::Tensor nll(const at::Tensor& x_, const std::optional<at::Tensor>& lg_, const at::Tensor& m_,
                        const at::Tensor& ls_, int64_t n_bits) {
    constexpr const char* op = "discretized_logistic_nll";
    const LogisticShape sh = check(op, x_, lg_, m_, ls_, n_bits);
    Guard guard(m_);
    const auto x = x_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    const auto lg = contiguous_opt(lg_);
    auto out = at::empty(sh.out_shape, m.options().dtype(compute_type(m.scalar_type())));
    if (sh.rows > 0) B::logistic_fwd(x, lg, m, ls, out, sh, static_cast<int>(n_bits));
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> nll_backward(const at::Tensor& g_, const at::Tensor& x_,
                                                                     const std::optional<at::Tensor>& lg_,
                                                                     const at::Tensor& m_, const at::Tensor& ls_,
                                                                     int64_t n_bits) {
    constexpr const char* op = "discretized_logistic_nll_backward";
    const LogisticShape sh = check(op, x_, lg_, m_, ls_, n_bits);
    check_grad(op, g_, "grad", sh.out_shape, m_, "means");
    Guard guard(m_);
    const auto x = x_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    const auto lg = contiguous_opt(lg_);
    const auto g = g_.contiguous().to(compute_type(m.scalar_type()));
    auto g_lg = lg ? at::empty_like(*lg) : at::empty({0}, m.options());
    auto g_m = at::empty_like(m), g_ls = at::empty_like(ls);
    if (m.numel() > 0) B::logistic_bwd(g, x, lg, m, ls, g_lg, g_m, g_ls, sh, static_cast<int>(n_bits));
    return {g_lg, g_m, g_ls};
  }
};

template <class B>
void register_logistic_ops(torch::Library& m) {
  using O = LogisticOps<B>;
  m.impl("discretized_logistic_nll", &O::nll);
  m.impl("discretized_logistic_nll_backward", &O::nll_backward);
}

}  // namespace fastvae
