// The parallel drivers shared by the CPU kernel files: a row of D columns is cut into
// segments of at most `chunk` columns; a row no longer than `chunk` is one segment, and short rows are grouped so
// that a task handles about `chunk` columns. The split depends on the sizes only, so results are the same for any
// thread count. Include after cpu/isa.h (and so after every standard header, <algorithm> and <vector> among them):
// the templates are compiled for the instruction set of the including file, in its namespace fastvae::cpu::FV_ISA.
#pragma once

#ifndef FV_ISA_NAME
#error "include cpu/isa.h (after every standard header) before cpu/drivers.h"
#endif

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

// fn(r, i0, i1) handles row r, columns [i0, i1) (at most chunk), and returns that segment's sum.
// out[r] = fn(r, 0, D) for a row of one segment; otherwise the sum of its segments' results, in order, from 0.
template <class T, class F>
void row_reduce(index_t rows, index_t D, index_t chunk, T* out, const F& fn) {
  if (D > chunk) {
    const index_t nc = (D + chunk - 1) / chunk;
    std::vector<T> part(static_cast<size_t>(rows * nc));
    parallel_for(0, rows * nc, 1, [&](index_t b, index_t e) {
      for (index_t t = b; t < e; ++t) {
        const index_t r = t / nc, c = t % nc;
        part[t] = fn(r, c * chunk, std::min(D, (c + 1) * chunk));
      }
    });
    for (index_t r = 0; r < rows; ++r) {
      T s = 0;
      for (index_t c = 0; c < nc; ++c) s += part[r * nc + c];
      out[r] = s;
    }
  } else {
    parallel_for(0, rows, std::max<index_t>(1, chunk / std::max<index_t>(D, 1)), [&](index_t b, index_t e) {
      for (index_t r = b; r < e; ++r) out[r] = fn(r, 0, D);
    });
  }
}

// Elementwise work over segments of at most chunk columns: fn(r, i0, i1) (not called when D is 0).
template <class F>
void for_segments(index_t rows, index_t D, index_t chunk, const F& fn) {
  const index_t nc = (D + chunk - 1) / chunk;
  const index_t seg = std::min(D, chunk);
  parallel_for(0, rows * nc, std::max<index_t>(1, chunk / std::max<index_t>(seg, 1)), [&](index_t b, index_t e) {
    for (index_t t = b; t < e; ++t) {
      const index_t r = t / nc, c = t % nc;
      fn(r, c * chunk, std::min(D, (c + 1) * chunk));
    }
  });
}

// 1 if any of a[0, n) is inf or NaN (x * 0 is NaN exactly for those): the forwards with gradients' check of what
// they store (a zero incoming gradient must give 0 where a stored gradient is inf: the backward then recomputes)
template <class T>
int any_nonfinite(const T* __restrict__ a, index_t n) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (index_t t = 0; t < n; ++t) bad |= (a[t] * T(0) != T(0));
  return bad;
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae
