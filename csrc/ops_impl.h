// The op implementations, written once for every backend: checks, contiguity, output allocation and shapes.
// A Backend (CpuBackend in ops.cpp, CudaBackend in ops_cuda.cpp) turns the prepared tensors into raw
// pointers and sizes and launches its kernels; `typename B::Guard` sets the device for the call.
#pragma once
#include "ops_common.h"

namespace fastvae {

inline std::vector<int64_t> sampled_shape(const at::Tensor& t, std::optional<int64_t> k) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  if (k.has_value()) s.insert(s.begin(), *k);
  return s;
}

inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

inline void check_pair(const at::Tensor& mu, const at::Tensor& lv, const char* a, const char* b) {
  check_float(mu, a);
  check_same(mu, lv, a, b);
  TORCH_CHECK(mu.sizes() == lv.sizes(), "fastvae: ", b, " must have the shape of ", a, " ", mu.sizes(), "; got ",
              lv.sizes());
}

// The backward ops index their incoming gradients by the forward shapes: a wrong shape would read out of bounds.
inline void check_grad_shape(const at::Tensor& g, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(g.sizes() == expected, "fastvae.", op, ": ", name, " must have shape ", expected, "; got ", g.sizes());
}

template <class B>
struct Ops {
  using Guard = typename B::Guard;

