// The table of the normal stream (cpu/normals.h), compiled once per instruction set like every CPU kernel file.
// Every standard header before isa.h (see there).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <string>
#include <vector>

#include "cpu/common.h"  // declarations only
#include "cpu/isa.h"
#include "cpu/normals.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

// eps[start .. start + n) in blocks of kNormalBlock, in parallel (the blocks are independent)
void normals(float* out, index_t start, index_t n, uint64_t key) {
  parallel_for(0, (n + kNormalBlock - 1) / kNormalBlock, 16, [&](index_t b, index_t e) {
    for (index_t blk = b; blk < e; ++blk) {
      const index_t i0 = blk * kNormalBlock, len = std::min(kNormalBlock, n - i0);
      fill_normals(key, start + i0, len, out + i0);
    }
  });
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae

FV_REGISTER_TABLE(NormalStream, normal_stream_table, (NormalStream{FV_ISA_NAME, &normals}),
                  const NormalStream& normal_stream())
