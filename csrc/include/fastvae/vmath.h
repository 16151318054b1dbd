// Branch-free float transcendentals that GCC vectorises (selects, no calls; the kernels are compiled with
// -fno-math-errno -fno-trapping-math so that sqrt and NaN compares stay vector instructions) and that CUDA
// runs as plain FMA chains. Polynomials are Cephes' (S. Moshier), accurate to about 2 ulp on the ranges
// given. Double precision callers use the C library: float64 is for reference-grade checks, not speed.
#pragma once
#include <cmath>
#include <cstring>
#include "fastvae/types.h"

namespace fastvae {

FV_HD float fv_bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  return __builtin_bit_cast(float, i);
#endif
}

FV_HD int32_t fv_float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  return __builtin_bit_cast(int32_t, f);
#endif
}

// a * b + c: one fused instruction on CUDA and on CPUs with FMA; two roundings on baseline x86-64, where
// fmaf() would be a library call that stops vectorisation.
FV_HD float fv_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__)
  return fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// Round to nearest integer for |v| < 2^22 without a call (vectorises on baseline x86-64 too).
FV_HD float fv_round_small(float v) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (v + magic) - magic;
}

// e^xc for xc in [-104, 89] (or NaN, which gives NaN): the polynomial and scaling of fv_expf.
FV_HD float fv_expf_core(float xc) {
  const float n = fv_round_small(xc * 1.44269504088896341f);
  float r = fv_fma(n, -0.693359375f, xc);
  r = fv_fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fv_fma(p, r, 1.3981999507e-3f);
  p = fv_fma(p, r, 8.3334519073e-3f);
  p = fv_fma(p, r, 4.1665795894e-2f);
  p = fv_fma(p, r, 1.6666665459e-1f);
  p = fv_fma(p, r, 5.0000001201e-1f);
  const float y = fv_fma(p, r * r, r) + 1.0f;
  // 2^n as two factors so that n in [-150, 129] never leaves the normal exponent range.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const float s1 = fv_bits_to_float((n1 + 127) << 23);
  const float s2 = fv_bits_to_float((n2 + 127) << 23);
  return y * s1 * s2;
}

// exp(x) for every float x: overflow gives inf, underflow 0 (through denormals), NaN stays NaN.
FV_HD float fv_expf(float x) {
  // clamp with compares, not fminf/fmaxf: those only vectorise under finite-math (NaN is restored below)
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  const float out = fv_expf_core(xc);
  return x != x ? x : out;
}

// exp(x) for x <= 0 or NaN (callers guarantee the sign): fv_expf's values (bitwise, NaN as NaN) without the
// upper clamp and the NaN select (the compare clamp passes a NaN through, and the core turns it into a NaN).
FV_HD float fv_expf_nonpos(float x) { return fv_expf_core(x < -104.0f ? -104.0f : x); }

// log(2^fe (1 + f)) for f in [-0.293, 0.415] and an integer fe: the polynomial of fv_logf_pos.
FV_HD float fv_log_reduced(float f, float fe) {
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = fv_fma(y, f, -1.1514610310e-1f);
  y = fv_fma(y, f, 1.1676998740e-1f);
  y = fv_fma(y, f, -1.2420140846e-1f);
  y = fv_fma(y, f, 1.4249322787e-1f);
  y = fv_fma(y, f, -1.6668057665e-1f);
  y = fv_fma(y, f, 2.0000714765e-1f);
  y = fv_fma(y, f, -2.4999993993e-1f);
  y = fv_fma(y, f, 3.3333331174e-1f);
  y = y * f * z;
  y = fv_fma(fe, -2.12194440e-4f, y);
  y = fv_fma(-0.5f, z, y);
  return fv_fma(fe, 0.693359375f, f + y);
}

// log(x) for positive, normal x (callers guarantee the domain); NaN stays NaN and +inf gives +inf (the bit
// arithmetic below would read them as finite numbers near 2^128: a NaN became log 2^128 = 88.7).
FV_HD float fv_logf_pos(float x) {
  const int32_t ix = fv_float_to_bits(x);
  int32_t e = ((ix >> 23) & 0xff) - 127;
  float m = fv_bits_to_float((ix & 0x007fffff) | 0x3f800000);  // in [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float out = fv_log_reduced(m - 1.0f, static_cast<float>(e));  // m - 1 in [-0.293, 0.415]
  return x < INFINITY ? out : x;  // one compare (vectorises): false for NaN and +inf
}

