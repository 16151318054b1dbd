// The distance kernels built for one instruction set (avx2); see distances_impl.h.
// Standard headers come before the target pragma so that only fastvae's own code is built for avx2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#pragma GCC target("avx2,fma,bmi2")
#define FV_ISA avx2
#define FV_VEC_BYTES 32
#include "distances_impl.h"

namespace fastvae {
namespace cpu {
namespace avx2 {
extern const DistanceKernels<float> distances_f32 = make_distance_table<float>("avx2");
extern const DistanceKernels<double> distances_f64 = make_distance_table<double>("avx2");
}  // namespace avx2
}  // namespace cpu
}  // namespace fastvae
