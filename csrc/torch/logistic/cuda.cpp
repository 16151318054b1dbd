// The CUDA backend of the discretized-logistic likelihoods: the launcher calls of LogisticOps<LogisticCuda> (ops.h)
// on the current stream of the inputs' device (csrc/cuda/logistic_kernels.h).
#include "cuda/logistic_kernels.h"
#include "torch/backend_cuda.h"
#include "torch/logistic/ops.h"

namespace fastvae {
namespace {

struct LogisticCuda : CudaBackend {
  // validate_x: the kernel lowers a device int64 to the index of each value of x off the grid while it reads x;
  // one synchronising read of it after the launch. Returns the flat index of the first such value, or -1.
  static int64_t logistic_fwd(const at::Tensor& x, const std::optional<at::Tensor>& lg, const at::Tensor& m,
                              const at::Tensor& ls, at::Tensor& res, const LogisticShape& sh, int n_bits,
                              bool validate_x) {
    auto ws = workspace(m, cuda::logistic_workspace_bytes(sh.rows, sh.D));
    at::Tensor first;
    if (validate_x) first = at::empty({1}, m.options().dtype(at::kLong));
    check_launch("discretized_logistic_nll",
                 cuda::logistic_fwd(dtype_of(m), in(x), in(lg), in(m), in(ls), out(res), sh.rows, sh.D, sh.K,
                                    sh.x_rows, n_bits, ptr(ws), stream(),
                                    validate_x ? first.data_ptr<int64_t>() : nullptr));
    if (!validate_x) return -1;
    const int64_t i = first.item<int64_t>();
    return i >= 0 && i < x.numel() ? i : -1;
  }
  static void logistic_bwd(const at::Tensor& g, const at::Tensor& x, const std::optional<at::Tensor>& lg,
                           const at::Tensor& m, const at::Tensor& ls, at::Tensor& g_lg, at::Tensor& g_m,
                           at::Tensor& g_ls, const LogisticShape& sh, int n_bits) {
    check_launch("discretized_logistic_nll_backward",
                 cuda::logistic_bwd(dtype_of(m), in(g), in(x), in(lg), in(m), in(ls), out(g_lg), out(g_m),
                                    out(g_ls), sh.rows, sh.D, sh.K, sh.x_rows, n_bits, stream()));
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) { fastvae::register_logistic_ops<fastvae::LogisticCuda>(m); }
