// The CPU backend of the discretized-logistic likelihoods: the kernel calls of LogisticOps<LogisticCpu> (ops.h) on
// the tables of csrc/cpu/logistic_kernels.h.
#include "cpu/logistic_kernels.h"
#include "torch/backend_cpu.h"
#include "torch/logistic/ops.h"

namespace fastvae {
namespace {

struct LogisticCpu : CpuBackend {
  static constexpr const char* kOp = "discretized_logistic_nll";

  // validate_x: one vectorised pass over x before the kernel (nothing computed when it finds a value off the grid);
  // returns the flat index of the first such value, or -1
  static int64_t logistic_fwd(const at::Tensor& x, const std::optional<at::Tensor>& lg, const at::Tensor& m,
                              const at::Tensor& ls, at::Tensor& res, const LogisticShape& sh, int n_bits,
                              bool validate_x) {
    int64_t bad = -1;
    dispatch(kOp, m.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const auto& k = cpu::logistic_kernels<T>();
      if (validate_x) bad = k.first_off_grid(in<T>(x), x.numel(), n_bits);
      if (bad < 0)
        k.fwd(in<T>(x), in<T>(lg), in<T>(m), in<T>(ls), out<T>(res), sh.rows, sh.D, sh.K, sh.x_rows, n_bits);
    });
    return bad;
  }
  static void logistic_bwd(const at::Tensor& g, const at::Tensor& x, const std::optional<at::Tensor>& lg,
                           const at::Tensor& m, const at::Tensor& ls, at::Tensor& g_lg, at::Tensor& g_m,
                           at::Tensor& g_ls, const LogisticShape& sh, int n_bits) {
    dispatch(kOp, m.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::logistic_kernels<T>().bwd(in<T>(g), in<T>(x), in<T>(lg), in<T>(m), in<T>(ls), out<T>(g_lg), out<T>(g_m),
                                     out<T>(g_ls), sh.rows, sh.D, sh.K, sh.x_rows, n_bits);
    });
  }
  // single_fwd_grad (K = 1, no logit_probs) or mix_fwd_grad after the same validate_x pass as logistic_fwd
  static int64_t logistic_fwd_grad(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& lg,
                                   const at::Tensor& m, const at::Tensor& ls, at::Tensor& res, at::Tensor& g_lg,
                                   at::Tensor& g_m, at::Tensor& g_ls, at::Tensor& bad, const LogisticShape& sh,
                                   int n_bits, bool validate_x) {
    int64_t first = -1;
    dispatch(op, m.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const auto& k = cpu::logistic_kernels<T>();
      if (validate_x) first = k.first_off_grid(in<T>(x), x.numel(), n_bits);
      if (first >= 0) return;
      if (lg)
        k.mix_fwd_grad(in<T>(x), in<T>(lg), in<T>(m), in<T>(ls), out<T>(res), out<T>(g_lg), out<T>(g_m),
                       out<T>(g_ls), sh.rows, sh.D, sh.K, sh.x_rows, n_bits, bad.data_ptr<int>());
      else
        k.single_fwd_grad(in<T>(x), in<T>(m), in<T>(ls), out<T>(res), out<T>(g_m), out<T>(g_ls), sh.rows, sh.D,
                          sh.x_rows, n_bits, bad.data_ptr<int>());
    });
    return first;
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  fastvae::register_logistic_ops<fastvae::LogisticCpu>(m);
  fastvae::register_logistic_with_grad_ops<fastvae::LogisticCpu>(m);
}
