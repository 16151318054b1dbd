// CUDA dispatch of the Gaussian ops: the same implementations as the CPU (ops_impl.h) over the CUDA
// launchers of cuda_kernels.h, on the current stream of the inputs' device.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "fastvae/cuda_kernels.h"
#include "ops_impl.h"

namespace fastvae {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "fastvae: the CUDA kernels take float32, float64, float16 or bfloat16; got ",
                         t.scalar_type());
  }
}

const void* in(const at::Tensor& t) { return t.data_ptr(); }
const void* in(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }
void* out(at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }
const int64_t* seed_ptr(const at::Tensor& seed) { return seed.data_ptr<int64_t>(); }
void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Workspace of the per-row reductions (zeroed: the kernels keep their tickets at zero between launches).
at::Tensor reduce_workspace(const at::Tensor& ref, int64_t rows, int64_t D) {
  const size_t bytes = cuda::reduce_workspace_bytes(rows, D);
  return at::zeros({static_cast<int64_t>(bytes)}, ref.options().dtype(at::kByte));
}

at::Tensor col_workspace(const at::Tensor& ref, int64_t rows, int64_t D, int n_acc) {
  const size_t bytes = cuda::col_workspace_bytes(rows, D, n_acc, dtype_of(ref));
  return at::empty({static_cast<int64_t>(bytes)}, ref.options().dtype(at::kByte));
}

void* ws_ptr(at::Tensor& ws) { return ws.numel() ? ws.data_ptr() : nullptr; }

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
  // the tril kernels keep eps (and grad_z) of one sample in shared memory: 2 * 4 * d bytes <= 48 KiB
  static void check_tril_dim(const char* op, int64_t d) {
    TORCH_CHECK_VALUE(d <= 6144, "fastvae.", op, ": scale_tril on CUDA supports d <= 6144; got d = ", d);
  }

  static void reparam_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, int64_t k,
                          const at::Tensor& seed) {
    cuda::reparam_fwd(dtype_of(mu), in(mu), in(lv), out(z), mu.numel(), k, seed_ptr(seed), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void reparam_bwd(const at::Tensor& gz, const at::Tensor& lv, at::Tensor& grad_mu, at::Tensor& grad_lv,
                          int64_t k, const at::Tensor& seed) {
    cuda::reparam_bwd(dtype_of(lv), in(gz), in(lv), out(grad_mu), out(grad_lv), lv.numel(), k, seed_ptr(seed),
                      stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, at::Tensor& kl,
                             const at::Tensor& seed) {
    auto ws = reduce_workspace(mu, rows_of(mu), per_row(mu));
    cuda::reparam_kl_fwd(dtype_of(mu), in(mu), in(lv), out(z), out(kl), rows_of(mu), per_row(mu), seed_ptr(seed),
                         ws_ptr(ws), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void reparam_kl_bwd(const at::Tensor& gz, const at::Tensor& gkl, const at::Tensor& mu, const at::Tensor& lv,
                             at::Tensor& grad_mu, at::Tensor& grad_lv, const at::Tensor& seed) {
    cuda::reparam_kl_bwd(dtype_of(mu), in(gz), in(gkl), in(mu), in(lv), out(grad_mu), out(grad_lv), rows_of(mu),
                         per_row(mu), seed_ptr(seed), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void tril_fwd(const at::Tensor& mu, const at::Tensor& L, at::Tensor& z, at::Tensor& log_q, int64_t k,
                       const at::Tensor& seed) {
    cuda::tril_fwd(dtype_of(mu), in(mu), in(L), out(z), out(log_q), mu.size(0), mu.size(1), k, seed_ptr(seed),
                   stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void tril_bwd(const at::Tensor& gz, const at::Tensor& glq, const at::Tensor& L, at::Tensor& grad_mu,
                       at::Tensor& grad_L, int64_t k, const at::Tensor& seed) {
    cuda::tril_bwd(dtype_of(L), in(gz), in(glq), in(L), out(grad_mu), out(grad_L), L.size(0), L.size(1), k,
                   seed_ptr(seed), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void gaussian_nll_fwd(const at::Tensor& x, const at::Tensor& mean, const std::optional<at::Tensor>& lv,
                               Layout layout, at::Tensor& res, const LikShape& sh) {
    auto ws = reduce_workspace(mean, sh.rows, sh.D);
    cuda::gaussian_nll_fwd(dtype_of(mean), in(x), in(mean), in(lv), layout, out(res), sh.rows, sh.D, sh.x_rows,
                           ws_ptr(ws), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void gaussian_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean,
                               const std::optional<at::Tensor>& lv, Layout layout, at::Tensor& grad_mean,
                               at::Tensor& grad_lv, const LikShape& sh) {
    auto ws = col_workspace(mean, sh.rows, sh.D, 1);
    cuda::gaussian_nll_bwd(dtype_of(mean), in(g), in(x), in(mean), in(lv), layout, out(grad_mean), out(grad_lv),
                           sh.rows, sh.D, sh.x_rows, ws_ptr(ws), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void bernoulli_nll_fwd(const at::Tensor& logits, const at::Tensor& x, at::Tensor& res, const LikShape& sh) {
    auto ws = reduce_workspace(logits, sh.rows, sh.D);
    cuda::bernoulli_nll_fwd(dtype_of(logits), in(logits), in(x), out(res), sh.rows, sh.D, sh.x_rows, ws_ptr(ws),
                            stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void bernoulli_nll_bwd(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& x, at::Tensor& grad,
                                const LikShape& sh) {
    cuda::bernoulli_nll_bwd(dtype_of(logits), in(g), in(logits), in(x), out(grad), sh.rows, sh.D, sh.x_rows,
                            stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void kl_normal_fwd(const at::Tensor& mu, const at::Tensor& lv, const std::optional<at::Tensor>& mp, Layout lm,
                            const std::optional<at::Tensor>& lp, Layout ll, at::Tensor& res) {
    auto ws = reduce_workspace(mu, rows_of(mu), per_row(mu));
    cuda::kl_normal_fwd(dtype_of(mu), in(mu), in(lv), in(mp), lm, in(lp), ll, out(res), rows_of(mu), per_row(mu),
                        ws_ptr(ws), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void kl_normal_bwd(const at::Tensor& g, const at::Tensor& mu, const at::Tensor& lv,
                            const std::optional<at::Tensor>& mp, Layout lm, const std::optional<at::Tensor>& lp,
                            Layout ll, at::Tensor& g_mu, at::Tensor& g_lv, at::Tensor& g_mp, at::Tensor& g_lp) {
    auto ws = col_workspace(mu, rows_of(mu), per_row(mu), 2);
    cuda::kl_normal_bwd(dtype_of(mu), in(g), in(mu), in(lv), in(mp), lm, in(lp), ll, out(g_mu), out(g_lv),
                        out(g_mp), out(g_lp), rows_of(mu), per_row(mu), ws_ptr(ws), stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor normals_cuda(const at::Tensor& seed, int64_t start, int64_t n) {
  check_normals("_normals", seed, start, n);
  const c10::cuda::CUDAGuard guard(seed.device());
  auto res = at::empty({n}, seed.options().dtype(at::kFloat));
  cuda::normals(res.data_ptr<float>(), start, n, seed_ptr(seed), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return res;
}

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  fastvae::register_gaussian_ops<fastvae::CudaBackend>(m);
  m.impl("_normals", &fastvae::normals_cuda);
}
