// The CPU backend of the Gaussian ops: the kernel calls of Ops<GaussianCpu> (ops.h) on the tables of
// csrc/cpu/gaussian_kernels.h.
#include "cpu/gaussian_kernels.h"
#include "torch/backend_cpu.h"
#include "torch/gaussian/ops.h"

namespace fastvae {
namespace {

// Calls of the CPU kernel tables on prepared (contiguous, checked) tensors; see ops.h.
struct GaussianCpu : CpuBackend {
  // the dtype was checked by the op (check_main) before any kernel call below
  static constexpr const char* kOp = "cpu";
  static void check_tril_dim(const char*, int64_t) {}

  static void reparam_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, int64_t k,
                          const at::Tensor& seed) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().reparam_fwd(in<T>(mu), in<T>(lv), out<T>(z), mu.numel(), k, seed_key(seed));
    });
  }
  static void reparam_bwd(const at::Tensor& gz, const at::Tensor& lv, at::Tensor& grad_mu, at::Tensor& grad_lv,
                          int64_t k, const at::Tensor& seed) {
    dispatch(kOp, lv.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().reparam_bwd(in<T>(gz), in<T>(lv), out<T>(grad_mu), out<T>(grad_lv), lv.numel(), k,
                                             seed_key(seed));
    });
  }
  static void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, at::Tensor& kl,
                             const at::Tensor& seed) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().reparam_kl_fwd(in<T>(mu), in<T>(lv), out<T>(z), out<T>(kl), rows_of(mu), per_row(mu),
                                                seed_key(seed));
    });
  }
  static void reparam_kl_bwd(const at::Tensor& gz, const at::Tensor& gkl, const at::Tensor& mu, const at::Tensor& lv,
                             at::Tensor& grad_mu, at::Tensor& grad_lv, const at::Tensor& seed) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().reparam_kl_bwd(in<T>(gz), in<T>(gkl), in<T>(mu), in<T>(lv), out<T>(grad_mu),
                                                out<T>(grad_lv), rows_of(mu), per_row(mu), seed_key(seed));
    });
  }
  static void tril_fwd(const at::Tensor& mu, const at::Tensor& L, at::Tensor& z, at::Tensor& log_q, int64_t k,
                       const at::Tensor& seed) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().tril_fwd(in<T>(mu), in<T>(L), out<T>(z), out<T>(log_q), mu.size(0), mu.size(1), k,
                                          seed_key(seed));
    });
  }
  static void tril_bwd(const at::Tensor& gz, const at::Tensor& glq, const at::Tensor& L, at::Tensor& grad_mu,
                       at::Tensor& grad_L, int64_t k, const at::Tensor& seed) {
    dispatch(kOp, L.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().tril_bwd(in<T>(gz), in<T>(glq), in<T>(L), out<T>(grad_mu), out<T>(grad_L), L.size(0),
                                          L.size(1), k, seed_key(seed));
    });
  }
  static void gaussian_nll_fwd(const at::Tensor& x, const at::Tensor& mean, const std::optional<at::Tensor>& lv,
                               Layout layout, at::Tensor& res, const LikShape& sh) {
    dispatch(kOp, mean.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().gaussian_nll_fwd(in<T>(x), in<T>(mean), in<T>(lv), layout,
                                                  out<T>(res), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void gaussian_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean,
                               const std::optional<at::Tensor>& lv, Layout layout, at::Tensor& grad_mean,
                               at::Tensor& grad_lv, const LikShape& sh) {
    dispatch(kOp, mean.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().gaussian_nll_bwd(in<T>(g), in<T>(x), in<T>(mean), in<T>(lv), layout, out<T>(grad_mean),
                                                  out<T>(grad_lv), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void bernoulli_nll_fwd(const at::Tensor& logits, const at::Tensor& x, at::Tensor& res, const LikShape& sh) {
    dispatch(kOp, logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().bernoulli_nll_fwd(in<T>(logits), in<T>(x), out<T>(res), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void bernoulli_nll_bwd(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& x, at::Tensor& grad,
                                const LikShape& sh) {
    dispatch(kOp, logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().bernoulli_nll_bwd(in<T>(g), in<T>(logits), in<T>(x),
                                                   out<T>(grad), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void kl_normal_fwd(const at::Tensor& mu, const at::Tensor& lv, const std::optional<at::Tensor>& mp, Layout lm,
                            const std::optional<at::Tensor>& lp, Layout ll, at::Tensor& res) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().kl_normal_fwd(in<T>(mu), in<T>(lv), in<T>(mp), lm, in<T>(lp), ll, out<T>(res),
                                               rows_of(mu), per_row(mu));
    });
  }
  static void kl_normal_bwd(const at::Tensor& g, const at::Tensor& mu, const at::Tensor& lv,
                            const std::optional<at::Tensor>& mp, Layout lm, const std::optional<at::Tensor>& lp,
                            Layout ll, at::Tensor& g_mu, at::Tensor& g_lv, at::Tensor& g_mp, at::Tensor& g_lp) {
    dispatch(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gaussian_kernels<T>().kl_normal_bwd(in<T>(g), in<T>(mu), in<T>(lv), in<T>(mp), lm, in<T>(lp), ll,
                                               out<T>(g_mu), out<T>(g_lv), out<T>(g_mp), out<T>(g_lp), rows_of(mu),
                                               per_row(mu));
    });
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) { fastvae::register_gaussian_ops<fastvae::GaussianCpu>(m); }
