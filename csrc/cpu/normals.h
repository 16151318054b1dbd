// The CPU stream of standard normals (philox.h: eps[j] is lane j % 4 of Box-Muller of philox(j / 4, key)), in
// blocks of kNormalBlock, vectorised over counters. Shared by the kernel files that draw noise and by normals.cpp
// (the stream's own table, cpu/common.h): the same key gives the same eps in every op. Include after cpu/isa.h
// (and so after every standard header, <immintrin.h> among them): the code is compiled for the instruction set of
// the including file, in its namespace fastvae::cpu::FV_ISA.
#pragma once

#ifndef FV_ISA_NAME
#error "include cpu/isa.h (after every standard header) before cpu/normals.h"
#endif

#include "fastvae/philox.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

constexpr index_t kNormalBlock = 256;  // normals per block (a multiple of 4 and of the widest vector)

constexpr index_t kGroups = kNormalBlock / 4;  // Philox counters per block (4 normals each)

// Ten Philox rounds over kGroups counters held as structure of arrays (c0[t], c1[t], c2[t], c3[t]).
// AVX-512 / AVX2: 16 / 8 counters per vector, the 32x32->64-bit products as two vpmuludq (even and odd
// lanes) plus one vpmulld for the low words; baseline: a loop GCC vectorises as it can. All three give
// exactly philox4x32_10() of philox.h.
#if defined(__AVX512F__)
inline __m512i mulhi_epu32(__m512i x, __m512i m) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(x, m), 32);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);
  return _mm512_mask_blend_epi32(0xAAAA, even, odd);
}
void philox_rounds(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
  const __m512i M0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i M1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (index_t t = 0; t < kGroups; t += 16) {
    __m512i x0 = _mm512_load_si512(c0 + t), x1 = _mm512_load_si512(c1 + t);
    __m512i x2 = _mm512_load_si512(c2 + t), x3 = _mm512_load_si512(c3 + t);
    uint32_t a = k0, b = k1;
    for (int r = 0; r < 10; ++r) {
      const __m512i hi0 = mulhi_epu32(x0, M0), lo0 = _mm512_mullo_epi32(x0, M0);
      const __m512i hi1 = mulhi_epu32(x2, M1), lo1 = _mm512_mullo_epi32(x2, M1);
      x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32(static_cast<int>(a)), 0x96);  // a ^ b ^ c
      x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32(static_cast<int>(b)), 0x96);
      x1 = lo1;
      x3 = lo0;
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    _mm512_store_si512(c0 + t, x0);
    _mm512_store_si512(c1 + t, x1);
    _mm512_store_si512(c2 + t, x2);
    _mm512_store_si512(c3 + t, x3);
  }
}
#elif defined(__AVX2__)
inline __m256i mulhi_epu32(__m256i x, __m256i m) {
  const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(x, m), 32);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  return _mm256_blend_epi32(even, odd, 0xAA);
}
void philox_rounds(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
  const __m256i M0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i M1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (index_t t = 0; t < kGroups; t += 8) {
    auto ld = [](const uint32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); };
    __m256i x0 = ld(c0 + t), x1 = ld(c1 + t), x2 = ld(c2 + t), x3 = ld(c3 + t);
    uint32_t a = k0, b = k1;
    for (int r = 0; r < 10; ++r) {
      const __m256i hi0 = mulhi_epu32(x0, M0), lo0 = _mm256_mullo_epi32(x0, M0);
      const __m256i hi1 = mulhi_epu32(x2, M1), lo1 = _mm256_mullo_epi32(x2, M1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(a)));
      x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(b)));
      x1 = lo1;
      x3 = lo0;
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    auto st = [](uint32_t* p, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); };
    st(c0 + t, x0);
    st(c1 + t, x1);
    st(c2 + t, x2);
    st(c3 + t, x3);
  }
}
#else
void philox_rounds(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
#pragma omp simd
    for (index_t t = 0; t < kGroups; ++t) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[t];
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[t];
      const uint32_t x0 = static_cast<uint32_t>(p1 >> 32) ^ c1[t] ^ k0;
      const uint32_t x2 = static_cast<uint32_t>(p0 >> 32) ^ c3[t] ^ k1;
      c1[t] = static_cast<uint32_t>(p1);
      c3[t] = static_cast<uint32_t>(p0);
      c0[t] = x0;
      c2[t] = x2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}
#endif

// The 4 * kGroups normals of the counters g0 .. g0 + kGroups - 1, in stream order.
void normals_of_groups(uint64_t key, uint64_t g0, float* out) {
  alignas(64) uint32_t c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  alignas(64) float n0[kGroups], n1[kGroups], n2[kGroups], n3[kGroups];
#pragma omp simd
  for (index_t t = 0; t < kGroups; ++t) {
    const uint64_t c = g0 + static_cast<uint64_t>(t);
    c0[t] = static_cast<uint32_t>(c);
    c1[t] = static_cast<uint32_t>(c >> 32);
    c2[t] = 0;
    c3[t] = 0;
  }
  philox_rounds(c0, c1, c2, c3, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
#pragma omp simd
  for (index_t t = 0; t < kGroups; ++t) {
    box_muller(c0[t], c1[t], &n0[t], &n1[t]);
    box_muller(c2[t], c3[t], &n2[t], &n3[t]);
  }
  for (index_t t = 0; t < kGroups; ++t) {
    out[4 * t + 0] = n0[t];
    out[4 * t + 1] = n1[t];
    out[4 * t + 2] = n2[t];
    out[4 * t + 3] = n3[t];
  }
}

// eps for the flat indices [j0, j0 + n), n <= kNormalBlock.
void fill_normals(uint64_t key, index_t j0, index_t n, float* out) {
  const uint64_t g0 = static_cast<uint64_t>(j0) >> 2;
  const index_t off = j0 & 3;
  if (off == 0 && n == kNormalBlock) {  // the common case: a whole aligned block
    normals_of_groups(key, g0, out);
    return;
  }
  alignas(64) float tmp[kNormalBlock + 4];
  normals_of_groups(key, g0, tmp);
  if (off + n > kNormalBlock) normal4(g0 + kGroups, key, tmp + kNormalBlock);  // the block straddles one more counter
  for (index_t t = 0; t < n; ++t) out[t] = tmp[off + t];
}

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae
