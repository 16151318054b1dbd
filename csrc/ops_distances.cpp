// Binding of the sample-distance ops (MMD / energy distance, sliced-Wasserstein): schemas, tensor checks and the
// CPU dispatch. The CUDA implementations register in ops_distances_cuda.cpp under the same schemas.
//
//   mmd(x (B, N, d), y (B, M, d) | None, seed | None, kernel, bandwidth[], unbiased) -> (B,)
//     y None: the standard normal prior; "rbf" in closed form, the other kernels with N prior samples drawn
//     from the Philox stream of `seed` (eps[(b N + j) d + k] is y[b, j, k]; backward draws the same).
//   sliced_wasserstein_projected(px (B, L, N), py (B, L, N) | None, p) -> (loss (B,), perm_x, perm_y)
//     the 1-D part of sliced-Wasserstein on projections (one row per direction); py None: the normal
//     quantile target. perm_* (int32, (B, L, N)) are the sorting permutations saved for backward.
//   random_directions(seed, d, n) -> (d, n) float32: n unit directions, column l the normalised
//     eps[l d : (l + 1) d] of the seed's stream (the same on every device and process).
#include <torch/extension.h>

#include "distances_common.h"
#include "fastvae/cpu_distances.h"
#include "fastvae/cpu_kernels.h"

