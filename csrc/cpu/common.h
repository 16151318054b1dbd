// What the CPU kernel files and the binding share, whatever the family: the thread pool the kernels run on
// (implemented by the binding over the framework's), the run-time choice of instruction set (isa.cpp) and the
// normal stream every random op draws from (normals.cpp). A family's kernel tables are declared in its own
// cpu/<family>_kernels.h; its kernel file registers them (FV_REGISTER_KERNELS, isa.h).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "fastvae/types.h"

namespace fastvae {

// Implemented by the binding layer over the framework's thread pool; kernels only see this.
void parallel_for(index_t begin, index_t end, index_t grain, const std::function<void(index_t, index_t)>& fn);

namespace cpu {

// The instruction set in use: the best of AVX-512, AVX2+FMA and baseline x86-64 the running CPU supports, or the
// one force_isa() set. isa_level(): 0 baseline, 1 avx2, 2 avx512 (what the registered getters switch on).
int isa_level();
std::string active_isa();
std::string best_isa();
void force_isa(const std::string& name);  // "auto", "avx512", "avx2" or "baseline"

// The raw stream of standard normals (cpu/normals.h): eps[j] for j in [start, start + n) of `key`, for the tests
// and the ops that expose it.
struct NormalStream {
  const char* isa;
  void (*normals)(float* out, index_t start, index_t n, uint64_t key);
};
const NormalStream& normal_stream();

}  // namespace cpu
}  // namespace fastvae
