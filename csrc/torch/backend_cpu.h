// What the CPU backends of every op family share: the dtype dispatch onto the CPU kernel tables (csrc/cpu), raw
// pointers of prepared tensors, the seed's key and the raw normal stream. A family's backend
// (csrc/torch/<family>/cpu.cpp) derives from CpuBackend and adds only its kernel calls (the tables of its
// csrc/cpu/<family>_kernels.h).
#pragma once
#include "cpu/common.h"
#include "torch/checks.h"

namespace fastvae {

template <class T>
const T* in(const at::Tensor& t) { return t.data_ptr<T>(); }
template <class T>
const T* in(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }
template <class T>
T* out(at::Tensor& t) { return t.numel() ? t.data_ptr<T>() : nullptr; }

struct CpuBackend {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };

  // Calls f(float{}) or f(double{}) by dtype: the element types the CPU kernels are built for.
  template <class F>
  static void dispatch(const char* op, at::ScalarType t, const F& f) {
    if (t == at::kFloat) f(float{});
    else if (t == at::kDouble) f(double{});
    else TORCH_CHECK_TYPE(false, "fastvae.", op, ": the CPU kernels take float32 or float64; got ", t,
                          " (the public functions compute 16-bit inputs in float32)");
  }
  static void check_dtype(const char* op, const at::Tensor& t, const char*) { dispatch(op, t.scalar_type(), [](auto) {}); }

  // The seed's value: the CPU kernels take it as the Philox key (a CPU tensor: no device copy).
  static uint64_t seed_key(const at::Tensor& seed) { return static_cast<uint64_t>(seed.item<int64_t>()); }

  // out (float32) = eps[start .. start + out.numel()) of the seed's stream (cpu/common.h)
  static void normals(at::Tensor& out, int64_t start, const at::Tensor& seed) {
    cpu::normal_stream().normals(out.data_ptr<float>(), start, out.numel(), seed_key(seed));
  }
};

}  // namespace fastvae
