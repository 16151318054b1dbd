// The binding layer: op schemas (declared once, here), tensor checks, CPU dispatch, and the Python module
// `fastvae._C`. The CUDA implementations register in ops_cuda.cpp under the same schemas.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "fastvae/cpu_kernels.h"
#include "fastvae/philox.h"
#include "ops_common.h"

namespace fastvae {

void parallel_for(index_t begin, index_t end, index_t grain, const std::function<void(index_t, index_t)>& fn) {
  at::parallel_for(begin, end, grain, fn);
}

namespace {

template <class F>
void dispatch_cpu(at::ScalarType t, const char* op, const F& f) {
  if (t == at::kFloat) f(float{});
  else if (t == at::kDouble) f(double{});
  else TORCH_CHECK(false, "fastvae.", op, ": CPU kernels take float32 or float64; got ", t);
}

template <class T>
const T* ptr(const at::Tensor& t) { return t.data_ptr<T>(); }
template <class T>
const T* opt_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }
template <class T>
T* out_ptr(at::Tensor& t) { return t.numel() ? t.data_ptr<T>() : nullptr; }

std::vector<int64_t> sampled_shape(const at::Tensor& t, std::optional<int64_t> k) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  if (k.has_value()) s.insert(s.begin(), *k);
  return s;
}

// The backward ops index their incoming gradients by the forward shapes: a wrong shape would read out of bounds.
void check_grad_shape(const at::Tensor& g, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(g.sizes() == expected, "fastvae.", op, ": ", name, " must have shape ", expected, "; got ", g.sizes());
}

// ---- reparameterize ----

at::Tensor reparameterize_cpu(const at::Tensor& mu_, const at::Tensor& lv_, const at::Tensor& seed,
                              std::optional<int64_t> n_samples) {
  check_float(mu_, "mu");
  check_same(mu_, lv_, "mu", "logvar");
  TORCH_CHECK(mu_.sizes() == lv_.sizes(), "fastvae: logvar must have the shape of mu");
  TORCH_CHECK(!n_samples.has_value() || *n_samples >= 1, "fastvae: n_samples must be >= 1");
  const auto mu = mu_.contiguous(), lv = lv_.contiguous();
  auto z = at::empty(sampled_shape(mu, n_samples), mu.options());
  const uint64_t key = seed_value(seed);
  dispatch_cpu(mu.scalar_type(), "reparameterize", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().reparam_fwd(ptr<T>(mu), ptr<T>(lv), out_ptr<T>(z), mu.numel(), n_samples.value_or(1), key);
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> reparameterize_backward_cpu(const at::Tensor& gz_, const at::Tensor& lv_,
                                                               const at::Tensor& seed,
                                                               std::optional<int64_t> n_samples) {
  TORCH_CHECK(!n_samples.has_value() || *n_samples >= 1, "fastvae: n_samples must be >= 1");
  check_grad_shape(gz_, sampled_shape(lv_, n_samples), "reparameterize_backward", "grad_z");
  const auto gz = gz_.contiguous().to(lv_.scalar_type()), lv = lv_.contiguous();
  auto grad_lv = at::empty_like(lv);
  auto grad_mu = n_samples.has_value() ? at::empty_like(lv) : at::empty({0}, lv.options());
  const uint64_t key = seed_value(seed);
  dispatch_cpu(lv.scalar_type(), "reparameterize", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().reparam_bwd(ptr<T>(gz), ptr<T>(lv), out_ptr<T>(grad_mu), out_ptr<T>(grad_lv), lv.numel(),
                                  n_samples.value_or(1), key);
  });
  return {grad_mu, grad_lv};
}

// ---- reparameterize_kl ----

std::tuple<at::Tensor, at::Tensor> reparameterize_kl_cpu(const at::Tensor& mu_, const at::Tensor& lv_,
                                                         const at::Tensor& seed) {
  check_float(mu_, "mu");
  check_same(mu_, lv_, "mu", "logvar");
  TORCH_CHECK(mu_.sizes() == lv_.sizes(), "fastvae: logvar must have the shape of mu");
  TORCH_CHECK(mu_.dim() >= 1, "fastvae: mu must have a batch dimension");
  const auto mu = mu_.contiguous(), lv = lv_.contiguous();
  auto z = at::empty_like(mu);
  auto kl = at::empty({mu.size(0)}, mu.options().dtype(acc_type(mu.scalar_type())));
  const uint64_t key = seed_value(seed);
  dispatch_cpu(mu.scalar_type(), "reparameterize_kl", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().reparam_kl_fwd(ptr<T>(mu), ptr<T>(lv), out_ptr<T>(z), out_ptr<T>(kl), rows_of(mu), per_row(mu),
                                     key);
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparameterize_kl_backward_cpu(const at::Tensor& gz_, const at::Tensor& gkl_,
                                                                  const at::Tensor& mu_, const at::Tensor& lv_,
                                                                  const at::Tensor& seed) {
  TORCH_CHECK(mu_.dim() >= 1 && mu_.sizes() == lv_.sizes(), "fastvae.reparameterize_kl_backward: mu and logvar must "
              "have one shape with a batch dimension; got ", mu_.sizes(), " and ", lv_.sizes());
  check_grad_shape(gz_, mu_.sizes(), "reparameterize_kl_backward", "grad_z");
  check_grad_shape(gkl_, {mu_.size(0)}, "reparameterize_kl_backward", "grad_kl");
  const auto mu = mu_.contiguous(), lv = lv_.contiguous();
  const auto gz = gz_.contiguous().to(mu.scalar_type()), gkl = gkl_.contiguous().to(mu.scalar_type());
  auto grad_mu = at::empty_like(mu), grad_lv = at::empty_like(lv);
  const uint64_t key = seed_value(seed);
  dispatch_cpu(mu.scalar_type(), "reparameterize_kl", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().reparam_kl_bwd(ptr<T>(gz), ptr<T>(gkl), ptr<T>(mu), ptr<T>(lv), out_ptr<T>(grad_mu),
                                     out_ptr<T>(grad_lv), rows_of(mu), per_row(mu), key);
  });
  return {grad_mu, grad_lv};
}

// ---- reparameterize_tril: mu (R, d), scale_tril (R, d, d) ----

std::tuple<at::Tensor, at::Tensor> reparameterize_tril_cpu(const at::Tensor& mu_, const at::Tensor& L_,
                                                           const at::Tensor& seed, std::optional<int64_t> n_samples) {
  check_float(mu_, "mu");
  check_same(mu_, L_, "mu", "scale_tril");
  TORCH_CHECK(mu_.dim() == 2 && L_.dim() == 3 && L_.size(0) == mu_.size(0) && L_.size(1) == mu_.size(1) &&
                  L_.size(2) == mu_.size(1),
              "fastvae: reparameterize_tril takes mu (R, d) and scale_tril (R, d, d)");
  TORCH_CHECK(!n_samples.has_value() || *n_samples >= 1, "fastvae: n_samples must be >= 1");
  const auto mu = mu_.contiguous(), L = L_.contiguous();
  const int64_t R = mu.size(0), d = mu.size(1), k = n_samples.value_or(1);
  auto z = at::empty(sampled_shape(mu, n_samples), mu.options());
  auto log_q = n_samples.has_value() ? at::empty({k, R}, mu.options()) : at::empty({R}, mu.options());
  const uint64_t key = seed_value(seed);
  dispatch_cpu(mu.scalar_type(), "reparameterize_tril", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().tril_fwd(ptr<T>(mu), ptr<T>(L), out_ptr<T>(z), out_ptr<T>(log_q), R, d, k, key);
  });
  return {z, log_q};
}

std::tuple<at::Tensor, at::Tensor> reparameterize_tril_backward_cpu(const at::Tensor& gz_, const at::Tensor& glq_,
                                                                    const at::Tensor& L_, const at::Tensor& seed,
                                                                    std::optional<int64_t> n_samples) {
  TORCH_CHECK(L_.dim() == 3 && L_.size(1) == L_.size(2), "fastvae.reparameterize_tril_backward: scale_tril must be "
              "(R, d, d); got ", L_.sizes());
  TORCH_CHECK(!n_samples.has_value() || *n_samples >= 1, "fastvae: n_samples must be >= 1");
  std::vector<int64_t> q_shape = n_samples.has_value() ? std::vector<int64_t>{*n_samples, L_.size(0)}
                                                       : std::vector<int64_t>{L_.size(0)};
  std::vector<int64_t> z_shape = q_shape;
  z_shape.push_back(L_.size(1));
  check_grad_shape(gz_, z_shape, "reparameterize_tril_backward", "grad_z");
  check_grad_shape(glq_, q_shape, "reparameterize_tril_backward", "grad_log_q");
  const auto L = L_.contiguous();
  const auto gz = gz_.contiguous().to(L.scalar_type()), glq = glq_.contiguous().to(L.scalar_type());
  const int64_t R = L.size(0), d = L.size(1);
  auto grad_mu = at::empty({R, d}, L.options()), grad_L = at::empty_like(L);
  const uint64_t key = seed_value(seed);
  dispatch_cpu(L.scalar_type(), "reparameterize_tril", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().tril_bwd(ptr<T>(gz), ptr<T>(glq), ptr<T>(L), out_ptr<T>(grad_mu), out_ptr<T>(grad_L), R, d,
                               n_samples.value_or(1), key);
  });
  return {grad_mu, grad_L};
}