  static at::Tensor reparameterize(const at::Tensor& mu_, const at::Tensor& lv_, const at::Tensor& seed,
                                   std::optional<int64_t> k) {
    check_pair(mu_, lv_, "mu", "logvar");
    check_seed(seed, mu_);
    TORCH_CHECK(!k.has_value() || *k >= 1, "fastvae: n_samples must be >= 1; got ", k.value_or(0));
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    auto z = at::empty(sampled_shape(mu, k), mu.options());
    B::reparam_fwd(mu, lv, z, k.value_or(1), seed);
    return z;
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_backward(const at::Tensor& gz_, const at::Tensor& lv_,
                                                                    const at::Tensor& seed,
                                                                    std::optional<int64_t> k) {
    TORCH_CHECK(!k.has_value() || *k >= 1, "fastvae: n_samples must be >= 1; got ", k.value_or(0));
    check_grad_shape(gz_, sampled_shape(lv_, k), "reparameterize_backward", "grad_z");
    Guard g(lv_);
    const auto lv = lv_.contiguous(), gz = gz_.contiguous().to(lv.scalar_type());
    auto grad_lv = at::empty_like(lv);
    auto grad_mu = k.has_value() ? at::empty_like(lv) : at::empty({0}, lv.options());
    B::reparam_bwd(gz, lv, grad_mu, grad_lv, k.value_or(1), seed);
    return {grad_mu, grad_lv};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_kl(const at::Tensor& mu_, const at::Tensor& lv_,
                                                              const at::Tensor& seed) {
    check_pair(mu_, lv_, "mu", "logvar");
    check_seed(seed, mu_);
    TORCH_CHECK(mu_.dim() >= 1, "fastvae: mu must have a batch dimension");
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    auto z = at::empty_like(mu);
    auto kl = at::empty({mu.size(0)}, mu.options().dtype(acc_type(mu.scalar_type())));
    B::reparam_kl_fwd(mu, lv, z, kl, seed);
    return {z, kl};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_kl_backward(const at::Tensor& gz_, const at::Tensor& gkl_,
                                                                       const at::Tensor& mu_, const at::Tensor& lv_,
                                                                       const at::Tensor& seed) {
    TORCH_CHECK(mu_.dim() >= 1 && mu_.sizes() == lv_.sizes(), "fastvae.reparameterize_kl_backward: mu and logvar ",
                "must have one shape with a batch dimension; got ", mu_.sizes(), " and ", lv_.sizes());
    check_grad_shape(gz_, mu_.sizes(), "reparameterize_kl_backward", "grad_z");
    check_grad_shape(gkl_, {mu_.size(0)}, "reparameterize_kl_backward", "grad_kl");
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto gz = gz_.contiguous().to(mu.scalar_type());
    const auto gkl = gkl_.contiguous().to(acc_type(mu.scalar_type()));
    auto grad_mu = at::empty_like(mu), grad_lv = at::empty_like(lv);
    B::reparam_kl_bwd(gz, gkl, mu, lv, grad_mu, grad_lv, seed);
    return {grad_mu, grad_lv};
  }

  // mu (R, d), scale_tril (R, d, d); log_q and the backward's accumulators in the accumulation dtype
  static std::tuple<at::Tensor, at::Tensor> reparameterize_tril(const at::Tensor& mu_, const at::Tensor& L_,
                                                                const at::Tensor& seed, std::optional<int64_t> k) {
    check_float(mu_, "mu");
    check_same(mu_, L_, "mu", "scale_tril");
    check_seed(seed, mu_);
    TORCH_CHECK(mu_.dim() == 2 && L_.dim() == 3 && L_.size(0) == mu_.size(0) && L_.size(1) == mu_.size(1) &&
                    L_.size(2) == mu_.size(1),
                "fastvae: reparameterize_tril takes mu (R, d) and scale_tril (R, d, d); got ", mu_.sizes(), " and ",
                L_.sizes());
    TORCH_CHECK(!k.has_value() || *k >= 1, "fastvae: n_samples must be >= 1; got ", k.value_or(0));
    Guard g(mu_);
    const auto mu = mu_.contiguous(), L = L_.contiguous();
    const int64_t R = mu.size(0);
    auto z = at::empty(sampled_shape(mu, k), mu.options());
    const auto qopt = mu.options().dtype(acc_type(mu.scalar_type()));
    auto log_q = k.has_value() ? at::empty({*k, R}, qopt) : at::empty({R}, qopt);
    B::tril_fwd(mu, L, z, log_q, k.value_or(1), seed);
    return {z, log_q};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_tril_backward(const at::Tensor& gz_, const at::Tensor& glq_,
                                                                         const at::Tensor& L_, const at::Tensor& seed,
                                                                         std::optional<int64_t> k) {
    TORCH_CHECK(L_.dim() == 3 && L_.size(1) == L_.size(2),
                "fastvae.reparameterize_tril_backward: scale_tril must be (R, d, d); got ", L_.sizes());
    TORCH_CHECK(!k.has_value() || *k >= 1, "fastvae: n_samples must be >= 1; got ", k.value_or(0));
    std::vector<int64_t> q_shape = k.has_value() ? std::vector<int64_t>{*k, L_.size(0)} : std::vector<int64_t>{L_.size(0)};
    std::vector<int64_t> z_shape = q_shape;
    z_shape.push_back(L_.size(1));
    check_grad_shape(gz_, z_shape, "reparameterize_tril_backward", "grad_z");
    check_grad_shape(glq_, q_shape, "reparameterize_tril_backward", "grad_log_q");
    Guard g(L_);
    const auto L = L_.contiguous();
    const auto acc = acc_type(L.scalar_type());
    const auto gz = gz_.contiguous().to(L.scalar_type()), glq = glq_.contiguous().to(acc);
    auto grad_mu = at::empty({L.size(0), L.size(1)}, L.options().dtype(acc));
    auto grad_L = at::empty(L.sizes(), L.options().dtype(acc));
    B::tril_bwd(gz, glq, L, grad_mu, grad_L, k.value_or(1), seed);
    return {grad_mu.to(L.scalar_type()), grad_L.to(L.scalar_type())};
  }

  static at::Tensor gaussian_nll(const at::Tensor& x_, const at::Tensor& mean_, const std::optional<at::Tensor>& lv_) {
    check_float(mean_, "mean");
    check_same(mean_, x_, "mean", "x");
    if (lv_) check_same(mean_, *lv_, "mean", "logvar");
    const auto sh = likelihood_shape(x_, mean_, "mean");
    const Layout layout = operand_layout(lv_, mean_, x_.dim() - 1, "logvar");
    Guard g(mean_);
    const auto x = x_.contiguous(), mean = mean_.contiguous();
    const auto lv = contiguous_opt(lv_);
    auto out = at::empty(sh.out_shape, mean.options().dtype(acc_type(mean.scalar_type())));
    B::gaussian_nll_fwd(x, mean, lv, layout, out, sh);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward(const at::Tensor& g_, const at::Tensor& x_,
                                                                  const at::Tensor& mean_,
                                                                  const std::optional<at::Tensor>& lv_, bool need_mean,
                                                                  bool need_logvar) {
    const auto sh = likelihood_shape(x_, mean_, "mean");
    const Layout layout = operand_layout(lv_, mean_, x_.dim() - 1, "logvar");
    check_grad_shape(g_, sh.out_shape, "gaussian_nll_backward", "grad");
    Guard guard(mean_);
    const auto x = x_.contiguous(), mean = mean_.contiguous();
    const auto g = g_.contiguous().to(acc_type(mean.scalar_type()));
    const auto lv = contiguous_opt(lv_);
    auto grad_mean = need_mean ? at::empty_like(mean) : at::empty({0}, mean.options());
    auto grad_lv = need_logvar && lv ? at::empty_like(*lv) : at::empty({0}, mean.options());
    B::gaussian_nll_bwd(g, x, mean, lv, layout, grad_mean, grad_lv, sh);
    return {grad_mean, grad_lv};
  }

  static at::Tensor bernoulli_nll(const at::Tensor& logits_, const at::Tensor& x_) {
    check_float(logits_, "logits");
    check_same(logits_, x_, "logits", "x");
    const auto sh = likelihood_shape(x_, logits_, "logits");
    Guard g(logits_);
    const auto x = x_.contiguous(), logits = logits_.contiguous();
    auto out = at::empty(sh.out_shape, logits.options().dtype(acc_type(logits.scalar_type())));
    B::bernoulli_nll_fwd(logits, x, out, sh);
    return out;
  }

  static at::Tensor bernoulli_nll_backward(const at::Tensor& g_, const at::Tensor& logits_, const at::Tensor& x_) {
    const auto sh = likelihood_shape(x_, logits_, "logits");
    check_grad_shape(g_, sh.out_shape, "bernoulli_nll_backward", "grad");
    Guard guard(logits_);
    const auto x = x_.contiguous(), logits = logits_.contiguous();
    const auto g = g_.contiguous().to(acc_type(logits.scalar_type()));
    auto grad = at::empty_like(logits);
    B::bernoulli_nll_bwd(g, logits, x, grad, sh);
    return grad;
  }

  static at::Tensor kl_normal(const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
                              const std::optional<at::Tensor>& lp_) {
    check_pair(mu_, lv_, "mu", "logvar");
    TORCH_CHECK(mu_.dim() >= 1, "fastvae: mu must have a batch dimension");
    if (mp_) check_same(mu_, *mp_, "mu", "mu_prior");
    if (lp_) check_same(mu_, *lp_, "mu", "logvar_prior");
    const Layout lm = operand_layout(mp_, mu_, mu_.dim() - 1, "mu_prior");
    const Layout ll = operand_layout(lp_, mu_, mu_.dim() - 1, "logvar_prior");
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto mp = contiguous_opt(mp_), lp = contiguous_opt(lp_);
    auto out = at::empty({mu.size(0)}, mu.options().dtype(acc_type(mu.scalar_type())));
    B::kl_normal_fwd(mu, lv, mp, lm, lp, ll, out);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kl_normal_backward(
      const at::Tensor& g_, const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
      const std::optional<at::Tensor>& lp_, std::array<bool, 4> mask) {
    TORCH_CHECK(mu_.dim() >= 1 && mu_.sizes() == lv_.sizes(), "fastvae.kl_normal_backward: mu and logvar must have ",
                "one shape with a batch dimension; got ", mu_.sizes(), " and ", lv_.sizes());
    check_grad_shape(g_, {mu_.size(0)}, "kl_normal_backward", "grad");
    const Layout lm = operand_layout(mp_, mu_, mu_.dim() - 1, "mu_prior");
    const Layout ll = operand_layout(lp_, mu_, mu_.dim() - 1, "logvar_prior");
    Guard guard(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto g = g_.contiguous().to(acc_type(mu.scalar_type()));
    const auto mp = contiguous_opt(mp_), lp = contiguous_opt(lp_);
    // a fresh empty tensor per output not wanted: one shared tensor would make the outputs alias each other
    auto empty = [&] { return at::empty({0}, mu.options()); };
    auto g_mu = mask[0] ? at::empty_like(mu) : empty();
    auto g_lv = mask[1] ? at::empty_like(lv) : empty();
    auto g_mp = mask[2] && mp ? at::empty_like(*mp) : empty();
    auto g_lp = mask[3] && lp ? at::empty_like(*lp) : empty();
    B::kl_normal_bwd(g, mu, lv, mp, lm, lp, ll, g_mu, g_lv, g_mp, g_lp);
    return {g_mu, g_lv, g_mp, g_lp};
  }
};

// Register every op of Ops<B> under one dispatch key.
template <class B>
void register_gaussian_ops(torch::Library& m) {
  using O = Ops<B>;
  m.impl("reparameterize", &O::reparameterize);
  m.impl("reparameterize_backward", &O::reparameterize_backward);
  m.impl("reparameterize_kl", &O::reparameterize_kl);
  m.impl("reparameterize_kl_backward", &O::reparameterize_kl_backward);
  m.impl("reparameterize_tril", &O::reparameterize_tril);
  m.impl("reparameterize_tril_backward", &O::reparameterize_tril_backward);
  m.impl("gaussian_nll", &O::gaussian_nll);
  m.impl("gaussian_nll_backward", &O::gaussian_nll_backward);
  m.impl("bernoulli_nll", &O::bernoulli_nll);
  m.impl("bernoulli_nll_backward", &O::bernoulli_nll_backward);
  m.impl("kl_normal", &O::kl_normal);
  m.impl("kl_normal_backward", &O::kl_normal_backward);
}

}  // namespace fastvae
