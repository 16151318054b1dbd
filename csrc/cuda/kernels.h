// The launchers of the CUDA kernels of both op families (gaussian.cu, distances.cu): raw pointers, sizes, an
// element type and a stream (cudaStream_t passed as void*), so this header needs neither torch nor the CUDA
// headers. Same shapes and semantics as the CPU kernels (csrc/cpu/kernels.h); `seed` points to the op's int64
// seed in device memory (read by the kernels, so a captured CUDA graph replays with whatever seed a captured
// generator kernel wrote there). Every launcher returns the cudaError_t of its launches (0: success; the binding
// checks it with check_launch) and never synchronises the host.
//
// Gaussian ops: per-row outputs and per-feature gradients are float32 (float64 for Float64 data).
#pragma once
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
// eps[start .. start + n) of the stream of *seed, as float (tests compare it with the CPU stream)
int normals(float* out, index_t start, index_t n, const int64_t* seed, void* stream);


// ---- discretized-logistic likelihoods (logistic.cu) ---------------------------------------------------------------
// x (x_rows, D), logits (null: K = 1, one logistic), means, log_scales (rows, D, K); out (rows) float32 (float64 for
// Float64 data). workspace: logistic_workspace_bytes(rows, D) bytes (no initialisation needed).
size_t logistic_workspace_bytes(index_t rows, index_t D);
int logistic_fwd(DType t, const void* x, const void* logits, const void* means, const void* log_scales, void* out,
                 index_t rows, index_t D, index_t K, index_t x_rows, int n_bits, void* workspace, void* stream);
// g (rows) float32 (float64); grad_logits (skipped when logits is null), grad_means, grad_log_scales as the inputs
int logistic_bwd(DType t, const void* g, const void* x, const void* logits, const void* means, const void* log_scales,
                 void* grad_logits, void* grad_means, void* grad_log_scales, index_t rows, index_t D, index_t K,
                 index_t x_rows, int n_bits, void* stream);

// ---- drop-in ops (dropin.cu; layout and terms: csrc/cpu/dropin_kernels.h) -------------------------------------------
// An operand in the period layout: element i of the N outputs reads p[i % P]; p null: absent (reads as 1).
struct PeriodicArg {
  const void* p;
  index_t P;
};
// out: N / row_len sums, float32 (float64 for Float64 data); workspace: dropin_workspace_bytes(N, row_len) bytes (no
// initialisation needed). Backward: g (N / row_len) in the sums' type; gradients (N, the data's type) or null.
size_t dropin_workspace_bytes(index_t N, index_t row_len);
int dropin_normal_nll_fwd(DType t, PeriodicArg x, PeriodicArg loc, PeriodicArg spread, int param, double floor,
                          double cst, double factor, index_t N, index_t row_len, void* out, void* workspace,
                          void* stream);
int dropin_normal_nll_bwd(DType t, const void* g, PeriodicArg x, PeriodicArg loc, PeriodicArg spread, int param,
                          double floor, double factor, index_t N, index_t row_len, void* gx, void* gloc,
                          void* gspread, void* stream);
int dropin_normal_kl_fwd(DType t, PeriodicArg lp, PeriodicArg sp, PeriodicArg lq, PeriodicArg sq, double factor,
                         index_t N, index_t row_len, void* out, void* workspace, void* stream);
int dropin_normal_kl_bwd(DType t, const void* g, PeriodicArg lp, PeriodicArg sp, PeriodicArg lq, PeriodicArg sq,
                         double factor, index_t N, index_t row_len, void* glp, void* gsp, void* glq, void* gsq,
                         void* stream);
int dropin_bce_fwd(DType t, PeriodicArg l, PeriodicArg y, PeriodicArg w, PeriodicArg pw, double factor, index_t N,
                   index_t row_len, void* out, void* workspace, void* stream);
int dropin_bce_bwd(DType t, const void* g, PeriodicArg l, PeriodicArg y, PeriodicArg w, PeriodicArg pw,
                   double factor, index_t N, index_t row_len, void* gl, void* gy, void* stream);
// z[s, i] = loc[i] + scale[i] eps[s * numel + i]; backward: gloc = sum_s gz, gscale = sum_s gz eps (either null)
int dropin_normal_rsample_fwd(DType t, const void* loc, const void* scale, void* z, index_t numel, index_t n_samples,
                              const int64_t* seed, void* stream);
int dropin_normal_rsample_bwd(DType t, const void* gz, void* gloc, void* gscale, index_t numel, index_t n_samples,
                              const int64_t* seed, void* stream);

// The CUDA runtime's message for a launcher's error code.
const char* error_string(int err);

// ---- sample distances -------------------------------------------------------------------------------------------

constexpr int kMaxBandwidths = 16;  // bandwidths per kernel launch (by value); the launchers loop over groups
constexpr int kMaxDim = 256;        // code dimension d of the CUDA MMD backward (gradient rows live in registers)

// Whether the launch grids of mmd_forward / mmd_backward fit CUDA's limits: fewer than 2^31 tiles of pairs (grid
// x); M = 0 without y. (Any number of batches B: the launchers loop over groups of 65535, the grid's y limit.)
bool mmd_grid_fits(index_t N, index_t M);
// Workspaces are device buffers of the size the matching *_workspace_bytes() gives, allocated by the caller.
template <class T>
size_t mmd_workspace_bytes(const MmdProblem<T>& a);
// out[b] = MMD^2 of batch b
template <class T>
int mmd_forward(const MmdProblem<T>& a, T* out, void* workspace, void* stream);
// grad_x (B, N, d), grad_y (B, M, d) or null: gradients of sum_b g[b] out[b]
template <class T>
int mmd_backward(const MmdProblem<T>& a, const T* g, T* grad_x, T* grad_y, void* workspace, void* stream);

// Sliced-Wasserstein on projections px, py (B, L, N) (py null: the normal quantile target); see cpu/kernels.h.
template <class T>
size_t sw_workspace_bytes(index_t B, index_t L, index_t N, bool with_y);
template <class T>
int sw_forward(const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, index_t B, index_t L, index_t N,
               double p, void* workspace, size_t workspace_bytes, void* stream);
template <class T>
int sw_backward(const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y, T* gpx, T* gpy,
                index_t B, index_t L, index_t N, double p, void* stream);

}  // namespace cuda
}  // namespace fastvae
