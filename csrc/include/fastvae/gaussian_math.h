// Per-element terms of the Gaussian / Bernoulli VAE losses and their derivatives, shared by the CPU and
// CUDA kernels. T is the arithmetic type: float for float32/float16/bfloat16 data, double for float64.
#pragma once
#include "fastvae/finite_math.h"
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

// z = mu + e^(lv/2) eps, with q = quarter_exp(lv) (shared by every reparameterization kernel: the same z for
// the same seed).
template <class T>
FV_HD T reparam_z(T mu, T q, T eps) {
  return mu + mul_q2(eps, q);
}

// KL(N(mu, e^lv) || N(0, 1)) for one coordinate: (mu^2 + e^lv - 1 - lv) / 2, e^lv - 1 - lv without
// cancellation near lv = 0.
template <class T>
FV_HD T kl_std_term(T mu, T lv) {
  return T(0.5) * (mu * mu + fv_exp_m1_mx(lv));
}

// The same from q = quarter_exp(lv), the exp the fused head computes for z anyway (e^lv = q^4).
template <class T>
FV_HD T kl_std_term_q(T mu, T lv, T q) {
  return T(0.5) * (mu * mu + fv_exp_m1_mx_given(lv, (q * q) * (q * q)));
}

// g (e^lv - 1) for q = quarter_exp(lv): the KL part of the fused head's d/dlogvar (times 2). g e^lv as
// mul_q2(mul_q2(g, q), q), finite wherever it is (a zero g with a huge lv: 0); a series near lv = 0.
template <class T>
FV_HD T kl_std_grad_q(T g, T lv, T q) {
  const bool small = (lv < T(0) ? -lv : lv) < T(1);  // |lv| < 1, one compare (vectorises; NaN: false)
  const T big = mul_q2(mul_q2(g, q), q) - g;
  return small ? g * fv_expm1_given(lv, T(0)) : big;
}

// KL(N(mu, e^lv) || N(mp, e^lp)) for one coordinate: (e^d - 1 - d + (mu - mp)^2 e^-lp) / 2 with d = lv - lp.
// e^(lv - lp) rather than e^lv * e^-lp: two tiny (or two large) variances have a finite ratio; (mu - mp)^2 e^-lp
// as s^2 with s = (mu - mp) e^(-lp/2) = mul_q2(mu - mp, e^(-lp/4)).
template <class T>
FV_HD T kl_term(T mu, T lv, T mp, T lp) {
  const T s = mul_q2(mu - mp, quarter_exp(-lp));
  return T(0.5) * (fv_exp_m1_mx(lv - lp) + s * s);
}

// g d kl_term / d(mu, lv, mp, lp), g the incoming gradient (folded in first: a zero g gives zero gradients
// where the derivative itself overflows)
template <class T>
FV_HD void kl_term_grad(T g, T mu, T lv, T mp, T lp, T* d_mu, T* d_lv, T* d_mp, T* d_lp) {
  const T q = quarter_exp(-lp);
  const T s = mul_q2(mu - mp, q);                  // (mu - mp) e^(-lp/2)
  const T gm = mul_q2(mul_q2(g * (mu - mp), q), q);  // g (mu - mp) e^-lp
  const T gl = T(0.5) * mul0(g, fv_expm1(lv - lp));  // g (e^(lv - lp) - 1) / 2
  *d_mu = gm;
  *d_lv = gl;
  *d_mp = -gm;
  *d_lp = -gl - T(0.5) * mul_q2(g, s);
}

// -log N(x | m, e^lv) for one coordinate, 0.5 log(2 pi) included: ((x - m)^2 e^-lv + lv + log 2 pi) / 2, the
// first term as s^2 with s = (x - m) e^(-lv/2) (0 for x == m, whatever lv). Where s^2 overflows, lv is left out:
// the term is +inf (lv = -inf with x != m was inf - inf = NaN).
template <class T>
FV_HD T gaussian_nll_term(T x, T m, T lv) {
  const T s = mul_q2(x - m, quarter_exp(-lv));
  const T s2 = s * s;
  return T(0.5) * (s2 + (s2 < T(INFINITY) ? lv : T(0)) + T(kLog2Pi));
}

// g d gaussian_nll_term / d(m, lv) = g ((m - x) e^-lv, (1 - (x - m)^2 e^-lv) / 2), g the incoming gradient
template <class T>
FV_HD void gaussian_nll_term_grad(T g, T x, T m, T lv, T* d_m, T* d_lv) {
  const T q = quarter_exp(-lv);
  const T s = mul_q2(m - x, q);  // (m - x) e^(-lv/2)
  *d_m = mul_q2(mul_q2(g * (m - x), q), q);
  *d_lv = T(0.5) * (g - mul_q2(g, s));
}

// -log Bernoulli(x | sigmoid(l)) = softplus(l) - x l, stable for any l (x may be a probability), written as
// w |l| + log(1 + e^-|l|) with w = 1 - x for l > 0 and x otherwise; a zero weight times an infinite logit
// counts as 0, so (l, x) = (+-inf, 0 or 1) give their limits (0 or inf) instead of inf - inf.
template <class T>
FV_HD T bernoulli_nll_term(T l, T x) {
  const T a = l < T(0) ? -l : l;
  const T w = l > T(0) ? T(1) - x : x;
  const T lin = w == T(0) ? T(0) : w * a;
  return lin + fv_log1p_exp_neg(a);
}

}  // namespace fastvae
