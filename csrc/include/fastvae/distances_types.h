// The types of the sample-distance ops that the CPU kernels, the CUDA kernels and the binding share. Nothing here
// knows about PyTorch.
#pragma once
#include "fastvae/types.h"

namespace fastvae {

// The pair kernel of a sample distance; the order is that of the op schema's `kernel` names.
enum class DistKernel : int { Rbf = 0, Imq = 1, Laplacian = 2, Energy = 3 };

// One MMD problem, as the CPU and the CUDA kernels take it (raw pointers into contiguous row-major tensors).
template <class T>
struct MmdProblem {
  const T* x;  // (B, N, d)
  const T* y;  // (B, M, d); null: the standard normal prior with the rbf kernel, in closed form
  index_t B, N, M, d;
  DistKernel kernel;
  const double* bandwidths;  // n_bw values > 0, in host memory (the energy kernel has n_bw = 1 and ignores it)
  int n_bw;
  bool unbiased;
};

}  // namespace fastvae
