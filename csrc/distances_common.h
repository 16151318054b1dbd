// Checks and argument decoding of the distance ops, shared by the CPU and CUDA bindings.
#pragma once
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

inline DistKernel parse_kernel(c10::string_view k) {
  if (k == "rbf") return DistKernel::Rbf;
  if (k == "imq") return DistKernel::Imq;
  if (k == "laplacian") return DistKernel::Laplacian;
  if (k == "energy") return DistKernel::Energy;
  TORCH_CHECK(false, "fastvae: kernel must be one of rbf, imq, laplacian, energy; got ", std::string(k));
}

inline MmdSpec mmd_spec(const at::Tensor& x, const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& seed,
                        c10::string_view kernel, at::ArrayRef<double> bandwidth, bool unbiased) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 3, "fastvae: x must have shape (B, N, d); got ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1 && x.size(2) >= 1, "fastvae: x must have at least one sample and one dimension; got ",
              x.sizes());
  TORCH_CHECK(!unbiased || x.size(1) >= 2, "fastvae: the unbiased estimator needs N >= 2 samples in x; got ",
              x.size(1));
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31), "fastvae: x has too many samples");
  MmdSpec s;
  s.kernel = parse_kernel(kernel);
  if (y) {
    check_same(x, *y, "x", "y");
    TORCH_CHECK(y->dim() == 3 && y->size(0) == x.size(0) && y->size(2) == x.size(2), "fastvae: y must have shape (",
                x.size(0), ", M, ", x.size(2), "); got ", y->sizes());
    TORCH_CHECK(y->size(1) >= (unbiased ? 2 : 1), "fastvae: y needs ", unbiased ? 2 : 1, " sample(s); got ",
                y->size(1));
  }
  TORCH_CHECK(!bandwidth.empty(), "fastvae: bandwidth must not be empty");
  for (double h : bandwidth) TORCH_CHECK(h > 0, "fastvae: bandwidth must be > 0; got ", h);
  if (s.kernel == DistKernel::Energy) s.bw = {1.0};
  else s.bw.assign(bandwidth.begin(), bandwidth.end());
  s.sample_prior = !y && s.kernel != DistKernel::Rbf;
  TORCH_CHECK(!s.sample_prior || seed.has_value(), "fastvae: mmd with y = None and kernel ", std::string(kernel),
              " needs a seed (prior samples)");
  if (seed) check_seed(*seed);
  return s;
}

inline void check_sw(const at::Tensor& px, const std::optional<at::Tensor>& py, double p) {
  check_float(px, "px");
  TORCH_CHECK(px.dim() == 3 && px.size(1) >= 1 && px.size(2) >= 1, "fastvae: px must have shape (B, L, N); got ",
              px.sizes());
  TORCH_CHECK(px.size(2) < (int64_t(1) << 31), "fastvae: px has too many samples");
  if (py) {
    check_same(px, *py, "px", "py");
    TORCH_CHECK(py->sizes() == px.sizes(), "fastvae: py must have the shape of px ", px.sizes(), "; got ", py->sizes());
  }
  TORCH_CHECK(p >= 1, "fastvae: p must be >= 1; got ", p);
}

inline void check_perm(const at::Tensor& px, const at::Tensor& perm, const char* name) {
  TORCH_CHECK(perm.scalar_type() == at::kInt && perm.sizes() == px.sizes() && perm.device() == px.device(),
              "fastvae: ", name, " must be an int32 tensor of shape ", px.sizes(), " on ", px.device());
}

}  // namespace fastvae
