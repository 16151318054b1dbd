// The launchers of the CUDA kernels of the Gaussian VAE ops (gaussian.cu): raw pointers, sizes, an element type and
// a stream (cudaStream_t passed as void*), so this header needs neither torch nor the CUDA headers. Same shapes and
// semantics as the CPU kernels (csrc/cpu/gaussian_kernels.h); per-row outputs and per-feature gradients are float32
// (float64 for Float64 data). Every launcher returns the cudaError_t of its launches (0: success; the binding checks
// them with check_launch) and never synchronises the host. `seed` points to the op's int64 seed in device memory
// (read by the kernels, so a captured CUDA graph replays with whatever seed a captured generator kernel wrote there).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cuda {

int reparam_fwd(DType t, const void* mu, const void* lv, void* z, index_t numel, index_t n_samples,
                 const int64_t* seed, void* stream);
int reparam_bwd(DType t, const void* gz, const void* lv, void* grad_mu, void* grad_lv, index_t numel,
                 index_t n_samples, const int64_t* seed, void* stream);
// workspace: at least reduce_workspace_bytes(rows, D) bytes, zero-filled before the first use (the kernel
// leaves it zeroed again).
size_t reduce_workspace_bytes(index_t rows, index_t D);
int reparam_kl_fwd(DType t, const void* mu, const void* lv, void* z, void* kl, index_t rows, index_t D,
                    const int64_t* seed, void* workspace, void* stream);
int reparam_kl_bwd(DType t, const void* gz, const void* gkl, const void* mu, const void* lv, void* grad_mu,
                    void* grad_lv, index_t rows, index_t D, const int64_t* seed, void* stream);
int gaussian_nll_fwd(DType t, const void* x, const void* mean, const void* lv, Layout lv_layout, void* out,
                      index_t rows, index_t D, index_t x_rows, void* workspace, void* stream);
// col_workspace: col_workspace_bytes(rows, D, n_acc) bytes (no initialisation needed)
size_t col_workspace_bytes(index_t rows, index_t D, int n_acc, DType t);
int gaussian_nll_bwd(DType t, const void* g, const void* x, const void* mean, const void* lv, Layout lv_layout,
                      void* grad_mean, void* grad_lv, index_t rows, index_t D, index_t x_rows, void* col_workspace,
                      void* stream);
int bernoulli_nll_fwd(DType t, const void* logits, const void* x, void* out, index_t rows, index_t D,
                       index_t x_rows, void* workspace, void* stream);
int bernoulli_nll_bwd(DType t, const void* g, const void* logits, const void* x, void* grad_logits, index_t rows,
                       index_t D, index_t x_rows, void* stream);
int kl_normal_fwd(DType t, const void* mu, const void* lv, const void* mp, Layout mp_layout, const void* lp,
                   Layout lp_layout, void* out, index_t rows, index_t D, void* workspace, void* stream);
int kl_normal_bwd(DType t, const void* g, const void* mu, const void* lv, const void* mp, Layout mp_layout,
                   const void* lp, Layout lp_layout, void* grad_mu, void* grad_lv, void* grad_mp, void* grad_lp,
                   index_t rows, index_t D, void* col_workspace, void* stream);
int tril_fwd(DType t, const void* mu, const void* L, void* z, void* log_q, index_t R, index_t d,
              index_t n_samples, const int64_t* seed, void* stream);
int tril_bwd(DType t, const void* gz, const void* glogq, const void* L, void* grad_mu, void* grad_L, index_t R,
              index_t d, index_t n_samples, const int64_t* seed, void* stream);

}  // namespace cuda
}  // namespace fastvae
