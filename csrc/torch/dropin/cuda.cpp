// The CUDA backend of the drop-in ops: the launcher calls of DropinOps<DropinCuda> (ops.h) on the current stream of
// the inputs' device (csrc/cuda/dropin_kernels.h).
#include "cuda/dropin_kernels.h"
#include "torch/backend_cuda.h"
#include "torch/dropin/ops.h"

namespace fastvae {
namespace {

cuda::PeriodicArg per(const at::Tensor& t) { return {t.data_ptr(), t.numel()}; }
cuda::PeriodicArg per(const std::optional<at::Tensor>& t) {
  return t ? per(*t) : cuda::PeriodicArg{nullptr, 1};
}

struct DropinCuda : CudaBackend {
  static at::Tensor sums_workspace(const at::Tensor& ref, const DropinShape& sh) {
    return workspace(ref, cuda::dropin_workspace_bytes(sh.N, sh.row_len));
  }

  static void normal_nll_fwd(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& sp, at::Tensor& res,
                             int param, double floor, double cst, double factor, const DropinShape& sh) {
    auto ws = sums_workspace(x, sh);
    check_launch("dropin_normal_nll",
                 cuda::dropin_normal_nll_fwd(dtype_of(x), per(x), per(loc), per(sp), param, floor, cst, factor, sh.N,
                                             sh.row_len, out(res), ptr(ws), stream()));
  }
  static void normal_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& loc, const at::Tensor& sp,
                             at::Tensor& gx, at::Tensor& gl, at::Tensor& gs, int param, double floor, double factor,
                             const DropinShape& sh) {
    check_launch("dropin_normal_nll_backward",
                 cuda::dropin_normal_nll_bwd(dtype_of(x), in(g), per(x), per(loc), per(sp), param, floor, factor,
                                             sh.N, sh.row_len, out(gx), out(gl), out(gs), stream()));
  }
  static void normal_kl_fwd(const at::Tensor& lp, const at::Tensor& sp, const at::Tensor& lq, const at::Tensor& sq,
                            at::Tensor& res, double factor, const DropinShape& sh) {
    auto ws = sums_workspace(lp, sh);
    check_launch("dropin_normal_kl",
                 cuda::dropin_normal_kl_fwd(dtype_of(lp), per(lp), per(sp), per(lq), per(sq), factor, sh.N,
                                            sh.row_len, out(res), ptr(ws), stream()));
  }
  static void normal_kl_bwd(const at::Tensor& g, const at::Tensor& lp, const at::Tensor& sp, const at::Tensor& lq,
                            const at::Tensor& sq, at::Tensor& glp, at::Tensor& gsp, at::Tensor& glq, at::Tensor& gsq,
                            double factor, const DropinShape& sh) {
    check_launch("dropin_normal_kl_backward",
                 cuda::dropin_normal_kl_bwd(dtype_of(lp), in(g), per(lp), per(sp), per(lq), per(sq), factor, sh.N,
                                            sh.row_len, out(glp), out(gsp), out(glq), out(gsq), stream()));
  }
  static void normal_rsample_fwd(const at::Tensor& loc, const at::Tensor& scale, at::Tensor& z, int64_t k,
                                 const at::Tensor& seed) {
    check_launch("dropin_normal_rsample",
                 cuda::dropin_normal_rsample_fwd(dtype_of(loc), in(loc), in(scale), out(z), loc.numel(), k,
                                                 seed_ptr(seed), stream()));
  }
  static void normal_rsample_bwd(const at::Tensor& gz, at::Tensor& gl, at::Tensor& gs, int64_t numel, int64_t k,
                                 const at::Tensor& seed) {
    check_launch("dropin_normal_rsample_backward",
                 cuda::dropin_normal_rsample_bwd(dtype_of(gz), in(gz), out(gl), out(gs), numel, k, seed_ptr(seed),
                                                 stream()));
  }
  static void bce_fwd(const at::Tensor& l, const at::Tensor& y, const std::optional<at::Tensor>& w,
                      const std::optional<at::Tensor>& pw, at::Tensor& res, double factor, const DropinShape& sh) {
    auto ws = sums_workspace(l, sh);
    check_launch("dropin_bce_with_logits",
                 cuda::dropin_bce_fwd(dtype_of(l), per(l), per(y), per(w), per(pw), factor, sh.N, sh.row_len,
                                      out(res), ptr(ws), stream()));
  }
  static void bce_bwd(const at::Tensor& g, const at::Tensor& l, const at::Tensor& y, const std::optional<at::Tensor>& w,
                      const std::optional<at::Tensor>& pw, at::Tensor& gl, at::Tensor& gy, double factor,
                      const DropinShape& sh) {
    check_launch("dropin_bce_with_logits_backward",
                 cuda::dropin_bce_bwd(dtype_of(l), in(g), per(l), per(y), per(w), per(pw), factor, sh.N, sh.row_len,
                                      out(gl), out(gy), stream()));
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) { fastvae::register_dropin_ops<fastvae::DropinCuda>(m); }
