// The schemas of the Gaussian ops, declared once (reduction: 0 none, 1 sum, 2 mean; see ops.h); Ops<B> (ops.h)
// implements them for the CPU (cpu.cpp) and CUDA
// (cuda.cpp) backends, and fastvae/functional.py gives each its fake (meta) and autograd formulas.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor seed, int? n_samples) -> Tensor");
  m.def("reparameterize_backward(Tensor grad_z, Tensor logvar, Tensor seed, int? n_samples) -> (Tensor, Tensor)");
  m.def("reparameterize_kl(Tensor mu, Tensor logvar, Tensor seed) -> (Tensor, Tensor)");
  m.def("reparameterize_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor seed)"
        " -> (Tensor, Tensor)");
  m.def("reparameterize_tril(Tensor mu, Tensor scale_tril, Tensor seed, int? n_samples, bool validate=False)"
        " -> (Tensor, Tensor)");
  m.def("reparameterize_tril_backward(Tensor grad_z, Tensor grad_log_q, Tensor scale_tril, Tensor seed,"
        " int? n_samples) -> (Tensor, Tensor)");
  m.def("gaussian_nll(Tensor x, Tensor mean, Tensor? logvar, int reduction=0) -> Tensor");
  m.def("gaussian_nll_backward(Tensor grad, Tensor x, Tensor mean, Tensor? logvar, bool need_mean,"
        " bool need_logvar, int reduction=0) -> (Tensor, Tensor)");
  m.def("bernoulli_nll(Tensor logits, Tensor x, int reduction=0, bool validate_x=False) -> Tensor");
  m.def("bernoulli_nll_backward(Tensor grad, Tensor logits, Tensor x, int reduction=0) -> Tensor");
  m.def("kl_normal(Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior, int reduction=0) -> Tensor");
  m.def("kl_normal_backward(Tensor grad, Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior,"
        " bool[4] output_mask, int reduction=0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_normals(Tensor seed, int start, int n) -> Tensor");  // the raw eps stream, for tests
}