// sin(pi x) and cos(pi x) for x in [-1, 1].
FV_HD void fv_sincospif(float x, float* s_out, float* c_out) {
  const float q = fv_round_small(2.0f * x);  // quadrant, in {-2, ..., 2}
  const float t = (x - 0.5f * q) * 3.14159265358979f;  // in [-pi/4, pi/4]
  const float z = t * t;
  float s = fv_fma(-1.9515295891e-4f, z, 8.3321608736e-3f);
  s = fv_fma(s, z, -1.6666654611e-1f);
  s = fv_fma(s * z, t, t);
  float c = fv_fma(2.443315711809948e-5f, z, -1.388731625493765e-3f);
  c = fv_fma(c, z, 4.166664568298827e-2f);
  c = fv_fma(c * z, z, fv_fma(-0.5f, z, 1.0f));
  const int32_t qi = static_cast<int32_t>(q) & 3;
  const float sa = (qi & 1) ? c : s;  // swap on odd quadrants
  const float ca = (qi & 1) ? s : c;
  *s_out = (qi & 2) ? -sa : sa;
  *c_out = ((qi + 1) & 2) ? -ca : ca;
}

// log(1 + exp(-a)) for a >= 0 (or a = +inf): the tail of softplus, accurate near 0 and for large a.
FV_HD float fv_log1p_exp_neg(float a) {
  const float t = fv_expf(-a);  // in [0, 1]
  const float u = 1.0f + t;
  const float den = u - 1.0f;
  const float safe_den = den == 0.0f ? 1.0f : den;
  return den == 0.0f ? t : fv_logf_pos(u) * (t / safe_den);
}

// ---- the overloads the elementwise kernels call: float -> the code above, double -> libm ----
FV_HD float fv_exp(float x) { return fv_expf(x); }
FV_HD double fv_exp(double x) { return exp(x); }
FV_HD float fv_exp_nonpos(float x) { return fv_expf_nonpos(x); }
FV_HD double fv_exp_nonpos(double x) { return exp(x); }
FV_HD double fv_log1p_exp_neg(double a) { return log1p(exp(-a)); }

// (e^x - 1 - x) / x^2 = sum_{k >= 2} x^(k-2) / k! for |x| <= 1, by Horner: the Taylor series cut where its next
// term is below the type's rounding (1/13! for float, 1/20! for double, relative to the sum >= 0.36).
FV_HD float fv_exp_tail_series(float x) {
  float p = 2.08767570e-9f;
  p = fv_fma(p, x, 2.50521084e-8f);
  p = fv_fma(p, x, 2.75573192e-7f);
  p = fv_fma(p, x, 2.75573192e-6f);
  p = fv_fma(p, x, 2.48015873e-5f);
  p = fv_fma(p, x, 1.98412698e-4f);
  p = fv_fma(p, x, 1.38888889e-3f);
  p = fv_fma(p, x, 8.33333333e-3f);
  p = fv_fma(p, x, 4.16666667e-2f);
  p = fv_fma(p, x, 1.66666667e-1f);
  return fv_fma(p, x, 0.5f);
}

FV_HD double fv_exp_tail_series(double x) {
  const double c[18] = {0.5,
                        0.16666666666666666,
                        0.041666666666666664,
                        0.008333333333333333,
                        0.001388888888888889,
                        0.0001984126984126984,
                        2.48015873015873e-05,
                        2.7557319223985893e-06,
                        2.755731922398589e-07,
                        2.505210838544172e-08,
                        2.08767569878681e-09,
                        1.6059043836821613e-10,
                        1.1470745597729725e-11,
                        7.647163731819816e-13,
                        4.779477332387385e-14,
                        2.8114572543455206e-15,
                        1.5619206968586225e-16,
                        8.22063524662433e-18};
  double p = c[17];
  for (int k = 16; k >= 0; --k) p = p * x + c[k];
  return p;
}

// e^x - 1 - x without cancellation near 0 (the KL terms: e^(lv - lp) - 1 - (lv - lp) of two close variances),
// and e^x - 1 (their gradients), given e = e^x (computed by the caller, or shared with another term); finite for
// every finite x whose value is (inf above ~88.7 / 709.8), +inf at x = +-inf (where e overflowed, x is left
// out: inf - inf was NaN), NaN for NaN.
template <class T>
FV_HD T fv_exp_m1_mx_given(T x, T e) {
  const bool small = (x < T(0) ? -x : x) < T(1);  // |x| < 1 in one compare (vectorises); NaN takes the exp branch
  const T series = x * x * fv_exp_tail_series(small ? x : T(0));
  const T xs = e < T(INFINITY) ? x : T(0);
  return small ? series : (e - T(1)) - xs;
}

template <class T>
FV_HD T fv_expm1_given(T x, T e) {
  const bool small = (x < T(0) ? -x : x) < T(1);
  const T series = x + x * x * fv_exp_tail_series(small ? x : T(0));
  return small ? series : e - T(1);
}

template <class T>
FV_HD T fv_exp_m1_mx(T x) {
  return fv_exp_m1_mx_given(x, fv_exp(x));
}

template <class T>
FV_HD T fv_expm1(T x) {
  return fv_expm1_given(x, fv_exp(x));
}

}  // namespace fastvae
