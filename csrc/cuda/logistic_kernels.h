// The launchers of the CUDA kernels of the discretized-logistic likelihoods (logistic.cu): raw pointers, sizes, an
// element type and a stream (cudaStream_t passed as void*), so this header needs neither torch nor the CUDA headers.
// Same shapes and semantics as the CPU kernels (csrc/cpu/logistic_kernels.h). Every launcher returns the cudaError_t
// of its launches (0: success; the binding checks them with check_launch) and never synchronises the host.
//
// x (x_rows, D), logits (null: K = 1, one logistic), means, log_scales (rows, D, K); out (rows) float32 (float64 for
// Float64 data). workspace: logistic_workspace_bytes(rows, D) bytes (no initialisation needed).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cuda {

size_t logistic_workspace_bytes(index_t rows, index_t D);
// first_off_grid (a device int64; null: x is not checked): the smallest flat index of x whose value is not data on
// the grid (logistic_off_grid: NaN, outside [-1, 1] or more than a quarter bin from a level), or a value >= x_rows D
// when every value read is on it (with rows == 0 or D == 0 no value is read)
int logistic_fwd(DType t, const void* x, const void* logits, const void* means, const void* log_scales, void* out,
                 index_t rows, index_t D, index_t K, index_t x_rows, int n_bits, void* workspace, void* stream,
                 int64_t* first_off_grid = nullptr);
// g (rows) float32 (float64); grad_logits (skipped when logits is null), grad_means, grad_log_scales as the inputs
int logistic_bwd(DType t, const void* g, const void* x, const void* logits, const void* means, const void* log_scales,
                 void* grad_logits, void* grad_means, void* grad_log_scales, index_t rows, index_t D, index_t K,
                 index_t x_rows, int n_bits, void* stream);

}  // namespace cuda
}  // namespace fastvae
