// The Gaussian ops (schemas in schema.cpp), written once for every backend: checks, contiguity, output
// allocation and shapes. A backend (cpu.cpp, cuda.cpp) turns the prepared tensors into raw pointers and sizes and
// calls its kernels; `typename B::Guard` sets the device for the call.
#pragma once
#include "torch/checks.h"
#include "torch/reduction.h"

namespace fastvae {

inline std::vector<int64_t> sampled_shape(const at::Tensor& t, std::optional<int64_t> k) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  if (k.has_value()) s.insert(s.begin(), *k);
  return s;
}


// Likelihood shapes: x (B, *F); the main operand (mean or logits) is x's shape or (k, B, *F).
struct LikShape {
  int64_t rows, D, x_rows;
  std::vector<int64_t> out_shape;  // (B,) or (k, B)
};

inline LikShape likelihood_shape(const char* op, const at::Tensor& x, const at::Tensor& main, const char* main_name) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastvae.", op, ": x must have a batch dimension; got a 0-dim tensor");
  const bool sampled = main.dim() == x.dim() + 1;
  bool ok = main.dim() == x.dim() || sampled;
  for (int64_t i = 0; ok && i < x.dim(); ++i) ok = main.size(i + (sampled ? 1 : 0)) == x.size(i);
  TORCH_CHECK_VALUE(ok, "fastvae.", op, ": ", main_name, " must have the shape of x ", x.sizes(),
                    " or (k, *x.shape); got ", main.sizes());
  LikShape s;
  s.x_rows = x.size(0);
  s.D = per_row(x);
  s.rows = sampled ? main.size(0) * x.size(0) : x.size(0);
  if (sampled) s.out_shape = {main.size(0), x.size(0)};
  else s.out_shape = {x.size(0)};
  return s;
}

// The shape of a per-feature operand with its leading ones removed while it has more dims than the feature shape fs,
// when it broadcasts over fs (a 0-dim tensor, (D,), (1, D), (1, W) against (H, W), ...); nullopt otherwise.
inline std::optional<std::vector<int64_t>> over_features(at::IntArrayRef s, at::IntArrayRef fs) {
  size_t lead = 0;
  while (s.size() - lead > fs.size() && s[lead] == 1) ++lead;
  s = s.slice(lead);
  if (s.size() > fs.size()) return std::nullopt;
  for (size_t i = 1; i <= s.size(); ++i)
    if (s[s.size() - i] != 1 && s[s.size() - i] != fs[fs.size() - i]) return std::nullopt;
  return std::vector<int64_t>(s.begin(), s.end());
}

// A secondary operand (log-variance, prior parameter) against a main operand of shape (rows, *F):
// absent, the main operand's shape (per element) or broadcasting over F (per feature: F itself, a 0-dim tensor, ...);
// on main's device, of its dtype.
inline Layout operand_layout(const char* op, const std::optional<at::Tensor>& p, const at::Tensor& main,
                             const char* main_name, int64_t feature_dims, const char* name) {
  if (!p.has_value()) return Layout::None;
  const auto& t = *p;
  check_like(op, main, main_name, t, name);
  if (t.sizes() == main.sizes()) return Layout::Full;
  const auto fs = main.sizes().slice(main.dim() - feature_dims);
  TORCH_CHECK_VALUE(over_features(t.sizes(), fs).has_value(), "fastvae.", op, ": ", name, " must have shape ",
                    main.sizes(), " or broadcast over ", fs, "; got ", t.sizes());
  return Layout::PerFeature;
}

// The operand as the kernels read it: contiguous, a per-feature one expanded to the feature shape (a copy of F
// values when it broadcasts).
inline std::optional<at::Tensor> kernel_operand(const std::optional<at::Tensor>& p, Layout layout,
                                                const at::Tensor& main, int64_t feature_dims) {
  if (!p.has_value()) return std::nullopt;
  const auto fs = main.sizes().slice(main.dim() - feature_dims);
  if (layout != Layout::PerFeature || p->sizes() == fs) return p->contiguous();
  return p->reshape(*over_features(p->sizes(), fs)).expand(fs).contiguous();
}

// The gradient of a broadcast per-feature operand from the gradient of its expansion to F: summed back to its shape.
inline at::Tensor to_operand_shape(const at::Tensor& grad, const at::Tensor& operand) {
  if (grad.sizes() == operand.sizes()) return grad;
  const auto fs = grad.sizes();
  return grad.sum_to_size(*over_features(operand.sizes(), fs)).reshape(operand.sizes()).contiguous();
}

