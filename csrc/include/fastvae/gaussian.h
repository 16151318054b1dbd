// Per-element terms of the Gaussian / Bernoulli VAE losses and their derivatives, shared by the CPU and
// CUDA kernels. T is the arithmetic type: float for float32/float16/bfloat16 data, double for float64.
#pragma once
#include "fastvae/common.h"
#include "fastvae/vmath.h"

namespace fastvae {

// KL(N(mu, e^lv) || N(0, 1)) for one coordinate.
template <class T>
FV_HD T kl_std_term(T mu, T lv) {
  return T(0.5) * (mu * mu + fv_exp(lv) - T(1) - lv);
}

// KL(N(mu, e^lv) || N(mp, e^lp)) for one coordinate; exp(lv - lp) rather than e^lv * e^-lp, so that two
// large variances do not overflow.
template <class T>
FV_HD T kl_term(T mu, T lv, T mp, T lp) {
  const T d = mu - mp;
  return T(0.5) * (lp - lv + fv_exp(lv - lp) + d * d * fv_exp(-lp) - T(1));
}

// d kl_term / d(mu, lv, mp, lp)
template <class T>
FV_HD void kl_term_grad(T mu, T lv, T mp, T lp, T* d_mu, T* d_lv, T* d_mp, T* d_lp) {
  const T d = mu - mp;
  const T ilp = fv_exp(-lp);
  const T ratio = fv_exp(lv - lp);
  *d_mu = d * ilp;
  *d_lv = T(0.5) * (ratio - T(1));
  *d_mp = -d * ilp;
  *d_lp = T(0.5) * (T(1) - ratio - d * d * ilp);
}

// -log N(x | m, e^lv) for one coordinate, 0.5 log(2 pi) included.
template <class T>
FV_HD T gaussian_nll_term(T x, T m, T lv) {
  const T r = x - m;
  return T(0.5) * (r * r * fv_exp(-lv) + lv + T(kLog2Pi));
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

// sigmoid(l), stable for any l.
template <class T>
FV_HD T sigmoid(T l) {
  const T t = fv_exp(l < T(0) ? l : -l);  // exp(-|l|)
  const T inv = T(1) / (T(1) + t);
  return l >= T(0) ? inv : t * inv;
}

}  // namespace fastvae
