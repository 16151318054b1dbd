// What the CUDA backends of every op family share: the device guard, the current stream, the element type of a
// tensor, the seed as a device pointer (the kernels read it there: no host synchronisation, graph-capturable), the
// raw normal stream, workspaces from torch's caching allocator and the one check of a launcher's error code. A
// family's backend (csrc/torch/<family>/cuda.cpp) derives from CudaBackend and adds only its launcher calls (the
// ones its csrc/cuda/<family>_kernels.h declares).
#pragma once
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/normals.h"
#include "fastvae/types.h"
#include "torch/checks.h"

namespace fastvae {

inline const void* in(const at::Tensor& t) { return t.data_ptr(); }
inline const void* in(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }
inline void* out(at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

struct CudaBackend {
  struct Guard {
    explicit Guard(const at::Tensor& t) : g(t.device()) {}
    c10::cuda::CUDAGuard g;
  };

  static void check_dtype(const char* op, const at::Tensor& t, const char* name) {
    const auto s = t.scalar_type();
    TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, "fastvae.", op,
                     ": ", name, " must be float32, float64, float16 or bfloat16 on CUDA; got ", s);
  }

  static DType dtype_of(const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kFloat: return DType::Float32;
      case at::kDouble: return DType::Float64;
      case at::kHalf: return DType::Float16;
      case at::kBFloat16: return DType::BFloat16;
      default: TORCH_CHECK(false, "fastvae: the CUDA kernels take float32, float64, float16 or bfloat16; got ",
                           t.scalar_type());
    }
  }

  // Calls f(float{}) or f(double{}): the element types of the kernels that compute in compute_type().
  template <class F>
  static void dispatch(const char*, at::ScalarType t, const F& f) {
    if (t == at::kDouble) f(double{});
    else f(float{});
  }

  static const int64_t* seed_ptr(const at::Tensor& seed) { return seed.data_ptr<int64_t>(); }
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

  // a device buffer of `bytes` bytes on ref's device (zeroed where a kernel expects it)
  static at::Tensor workspace(const at::Tensor& ref, size_t bytes, bool zeroed = false) {
    const auto o = ref.options().dtype(at::kByte);
    const int64_t n = static_cast<int64_t>(bytes);
    return zeroed ? at::zeros({n}, o) : at::empty({n}, o);
  }
  static void* ptr(at::Tensor& ws) { return ws.numel() ? ws.data_ptr() : nullptr; }

  // A launcher's error code (a cudaError_t as int, csrc/cuda/<family>_kernels.h): 0, or the op fails with the
  // CUDA runtime's message.
  static void check_launch(const char* op, int err) {
    TORCH_CHECK(err == 0, "fastvae.", op, ": CUDA error ", err, " (",
                cudaGetErrorString(static_cast<cudaError_t>(err)), ")");
  }

  // out (float32) = eps[start .. start + out.numel()) of the seed's stream, drawn on the device (cuda/normals.h)
  static void normals(at::Tensor& out, int64_t start, const at::Tensor& seed) {
    check_launch("normals", cuda::normals(out.data_ptr<float>(), start, out.numel(), seed_ptr(seed), stream()));
  }
};

}  // namespace fastvae
