// The CUDA launcher of the raw normal stream (normals.cu), shared by every op family that draws or exposes it: the
// same eps as the CPU stream (cpu/common.h, NormalStream), from fastvae/philox.h. Torch-free, no CUDA headers.
#pragma once
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cuda {

// eps[start .. start + n) of the stream of *seed (device memory), as float; returns the launch's cudaError_t
int normals(float* out, index_t start, index_t n, const int64_t* seed, void* stream);

}  // namespace cuda
}  // namespace fastvae
