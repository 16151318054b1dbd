// The types every layer shares: the CPU kernels, the CUDA kernels and the torch binding. Nothing here knows
// about PyTorch.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FV_HD static __host__ __device__ __forceinline__
#else
// static: each translation unit (one per CPU instruction set) keeps its own copy, so the AVX-512 build of a
// helper can never be linked into the baseline build of another file.
#define FV_HD static inline __attribute__((always_inline))
#endif

namespace fastvae {

using index_t = int64_t;  // every element index is 64-bit: tensors over 2^31 elements work

// Element types the kernels are instantiated for (the binding maps torch dtypes onto these).
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// How a secondary operand (a variance, a prior parameter) is laid out against the main one of shape
// (rows, D):  absent, one value per feature repeated over rows, or one value per element.
enum class Layout : int { None = 0, PerFeature = 1, Full = 2 };

constexpr double kLog2Pi = 1.8378770664093454836;  // log(2*pi)

}  // namespace fastvae
