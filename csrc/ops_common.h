// Tensor checks and shape logic shared by the CPU and CUDA bindings (the only code besides ops*.cpp that
// knows torch). The public Python functions check arguments first, with messages that name them; these
// checks guard direct calls of torch.ops.fastvae.* and state the contract of each op.
#pragma once
#include <torch/extension.h>

#include <optional>

#include "fastvae/common.h"

namespace fastvae {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastvae: ", name, " must be a floating-point tensor; got ",
              t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.device() == b.device(), "fastvae: ", nb, " must be on the device of ", na, " (", a.device(), "); got ",
              b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastvae: ", nb, " must have the dtype of ", na, " (",
              a.scalar_type(), "); got ", b.scalar_type());
}

// Calls f(float{}) or f(double{}) by dtype: the element types the CPU kernels are built for.
template <class F>
void dispatch_cpu(at::ScalarType t, const F& f) {
  if (t == at::kFloat) f(float{});
  else if (t == at::kDouble) f(double{});
  else TORCH_CHECK(false, "fastvae: the CPU kernels take float32 or float64; got ", t);
}

// The per-sample reductions accumulate (and return) float32 for 16-bit inputs, float64 for float64.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, "fastvae: seed must be a one-element int64 tensor");
}

inline void check_seed(const at::Tensor& seed, const at::Tensor& ref) {
  check_seed(seed);
  TORCH_CHECK(seed.device() == ref.device(), "fastvae: seed must be on the device of the inputs (", ref.device(),
              "); got ", seed.device());
}

// The seed's value on the host (a device-to-host copy for a CUDA seed: such an op cannot be graph-captured).
inline uint64_t seed_value(const at::Tensor& seed) {
  check_seed(seed);
  return static_cast<uint64_t>(seed.cpu().item<int64_t>());
}

// (rows, D) view of a tensor whose first dim is the sample dim.
inline int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
inline int64_t per_row(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / std::max<int64_t>(1, t.size(0)); }

// Likelihood shapes: x (B, *F); the main operand (mean or logits) is x's shape or (k, B, *F).
struct LikShape {
  int64_t rows, D, x_rows;
  std::vector<int64_t> out_shape;  // (B,) or (k, B)
};

inline LikShape likelihood_shape(const at::Tensor& x, const at::Tensor& main, const char* main_name) {
  TORCH_CHECK(x.dim() >= 1, "fastvae: x must have a batch dimension");
  const bool sampled = main.dim() == x.dim() + 1;
  TORCH_CHECK(main.dim() == x.dim() || sampled, "fastvae: ", main_name, " must have the shape of x or (k, *x.shape)");
  for (int64_t i = 0; i < x.dim(); ++i)
    TORCH_CHECK(main.size(i + (sampled ? 1 : 0)) == x.size(i), "fastvae: ", main_name, " ", main.sizes(),
                " does not match x ", x.sizes());
  LikShape s;
  s.x_rows = x.size(0);
  s.D = x.numel() / std::max<int64_t>(1, x.size(0));
  s.rows = sampled ? main.size(0) * x.size(0) : x.size(0);
  if (sampled) s.out_shape = {main.size(0), x.size(0)};
  else s.out_shape = {x.size(0)};
  return s;
}

// A secondary operand (log-variance, prior parameter) against a main operand of shape (rows, *F):
// absent, F-shaped (per feature) or the main operand's shape (per element).
inline Layout operand_layout(const std::optional<at::Tensor>& p, const at::Tensor& main, int64_t feature_dims,
                             const char* name) {
  if (!p.has_value()) return Layout::None;
  const auto& t = *p;
  if (t.sizes() == main.sizes()) return Layout::Full;
  const auto fs = main.sizes().slice(main.dim() - feature_dims);
  TORCH_CHECK(t.sizes() == fs, "fastvae: ", name, " must have shape ", main.sizes(), " or ", fs, "; got ", t.sizes());
  return Layout::PerFeature;
}

}  // namespace fastvae
