// The CUDA backend of the sample-distance ops: the launcher calls of DistanceOps<DistancesCuda> (ops.h) on the
// current stream of the inputs' device (csrc/cuda/distances_kernels.h), workspaces from torch's caching allocator,
// and the limits of the CUDA kernels. 16-bit inputs are computed in float32 (compute_type), as on CPU.
#include "cuda/distances_kernels.h"
#include "torch/backend_cuda.h"
#include "torch/distances/ops.h"

namespace fastvae {
namespace {

struct DistancesCuda : CudaBackend {
  // The kernel cannot check a permutation without a host synchronisation: it skips indices out of range and
  // writes into zeroed gradients (wrong input, defined output; see schema.cpp).
  static constexpr bool kZeroedGrads = true;
  static void check_permutations(const char*, const at::Tensor&, int64_t, int64_t, const char*) {}

  // The limits of the CUDA kernels (grid dimensions, gradient rows in registers), checked before any allocation.
  static void check_mmd(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y, const MmdSpec&,
                        bool backward) {
    TORCH_CHECK_VALUE(cuda::mmd_grid_fits(x.size(1), y ? y->size(1) : 0), "fastvae.", op,
                      ": on CUDA fewer than 2^31 tiles of 64 x 64 pairs; got N = ", x.size(1), ", M = ",
                      y ? y->size(1) : 0);
    TORCH_CHECK_VALUE(!backward || x.size(2) <= cuda::kMaxDim, "fastvae.", op, ": on CUDA d <= ", cuda::kMaxDim,
                      "; got d = ", x.size(2));
  }
  static void check_sw(const char* op, const at::Tensor& px) {
    TORCH_CHECK_VALUE(px.numel() < (int64_t(1) << 31), "fastvae.", op,
                      ": on CUDA px must have fewer than 2^31 elements; got shape ", px.sizes());
  }

  template <class T>
  static void mmd_fwd(const char* op, const MmdProblem<T>& pr, T* out, const at::Tensor& ref) {
    auto ws = workspace(ref, cuda::mmd_workspace_bytes(pr));
    check_launch(op, cuda::mmd_forward(pr, out, ptr(ws), stream()));
  }
  template <class T>
  static void mmd_bwd(const char* op, const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y,
                      const at::Tensor& ref) {
    auto ws = workspace(ref, cuda::mmd_workspace_bytes(pr));
    check_launch(op, cuda::mmd_backward(pr, g, grad_x, grad_y, ptr(ws), stream()));
  }
  template <class T>
  static void sw_fwd(const char* op, const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, int64_t B,
                     int64_t L, int64_t N, double p, const at::Tensor& ref) {
    const size_t bytes = cuda::sw_workspace_bytes<T>(B, L, N, py != nullptr);
    auto ws = workspace(ref, bytes);
    check_launch(op, cuda::sw_forward<T>(px, py, out, perm_x, perm_y, B, L, N, p, ptr(ws), bytes, stream()));
  }
  template <class T>
  static void sw_bwd(const char* op, const T* g, const T* px, const T* py, const int32_t* perm_x,
                     const int32_t* perm_y, T* gpx, T* gpy, int64_t B, int64_t L, int64_t N, double p) {
    check_launch(op, cuda::sw_backward<T>(g, px, py, perm_x, perm_y, gpx, gpy, B, L, N, p, stream()));
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) { fastvae::register_distance_ops<fastvae::DistancesCuda>(m); }