// ---- gaussian_nll ----

at::Tensor gaussian_nll_cpu(const at::Tensor& x_, const at::Tensor& mean_, const std::optional<at::Tensor>& lv_) {
  check_float(mean_, "mean");
  check_same(mean_, x_, "mean", "x");
  const auto sh = likelihood_shape(x_, mean_, "mean");
  const Layout layout = operand_layout(lv_, mean_, x_.dim() - 1, "logvar");
  if (lv_) check_same(mean_, *lv_, "mean", "logvar");
  const auto x = x_.contiguous(), mean = mean_.contiguous();
  const std::optional<at::Tensor> lv = lv_ ? std::optional<at::Tensor>(lv_->contiguous()) : std::nullopt;
  auto out = at::empty(sh.out_shape, mean.options().dtype(acc_type(mean.scalar_type())));
  dispatch_cpu(mean.scalar_type(), "gaussian_nll", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().gaussian_nll_fwd(ptr<T>(x), ptr<T>(mean), opt_ptr<T>(lv), layout, out_ptr<T>(out), sh.rows,
                                       sh.D, sh.x_rows);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward_cpu(const at::Tensor& g_, const at::Tensor& x_,
                                                             const at::Tensor& mean_,
                                                             const std::optional<at::Tensor>& lv_, bool need_mean,
                                                             bool need_logvar) {
  const auto sh = likelihood_shape(x_, mean_, "mean");
  const Layout layout = operand_layout(lv_, mean_, x_.dim() - 1, "logvar");
  check_grad_shape(g_, sh.out_shape, "gaussian_nll_backward", "grad");
  const auto x = x_.contiguous(), mean = mean_.contiguous();
  const auto g = g_.contiguous().to(mean.scalar_type());
  const std::optional<at::Tensor> lv = lv_ ? std::optional<at::Tensor>(lv_->contiguous()) : std::nullopt;
  auto grad_mean = need_mean ? at::empty_like(mean) : at::empty({0}, mean.options());
  auto grad_lv = need_logvar && lv ? at::empty_like(*lv) : at::empty({0}, mean.options());
  dispatch_cpu(mean.scalar_type(), "gaussian_nll", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().gaussian_nll_bwd(ptr<T>(g), ptr<T>(x), ptr<T>(mean), opt_ptr<T>(lv), layout, out_ptr<T>(grad_mean),
                                       out_ptr<T>(grad_lv), sh.rows, sh.D, sh.x_rows);
  });
  return {grad_mean, grad_lv};
}

// ---- bernoulli_nll ----

at::Tensor bernoulli_nll_cpu(const at::Tensor& logits_, const at::Tensor& x_) {
  check_float(logits_, "logits");
  check_same(logits_, x_, "logits", "x");
  const auto sh = likelihood_shape(x_, logits_, "logits");
  const auto x = x_.contiguous(), logits = logits_.contiguous();
  auto out = at::empty(sh.out_shape, logits.options().dtype(acc_type(logits.scalar_type())));
  dispatch_cpu(logits.scalar_type(), "bernoulli_nll", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().bernoulli_nll_fwd(ptr<T>(logits), ptr<T>(x), out_ptr<T>(out), sh.rows, sh.D, sh.x_rows);
  });
  return out;
}

