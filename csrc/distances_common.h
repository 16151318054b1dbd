// Checks and argument decoding of the distance ops, shared by the CPU and CUDA bindings (one copy of each op's
// contract; messages as in ops_common.h).
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "fastvae/distances.h"
#include "ops_common.h"

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
// of 0 .. N-1 is checked by the CPU binding; the CUDA kernel skips indices out of range instead, see
// ops_distances.cpp.)
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

}  // namespace fastvae
