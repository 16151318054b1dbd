// Picks the distance kernels of the instruction set in use (cpu::isa_level(), so force_isa() applies).
#include "fastvae/cpu_distances.h"
#include "fastvae/cpu_kernels.h"

namespace fastvae {
namespace cpu {

#define FV_DECLARE_ISA(NS)                               \
  namespace NS {                                         \
  extern const DistanceKernels<float> distances_f32;     \
  extern const DistanceKernels<double> distances_f64;    \
  }
FV_DECLARE_ISA(avx512)
FV_DECLARE_ISA(avx2)
FV_DECLARE_ISA(baseline)
#undef FV_DECLARE_ISA

template <>
const DistanceKernels<float>& distance_kernels<float>() {
  switch (isa_level()) {
    case 2: return avx512::distances_f32;
    case 1: return avx2::distances_f32;
    default: return baseline::distances_f32;
  }
}

template <>
const DistanceKernels<double>& distance_kernels<double>() {
  switch (isa_level()) {
    case 2: return avx512::distances_f64;
    case 1: return avx2::distances_f64;
    default: return baseline::distances_f64;
  }
}

}  // namespace cpu
}  // namespace fastvae
