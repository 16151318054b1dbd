// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the normal
// transform used by every random op, on CPU and CUDA alike.
//
// The random stream of an op call is fixed by a 64-bit key (drawn from the caller's torch.Generator):
// eps[j], for the flat index j of the op's output, is lane (j % 4) of the Box-Muller transform of
// philox(counter = j / 4, key).  So the same key gives the same eps on any device, any thread count and
// any launch shape, and a backward pass regenerates eps instead of storing it.
#pragma once
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

struct Philox4 {
  uint32_t v[4];
};

FV_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Philox4x32-10 of a 4-word counter and a 2-word key (Random123's known answers are tested against it).
FV_HD Philox4 philox4x32_10_full(const uint32_t ctr[4], const uint32_t key[2]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The stream's form: counter = (c_lo, c_hi, 0, 0), key = (k_lo, k_hi).
FV_HD Philox4 philox4x32_10(uint64_t counter, uint64_t key) {
  const uint32_t ctr[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u};
  const uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  return philox4x32_10_full(ctr, k);
}

// A uniform in (0, 1]: 31 random bits plus half a step, so log() below never sees 0.
FV_HD float uniform_open0(uint32_t x) {
  return static_cast<float>(static_cast<int32_t>(x >> 1)) * 4.656612873077392578125e-10f  // 2^-31
         + 2.3283064365386962890625e-10f;                                                   // 2^-32
}

// Box-Muller on two words: (r cos(theta), r sin(theta)), r = sqrt(-2 log u1), theta = pi * (2 u2 - 1).
FV_HD void box_muller(uint32_t a, uint32_t b, float* n0, float* n1) {
  const float u1 = uniform_open0(a);
  const float x = 2.0f * uniform_open0(b) - 1.0f;  // in (-1, 1]
  const float r = sqrtf(-2.0f * fv_logf_pos(u1));
  float s, c;
  fv_sincospif(x, &s, &c);
  *n0 = r * c;
  *n1 = r * s;
}

// The four standard normals of counter `group` (the flat indices 4*group .. 4*group+3).
FV_HD void normal4(uint64_t group, uint64_t key, float out[4]) {
  const Philox4 p = philox4x32_10(group, key);
  box_muller(p.v[0], p.v[1], &out[0], &out[1]);
  box_muller(p.v[2], p.v[3], &out[2], &out[3]);
}

// eps[j] for one flat index (slow path: edges of a range).
FV_HD float normal_at(uint64_t j, uint64_t key) {
  float n[4];
  normal4(j >> 2, key, n);
  return n[j & 3];
}

// The normals of the flat indices j0 .. j0 + n - 1, n <= 4 (one Philox call when j0 is a multiple of 4; the
// entries past n are 0): the CUDA kernels' per-thread draw.
FV_HD void eps4(uint64_t key, int64_t j0, int n, float e[4]) {
  if ((j0 & 3) == 0) {
    normal4(static_cast<uint64_t>(j0) >> 2, key, e);
  } else {
    for (int t = 0; t < 4; ++t) e[t] = t < n ? normal_at(static_cast<uint64_t>(j0 + t), key) : 0.0f;
  }
}

}  // namespace fastvae
