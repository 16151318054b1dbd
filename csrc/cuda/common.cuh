// Helpers shared by the CUDA kernel files (csrc/cuda/*.cu): the accumulation type of each element type,
// its conversions, the dtype dispatch and the stream of a launcher. Each .cu file is its own translation unit: they
// live in its unnamed namespace.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastvae/types.h"

// The largest grid of the grid-stride kernels (2^19 blocks: enough to fill any GPU). A test build may shrink it
// (-DFV_MAX_GRID=3) so that their loops iterate at test sizes.
#ifndef FV_MAX_GRID
#define FV_MAX_GRID (65536 * 8)
#endif

namespace fastvae {
namespace cuda {
namespace {

// ---- element types ----------------------------------------------------------------------------------------

// float16/bfloat16 data are computed in float32, float64 in float64.
template <class S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// ---- dtype dispatch ---------------------------------------------------------------------------------------

// f(tag) with a value of the element type of t.
template <class F>
void dispatch(DType t, const F& f) {
  switch (t) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::Float16: f(__half{}); break;
    case DType::BFloat16: f(__nv_bfloat16{}); break;
  }
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace
}  // namespace cuda
}  // namespace fastvae
