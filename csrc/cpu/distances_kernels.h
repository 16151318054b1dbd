// The CPU kernels of the sample distances (distances.cpp; math in fastvae/distance_math.h): raw pointers and sizes
// in, no framework types. distance_kernels<T>() returns the table built for the instruction set in use (isa.h).
//
// Shapes: x (B, N, d), y (B, M, d) (MmdProblem, fastvae/distances_types.h); px, py (B, L, N) are the projections
// of the sliced-Wasserstein op, one row per direction.
#pragma once
#include <cstdint>

#include "fastvae/distances_types.h"
#include "fastvae/types.h"

namespace fastvae {
namespace cpu {

template <class T>
struct DistanceKernels {
  const char* isa;
  // out[b] = MMD^2 of batch b
  void (*mmd_fwd)(const MmdProblem<T>& pr, T* out);
  // grad_x = d(sum_b g[b] out[b]) / dx; grad_y likewise (may be null: not needed, or y is the prior)
  void (*mmd_bwd)(const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y);
  // out[b] = mean_l (1/N) sum_i |sort(px[b, l])_i - t_i|^p, t = sort(py[b, l]) or, py null, the normal
  // quantiles Phi^-1((i + 1/2) / N); perm_x / perm_y (B, L, N) receive the (stable) sorting permutations.
  void (*sw_fwd)(const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, index_t B, index_t L,
                 index_t N, double p);
  // gradients of sum_b g[b] out[b] with respect to px and py (gpy may be null)
  void (*sw_bwd)(const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y, T* gpx, T* gpy,
                 index_t B, index_t L, index_t N, double p);
};

template <class T>
const DistanceKernels<T>& distance_kernels();

}  // namespace cpu
}  // namespace fastvae
