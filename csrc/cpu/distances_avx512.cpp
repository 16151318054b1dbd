// The distance kernels built for one instruction set (avx512); see distances_impl.h.
// Standard headers come before the target pragma so that only fastvae's own code is built for avx512.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi2")
#define FV_ISA avx512
#define FV_VEC_BYTES 64
#include "distances_impl.h"

namespace fastvae {
namespace cpu {
namespace avx512 {
extern const DistanceKernels<float> distances_f32 = make_distance_table<float>("avx512");
extern const DistanceKernels<double> distances_f64 = make_distance_table<double>("avx512");
}  // namespace avx512
}  // namespace cpu
}  // namespace fastvae
