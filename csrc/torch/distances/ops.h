// The sample-distance ops (schemas in schema.cpp), written once for every backend: checks, argument decoding,
// contiguity, the compute dtype (compute_type), the prior samples drawn from the seed's stream, outputs and
// shapes. A backend (cpu.cpp, cuda.cpp) supplies only its kernel calls and its limits; `typename B::Guard` sets
// the device for the call.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "fastvae/distances_types.h"
#include "torch/checks.h"

namespace fastvae {

struct MmdSpec {
  DistKernel kernel;
  std::vector<double> bw;  // the energy kernel ignores its bandwidth: one term
  bool sample_prior;       // y None with a kernel other than rbf: N prior samples from the seed's stream
};

inline DistKernel parse_kernel(const char* op, c10::string_view k) {
  if (k == "rbf") return DistKernel::Rbf;
  if (k == "imq") return DistKernel::Imq;
  if (k == "laplacian") return DistKernel::Laplacian;
  if (k == "energy") return DistKernel::Energy;
  TORCH_CHECK_VALUE(false, "fastvae.", op, ": kernel must be one of rbf, imq, laplacian, energy; got ",
                    std::string(k));
}

// The samples are indexed by int32 in places (permutations, CUDA sorts): fewer than 2^31 per set.
constexpr int64_t kMaxSamples = (int64_t(1) << 31) - 1;

// mmd and mmd_backward: x (B, N, d) floating, y (B, M, d) like x or None, seed (a one-element int64 tensor on
// x's device) or None, bandwidths positive and finite.
inline MmdSpec mmd_spec(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y,
                        const std::optional<at::Tensor>& seed, c10::string_view kernel,
                        at::ArrayRef<double> bandwidth, bool unbiased) {
  check_float(op, x, "x");
  TORCH_CHECK_VALUE(x.dim() == 3, "fastvae.", op, ": x must have shape (B, N, d); got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1 && x.size(2) >= 1, "fastvae.", op,
                    ": x must have at least one sample and one dimension; got ", x.sizes());
  TORCH_CHECK_VALUE(!unbiased || x.size(1) >= 2, "fastvae.", op,
                    ": the unbiased estimator needs N >= 2 samples in x; got N = ", x.size(1));
  TORCH_CHECK_VALUE(x.size(1) <= kMaxSamples, "fastvae.", op, ": x must have fewer than 2^31 samples; got ",
                    x.size(1));
  MmdSpec s;
  s.kernel = parse_kernel(op, kernel);
  if (y) {
    check_like(op, x, "x", *y, "y");
    TORCH_CHECK_VALUE(y->dim() == 3 && y->size(0) == x.size(0) && y->size(2) == x.size(2), "fastvae.", op,
                      ": y must have shape (", x.size(0), ", M, ", x.size(2), "); got ", y->sizes());
    TORCH_CHECK_VALUE(y->size(1) >= (unbiased ? 2 : 1), "fastvae.", op, ": y needs M >= ", unbiased ? 2 : 1,
                      " sample(s); got M = ", y->size(1));
    TORCH_CHECK_VALUE(y->size(1) <= kMaxSamples, "fastvae.", op, ": y must have fewer than 2^31 samples; got ",
                      y->size(1));
  }
  TORCH_CHECK_VALUE(!bandwidth.empty(), "fastvae.", op, ": bandwidth must not be empty");
  for (double h : bandwidth)
    TORCH_CHECK_VALUE(h > 0 && std::isfinite(h), "fastvae.", op, ": bandwidth must be positive and finite; got ", h);
  if (s.kernel == DistKernel::Energy) s.bw = {1.0};
  else s.bw.assign(bandwidth.begin(), bandwidth.end());
  s.sample_prior = !y && s.kernel != DistKernel::Rbf;
  TORCH_CHECK_VALUE(!s.sample_prior || seed.has_value(), "fastvae.", op, ": y = None with kernel ",
                    std::string(kernel), " needs a seed (the prior samples are drawn from it)");
  // checked even where unused: a tensor of another device would send the call to that device's kernel
  if (seed) check_seed(op, *seed, x, "x");
  return s;
}

// sliced_wasserstein_projected(_backward): px (B, L, N) floating, py like px or None, p finite and >= 1.
inline void check_sw(const char* op, const at::Tensor& px, const std::optional<at::Tensor>& py, double p) {
  check_float(op, px, "px");
  TORCH_CHECK_VALUE(px.dim() == 3 && px.size(1) >= 1 && px.size(2) >= 1, "fastvae.", op,
                    ": px must have shape (B, L, N) with L, N >= 1; got ", px.sizes());
  TORCH_CHECK_VALUE(px.size(2) <= kMaxSamples, "fastvae.", op, ": px must have fewer than 2^31 samples; got N = ",
                    px.size(2));
  if (py) {
    check_like(op, px, "px", *py, "py");
    check_shape(op, *py, "py", px.sizes());
  }
  TORCH_CHECK_VALUE(p >= 1 && std::isfinite(p), "fastvae.", op, ": p must be finite and >= 1; got ", p);
}

// A sorting permutation saved by the forward: int32, px's shape and device. (That each row is a permutation
// of 0 .. N-1 is checked by the CPU backend; the CUDA kernel skips indices out of range instead, see schema.cpp.)
inline void check_perm(const char* op, const at::Tensor& px, const at::Tensor& perm, const char* name) {
  TORCH_CHECK_TYPE(perm.scalar_type() == at::kInt, "fastvae.", op, ": ", name, " must be an int32 tensor; got ",
                   perm.scalar_type());
  check_device(op, px, "px", perm, name);
  check_shape(op, perm, name, px.sizes());
}

inline void check_sw_backward(const char* op, const at::Tensor& grad, const at::Tensor& px,
                              const std::optional<at::Tensor>& py, const at::Tensor& perm_x,
                              const at::Tensor& perm_y, double p) {
  check_sw(op, px, py, p);
  check_grad(op, grad, "grad", {px.size(0)}, px, "px");
  check_perm(op, px, perm_x, "perm_x");
  if (py) check_perm(op, px, perm_y, "perm_y");
  else check_device(op, px, "px", perm_y, "perm_y");  // unused, but it takes part in the dispatch
}

template <class B>
struct DistanceOps {
  using Guard = typename B::Guard;

