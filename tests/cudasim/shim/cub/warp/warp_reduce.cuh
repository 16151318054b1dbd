// cudasim shim of cub::WarpReduce: a shuffle-down tree over each logical warp (result valid in its lane 0).
// Every lane of the hardware warp must take part, as CUB requires for full warps.
#pragma once
#include <cuda_runtime.h>
#include "../block/block_reduce.cuh"

namespace cub {
template <class T, int LOGICAL_WARP_THREADS = 32, int LEGACY_PTX_ARCH = 0>
class WarpReduce {
  static_assert(LOGICAL_WARP_THREADS > 0 && LOGICAL_WARP_THREADS <= 32 &&
                    (LOGICAL_WARP_THREADS & (LOGICAL_WARP_THREADS - 1)) == 0,
                "cub shim: WarpReduce needs a power-of-two logical warp of at most 32 threads");

 public:
  struct TempStorage {};
  __device__ explicit WarpReduce(TempStorage&) {}

  template <class Op>
  __device__ T Reduce(T input, Op op) { return Reduce(input, op, LOGICAL_WARP_THREADS); }
  template <class Op>
  __device__ T Reduce(T input, Op op, int valid_items) {
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % LOGICAL_WARP_THREADS;
    T v = input;
    for (int o = 1; o < LOGICAL_WARP_THREADS; o <<= 1) {
      const T other = __shfl_down_sync(0xffffffffu, v, o, LOGICAL_WARP_THREADS);
      if (static_cast<int>(lane) + o < valid_items) v = op(v, other);
    }
    return v;
  }
  __device__ T Sum(T input) { return Reduce(input, cub::Sum{}); }
  __device__ T Sum(T input, int valid_items) { return Reduce(input, cub::Sum{}, valid_items); }
};
}  // namespace cub
