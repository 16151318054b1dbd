// The discretized-logistic likelihoods (schemas in schema.cpp), written once for every backend: checks, contiguity,
// outputs, shapes and the reduction. A backend (cpu.cpp, cuda.cpp) turns the prepared tensors into raw pointers and
// sizes and calls its kernels; `typename B::Guard` sets the device for the call.
#pragma once
#include "torch/checks.h"
#include "torch/reduction.h"

namespace fastvae {

// x (x_rows, D); the parameters (rows, D, K) with rows = x_rows or k x_rows (a leading sample dim). Without
// logit_probs the means and log_scales may also have x's shape (K = 1 implied: no trailing dim to add).
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
    const bool no_k = !logits && means.sizes() == x.sizes();  // one logistic per pixel, K = 1 implied
    const bool sampled = means.dim() == x.dim() + 2;
    bool ok = no_k || means.dim() == x.dim() + 1 || sampled;
    for (int64_t i = 0; ok && !no_k && i < x.dim(); ++i) ok = means.size(i + (sampled ? 1 : 0)) == x.size(i);
    TORCH_CHECK_VALUE(ok && (no_k || means.size(-1) >= 1), "fastvae.", op, ": means must have shape (*x.shape, K) or ",
                      "(k, *x.shape, K) with K >= 1 (or x's shape without logit_probs), x of shape ", x.sizes(),
                      "; got ", means.sizes());
    check_shape(op, ls, "log_scales", means.sizes());
    if (logits) {
      check_like(op, means, "means", *logits, "logit_probs");
      check_shape(op, *logits, "logit_probs", means.sizes());
    } else {
      TORCH_CHECK_VALUE(no_k || means.size(-1) == 1, "fastvae.", op, ": without logit_probs means must have K = 1 ",
                        "component (a trailing dim of 1); got ", means.sizes());
    }
    TORCH_CHECK_VALUE(n_bits >= 1 && n_bits <= 16, "fastvae.", op, ": n_bits must be in [1, 16]; got ", n_bits);
    LogisticShape s;
    s.x_rows = x.size(0);
    s.D = per_row(x);
    s.K = no_k ? 1 : means.size(-1);
    s.rows = sampled ? means.size(0) * x.size(0) : x.size(0);
    if (sampled) s.out_shape = {means.size(0), x.size(0)};
    else s.out_shape = {x.size(0)};
    return s;
  }

  // x refused by validate_x: the message of the public functions' check (fastvae/ops/logistic.py), naming the first
  // value refused (as Python's repr writes it)
  [[noreturn]] static void refuse_x(const char* op, const at::Tensor& x, int64_t index, int64_t n_bits) {
    const double v = x.reshape(-1)[index].item<double>();
    const int64_t levels = (int64_t(1) << n_bits) - 1;
    TORCH_CHECK_VALUE(false, "fastvae.", op, ": x must lie in [-1, 1] on the grid of 2**n_bits = ", levels + 1,
                      " levels 2k / ", levels, " - 1 (8-bit pixels v as 2 v / 255 - 1); got ", python_repr(v));
    __builtin_unreachable();
  }

  // validate_x: x's values are checked by the forward kernel that reads them (the CPU backend in one vectorised
  // pass before it, the CUDA kernel while it reads x, then one synchronising read of the result); with no sample
  // (rows == 0) no value is read and none is checked.
  static at::Tensor nll(const at::Tensor& x_, const std::optional<at::Tensor>& lg_, const at::Tensor& m_,
                        const at::Tensor& ls_, int64_t n_bits, int64_t reduction, bool validate_x) {
    constexpr const char* op = "discretized_logistic_nll";
    const LogisticShape sh = check(op, x_, lg_, m_, ls_, n_bits);
    check_reduction(op, reduction);
    Guard guard(m_);
    const auto x = x_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    const auto lg = contiguous_opt(lg_);
    auto out = at::empty(sh.out_shape, m.options().dtype(compute_type(m.scalar_type())));
    if (sh.rows > 0) {
      const int64_t bad = B::logistic_fwd(x, lg, m, ls, out, sh, static_cast<int>(n_bits), validate_x);
      if (bad >= 0) refuse_x(op, x, bad, n_bits);
    }
    return reduce_rows(out, reduction);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> nll_backward(const at::Tensor& g_, const at::Tensor& x_,
                                                                     const std::optional<at::Tensor>& lg_,
                                                                     const at::Tensor& m_, const at::Tensor& ls_,
                                                                     int64_t n_bits, int64_t reduction) {
    constexpr const char* op = "discretized_logistic_nll_backward";
    const LogisticShape sh = check(op, x_, lg_, m_, ls_, n_bits);
    check_reduction(op, reduction);
    check_grad(op, g_, "grad", grad_shape(sh.out_shape, reduction), m_, "means");
    Guard guard(m_);
    const auto x = x_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    const auto lg = contiguous_opt(lg_);
    const auto g = rows_grad(g_, sh.out_shape, reduction, compute_type(m.scalar_type()));
    auto g_lg = lg ? at::empty_like(*lg) : at::empty({0}, m.options());
    auto g_m = at::empty_like(m), g_ls = at::empty_like(ls);
    if (m.numel() > 0) B::logistic_bwd(g, x, lg, m, ls, g_lg, g_m, g_ls, sh, static_cast<int>(n_bits));
    return {g_lg, g_m, g_ls};
  }

  // The forward with gradients (the CPU's, one logistic per pixel: no logit_probs; see schema.cpp): nll's value, a
  // 0-dim int32 flag (1: a gradient below is inf or NaN), and the gradients of the per-sample losses with respect to
  // means and log_scales for an incoming gradient of 1 on every sample, whatever the reduction.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nll_with_grad(
      const at::Tensor& x_, const at::Tensor& m_, const at::Tensor& ls_, int64_t n_bits, int64_t reduction,
      bool validate_x) {
    constexpr const char* op = "discretized_logistic_nll_with_grad";
    const LogisticShape sh = check(op, x_, std::nullopt, m_, ls_, n_bits);
    check_reduction(op, reduction);
    Guard guard(m_);
    const auto x = x_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    auto out = at::empty(sh.out_shape, m.options().dtype(compute_type(m.scalar_type())));
    auto g_m = at::empty_like(m), g_ls = at::empty_like(ls), none = at::Tensor();
    auto bad = at::zeros({}, m.options().dtype(at::kInt));
    if (sh.rows > 0) {
      const int64_t first = B::logistic_fwd_grad(op, x, std::nullopt, m, ls, out, none, g_m, g_ls, bad, sh,
                                                 static_cast<int>(n_bits), validate_x);
      if (first >= 0) refuse_x(op, x, first, n_bits);
    }
    return {reduce_rows(out, reduction), bad, g_m, g_ls};
  }

  // The mixture's forward with gradients (the CPU's): nll's value, the flag, and the gradients of the per-sample
  // losses with respect to logit_probs, means and log_scales for an incoming gradient of 1 on every sample.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_nll_with_grad(
      const at::Tensor& x_, const at::Tensor& lg_, const at::Tensor& m_, const at::Tensor& ls_, int64_t n_bits,
      int64_t reduction, bool validate_x) {
    constexpr const char* op = "discretized_logistic_mixture_nll_with_grad";
    const LogisticShape sh = check(op, x_, lg_, m_, ls_, n_bits);
    check_reduction(op, reduction);
    Guard guard(m_);
    const auto x = x_.contiguous(), lg = lg_.contiguous(), m = m_.contiguous(), ls = ls_.contiguous();
    auto out = at::empty(sh.out_shape, m.options().dtype(compute_type(m.scalar_type())));
    auto g_lg = at::empty_like(lg), g_m = at::empty_like(m), g_ls = at::empty_like(ls);
    auto bad = at::zeros({}, m.options().dtype(at::kInt));
    if (sh.rows > 0) {
      const int64_t first = B::logistic_fwd_grad(op, x, lg, m, ls, out, g_lg, g_m, g_ls, bad, sh,
                                                 static_cast<int>(n_bits), validate_x);
      if (first >= 0) refuse_x(op, x, first, n_bits);
    }
    return {reduce_rows(out, reduction), bad, g_lg, g_m, g_ls};
  }
};

template <class B>
void register_logistic_ops(torch::Library& m) {
  using O = LogisticOps<B>;
  m.impl("discretized_logistic_nll", &O::nll);
  m.impl("discretized_logistic_nll_backward", &O::nll_backward);
}

// The forward with gradients, for a backend that has it (the CPU's).
template <class B>
void register_logistic_with_grad_ops(torch::Library& m) {
  m.impl("discretized_logistic_nll_with_grad", &LogisticOps<B>::nll_with_grad);
  m.impl("discretized_logistic_mixture_nll_with_grad", &LogisticOps<B>::mixture_nll_with_grad);
}

}  // namespace fastvae
