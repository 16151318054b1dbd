// The CUDA backend of the Gaussian ops: the launcher calls of Ops<GaussianCuda> (ops.h) on the current stream of
// the inputs' device (csrc/cuda/gaussian_kernels.h).
#include "cuda/gaussian_kernels.h"
#include "torch/backend_cuda.h"
#include "torch/gaussian/ops.h"

namespace fastvae {
namespace {

// The per-row reductions' workspace is zeroed (the kernels keep their tickets at zero between launches); the
// column workspace needs no initialisation.
struct GaussianCuda : CudaBackend {
  // the tril kernels keep eps (and grad_z) of one sample in shared memory: 2 * 4 * d bytes <= 48 KiB
  static void check_tril_dim(const char* op, int64_t d) {
    TORCH_CHECK_VALUE(d <= 6144, "fastvae.", op, ": scale_tril on CUDA supports d <= 6144; got d = ", d);
  }

  static void reparam_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, int64_t k,
                          const at::Tensor& seed) {
    check_launch("reparam_fwd",
                 cuda::reparam_fwd(dtype_of(mu), in(mu), in(lv), out(z), mu.numel(), k, seed_ptr(seed), stream()));
  }
  static void reparam_bwd(const at::Tensor& gz, const at::Tensor& lv, at::Tensor& grad_mu, at::Tensor& grad_lv,
                          int64_t k, const at::Tensor& seed) {
    check_launch("reparam_bwd",
                 cuda::reparam_bwd(dtype_of(lv), in(gz), in(lv), out(grad_mu), out(grad_lv), lv.numel(), k, seed_ptr(seed),
                      stream()));
  }
  static void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, at::Tensor& kl,
                             const at::Tensor& seed) {
    auto ws = workspace(mu, cuda::reduce_workspace_bytes(rows_of(mu), per_row(mu)), true);
    check_launch("reparam_kl_fwd",
                 cuda::reparam_kl_fwd(dtype_of(mu), in(mu), in(lv), out(z), out(kl), rows_of(mu), per_row(mu), seed_ptr(seed),
                         ptr(ws), stream()));
  }
  static void reparam_kl_bwd(const at::Tensor& gz, const at::Tensor& gkl, const at::Tensor& mu, const at::Tensor& lv,
                             at::Tensor& grad_mu, at::Tensor& grad_lv, const at::Tensor& seed) {
    check_launch("reparam_kl_bwd",
                 cuda::reparam_kl_bwd(dtype_of(mu), in(gz), in(gkl), in(mu), in(lv), out(grad_mu), out(grad_lv), rows_of(mu),
                         per_row(mu), seed_ptr(seed), stream()));
  }
  static void tril_fwd(const at::Tensor& mu, const at::Tensor& L, at::Tensor& z, at::Tensor& log_q, int64_t k,
                       const at::Tensor& seed) {
    check_launch("tril_fwd",
                 cuda::tril_fwd(dtype_of(mu), in(mu), in(L), out(z), out(log_q), mu.size(0), mu.size(1), k, seed_ptr(seed),
                   stream()));
  }
  static void tril_bwd(const at::Tensor& gz, const at::Tensor& glq, const at::Tensor& L, at::Tensor& grad_mu,
                       at::Tensor& grad_L, int64_t k, const at::Tensor& seed) {
    check_launch("tril_bwd",
                 cuda::tril_bwd(dtype_of(L), in(gz), in(glq), in(L), out(grad_mu), out(grad_L), L.size(0), L.size(1), k,
                   seed_ptr(seed), stream()));
  }
  static void gaussian_nll_fwd(const at::Tensor& x, const at::Tensor& mean, const std::optional<at::Tensor>& lv,
                               Layout layout, at::Tensor& res, const LikShape& sh) {
    auto ws = workspace(mean, cuda::reduce_workspace_bytes(sh.rows, sh.D), true);
    check_launch("gaussian_nll_fwd",
                 cuda::gaussian_nll_fwd(dtype_of(mean), in(x), in(mean), in(lv), layout, out(res), sh.rows, sh.D, sh.x_rows,
                           ptr(ws), stream()));
  }
  static void gaussian_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean,
                               const std::optional<at::Tensor>& lv, Layout layout, at::Tensor& grad_mean,
                               at::Tensor& grad_lv, const LikShape& sh) {
    auto ws = workspace(mean, cuda::col_workspace_bytes(sh.rows, sh.D, 1, dtype_of(mean)));
    check_launch("gaussian_nll_bwd",
                 cuda::gaussian_nll_bwd(dtype_of(mean), in(g), in(x), in(mean), in(lv), layout, out(grad_mean), out(grad_lv),
                           sh.rows, sh.D, sh.x_rows, ptr(ws), stream()));
  }
  static void bernoulli_nll_fwd(const at::Tensor& logits, const at::Tensor& x, at::Tensor& res, const LikShape& sh) {
    auto ws = workspace(logits, cuda::reduce_workspace_bytes(sh.rows, sh.D), true);
    check_launch("bernoulli_nll_fwd",
                 cuda::bernoulli_nll_fwd(dtype_of(logits), in(logits), in(x), out(res), sh.rows, sh.D, sh.x_rows, ptr(ws),
                            stream()));
  }
  static void bernoulli_nll_bwd(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& x, at::Tensor& grad,
                                const LikShape& sh) {
    check_launch("bernoulli_nll_bwd",
                 cuda::bernoulli_nll_bwd(dtype_of(logits), in(g), in(logits), in(x), out(grad), sh.rows, sh.D, sh.x_rows,
                            stream()));
  }
  static void kl_normal_fwd(const at::Tensor& mu, const at::Tensor& lv, const std::optional<at::Tensor>& mp, Layout lm,
                            const std::optional<at::Tensor>& lp, Layout ll, at::Tensor& res) {
    auto ws = workspace(mu, cuda::reduce_workspace_bytes(rows_of(mu), per_row(mu)), true);
    check_launch("kl_normal_fwd",
                 cuda::kl_normal_fwd(dtype_of(mu), in(mu), in(lv), in(mp), lm, in(lp), ll, out(res), rows_of(mu), per_row(mu),
                        ptr(ws), stream()));
  }
  static void kl_normal_bwd(const at::Tensor& g, const at::Tensor& mu, const at::Tensor& lv,
                            const std::optional<at::Tensor>& mp, Layout lm, const std::optional<at::Tensor>& lp,
                            Layout ll, at::Tensor& g_mu, at::Tensor& g_lv, at::Tensor& g_mp, at::Tensor& g_lp) {
    auto ws = workspace(mu, cuda::col_workspace_bytes(rows_of(mu), per_row(mu), 2, dtype_of(mu)));
    check_launch("kl_normal_bwd",
                 cuda::kl_normal_bwd(dtype_of(mu), in(g), in(mu), in(lv), in(mp), lm, in(lp), ll, out(g_mu), out(g_lv),
                        out(g_mp), out(g_lp), rows_of(mu), per_row(mu), ptr(ws), stream()));
  }};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) { fastvae::register_gaussian_ops<fastvae::GaussianCuda>(m); }
