// The distance kernels built for one instruction set (baseline); see distances_impl.h.
// Standard headers come before the target pragma so that only fastvae's own code is built for baseline.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

// baseline x86-64: the default target, no pragma
#define FV_ISA baseline
#define FV_VEC_BYTES 16
#include "distances_impl.h"

namespace fastvae {
namespace cpu {
namespace baseline {
extern const DistanceKernels<float> distances_f32 = make_distance_table<float>("baseline");
extern const DistanceKernels<double> distances_f64 = make_distance_table<double>("baseline");
}  // namespace baseline
}  // namespace cpu
}  // namespace fastvae