  // y for the prior of the non-rbf kernels: the stream of `seed` as (B, N, d), eps[(b N + j) d + k] = y[b, j, k],
  // drawn on x's device (no host synchronisation), in x's dtype
  static at::Tensor prior_samples(const at::Tensor& x, const at::Tensor& seed) {
    auto eps = at::empty(x.sizes(), x.options().dtype(at::kFloat));
    if (eps.numel() > 0) B::normals(eps, 0, seed);
    return eps.to(x.scalar_type());
  }

  // x and y contiguous in the compute dtype; y the prior samples where the kernel needs them
  static std::tuple<at::Tensor, std::optional<at::Tensor>> operands(const at::Tensor& x_,
                                                                    const std::optional<at::Tensor>& y_,
                                                                    const std::optional<at::Tensor>& seed,
                                                                    const MmdSpec& spec) {
    const auto ct = compute_type(x_.scalar_type());
    const auto x = x_.contiguous().to(ct);
    std::optional<at::Tensor> y;
    if (y_) y = y_->contiguous().to(ct);
    else if (spec.sample_prior) y = prior_samples(x, *seed);
    return {x, y};
  }

  template <class T>
  static MmdProblem<T> problem(const at::Tensor& x, const std::optional<at::Tensor>& y, const MmdSpec& spec,
                               bool unbiased) {
    return MmdProblem<T>{x.data_ptr<T>(), y ? y->data_ptr<T>() : nullptr, x.size(0), x.size(1),
                         y ? y->size(1) : x.size(1), x.size(2), spec.kernel, spec.bw.data(),
                         static_cast<int>(spec.bw.size()), unbiased};
  }

