// The reduction argument of the loss ops (gaussian_nll, bernoulli_nll, kl_normal, discretized_logistic_nll and
// their backwards): the public functions' "none" / "sum" / "mean" done inside the op, so that a reduced loss is not
// a second torch op after the kernel (issue 25, the fixed cost of a call).
#pragma once
#include <algorithm>
#include <limits>
#include <vector>

#include "torch/checks.h"

namespace fastvae {

// The reduction of a loss op over its per-sample values ((B,) or (k, B)): 0 "none", 1 "sum", 2 "mean" (the public
// functions' reduction, done here so that "mean" is not a second op after the kernel).
enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2 };

inline void check_reduction(const char* op, int64_t r) {
  TORCH_CHECK_VALUE(r >= kNone && r <= kMean, "fastvae.", op, ": reduction must be 0 (none), 1 (sum) or 2 (mean); ",
                    "got ", r);
}

// The reduced loss: out itself for "none", else a 0-dim tensor of out's dtype. On the CPU a loop over the B (or k B)
// values in double (no second op); on another device ATen's sum / mean.
inline at::Tensor reduce_rows(const at::Tensor& out, int64_t r) {
  if (r == kNone) return out;
  if (!out.is_cpu()) return r == kSum ? out.sum() : out.mean();
  const int64_t n = out.numel();
  double acc = 0.0;
  if (out.scalar_type() == at::kDouble) {
    const double* p = out.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) acc += p[i];
  } else {
    const float* p = out.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) acc += p[i];
  }
  if (r == kMean) acc = n > 0 ? acc / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  return at::scalar_tensor(acc, out.options());
}

// The shape of the incoming gradient of a loss op's backward: the per-sample shape, or () when reduced.
inline std::vector<int64_t> grad_shape(const std::vector<int64_t>& per_sample, int64_t r) {
  return r == kNone ? per_sample : std::vector<int64_t>{};
}

// The per-sample gradient (contiguous, in the accumulation dtype acc) from the incoming one: itself for "none",
// else the 0-dim gradient spread over the samples (divided by their number for "mean").
inline at::Tensor rows_grad(const at::Tensor& g, const std::vector<int64_t>& per_sample, int64_t r,
                            at::ScalarType acc) {
  if (r == kNone) return g.contiguous().to(acc);
  int64_t n = 1;
  for (auto s : per_sample) n *= s;
  if (!g.is_cpu()) {
    auto v = g.to(acc);
    return (r == kMean ? v / static_cast<double>(std::max<int64_t>(n, 1)) : v).expand(per_sample).contiguous();
  }
  const double v = g.item<double>() / (r == kMean ? static_cast<double>(std::max<int64_t>(n, 1)) : 1.0);
  return at::full(per_sample, v, g.options().dtype(acc));
}

}  // namespace fastvae