at::Tensor bernoulli_nll_backward_cpu(const at::Tensor& g_, const at::Tensor& logits_, const at::Tensor& x_) {
  const auto sh = likelihood_shape(x_, logits_, "logits");
  check_grad_shape(g_, sh.out_shape, "bernoulli_nll_backward", "grad");
  const auto x = x_.contiguous(), logits = logits_.contiguous();
  const auto g = g_.contiguous().to(logits.scalar_type());
  auto grad = at::empty_like(logits);
  dispatch_cpu(logits.scalar_type(), "bernoulli_nll", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().bernoulli_nll_bwd(ptr<T>(g), ptr<T>(logits), ptr<T>(x), out_ptr<T>(grad), sh.rows, sh.D,
                                        sh.x_rows);
  });
  return grad;
}

// ---- kl_normal ----

at::Tensor kl_normal_cpu(const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
                         const std::optional<at::Tensor>& lp_) {
  check_float(mu_, "mu");
  check_same(mu_, lv_, "mu", "logvar");
  TORCH_CHECK(mu_.sizes() == lv_.sizes(), "fastvae: logvar must have the shape of mu");
  TORCH_CHECK(mu_.dim() >= 1, "fastvae: mu must have a batch dimension");
  const Layout lm = operand_layout(mp_, mu_, mu_.dim() - 1, "mu_prior");
  const Layout ll = operand_layout(lp_, mu_, mu_.dim() - 1, "logvar_prior");
  const auto mu = mu_.contiguous(), lv = lv_.contiguous();
  const std::optional<at::Tensor> mp = mp_ ? std::optional<at::Tensor>(mp_->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> lp = lp_ ? std::optional<at::Tensor>(lp_->contiguous()) : std::nullopt;
  auto out = at::empty({mu.size(0)}, mu.options().dtype(acc_type(mu.scalar_type())));
  dispatch_cpu(mu.scalar_type(), "kl_normal", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().kl_normal_fwd(ptr<T>(mu), ptr<T>(lv), opt_ptr<T>(mp), lm, opt_ptr<T>(lp), ll, out_ptr<T>(out),
                                    rows_of(mu), per_row(mu));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kl_normal_backward_cpu(
    const at::Tensor& g_, const at::Tensor& mu_, const at::Tensor& lv_, const std::optional<at::Tensor>& mp_,
    const std::optional<at::Tensor>& lp_, std::array<bool, 4> mask) {
  TORCH_CHECK(mu_.dim() >= 1 && mu_.sizes() == lv_.sizes(), "fastvae.kl_normal_backward: mu and logvar must have "
              "one shape with a batch dimension; got ", mu_.sizes(), " and ", lv_.sizes());
  check_grad_shape(g_, {mu_.size(0)}, "kl_normal_backward", "grad");
  const Layout lm = operand_layout(mp_, mu_, mu_.dim() - 1, "mu_prior");
  const Layout ll = operand_layout(lp_, mu_, mu_.dim() - 1, "logvar_prior");
  const auto mu = mu_.contiguous(), lv = lv_.contiguous();
  const auto g = g_.contiguous().to(mu.scalar_type());
  const std::optional<at::Tensor> mp = mp_ ? std::optional<at::Tensor>(mp_->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> lp = lp_ ? std::optional<at::Tensor>(lp_->contiguous()) : std::nullopt;
  // a fresh empty tensor per output not wanted: one shared tensor would make the outputs alias each other
  auto empty = [&] { return at::empty({0}, mu.options()); };
  auto g_mu = mask[0] ? at::empty_like(mu) : empty();
  auto g_lv = mask[1] ? at::empty_like(lv) : empty();
  auto g_mp = mask[2] && mp ? at::empty_like(*mp) : empty();
  auto g_lp = mask[3] && lp ? at::empty_like(*lp) : empty();
  dispatch_cpu(mu.scalar_type(), "kl_normal", [&](auto tag) {
    using T = decltype(tag);
    cpu::kernels<T>().kl_normal_bwd(ptr<T>(g), ptr<T>(mu), ptr<T>(lv), opt_ptr<T>(mp), lm, opt_ptr<T>(lp), ll,
                                    out_ptr<T>(g_mu), out_ptr<T>(g_lv), out_ptr<T>(g_mp), out_ptr<T>(g_lp), rows_of(mu),
                                    per_row(mu));
  });
  return {g_mu, g_lv, g_mp, g_lp};
}

// ---- test hooks ----

std::vector<uint32_t> philox_kat(std::vector<uint32_t> ctr, std::vector<uint32_t> key) {
  TORCH_CHECK(ctr.size() == 4 && key.size() == 2, "philox_kat takes a 4-word counter and a 2-word key");
  const Philox4 p = philox4x32_10_full(ctr.data(), key.data());
  return {p.v[0], p.v[1], p.v[2], p.v[3]};
}

at::Tensor normals_cpu(int64_t start, int64_t n, int64_t key) {
  auto out = at::empty({n}, at::kFloat);
  cpu::kernels<float>().normals(out.data_ptr<float>(), start, n, static_cast<uint64_t>(key));
  return out;
}

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY(fastvae, m) {
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor seed, int? n_samples) -> Tensor");
  m.def("reparameterize_backward(Tensor grad_z, Tensor logvar, Tensor seed, int? n_samples) -> (Tensor, Tensor)");
  m.def("reparameterize_kl(Tensor mu, Tensor logvar, Tensor seed) -> (Tensor, Tensor)");
  m.def("reparameterize_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor seed)"
        " -> (Tensor, Tensor)");
  m.def("reparameterize_tril(Tensor mu, Tensor scale_tril, Tensor seed, int? n_samples) -> (Tensor, Tensor)");
  m.def("reparameterize_tril_backward(Tensor grad_z, Tensor grad_log_q, Tensor scale_tril, Tensor seed,"
        " int? n_samples) -> (Tensor, Tensor)");
  m.def("gaussian_nll(Tensor x, Tensor mean, Tensor? logvar) -> Tensor");
  m.def("gaussian_nll_backward(Tensor grad, Tensor x, Tensor mean, Tensor? logvar, bool need_mean,"
        " bool need_logvar) -> (Tensor, Tensor)");
  m.def("bernoulli_nll(Tensor logits, Tensor x) -> Tensor");
  m.def("bernoulli_nll_backward(Tensor grad, Tensor logits, Tensor x) -> Tensor");
  m.def("kl_normal(Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior) -> Tensor");
  m.def("kl_normal_backward(Tensor grad, Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior,"
        " bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  using namespace fastvae;
  m.impl("reparameterize", &reparameterize_cpu);
  m.impl("reparameterize_backward", &reparameterize_backward_cpu);
  m.impl("reparameterize_kl", &reparameterize_kl_cpu);
  m.impl("reparameterize_kl_backward", &reparameterize_kl_backward_cpu);
  m.impl("reparameterize_tril", &reparameterize_tril_cpu);
  m.impl("reparameterize_tril_backward", &reparameterize_tril_backward_cpu);
  m.impl("gaussian_nll", &gaussian_nll_cpu);
  m.impl("gaussian_nll_backward", &gaussian_nll_backward_cpu);
  m.impl("bernoulli_nll", &bernoulli_nll_cpu);
  m.impl("bernoulli_nll_backward", &bernoulli_nll_backward_cpu);
  m.impl("kl_normal", &kl_normal_cpu);
  m.impl("kl_normal_backward", &kl_normal_backward_cpu);
}

#ifndef FASTVAE_TORCH_VERSION
#define FASTVAE_TORCH_VERSION "unknown"
#endif
#ifndef FASTVAE_CUDA_ARCHS
#define FASTVAE_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastvae compiled kernels (the ops live in torch.ops.fastvae)";
  m.def("build_info", []() {
    pybind11::dict d;
    d["torch_version"] = FASTVAE_TORCH_VERSION;
#ifdef FASTVAE_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_archs"] = FASTVAE_CUDA_ARCHS;
    d["cpu_isa"] = fastvae::cpu::best_isa();
    return d;
  });
  m.def("cpu_isa", &fastvae::cpu::active_isa, "the instruction set of the CPU kernels in use");
  m.def("force_cpu_isa", &fastvae::cpu::force_isa, "use the CPU kernels built for one instruction set (tests)");
  m.def("philox_kat", &fastvae::philox_kat);
  m.def("normals_cpu", &fastvae::normals_cpu, "eps[start:start+n] of the stream of `key`");
}
