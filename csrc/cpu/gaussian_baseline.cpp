// The Gaussian VAE kernels built for one instruction set (baseline); see gaussian_impl.h.
// Standard headers come before the target pragma so that only fastvae's own code is built for baseline.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <vector>

// baseline x86-64: the default target, no pragma
#define FV_ISA baseline
#include "gaussian_impl.h"

namespace fastvae {
namespace cpu {
namespace baseline {
extern const Kernels<float> table_f32 = make_table<float>("baseline");
extern const Kernels<double> table_f64 = make_table<double>("baseline");
}  // namespace baseline
}  // namespace cpu
}  // namespace fastvae
