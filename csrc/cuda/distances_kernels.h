// The launchers of the CUDA kernels of the sample distances (distances.cu): raw pointers, sizes and a stream
// (cudaStream_t passed as void*), so this header needs neither torch nor the CUDA headers. Same shapes and semantics
// as the CPU kernels (csrc/cpu/distances_kernels.h). Every launcher returns the cudaError_t of its launches (0:
// success; the binding checks them with check_launch) and never synchronises the host.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastvae/distances_types.h"
#include "fastvae/types.h"

namespace fastvae {
namespace cuda {

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

// Sliced-Wasserstein on projections px, py (B, L, N) (py null: the normal quantile target); see
// cpu/distances_kernels.h.
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
