// The tensor checks and the dtype rule of every op family, shared by the CPU and CUDA backends (csrc/torch is the
// only code that knows torch). The public Python functions check arguments first, with messages that name them; these
// checks guard direct calls of torch.ops.fastvae.* (anyone can make them) and state the contract of each op:
// every tensor argument, incoming gradients and seeds included, is checked for dtype, device and shape before
// a kernel sees a pointer. A dtype error is a TypeError, any other bad argument a ValueError; each message
// names the op, the argument, what was expected and what was found.
#pragma once
#include <torch/extension.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "fastvae/types.h"

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

// The seed of a random op: a one-element int64 tensor on the device of the inputs. The kernels read it where it
// lives (a CPU kernel from host memory, a CUDA kernel from device memory): no op copies it to the host.
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

inline void check_n_samples(const char* op, std::optional<int64_t> k) {
  TORCH_CHECK_VALUE(!k.has_value() || *k >= 1, "fastvae.", op, ": n_samples must be >= 1 or None; got ",
                    k.value_or(0));
}

// v as Python's repr(float) writes it (the shortest digits that read back as v; positional for decimal
// exponents -4 to 15, else d.ddde+XX; a '.0' on an integer; nan, inf, -inf): for messages that must read as the
// Python ones.
inline std::string python_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);  // shortest round trip
  const std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  const bool neg = sci[0] == '-';
  std::string digits;
  for (size_t i = neg ? 1 : 0; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  const int exp10 = std::stoi(sci.substr(e + 1));
  const int decpt = exp10 + 1;  // v = 0.digits x 10^decpt
  const int n = static_cast<int>(digits.size());
  std::string out = neg ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) out += "0." + std::string(-decpt, '0') + digits;
    else if (decpt >= n) out += digits + std::string(decpt - n, '0') + ".0";
    else out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  } else {
    out += digits.substr(0, 1) + (n > 1 ? "." + digits.substr(1) : "") + "e" + (exp10 < 0 ? "-" : "+");
    const std::string mag = std::to_string(exp10 < 0 ? -exp10 : exp10);
    out += (mag.size() < 2 ? "0" : "") + mag;
  }
  return out;
}

// The one dtype rule: float64 data is computed (and reduced) in float64, every other floating dtype in float32
// (the per-sample losses and the sums of every op of 16-bit inputs).
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The main floating operand of an op: floating, of a dtype the backend's kernels are built for.
template <class B>
void check_main(const char* op, const at::Tensor& t, const char* name) {
  check_float(op, t, name);
  B::check_dtype(op, t, name);
}

inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// (rows, D) view of a tensor whose first dim is the sample dim.
inline int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
// (0 when there are no rows: the feature dims of an empty tensor may multiply past int64)
inline int64_t per_row(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / std::max<int64_t>(1, t.size(0)); }

}  // namespace fastvae