namespace fastvae {
namespace {

// y for the prior of the non-rbf kernels: the stream of `seed`, (B, N, d), in x's dtype
at::Tensor prior_samples_cpu(const at::Tensor& x, const at::Tensor& seed) {
  auto eps = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  cpu::kernels<float>().normals(eps.data_ptr<float>(), 0, eps.numel(), seed_value(seed));
  return eps.to(x.scalar_type());
}

template <class T>
cpu::MmdProblem<T> problem(const at::Tensor& x, const std::optional<at::Tensor>& y, DistKernel k,
                           const std::vector<double>& bw, bool unbiased) {
  return cpu::MmdProblem<T>{x.data_ptr<T>(), y ? y->data_ptr<T>() : nullptr, x.size(0), x.size(1),
                            y ? y->size(1) : x.size(1), x.size(2), k, bw.data(), static_cast<int>(bw.size()),
                            unbiased};
}

at::Tensor mmd_cpu(const at::Tensor& x_, const std::optional<at::Tensor>& y_, const std::optional<at::Tensor>& seed,
                   c10::string_view kernel, at::ArrayRef<double> bandwidth, bool unbiased) {
  const MmdSpec spec = mmd_spec(x_, y_, seed, kernel, bandwidth, unbiased);
  const auto x = x_.contiguous();
  std::optional<at::Tensor> y;
  if (y_) y = y_->contiguous();
  else if (spec.sample_prior) y = prior_samples_cpu(x, *seed);
  auto out = at::empty({x.size(0)}, x.options());
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().mmd_fwd(problem<T>(x, y, spec.kernel, spec.bw, unbiased), out.data_ptr<T>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mmd_backward_cpu(const at::Tensor& grad, const at::Tensor& x_,
                                                    const std::optional<at::Tensor>& y_,
                                                    const std::optional<at::Tensor>& seed, c10::string_view kernel,
                                                    at::ArrayRef<double> bandwidth, bool unbiased, bool need_y) {
  const MmdSpec spec = mmd_spec(x_, y_, seed, kernel, bandwidth, unbiased);
  const auto x = x_.contiguous();
  const auto g = grad.contiguous().to(x.scalar_type());
  std::optional<at::Tensor> y;
  if (y_) y = y_->contiguous();
  else if (spec.sample_prior) y = prior_samples_cpu(x, *seed);
  auto grad_x = at::empty_like(x);
  auto grad_y = need_y && y_ ? at::empty_like(*y) : at::empty({0}, x.options());
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().mmd_bwd(problem<T>(x, y, spec.kernel, spec.bw, unbiased), g.data_ptr<T>(),
                                       grad_x.data_ptr<T>(), grad_y.numel() ? grad_y.data_ptr<T>() : nullptr);
  });
  return {grad_x, grad_y};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sw_projected_cpu(const at::Tensor& px_,
                                                                const std::optional<at::Tensor>& py_, double p) {
  check_sw(px_, py_, p);
  const auto px = px_.contiguous();
  std::optional<at::Tensor> py;
  if (py_) py = py_->contiguous();
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  auto out = at::empty({B}, px.options());
  auto perm_x = at::empty({B, L, N}, px.options().dtype(at::kInt));
  auto perm_y = py ? at::empty({B, L, N}, px.options().dtype(at::kInt)) : at::empty({0}, px.options().dtype(at::kInt));
  dispatch_cpu(px.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().sw_fwd(px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr, out.data_ptr<T>(),
                                      perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr, B, L, N,
                                      p);
  });
  return {out, perm_x, perm_y};
}

std::tuple<at::Tensor, at::Tensor> sw_projected_backward_cpu(const at::Tensor& grad, const at::Tensor& px_,
                                                             const std::optional<at::Tensor>& py_,
                                                             const at::Tensor& perm_x_, const at::Tensor& perm_y_,
                                                             double p, bool need_py) {
  check_sw(px_, py_, p);
  check_perm(px_, perm_x_, "perm_x");
  if (py_) check_perm(px_, perm_y_, "perm_y");
  const auto px = px_.contiguous(), perm_x = perm_x_.contiguous(), perm_y = perm_y_.contiguous();
  const auto g = grad.contiguous().to(px.scalar_type());
  std::optional<at::Tensor> py;
  if (py_) py = py_->contiguous();
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  auto gpx = at::empty_like(px);
  auto gpy = need_py && py ? at::empty_like(*py) : at::empty({0}, px.options());
  dispatch_cpu(px.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().sw_bwd(g.data_ptr<T>(), px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr,
                                      perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr,
                                      gpx.data_ptr<T>(), gpy.numel() ? gpy.data_ptr<T>() : nullptr, B, L, N, p);
  });
  return {gpx, gpy};
}

at::Tensor random_directions_cpu(const at::Tensor& seed, int64_t d, int64_t n) {
  TORCH_CHECK(d >= 1 && n >= 1, "fastvae: random_directions needs d >= 1 and n >= 1; got d = ", d, ", n = ", n);
  auto eps = at::empty({n, d}, at::kFloat);
  cpu::kernels<float>().normals(eps.data_ptr<float>(), 0, eps.numel(), seed_value(seed));
  // normalise in double: the directions are then correctly rounded unit vectors
  auto e = eps.to(at::kDouble);
  return (e / e.norm(2, {1}, true)).t().contiguous().to(at::kFloat);
}

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("mmd(Tensor x, Tensor? y, Tensor? seed, str kernel, float[] bandwidth, bool unbiased) -> Tensor");
  m.def("mmd_backward(Tensor grad, Tensor x, Tensor? y, Tensor? seed, str kernel, float[] bandwidth, bool unbiased,"
        " bool need_y) -> (Tensor, Tensor)");
  m.def("sliced_wasserstein_projected(Tensor px, Tensor? py, float p) -> (Tensor, Tensor, Tensor)");
  m.def("sliced_wasserstein_projected_backward(Tensor grad, Tensor px, Tensor? py, Tensor perm_x, Tensor perm_y,"
        " float p, bool need_py) -> (Tensor, Tensor)");
  m.def("random_directions(Tensor seed, int d, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  using namespace fastvae;
  m.impl("mmd", &mmd_cpu);
  m.impl("mmd_backward", &mmd_backward_cpu);
  m.impl("sliced_wasserstein_projected", &sw_projected_cpu);
  m.impl("sliced_wasserstein_projected_backward", &sw_projected_backward_cpu);
  m.impl("random_directions", &random_directions_cpu);
}
