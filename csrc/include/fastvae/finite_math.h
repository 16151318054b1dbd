// The finite products and the stable sigmoid that every family's per-element math builds on, shared by the CPU and
// CUDA kernels. T is the arithmetic type: float for float32/float16/bfloat16 data, double for float64.
#pragma once
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

// Finite math gives finite numbers. A variance enters as e^lv, which over/underflows long before the terms it
// scales do (e^-lv overflows float32 below lv = -88.7, where (x - m)^2 e^-lv may still be tiny, or exactly 0 when
// x == m). So the exponentials are split: a e^(lv/2) is computed as (a q) q with q = e^(lv/4), which stays
// finite for |lv| up to ~355 (float32) / ~2840 (float64) and beyond that overflows only where the product
// does; and a zero factor gives 0 whatever q is (the limit of the term), never 0 * inf = NaN.

// a q^2 as (a q) q; 0 for a == 0 (unless q is NaN: a NaN stays NaN).
template <class T>
FV_HD T mul_q2(T a, T q) {
  const T s = (a * q) * q;
  return a == T(0) ? (q == q ? T(0) : q) : s;  // nested, not &&: GCC vectorises this select, not the other
}

// a b, 0 for a == 0 (unless b is NaN): an incoming gradient of 0 times a derivative that overflowed.
template <class T>
FV_HD T mul0(T a, T b) {
  return a == T(0) ? (b == b ? T(0) : b) : a * b;
}

// mul0 where the caller may know a != 0 (kNonzero: a uniform factor checked once per call, not per element): then
// a b, bitwise mul0's value, without its two compares and selects.
template <bool kNonzero, class T>
FV_HD T mul0_if(T a, T b) {
  if constexpr (kNonzero) return a * b;
  else return mul0(a, b);
}

// q = e^(lv/4) of a log-variance: mul_q2(a, q) = a e^(lv/2) (a times the standard deviation).
template <class T>
FV_HD T quarter_exp(T lv) {
  return fv_exp(T(0.25) * lv);
}

// sigmoid(l), stable for any l.
template <class T>
FV_HD T sigmoid(T l) {
  const T t = fv_exp(l < T(0) ? l : -l);  // exp(-|l|)
  const T inv = T(1) / (T(1) + t);
  return l >= T(0) ? inv : t * inv;
}

}  // namespace fastvae