  static at::Tensor mmd(const at::Tensor& x_, const std::optional<at::Tensor>& y_,
                        const std::optional<at::Tensor>& seed, c10::string_view kernel,
                        at::ArrayRef<double> bandwidth, bool unbiased) {
    constexpr const char* op = "mmd";
    const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
    B::check_dtype(op, x_, "x");
    B::check_mmd(op, x_, y_, spec, false);
    Guard guard(x_);
    const auto [x, y] = operands(x_, y_, seed, spec);
    auto out = at::empty({x.size(0)}, x.options());
    B::dispatch(op, x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      B::mmd_fwd(op, problem<T>(x, y, spec, unbiased), out.template data_ptr<T>(), x);
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> mmd_backward(const at::Tensor& grad, const at::Tensor& x_,
                                                         const std::optional<at::Tensor>& y_,
                                                         const std::optional<at::Tensor>& seed,
                                                         c10::string_view kernel, at::ArrayRef<double> bandwidth,
                                                         bool unbiased, bool need_y) {
    constexpr const char* op = "mmd_backward";
    const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
    check_grad(op, grad, "grad", {x_.size(0)}, x_, "x");
    B::check_dtype(op, x_, "x");
    B::check_mmd(op, x_, y_, spec, true);
    Guard guard(x_);
    const auto [x, y] = operands(x_, y_, seed, spec);
    const auto g = grad.contiguous().to(x.scalar_type());
    auto grad_x = at::empty_like(x);
    auto grad_y = need_y && y_ ? at::empty_like(*y) : at::empty({0}, x.options());
    B::dispatch(op, x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      B::mmd_bwd(op, problem<T>(x, y, spec, unbiased), g.template data_ptr<T>(), grad_x.template data_ptr<T>(),
                 grad_y.numel() ? grad_y.template data_ptr<T>() : nullptr, x);
    });
    return {grad_x.to(x_.scalar_type()), need_y && y_ ? grad_y.to(y_->scalar_type()) : grad_y};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> sw_projected(const at::Tensor& px_,
                                                                     const std::optional<at::Tensor>& py_, double p) {
    constexpr const char* op = "sliced_wasserstein_projected";
    check_sw(op, px_, py_, p);
    B::check_dtype(op, px_, "px");
    B::check_sw(op, px_);
    Guard guard(px_);
    const auto ct = compute_type(px_.scalar_type());
    const auto px = px_.contiguous().to(ct);
    std::optional<at::Tensor> py;
    if (py_) py = py_->contiguous().to(ct);
    const int64_t Bn = px.size(0), L = px.size(1), N = px.size(2);
    const auto iopt = px.options().dtype(at::kInt);
    auto out = at::empty({Bn}, px.options());
    auto perm_x = at::empty({Bn, L, N}, iopt);
    auto perm_y = py ? at::empty({Bn, L, N}, iopt) : at::empty({0}, iopt);
    if (Bn > 0)
      B::dispatch(op, ct, [&](auto tag) {
        using T = decltype(tag);
        B::sw_fwd(op, px.template data_ptr<T>(), py ? py->template data_ptr<T>() : nullptr,
                  out.template data_ptr<T>(), perm_x.template data_ptr<int32_t>(),
                  py ? perm_y.template data_ptr<int32_t>() : nullptr, Bn, L, N, p, px);
      });
    return {out, perm_x, perm_y};
  }

  static std::tuple<at::Tensor, at::Tensor> sw_projected_backward(const at::Tensor& grad, const at::Tensor& px_,
                                                                  const std::optional<at::Tensor>& py_,
                                                                  const at::Tensor& perm_x_,
                                                                  const at::Tensor& perm_y_, double p, bool need_py) {
    constexpr const char* op = "sliced_wasserstein_projected_backward";
    check_sw_backward(op, grad, px_, py_, perm_x_, perm_y_, p);
    B::check_dtype(op, px_, "px");
    Guard guard(px_);
    const auto ct = compute_type(px_.scalar_type());
    const auto px = px_.contiguous().to(ct), perm_x = perm_x_.contiguous(), perm_y = perm_y_.contiguous();
    const auto g = grad.contiguous().to(ct);
    std::optional<at::Tensor> py;
    if (py_) py = py_->contiguous().to(ct);
    const int64_t Bn = px.size(0), L = px.size(1), N = px.size(2);
    B::check_permutations(op, perm_x, Bn * L, N, "perm_x");
    if (py) B::check_permutations(op, perm_y, Bn * L, N, "perm_y");
    // B::kZeroedGrads: the backend's kernel writes only the entries a (possibly invalid) permutation reaches
    auto make = [&](const at::Tensor& t) { return B::kZeroedGrads ? at::zeros_like(t) : at::empty_like(t); };
    auto gpx = make(px);
    auto gpy = need_py && py ? make(*py) : at::empty({0}, px.options());
    if (Bn > 0)
      B::dispatch(op, ct, [&](auto tag) {
        using T = decltype(tag);
        B::sw_bwd(op, g.template data_ptr<T>(), px.template data_ptr<T>(), py ? py->template data_ptr<T>() : nullptr,
                  perm_x.template data_ptr<int32_t>(), py ? perm_y.template data_ptr<int32_t>() : nullptr,
                  gpx.template data_ptr<T>(), gpy.numel() ? gpy.template data_ptr<T>() : nullptr, Bn, L, N, p);
      });
    return {gpx.to(px_.scalar_type()), need_py && py_ ? gpy.to(py_->scalar_type()) : gpy};
  }

  // (d, n) float32: column l the normalised eps[l d : (l + 1) d] of the seed's stream, drawn on the seed's device
  static at::Tensor random_directions(const at::Tensor& seed, int64_t d, int64_t n) {
    constexpr const char* op = "random_directions";
    check_seed(op, seed);
    TORCH_CHECK_VALUE(d >= 1 && n >= 1, "fastvae.", op, ": d and n must be >= 1; got d = ", d, ", n = ", n);
    Guard guard(seed);
    auto eps = at::empty({n, d}, seed.options().dtype(at::kFloat));
    B::normals(eps, 0, seed);
    // normalise in double: the directions are then correctly rounded unit vectors. The transpose and the rounding
    // to float in one copy (the values of .t().contiguous().to(kFloat), two passes and two allocations fewer)
    auto e = eps.to(at::kDouble);
    e.div_(e.norm(2, {1}, true));
    auto out = at::empty({d, n}, eps.options());
    out.t().copy_(e);
    return out;
  }
};

// Register every op of DistanceOps<B> under one dispatch key.
template <class B>
void register_distance_ops(torch::Library& m) {
  using O = DistanceOps<B>;
  m.impl("mmd", &O::mmd);
  m.impl("mmd_backward", &O::mmd_backward);
  m.impl("sliced_wasserstein_projected", &O::sw_projected);
  m.impl("sliced_wasserstein_projected_backward", &O::sw_projected_backward);
  m.impl("random_directions", &O::random_directions);
}

}  // namespace fastvae
