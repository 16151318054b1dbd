// The CPU backend of the drop-in ops: the kernel calls of DropinOps<DropinCpu> (ops.h) on the tables of
// csrc/cpu/dropin_kernels.h.
#include "cpu/dropin_kernels.h"
#include "torch/backend_cpu.h"
#include "torch/dropin/ops.h"

namespace fastvae {
namespace {

template <class T>
cpu::Periodic<T> per(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.numel()};
}
template <class T>
cpu::Periodic<T> per(const std::optional<at::Tensor>& t) {
  return t ? per<T>(*t) : cpu::Periodic<T>{nullptr, 1};
}

struct DropinCpu : CpuBackend {
  static void normal_nll_fwd(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& sp, at::Tensor& res,
                             int param, double floor, double cst, double factor, const DropinShape& sh) {
    dispatch("dropin_normal_nll", x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_nll_fwd(per<T>(x), per<T>(loc), per<T>(sp), static_cast<cpu::Spread>(param),
                                              T(floor), T(cst), T(factor), sh.N, sh.row_len, out<T>(res));
    });
  }
  static void normal_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& loc, const at::Tensor& sp,
                             at::Tensor& gx, at::Tensor& gl, at::Tensor& gs, int param, double floor, double factor,
                             const DropinShape& sh) {
    dispatch("dropin_normal_nll_backward", x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_nll_bwd(in<T>(g), per<T>(x), per<T>(loc), per<T>(sp),
                                              static_cast<cpu::Spread>(param), T(floor), T(factor), sh.N, sh.row_len,
                                              out<T>(gx), out<T>(gl), out<T>(gs));
    });
  }
  static void normal_kl_fwd(const at::Tensor& lp, const at::Tensor& sp, const at::Tensor& lq, const at::Tensor& sq,
                            at::Tensor& res, double factor, const DropinShape& sh) {
    dispatch("dropin_normal_kl", lp.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_kl_fwd(per<T>(lp), per<T>(sp), per<T>(lq), per<T>(sq), T(factor), sh.N,
                                             sh.row_len, out<T>(res));
    });
  }
  static void normal_kl_bwd(const at::Tensor& g, const at::Tensor& lp, const at::Tensor& sp, const at::Tensor& lq,
                            const at::Tensor& sq, at::Tensor& glp, at::Tensor& gsp, at::Tensor& glq, at::Tensor& gsq,
                            double factor, const DropinShape& sh) {
    dispatch("dropin_normal_kl_backward", lp.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_kl_bwd(in<T>(g), per<T>(lp), per<T>(sp), per<T>(lq), per<T>(sq), T(factor),
                                             sh.N, sh.row_len, out<T>(glp), out<T>(gsp), out<T>(glq), out<T>(gsq));
    });
  }
  static void normal_rsample_fwd(const at::Tensor& loc, const at::Tensor& scale, at::Tensor& z, int64_t k,
                                 const at::Tensor& seed) {
    dispatch("dropin_normal_rsample", loc.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_rsample_fwd(in<T>(loc), in<T>(scale), out<T>(z), loc.numel(), k,
                                                  seed_key(seed));
    });
  }
  static void normal_rsample_bwd(const at::Tensor& gz, at::Tensor& gl, at::Tensor& gs, int64_t numel, int64_t k,
                                 const at::Tensor& seed) {
    dispatch("dropin_normal_rsample_backward", gz.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_rsample_bwd(in<T>(gz), out<T>(gl), out<T>(gs), numel, k, seed_key(seed));
    });
  }
  static void bce_fwd(const at::Tensor& l, const at::Tensor& y, const std::optional<at::Tensor>& w,
                      const std::optional<at::Tensor>& pw, at::Tensor& res, double factor, const DropinShape& sh) {
    dispatch("dropin_bce_with_logits", l.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().bce_fwd(per<T>(l), per<T>(y), per<T>(w), per<T>(pw), T(factor), sh.N, sh.row_len,
                                       out<T>(res));
    });
  }
  static void bce_bwd(const at::Tensor& g, const at::Tensor& l, const at::Tensor& y, const std::optional<at::Tensor>& w,
                      const std::optional<at::Tensor>& pw, at::Tensor& gl, at::Tensor& gy, double factor,
                      const DropinShape& sh) {
    dispatch("dropin_bce_with_logits_backward", l.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().bce_bwd(in<T>(g), per<T>(l), per<T>(y), per<T>(w), per<T>(pw), T(factor), sh.N,
                                       sh.row_len, out<T>(gl), out<T>(gy));
    });
  }
  static void normal_nll_fwd_grad(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& sp, at::Tensor& res,
                                  at::Tensor& gx, at::Tensor& gl, at::Tensor& gs, at::Tensor& bad, int param,
                                  double floor, double cst, double factor, const DropinShape& sh) {
    dispatch("dropin_normal_nll_with_grad", x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_nll_fwd_grad(per<T>(x), per<T>(loc), per<T>(sp), static_cast<cpu::Spread>(param),
                                                   T(floor), T(cst), T(factor), sh.N, sh.row_len, out<T>(res),
                                                   out<T>(gx), out<T>(gl), out<T>(gs), bad.data_ptr<int>());
    });
  }
  static void normal_kl_fwd_grad(const at::Tensor& lp, const at::Tensor& sp, const at::Tensor& lq, const at::Tensor& sq,
                                 at::Tensor& res, at::Tensor& glp, at::Tensor& gsp, at::Tensor& glq, at::Tensor& gsq,
                                 at::Tensor& bad, double factor, const DropinShape& sh) {
    dispatch("dropin_normal_kl_with_grad", lp.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().normal_kl_fwd_grad(per<T>(lp), per<T>(sp), per<T>(lq), per<T>(sq), T(factor), sh.N,
                                                  sh.row_len, out<T>(res), out<T>(glp), out<T>(gsp), out<T>(glq),
                                                  out<T>(gsq), bad.data_ptr<int>());
    });
  }
  static void bce_fwd_grad(const at::Tensor& l, const at::Tensor& y, const std::optional<at::Tensor>& w,
                           const std::optional<at::Tensor>& pw, at::Tensor& res, at::Tensor& gl, at::Tensor& gy,
                           at::Tensor& bad, double factor, const DropinShape& sh) {
    dispatch("dropin_bce_with_logits_with_grad", l.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::dropin_kernels<T>().bce_fwd_grad(per<T>(l), per<T>(y), per<T>(w), per<T>(pw), T(factor), sh.N,
                                            sh.row_len, out<T>(res), out<T>(gl), out<T>(gy), bad.data_ptr<int>());
    });
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  fastvae::register_dropin_ops<fastvae::DropinCpu>(m);
  fastvae::register_dropin_with_grad_ops<fastvae::DropinCpu>(m);
}
