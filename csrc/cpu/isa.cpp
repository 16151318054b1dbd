// The one run-time choice of instruction set of the CPU kernels: the best the running CPU supports (detected once),
// or the one a test forces. Each kernel file, compiled once per instruction set (isa.h), defines its tables in the
// namespace of that set and registers them (FV_REGISTER_KERNELS): the getters it defines switch on isa_level().
// This file names no kernel family.
#include <atomic>
#include <stdexcept>
#include <string>

#include "cpu/common.h"

namespace fastvae {
namespace cpu {

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

const char* isa_name(int isa) { return isa == kAvx512 ? "avx512" : isa == kAvx2 ? "avx2" : "baseline"; }

}  // namespace

int isa_level() { return current(); }
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
