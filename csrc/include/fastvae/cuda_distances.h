// Launchers of the CUDA distance kernels (csrc/cuda/distances.cu): raw device pointers, sizes and a
// cudaStream_t passed as void*, so that the binding (ops_distances_cuda.cpp) needs no CUDA headers beyond torch's
// and the kernels need no torch. Every launcher returns the cudaError_t of its launches (0 on success).
// Workspaces are device buffers of the size the matching *_workspace_bytes() gives, allocated by the caller.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastvae/common.h"
#include "fastvae/distances.h"

namespace fastvae {
namespace cuda {

constexpr int kMaxBandwidths = 16;  // bandwidths per call (kernel parameters travel by value)
constexpr int kMaxDim = 256;        // code dimension d of the CUDA MMD kernels (gradient rows live in registers)

template <class T>
struct MmdArgs {
  const T* x;  // (B, N, d)
  const T* y;  // (B, M, d); null: the standard normal prior with the rbf kernel, in closed form
  index_t B, N, M, d;
  DistKernel kernel;
  int n_bw;
  double bw[kMaxBandwidths];
  bool unbiased;
};

// Whether the launch grids of mmd_forward / mmd_backward fit CUDA's limits: B <= 65535 (grid y) and fewer than
// 2^31 tiles of pairs (grid x); M = 0 without y.
bool mmd_grid_fits(index_t B, index_t N, index_t M);
template <class T>
size_t mmd_workspace_bytes(const MmdArgs<T>& a);
// out[b] = MMD^2 of batch b
template <class T>
int mmd_forward(const MmdArgs<T>& a, T* out, void* workspace, void* stream);
// grad_x (B, N, d), grad_y (B, M, d) or null: gradients of sum_b g[b] out[b]
template <class T>
int mmd_backward(const MmdArgs<T>& a, const T* g, T* grad_x, T* grad_y, void* workspace, void* stream);

// out[j] = eps[j] of the Philox stream of key, j < n (the prior samples of the non-rbf kernels)
int fill_normals(float* out, index_t n, uint64_t key, void* stream);

// Sliced-Wasserstein on projections px, py (B, L, N) (py null: the normal quantile target); see cpu_distances.h.
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
