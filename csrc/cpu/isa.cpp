// The one run-time dispatch of the CPU kernels: the best instruction set the running CPU supports (detected once),
// or the one a test forces, picks the tables of every kernel family. Each table is defined by a kernel file
// compiled once per instruction set (isa.h) in the namespace of that set.
#include <atomic>
#include <stdexcept>
#include <string>

#include "cpu/dropin_kernels.h"
#include "cpu/kernels.h"

namespace fastvae {
namespace cpu {

#define FV_DECLARE_ISA(NS)                              \
  namespace NS {                                        \
  extern const Kernels<float> table_f32;                \
  extern const Kernels<double> table_f64;               \
  extern const DistanceKernels<float> distances_f32;    \
  extern const DistanceKernels<double> distances_f64;   \
  extern const LogisticKernels<float> logistic_f32;     \
  extern const LogisticKernels<double> logistic_f64;    \
  extern const DropinKernels<float> dropin_f32;         \
  extern const DropinKernels<double> dropin_f64;        \
  }
FV_DECLARE_ISA(avx512)
FV_DECLARE_ISA(avx2)
FV_DECLARE_ISA(baseline)
#undef FV_DECLARE_ISA

namespace {

enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

int detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) return kAvx2;
#endif
  return kBaseline;
}

const int kBest = detect();
std::atomic<int> g_isa{-1};  // -1: the best the CPU supports

int current() {
  const int forced = g_isa.load(std::memory_order_relaxed);
  return forced < 0 ? kBest : forced;
}

// The table of the instruction set in use, of the three builds of one table.
template <class Table>
const Table& pick(const Table& avx512, const Table& avx2, const Table& baseline) {
  switch (current()) {
    case kAvx512: return avx512;
    case kAvx2: return avx2;
    default: return baseline;
  }
}

const char* isa_name(int isa) { return isa == kAvx512 ? "avx512" : isa == kAvx2 ? "avx2" : "baseline"; }

}  // namespace

template <>
const Kernels<float>& kernels<float>() { return pick(avx512::table_f32, avx2::table_f32, baseline::table_f32); }
template <>
const Kernels<double>& kernels<double>() { return pick(avx512::table_f64, avx2::table_f64, baseline::table_f64); }
template <>
const DistanceKernels<float>& distance_kernels<float>() {
  return pick(avx512::distances_f32, avx2::distances_f32, baseline::distances_f32);
}
template <>
const DistanceKernels<double>& distance_kernels<double>() {
  return pick(avx512::distances_f64, avx2::distances_f64, baseline::distances_f64);
}

template <>
const LogisticKernels<float>& logistic_kernels<float>() {
  return pick(avx512::logistic_f32, avx2::logistic_f32, baseline::logistic_f32);
}
template <>
const LogisticKernels<double>& logistic_kernels<double>() {
  return pick(avx512::logistic_f64, avx2::logistic_f64, baseline::logistic_f64);
}

template <>
const DropinKernels<float>& dropin_kernels<float>() {
  return pick(avx512::dropin_f32, avx2::dropin_f32, baseline::dropin_f32);
}
template <>
const DropinKernels<double>& dropin_kernels<double>() {
  return pick(avx512::dropin_f64, avx2::dropin_f64, baseline::dropin_f64);
}

std::string active_isa() { return isa_name(current()); }
std::string best_isa() { return isa_name(kBest); }

// "auto", or an instruction set the CPU supports (tests run every build on one machine).
void force_isa(const std::string& name) {
  int want;
  if (name == "auto") want = -1;
  else if (name == "avx512") want = kAvx512;
  else if (name == "avx2") want = kAvx2;
  else if (name == "baseline") want = kBaseline;
  else throw std::invalid_argument("isa must be one of auto, avx512, avx2, baseline; got " + name);
  if (want > kBest)
    throw std::invalid_argument("this CPU does not support " + name + " (best: " + isa_name(kBest) + ")");
  g_isa.store(want);
}

}  // namespace cpu
}  // namespace fastvae
