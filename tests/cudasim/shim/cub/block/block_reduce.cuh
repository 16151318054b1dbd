// cudasim shim of cub::BlockReduce: the same calls and result (valid in thread 0), by a fixed-order fold in
// thread 0 after one barrier; the floating-point rounding differs from CUB's tree.
#pragma once
#include <cuda_runtime.h>

namespace cub {
enum BlockReduceAlgorithm { BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY, BLOCK_REDUCE_RAKING, BLOCK_REDUCE_WARP_REDUCTIONS };

struct Sum {
  template <class T>
  T operator()(const T& a, const T& b) const { return a + b; }
};
struct Max {
  template <class T>
  T operator()(const T& a, const T& b) const { return a < b ? b : a; }
};
struct Min {
  template <class T>
  T operator()(const T& a, const T& b) const { return b < a ? b : a; }
};

template <class T, int BLOCK_DIM_X, BlockReduceAlgorithm ALGORITHM = BLOCK_REDUCE_WARP_REDUCTIONS,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int LEGACY_PTX_ARCH = 0>
class BlockReduce {
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;

 public:
  struct TempStorage {
    T slot[kThreads];
  };
  __device__ explicit BlockReduce(TempStorage& temp) : temp_(temp) {}

  template <class Op>
  __device__ T Reduce(T input, Op op) { return Reduce(input, op, kThreads); }
  template <class Op>
  __device__ T Reduce(T input, Op op, int num_valid) {
    const int t = static_cast<int>(threadIdx.x + BLOCK_DIM_X * (threadIdx.y + BLOCK_DIM_Y * threadIdx.z));
    temp_.slot[t] = input;
    __syncthreads();
    if (t != 0) return input;  // undefined in threads other than 0
    T acc = temp_.slot[0];
    for (int i = 1; i < num_valid && i < kThreads; ++i) acc = op(acc, temp_.slot[i]);
    return acc;
  }
  template <int ITEMS, class Op>
  __device__ T Reduce(T (&inputs)[ITEMS], Op op) {
    T acc = inputs[0];
    for (int i = 1; i < ITEMS; ++i) acc = op(acc, inputs[i]);
    return Reduce(acc, op);
  }
  __device__ T Sum(T input) { return Reduce(input, cub::Sum{}); }
  __device__ T Sum(T input, int num_valid) { return Reduce(input, cub::Sum{}, num_valid); }
  template <int ITEMS>
  __device__ T Sum(T (&inputs)[ITEMS]) { return Reduce(inputs, cub::Sum{}); }

 private:
  TempStorage& temp_;
};
}  // namespace cub
