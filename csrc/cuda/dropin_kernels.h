// The launchers of the CUDA kernels of the drop-in ops (dropin.cu; layout and terms: csrc/cpu/dropin_kernels.h): raw
// pointers, sizes, an element type and a stream (cudaStream_t passed as void*), so this header needs neither torch
// nor the CUDA headers. Every launcher returns the cudaError_t of its launches (0: success; the binding checks
// them with check_launch) and never synchronises the host. `seed` points to the op's int64 seed in device memory
// (read by the kernels, so a captured CUDA graph replays with whatever seed a captured generator kernel wrote there).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cuda {

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

}  // namespace cuda
}  // namespace fastvae
