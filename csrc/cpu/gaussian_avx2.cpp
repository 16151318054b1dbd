// The Gaussian VAE kernels built for one instruction set (avx2); see gaussian_impl.h.
// Standard headers come before the target pragma so that only fastvae's own code is built for avx2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <vector>

#pragma GCC target("avx2,fma,bmi2")
#define FV_ISA avx2
#include "gaussian_impl.h"

namespace fastvae {
namespace cpu {
namespace avx2 {
extern const Kernels<float> table_f32 = make_table<float>("avx2");
extern const Kernels<double> table_f64 = make_table<double>("avx2");
}  // namespace avx2
}  // namespace cpu
}  // namespace fastvae
