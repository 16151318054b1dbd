// Binding of the sample-distance ops (MMD / energy distance, sliced-Wasserstein): schemas, tensor checks and the
// CPU dispatch. The CUDA implementations register in ops_distances_cuda.cpp under the same schemas.
//
//   mmd(x (B, N, d), y (B, M, d) | None, seed | None, kernel, bandwidth[], unbiased) -> (B,)
//     y None: the standard normal prior; "rbf" in closed form, the other kernels with N prior samples drawn
//     from the Philox stream of `seed` (eps[(b N + j) d + k] is y[b, j, k]; backward draws the same).
//   sliced_wasserstein_projected(px (B, L, N), py (B, L, N) | None, p) -> (loss (B,), perm_x, perm_y)
//     the 1-D part of sliced-Wasserstein on projections (one row per direction); py None: the normal
//     quantile target. perm_* (int32, (B, L, N)) are the sorting permutations saved for backward.
//   sliced_wasserstein_projected_backward(grad (B,), px, py, perm_x, perm_y, p, need_py) -> (grad_px, grad_py)
//     perm_x / perm_y must be the permutations the forward returned for these px / py (the autograd formula is
//     the only caller that needs the op, and it passes them). The CPU kernel checks that every row is a
//     permutation of 0 .. N-1 (an O(N) pass per row) and refuses anything else; the CUDA kernel cannot check
//     without a device synchronisation, so it skips indices outside [0, N) (never an out-of-bounds access) and
//     its outputs start zeroed (no uninitialised entry where an index repeats): wrong input, defined output.
//   random_directions(seed, d, n) -> (d, n) float32: n unit directions, column l the normalised
//     eps[l d : (l + 1) d] of the seed's stream (the same on every device and process).
#include <torch/extension.h>

#include <ATen/Parallel.h>

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
  constexpr const char* op = "mmd";
  const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
  const auto x = x_.contiguous();
  std::optional<at::Tensor> y;
  if (y_) y = y_->contiguous();
  else if (spec.sample_prior) y = prior_samples_cpu(x, *seed);
  auto out = at::empty({x.size(0)}, x.options());
  dispatch_cpu(op, x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().mmd_fwd(problem<T>(x, y, spec.kernel, spec.bw, unbiased), out.data_ptr<T>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mmd_backward_cpu(const at::Tensor& grad, const at::Tensor& x_,
                                                    const std::optional<at::Tensor>& y_,
                                                    const std::optional<at::Tensor>& seed, c10::string_view kernel,
                                                    at::ArrayRef<double> bandwidth, bool unbiased, bool need_y) {
  constexpr const char* op = "mmd_backward";
  const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
  check_grad(op, grad, "grad", {x_.size(0)}, x_, "x");
  const auto x = x_.contiguous();
  const auto g = grad.contiguous().to(x.scalar_type());
  std::optional<at::Tensor> y;
  if (y_) y = y_->contiguous();
  else if (spec.sample_prior) y = prior_samples_cpu(x, *seed);
  auto grad_x = at::empty_like(x);
  auto grad_y = need_y && y_ ? at::empty_like(*y) : at::empty({0}, x.options());
  dispatch_cpu(op, x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().mmd_bwd(problem<T>(x, y, spec.kernel, spec.bw, unbiased), g.data_ptr<T>(),
                                       grad_x.data_ptr<T>(), grad_y.numel() ? grad_y.data_ptr<T>() : nullptr);
  });
  return {grad_x, grad_y};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sw_projected_cpu(const at::Tensor& px_,
                                                                const std::optional<at::Tensor>& py_, double p) {
  constexpr const char* op = "sliced_wasserstein_projected";
  check_sw(op, px_, py_, p);
  const auto px = px_.contiguous();
  std::optional<at::Tensor> py;
  if (py_) py = py_->contiguous();
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  auto out = at::empty({B}, px.options());
  auto perm_x = at::empty({B, L, N}, px.options().dtype(at::kInt));
  auto perm_y = py ? at::empty({B, L, N}, px.options().dtype(at::kInt)) : at::empty({0}, px.options().dtype(at::kInt));
  dispatch_cpu(op, px.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().sw_fwd(px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr, out.data_ptr<T>(),
                                      perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr, B, L, N,
                                      p);
  });
  return {out, perm_x, perm_y};
}

// Every row of perm (rows x N, contiguous) is a permutation of 0 .. N-1: one pass with a bitmap per row. An index
// out of range would be an out-of-bounds access in the kernel, a repeated one would leave gradient entries
// unwritten.
void check_permutation_rows(const char* op, const at::Tensor& perm, int64_t rows, int64_t N, const char* name) {
  const int32_t* p = perm.data_ptr<int32_t>();
  std::vector<uint8_t> bad(static_cast<size_t>(rows), 0);
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / N), [&](int64_t b, int64_t e) {
    std::vector<uint64_t> seen(static_cast<size_t>((N + 63) / 64));
    for (int64_t r = b; r < e; ++r) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t i = 0; i < N; ++i) {
        const int64_t v = p[r * N + i];
        const uint64_t bit = uint64_t(1) << (v & 63);
        if (v < 0 || v >= N || (seen[v >> 6] & bit)) {
          bad[r] = 1;
          break;
        }
        seen[v >> 6] |= bit;
      }
    }
  });
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(!bad[r], "fastvae.", op, ": ", name, " must hold a permutation of 0 .. ", N - 1,
                      " in every row (the one the forward returned); row ", r, " is not one");
}

std::tuple<at::Tensor, at::Tensor> sw_projected_backward_cpu(const at::Tensor& grad, const at::Tensor& px_,
                                                             const std::optional<at::Tensor>& py_,
                                                             const at::Tensor& perm_x_, const at::Tensor& perm_y_,
                                                             double p, bool need_py) {
  constexpr const char* op = "sliced_wasserstein_projected_backward";
  check_sw_backward(op, grad, px_, py_, perm_x_, perm_y_, p);
  const auto px = px_.contiguous(), perm_x = perm_x_.contiguous(), perm_y = perm_y_.contiguous();
  const auto g = grad.contiguous().to(px.scalar_type());
  std::optional<at::Tensor> py;
  if (py_) py = py_->contiguous();
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  check_permutation_rows(op, perm_x, B * L, N, "perm_x");
  if (py) check_permutation_rows(op, perm_y, B * L, N, "perm_y");
  auto gpx = at::empty_like(px);
  auto gpy = need_py && py ? at::empty_like(*py) : at::empty({0}, px.options());
  dispatch_cpu(op, px.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::distance_kernels<T>().sw_bwd(g.data_ptr<T>(), px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr,
                                      perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr,
                                      gpx.data_ptr<T>(), gpy.numel() ? gpy.data_ptr<T>() : nullptr, B, L, N, p);
  });
  return {gpx, gpy};
}

at::Tensor random_directions_cpu(const at::Tensor& seed, int64_t d, int64_t n) {
  constexpr const char* op = "random_directions";
  check_seed(op, seed);
  TORCH_CHECK_VALUE(d >= 1 && n >= 1, "fastvae.", op, ": d and n must be >= 1; got d = ", d, ", n = ", n);
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
