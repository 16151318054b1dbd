// Tensor checks and shape logic shared by the CPU and CUDA bindings (the only code besides ops*.cpp that
// knows torch). The public Python functions check arguments first, with messages that name them; these
// checks guard direct calls of torch.ops.fastvae.* (anyone can make them) and state the contract of each op:
// every tensor argument, incoming gradients and seeds included, is checked for dtype, device and shape before
// a kernel sees a pointer. A dtype error is a TypeError, any other bad argument a ValueError; each message
// names the op, the argument, what was expected and what was found.
#pragma once
#include <torch/extension.h>

#include <limits>
#include <optional>

#include "fastvae/common.h"

namespace fastvae {

inline void check_float(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastvae.", op, ": ", name,
                   " must be a floating-point tensor; got ", t.scalar_type());
}

// t lives where ref lives: a kernel given a pointer of another device would read host memory on the GPU (or
// the reverse). The dispatcher picks the CUDA kernel when any argument is a CUDA tensor, so the CUDA
// implementations see CPU tensors unless this is checked.
inline void check_device(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                         const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastvae.", op, ": ", name, " must be on the device of ", ref_name,
                    " (", ref.device(), "); got ", t.device());
}

// t is on ref's device and has ref's dtype.
inline void check_like(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* name) {
  check_device(op, ref, ref_name, t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastvae.", op, ": ", name, " must have the dtype of ",
                   ref_name, " (", ref.scalar_type(), "); got ", t.scalar_type());
}

inline void check_shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "fastvae.", op, ": ", name, " must have shape ", expected, "; got ",
                    t.sizes());
}

// An incoming gradient of a backward op: floating, on the device of the forward's inputs, of the forward
// output's shape (the kernels index it by the forward shapes: any other shape would read out of bounds).
// Its dtype may differ (it is converted to the accumulation dtype).
inline void check_grad(const char* op, const at::Tensor& g, const char* name, at::IntArrayRef expected,
                       const at::Tensor& ref, const char* ref_name) {
  check_float(op, g, name);
  check_device(op, ref, ref_name, g, name);
  check_shape(op, g, name, expected);
}

// The seed of a random op: a one-element int64 tensor on the device of the inputs (the CUDA kernels read it
// from device memory).
inline void check_seed(const char* op, const at::Tensor& seed) {
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "fastvae.", op, ": seed must be an int64 tensor; got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "fastvae.", op, ": seed must have one element; got shape ", seed.sizes());
}

inline void check_seed(const char* op, const at::Tensor& seed, const at::Tensor& ref, const char* ref_name) {
  check_seed(op, seed);
  check_device(op, ref, ref_name, seed, "seed");
}

// eps[start .. start + n) of a seed's stream (the test hooks): a range of non-negative flat indices.
inline void check_stream_range(const char* op, int64_t start, int64_t n) {
  TORCH_CHECK_VALUE(start >= 0 && n >= 0 && start <= std::numeric_limits<int64_t>::max() - n, "fastvae.", op,
                    ": start and n must be >= 0 with start + n < 2^63; got start = ", start, ", n = ", n);
}

inline void check_normals(const char* op, const at::Tensor& seed, int64_t start, int64_t n) {
  check_seed(op, seed);
  check_stream_range(op, start, n);
}

inline void check_n_samples(const char* op, std::optional<int64_t> k) {
  TORCH_CHECK_VALUE(!k.has_value() || *k >= 1, "fastvae.", op, ": n_samples must be >= 1 or None; got ",
                    k.value_or(0));
}

// Calls f(float{}) or f(double{}) by dtype: the element types the CPU kernels are built for.
template <class F>
void dispatch_cpu(const char* op, at::ScalarType t, const F& f) {
  if (t == at::kFloat) f(float{});
  else if (t == at::kDouble) f(double{});
  else TORCH_CHECK_TYPE(false, "fastvae.", op, ": the CPU kernels take float32 or float64; got ", t,
                        " (the public functions compute 16-bit inputs in float32)");
}

// The per-sample reductions accumulate (and return) float32 for 16-bit inputs, float64 for float64.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The seed's value on the host (a device-to-host copy for a CUDA seed: such an op cannot be graph-captured).
// The caller has checked the seed (check_seed).
inline uint64_t seed_value(const at::Tensor& seed) { return static_cast<uint64_t>(seed.cpu().item<int64_t>()); }

// (rows, D) view of a tensor whose first dim is the sample dim.
inline int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
// (0 when there are no rows: the feature dims of an empty tensor may multiply past int64)
inline int64_t per_row(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / std::max<int64_t>(1, t.size(0)); }

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

// A secondary operand (log-variance, prior parameter) against a main operand of shape (rows, *F):
// absent, F-shaped (per feature) or the main operand's shape (per element); on main's device, of its dtype.
inline Layout operand_layout(const char* op, const std::optional<at::Tensor>& p, const at::Tensor& main,
                             const char* main_name, int64_t feature_dims, const char* name) {
  if (!p.has_value()) return Layout::None;
  const auto& t = *p;
  check_like(op, main, main_name, t, name);
  if (t.sizes() == main.sizes()) return Layout::Full;
  const auto fs = main.sizes().slice(main.dim() - feature_dims);
  TORCH_CHECK_VALUE(t.sizes() == fs, "fastvae.", op, ": ", name, " must have shape ", main.sizes(), " or ", fs,
                    "; got ", t.sizes());
  return Layout::PerFeature;
}

}  // namespace fastvae