// The other operands of an op must sit with its main operand; a missing check here is a host pointer read on
// the GPU or a wrong-dtype read, so every op checks every tensor it is given.
template <class B>
struct Ops {
  using Guard = typename B::Guard;

  // eps[start .. start + n) of the seed's stream (the `_normals` test op: CPU and CUDA answer the same question)
  static at::Tensor normals(const at::Tensor& seed, int64_t start, int64_t n) {
    constexpr const char* op = "_normals";
    check_seed(op, seed);
    check_stream_range(op, start, n);
    Guard g(seed);
    auto res = at::empty({n}, seed.options().dtype(at::kFloat));
    if (n > 0) B::normals(res, start, seed);
    return res;
  }

  static void check_pair(const char* op, const at::Tensor& mu, const at::Tensor& lv) {
    check_main<B>(op, mu, "mu");
    check_like(op, mu, "mu", lv, "logvar");
    check_shape(op, lv, "logvar", mu.sizes());
  }

  static at::Tensor reparameterize(const at::Tensor& mu_, const at::Tensor& lv_, const at::Tensor& seed,
                                   std::optional<int64_t> k) {
    constexpr const char* op = "reparameterize";
    check_pair(op, mu_, lv_);
    check_seed(op, seed, mu_, "mu");
    check_n_samples(op, k);
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    auto z = at::empty(sampled_shape(mu, k), mu.options());
    B::reparam_fwd(mu, lv, z, k.value_or(1), seed);
    return z;
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_backward(const at::Tensor& gz_, const at::Tensor& lv_,
                                                                    const at::Tensor& seed,
                                                                    std::optional<int64_t> k) {
    constexpr const char* op = "reparameterize_backward";
    check_main<B>(op, lv_, "logvar");
    check_seed(op, seed, lv_, "logvar");
    check_n_samples(op, k);
    check_grad(op, gz_, "grad_z", sampled_shape(lv_, k), lv_, "logvar");
    Guard g(lv_);
    const auto lv = lv_.contiguous(), gz = gz_.contiguous().to(lv.scalar_type());
    auto grad_lv = at::empty_like(lv);
    auto grad_mu = k.has_value() ? at::empty_like(lv) : at::empty({0}, lv.options());
    B::reparam_bwd(gz, lv, grad_mu, grad_lv, k.value_or(1), seed);
    return {grad_mu, grad_lv};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_kl(const at::Tensor& mu_, const at::Tensor& lv_,
                                                              const at::Tensor& seed) {
    constexpr const char* op = "reparameterize_kl";
    check_pair(op, mu_, lv_);
    check_seed(op, seed, mu_, "mu");
    TORCH_CHECK_VALUE(mu_.dim() >= 1, "fastvae.", op, ": mu must have a batch dimension; got a 0-dim tensor");
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    auto z = at::empty_like(mu);
    auto kl = at::empty({mu.size(0)}, mu.options().dtype(compute_type(mu.scalar_type())));
    B::reparam_kl_fwd(mu, lv, z, kl, seed);
    return {z, kl};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_kl_backward(const at::Tensor& gz_, const at::Tensor& gkl_,
                                                                       const at::Tensor& mu_, const at::Tensor& lv_,
                                                                       const at::Tensor& seed) {
    constexpr const char* op = "reparameterize_kl_backward";
    check_pair(op, mu_, lv_);
    check_seed(op, seed, mu_, "mu");
    TORCH_CHECK_VALUE(mu_.dim() >= 1, "fastvae.", op, ": mu must have a batch dimension; got a 0-dim tensor");
    check_grad(op, gz_, "grad_z", mu_.sizes(), mu_, "mu");
    check_grad(op, gkl_, "grad_kl", {mu_.size(0)}, mu_, "mu");
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto gz = gz_.contiguous().to(mu.scalar_type());
    const auto gkl = gkl_.contiguous().to(compute_type(mu.scalar_type()));
    auto grad_mu = at::empty_like(mu), grad_lv = at::empty_like(lv);
    B::reparam_kl_bwd(gz, gkl, mu, lv, grad_mu, grad_lv, seed);
    return {grad_mu, grad_lv};
  }

  static void check_tril(const char* op, const at::Tensor& L) {
    check_main<B>(op, L, "scale_tril");
    TORCH_CHECK_VALUE(L.dim() == 3 && L.size(1) == L.size(2), "fastvae.", op, ": scale_tril must have shape ",
                      "(R, d, d); got ", L.sizes());
    B::check_tril_dim(op, L.size(1));
  }

  // scale_tril a Cholesky factor (validate): no non-zero entry above the diagonal (NaN counts as non-zero), no zero
  // on the diagonal; one read of L, no copy on the CPU (the kernels read the lower triangle only). On CUDA the
  // answer is read back: one synchronisation, as the Python check it replaces had. fastvae.reparameterize_tril
  // words the refusal in its own terms (its checked path).
  static void check_tril_values(const char* op, const at::Tensor& L) {
    bool upper = false, singular = false;
    if (L.is_cpu()) {
      const auto Lc = L.contiguous();
      const int64_t d = Lc.size(1), R = Lc.size(0);
      auto scan = [&](const auto* p) {
        for (int64_t r = 0; r < R; ++r, p += d * d)
          for (int64_t i = 0; i < d; ++i) {
            for (int64_t j = i + 1; j < d; ++j) upper |= p[i * d + j] != 0;
            singular |= p[i * d + i] == 0;
          }
      };
      if (Lc.scalar_type() == at::kDouble) scan(Lc.data_ptr<double>());
      else scan(Lc.data_ptr<float>());
    } else if (L.numel() > 0) {
      const auto flags = at::stack({at::triu(L, 1).ne(0).any(), L.diagonal(0, -2, -1).eq(0).any()}).cpu();
      upper = flags[0].item<bool>();
      singular = flags[1].item<bool>();
    }
    TORCH_CHECK_VALUE(!upper, "fastvae.", op,
                      ": scale_tril must be lower triangular: it has non-zero entries above the diagonal");
    TORCH_CHECK_VALUE(!singular, "fastvae.", op, ": scale_tril is singular: its diagonal has zero entries");
  }

  // mu (R, d), scale_tril (R, d, d); log_q and the backward's accumulators in the accumulation dtype
  static std::tuple<at::Tensor, at::Tensor> reparameterize_tril(const at::Tensor& mu_, const at::Tensor& L_,
                                                                const at::Tensor& seed, std::optional<int64_t> k,
                                                                bool validate) {
    constexpr const char* op = "reparameterize_tril";
    check_main<B>(op, mu_, "mu");
    check_like(op, mu_, "mu", L_, "scale_tril");
    check_seed(op, seed, mu_, "mu");
    TORCH_CHECK_VALUE(mu_.dim() == 2, "fastvae.", op, ": mu must have shape (R, d); got ", mu_.sizes());
    check_shape(op, L_, "scale_tril", {mu_.size(0), mu_.size(1), mu_.size(1)});
    check_tril(op, L_);
    check_n_samples(op, k);
    if (validate) check_tril_values(op, L_);
    Guard g(mu_);
    const auto mu = mu_.contiguous(), L = L_.contiguous();
    const int64_t R = mu.size(0);
    auto z = at::empty(sampled_shape(mu, k), mu.options());
    const auto qopt = mu.options().dtype(compute_type(mu.scalar_type()));
    auto log_q = k.has_value() ? at::empty({*k, R}, qopt) : at::empty({R}, qopt);
    B::tril_fwd(mu, L, z, log_q, k.value_or(1), seed);
    return {z, log_q};
  }

  static std::tuple<at::Tensor, at::Tensor> reparameterize_tril_backward(const at::Tensor& gz_, const at::Tensor& glq_,
                                                                         const at::Tensor& L_, const at::Tensor& seed,
                                                                         std::optional<int64_t> k) {
    constexpr const char* op = "reparameterize_tril_backward";
    check_tril(op, L_);
    check_seed(op, seed, L_, "scale_tril");
    check_n_samples(op, k);
    std::vector<int64_t> q_shape = k.has_value() ? std::vector<int64_t>{*k, L_.size(0)} : std::vector<int64_t>{L_.size(0)};
    std::vector<int64_t> z_shape = q_shape;
    z_shape.push_back(L_.size(1));
    check_grad(op, gz_, "grad_z", z_shape, L_, "scale_tril");
    check_grad(op, glq_, "grad_log_q", q_shape, L_, "scale_tril");
    Guard g(L_);
    const auto L = L_.contiguous();
    const auto acc = compute_type(L.scalar_type());
    const auto gz = gz_.contiguous().to(L.scalar_type()), glq = glq_.contiguous().to(acc);
    auto grad_mu = at::empty({L.size(0), L.size(1)}, L.options().dtype(acc));
    auto grad_L = at::empty(L.sizes(), L.options().dtype(acc));
    B::tril_bwd(gz, glq, L, grad_mu, grad_L, k.value_or(1), seed);
    return {grad_mu.to(L.scalar_type()), grad_L.to(L.scalar_type())};
  }

  // x and mean (and logvar) checked against each other; the shapes of the per-sample loss
  static LikShape check_gaussian_nll(const char* op, const at::Tensor& x, const at::Tensor& mean,
                                     const std::optional<at::Tensor>& lv, Layout* layout) {
    check_main<B>(op, mean, "mean");
    check_like(op, mean, "mean", x, "x");
    const auto sh = likelihood_shape(op, x, mean, "mean");
    *layout = operand_layout(op, lv, mean, "mean", x.dim() - 1, "logvar");
    return sh;
  }

  static at::Tensor gaussian_nll(const at::Tensor& x_, const at::Tensor& mean_, const std::optional<at::Tensor>& lv_,
                                 int64_t reduction) {
    Layout layout;
    const auto sh = check_gaussian_nll("gaussian_nll", x_, mean_, lv_, &layout);
    check_reduction("gaussian_nll", reduction);
    Guard g(mean_);
    const auto x = x_.contiguous(), mean = mean_.contiguous();
    const auto lv = kernel_operand(lv_, layout, mean, x.dim() - 1);
    auto out = at::empty(sh.out_shape, mean.options().dtype(compute_type(mean.scalar_type())));
    B::gaussian_nll_fwd(x, mean, lv, layout, out, sh);
    return reduce_rows(out, reduction);
  }

  static std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward(const at::Tensor& g_, const at::Tensor& x_,
                                                                  const at::Tensor& mean_,
                                                                  const std::optional<at::Tensor>& lv_, bool need_mean,
                                                                  bool need_logvar, int64_t reduction) {
    constexpr const char* op = "gaussian_nll_backward";
    Layout layout;
    const auto sh = check_gaussian_nll(op, x_, mean_, lv_, &layout);
    check_reduction(op, reduction);
    check_grad(op, g_, "grad", grad_shape(sh.out_shape, reduction), mean_, "mean");
    Guard guard(mean_);
    const auto x = x_.contiguous(), mean = mean_.contiguous();
    const auto g = rows_grad(g_, sh.out_shape, reduction, compute_type(mean.scalar_type()));
    const auto lv = kernel_operand(lv_, layout, mean, x.dim() - 1);
    auto grad_mean = need_mean ? at::empty_like(mean) : at::empty({0}, mean.options());
    // with no rows a per-feature gradient is a sum over nothing: zeros, written here
    auto grad_lv = need_logvar && lv ? (sh.rows == 0 ? at::zeros_like(*lv) : at::empty_like(*lv))
                                     : at::empty({0}, mean.options());
    if (sh.rows > 0) B::gaussian_nll_bwd(g, x, mean, lv, layout, grad_mean, grad_lv, sh);
    return {grad_mean, need_logvar && lv ? to_operand_shape(grad_lv, *lv_) : grad_lv};
  }

  static LikShape check_bernoulli_nll(const char* op, const at::Tensor& logits, const at::Tensor& x) {
    check_main<B>(op, logits, "logits");
    check_like(op, logits, "logits", x, "x");
    return likelihood_shape(op, x, logits, "logits");
  }

  // x in [0, 1] (validate_x): a value outside it (NaN passes) is refused; one read of x, no copy. fastvae.bernoulli_nll
  // then tells an x outside [0, 1] from a call in fastvae 0.1's argument order (its own message and warning).
  static void check_unit_interval(const char* op, const at::Tensor& x) {
    bool ok = true;
    if (x.is_cpu()) {
      const auto xc = x.contiguous();
      const int64_t n = xc.numel();
      auto scan = [&](const auto* p) {
        for (int64_t i = 0; i < n; ++i) ok &= !(p[i] < 0) & !(p[i] > 1);
      };
      if (xc.scalar_type() == at::kDouble) scan(xc.data_ptr<double>());
      else scan(xc.data_ptr<float>());
    } else if (x.numel() > 0) {
      const auto mm = at::aminmax(x);
      ok = !(std::get<0>(mm).lt(0).logical_or(std::get<1>(mm).gt(1))).item<bool>();
    }
    TORCH_CHECK_VALUE(ok, "fastvae.", op, ": x must lie in [0, 1] (binary data or probabilities)");
  }

  static at::Tensor bernoulli_nll(const at::Tensor& logits_, const at::Tensor& x_, int64_t reduction,
                                  bool validate_x) {
    constexpr const char* op = "bernoulli_nll";
    const auto sh = check_bernoulli_nll(op, logits_, x_);
    check_reduction(op, reduction);
    if (validate_x) check_unit_interval(op, x_);
    Guard g(logits_);
    const auto x = x_.contiguous(), logits = logits_.contiguous();
    auto out = at::empty(sh.out_shape, logits.options().dtype(compute_type(logits.scalar_type())));
    B::bernoulli_nll_fwd(logits, x, out, sh);
    return reduce_rows(out, reduction);
  }

  static at::Tensor bernoulli_nll_backward(const at::Tensor& g_, const at::Tensor& logits_, const at::Tensor& x_,
                                           int64_t reduction) {
    constexpr const char* op = "bernoulli_nll_backward";
    const auto sh = check_bernoulli_nll(op, logits_, x_);
    check_reduction(op, reduction);
    check_grad(op, g_, "grad", grad_shape(sh.out_shape, reduction), logits_, "logits");
    Guard guard(logits_);
    const auto x = x_.contiguous(), logits = logits_.contiguous();
    const auto g = rows_grad(g_, sh.out_shape, reduction, compute_type(logits.scalar_type()));
    auto grad = at::empty_like(logits);
    B::bernoulli_nll_bwd(g, logits, x, grad, sh);
    return grad;
  }

  static void check_kl_normal(const char* op, const at::Tensor& mu, const at::Tensor& lv,
                              const std::optional<at::Tensor>& mp, const std::optional<at::Tensor>& lp, Layout* lm,
                              Layout* ll) {
    check_pair(op, mu, lv);
    TORCH_CHECK_VALUE(mu.dim() >= 1, "fastvae.", op, ": mu must have a batch dimension; got a 0-dim tensor");
    *lm = operand_layout(op, mp, mu, "mu", mu.dim() - 1, "mu_prior");
    *ll = operand_layout(op, lp, mu, "mu", mu.dim() - 1, "logvar_prior");
  }

  static at::Tensor kl_normal(const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
                              const std::optional<at::Tensor>& lp_, int64_t reduction) {
    Layout lm, ll;
    check_kl_normal("kl_normal", mu_, lv_, mp_, lp_, &lm, &ll);
    check_reduction("kl_normal", reduction);
    Guard g(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto mp = kernel_operand(mp_, lm, mu, mu.dim() - 1), lp = kernel_operand(lp_, ll, mu, mu.dim() - 1);
    auto out = at::empty({mu.size(0)}, mu.options().dtype(compute_type(mu.scalar_type())));
    B::kl_normal_fwd(mu, lv, mp, lm, lp, ll, out);
    return reduce_rows(out, reduction);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kl_normal_backward(
      const at::Tensor& g_, const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
      const std::optional<at::Tensor>& lp_, std::array<bool, 4> mask, int64_t reduction) {
    constexpr const char* op = "kl_normal_backward";
    Layout lm, ll;
    check_kl_normal(op, mu_, lv_, mp_, lp_, &lm, &ll);
    check_reduction(op, reduction);
    const std::vector<int64_t> rows{mu_.size(0)};
    check_grad(op, g_, "grad", grad_shape(rows, reduction), mu_, "mu");
    Guard guard(mu_);
    const auto mu = mu_.contiguous(), lv = lv_.contiguous();
    const auto g = rows_grad(g_, rows, reduction, compute_type(mu.scalar_type()));
    const auto mp = kernel_operand(mp_, lm, mu, mu.dim() - 1), lp = kernel_operand(lp_, ll, mu, mu.dim() - 1);
    const bool no_rows = mu.size(0) == 0;
    // a fresh empty tensor per output not wanted: one shared tensor would make the outputs alias each other;
    // with no rows a per-feature prior gradient is a sum over nothing: zeros, written here
    auto empty = [&] { return at::empty({0}, mu.options()); };
    auto like = [&](const at::Tensor& t) { return no_rows ? at::zeros_like(t) : at::empty_like(t); };
    auto g_mu = mask[0] ? at::empty_like(mu) : empty();
    auto g_lv = mask[1] ? at::empty_like(lv) : empty();
    auto g_mp = mask[2] && mp ? like(*mp) : empty();
    auto g_lp = mask[3] && lp ? like(*lp) : empty();
    if (!no_rows) B::kl_normal_bwd(g, mu, lv, mp, lm, lp, ll, g_mu, g_lv, g_mp, g_lp);
    return {g_mu, g_lv, mask[2] && mp ? to_operand_shape(g_mp, *mp_) : g_mp,
            mask[3] && lp ? to_operand_shape(g_lp, *lp_) : g_lp};
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
  m.impl("_normals", &O::normals);
}

}  // namespace fastvae
