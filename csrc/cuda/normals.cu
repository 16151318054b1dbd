// The CUDA kernel of the raw normal stream (cuda/normals.h): eps[j] = normal_at(j, key) of fastvae/philox.h, one
// element per thread, a grid-stride loop.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/normals.h"
#include "fastvae/philox.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint64_t key_of(const int64_t* seed) { return static_cast<uint64_t>(*seed); }

unsigned int grid_for(index_t groups_of_4) {
  const index_t b = (groups_of_4 + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > FV_MAX_GRID ? FV_MAX_GRID : b));
}

__global__ void normals_kernel(float* out, index_t start, index_t n, const int64_t* seed) {
  const uint64_t key = key_of(seed);
  for (index_t k = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; k < n;
       k += static_cast<index_t>(gridDim.x) * kThreads)
    out[k] = normal_at(static_cast<uint64_t>(start + k), key);
}

}  // namespace

int normals(float* out, index_t start, index_t n, const int64_t* seed, void* stream) {
  if (n == 0) return 0;  // nothing to launch
  fv_launch(normals_kernel, grid_for((n + 3) / 4), kThreads, 0, as_stream(stream), out, start, n, seed);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastvae
