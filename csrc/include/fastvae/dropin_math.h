// Per-element terms of the drop-in ops (fastvae/dropin_ops.py: torch's Normal.log_prob, kl_divergence(Normal,
// Normal), Normal.rsample, F.gaussian_nll_loss and F.binary_cross_entropy_with_logits, element-wise, in torch's
// parameterizations) and their derivatives, shared by the CPU (csrc/cpu/dropin.cpp) and CUDA (csrc/cuda/dropin.cu)
// kernels. T is the arithmetic type: float for float32/float16/bfloat16 data, double for float64.
//
// Every term is the negative log density (a loss); log_prob is the op with factor -1. Gradient helpers take the
// incoming gradient g first and fold it in before anything that can overflow: a zero g gives 0 where the
// derivative itself is infinite (mul0, finite_math.h), as the existing kernels do; a NaN anywhere gives NaN.
#pragma once
#include "fastvae/finite_math.h"
#include "fastvae/gaussian_math.h"  // gaussian_nll_term_grad: the log-variance derivatives, bit for bit
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

// log(x) for every float: -inf at 0, NaN below 0 (torch's log of a negative scale), inf at inf, NaN for NaN;
// subnormals scaled into the normal range first (a scale of 1e-40 has a finite log). Selects only: vectorises.
FV_HD float dropin_log(float x) {
  const bool sub = x < 1.17549435e-38f;                  // subnormal, zero or negative
  const float xs = sub ? x * 8388608.0f : x;             // * 2^23
  const float pos = xs > 0.0f && xs < 3.40282347e38f ? xs : 1.0f;  // keep fv_logf_pos in its domain
  float r = fv_logf_pos(pos) - (sub ? 15.9423851528787f : 0.0f);  // - 23 log 2
  r = x == 0.0f ? -INFINITY : r;
  r = x > 3.40282347e38f ? INFINITY : r;
  r = x < 0.0f ? NAN : r;
  return x != x ? x : r;
}
FV_HD double dropin_log(double x) { return log(x); }

// log(1 + t) for t = e^-a in [0, 1] (the softplus tail), given t, without a division: the log polynomial (vmath.h)
// at f = t (exact) where 1 + t <= sqrt 2, else at f = (1 + t) / 2 - 1 = (t - 1) / 2 (exact for t >= 1/2 by Sterbenz,
// within half an ulp below) with one factor 2; 1 + t itself, and its rounding, never appear.
FV_HD float dropin_log1p_small(float t) {
  const bool small = t <= 0.41421356f;
  return fv_log_reduced(small ? t : fv_fma(t, 0.5f, -0.5f), small ? 0.0f : 1.0f);
}
FV_HD double dropin_log1p_small(double t) { return log1p(t); }

// sigmoid(l) from t = e^-|l|
template <class T>
FV_HD T dropin_sigmoid_given(T l, T t) {
  const T inv = T(1) / (T(1) + t);
  return l >= T(0) ? inv : t * inv;
}

// ---- Normal negative log density: three parameterizations of the spread ----------------------------------------
// param 0 (scale s): 0.5 ((x - m) / s)^2 + log s + c. torch computes (x - m)^2 / (2 s^2); dividing first keeps
// ((x - m) / s)^2 finite where s^2 alone would underflow (s = 1e-30 in float32).
template <class T>
FV_HD T nll_scale_term(T x, T m, T s, T c) {
  const T d = (x - m) / s;
  return T(0.5) * (d * d) + dropin_log(s) + c;
}

// g d/d(x, m, s): ((x - m) / s^2, -(x - m) / s^2, (1 - ((x - m) / s)^2) / s)
template <class T>
FV_HD void nll_scale_grad(T g, T x, T m, T s, T* dx, T* dm, T* ds) {
  const T d = (x - m) / s;
  const T gx = mul0(g, d) / s;
  *dx = gx;
  *dm = -gx;
  *ds = mul0(g, T(1) - d * d) / s;
}

// param 1 (variance v, F.gaussian_nll_loss): v' = max(v, floor) (a NaN v stays NaN); 0.5 ((x - m)^2 / v' + log v')
// + c, the square as (x - m) ((x - m) / v'), finite wherever the term is.
template <class T>
FV_HD T var_floor(T v, T floor) {
  return v < floor ? floor : v;
}

template <class T>
FV_HD T nll_var_term(T x, T m, T v, T floor, T c) {
  const T vf = var_floor(v, floor);
  const T d = x - m;
  return T(0.5) * (d * (d / vf) + dropin_log(vf)) + c;
}

// g d/d(x, m, v) at v' (torch clamps the variance without recording it: the derivative at v' passes through):
// ((x - m) / v', -(x - m) / v', (1 - (x - m)^2 / v') / (2 v'))
template <class T>
FV_HD void nll_var_grad(T g, T x, T m, T v, T floor, T* dx, T* dm, T* dv) {
  const T vf = var_floor(v, floor);
  const T d = x - m;
  const T t = d / vf;
  const T gx = mul0(g, t);
  *dx = gx;
  *dm = -gx;
  *dv = T(0.5) * mul0(g, T(1) - d * t) / vf;
}

// param 2 (log-variance lv): 0.5 ((x - m)^2 e^-lv + lv) + c, with finite_math.h's split exponentials.
template <class T>
FV_HD T nll_logvar_term(T x, T m, T lv, T c) {
  const T s = mul_q2(x - m, quarter_exp(-lv));
  const T s2 = s * s;  // inf for lv = -inf and x != m: the term is +inf (not inf + lv = inf - inf)
  return T(0.5) * (s2 + (s2 < T(INFINITY) ? lv : T(0))) + c;
}

template <class T>
FV_HD void nll_logvar_grad(T g, T x, T m, T lv, T* dx, T* dm, T* dlv) {
  T a, b;
  gaussian_nll_term_grad(g, x, m, lv, &a, &b);
  *dx = -a;
  *dm = a;
  *dlv = b;
}

// ---- KL(N(lp, sp) || N(lq, sq)) ----------------------------------------------------------------------------------
// 0.5 (r^2 - 1 - 2 log r) + 0.5 u^2, r = sp / sq, u = (lp - lq) / sq. With d = 2 log|r|, r^2 - 1 - d = e^d - 1 - d
// (vmath.h: a series for |d| < 1, no cancellation near r = 1). |r|: torch takes the log of r^2, so a negative
// scale gives torch's value.
template <class T>
FV_HD T kl_normal_scale_term(T lp, T sp, T lq, T sq) {
  const T r = sp / sq;
  const T u = (lp - lq) / sq;
  const T d = T(2) * dropin_log(r < T(0) ? -r : r);
  return T(0.5) * (fv_exp_m1_mx_given(d, r * r) + u * u);
}

// g d/d(lp, sp, lq, sq): (u / sq, (r^2 - 1) / sp, -u / sq, -(r^2 - 1 + u^2) / sq), r^2 - 1 = expm1(d) accurately.
// kNonzeroG: the caller knows g != 0 (a forward with gradients' uniform factor): the same values, fewer selects.
template <class T, bool kNonzeroG = false>
FV_HD void kl_normal_scale_grad(T g, T lp, T sp, T lq, T sq, T* dlp, T* dsp, T* dlq, T* dsq) {
  const T r = sp / sq;
  const T u = (lp - lq) / sq;
  const T d = T(2) * dropin_log(r < T(0) ? -r : r);
  const T em1 = fv_expm1_given(d, r * r);  // r^2 - 1
  const T gu = mul0_if<kNonzeroG>(g, u) / sq;
  *dlp = gu;
  *dlq = -gu;
  // (r^2 - 1) / sp = r / sq - 1 / sp: where r^2 overflowed (sp = +-inf) its limit r / sq, not inf / inf
  *dsp = em1 < T(INFINITY) ? mul0_if<kNonzeroG>(g, em1) / sp : mul0_if<kNonzeroG>(g, r / sq);
  *dsq = -mul0_if<kNonzeroG>(g, em1 + u * u) / sq;
}

// ---- binary cross-entropy with logits -----------------------------------------------------------------------------
// w ((1 + (pw - 1) y) softplus(-l) + (1 - y) l). With softplus(-l) = max(-l, 0) + log(1 + e^-|l|) the linear parts
// combine into one coefficient of |l|: (1 - y) for l > 0, pw y otherwise, so
//   loss = w (c |l| + A log(1 + e^-|l|)),  A = 1 + (pw - 1) y,
// no difference of large terms for any logit; a zero c times an infinite logit counts as 0 (the limit, where
// torch's formula gives NaN), so (l, y) = (+-inf, the matching label) gives 0.
// kUnit: w = pw = 1 (no weights: the common call, and torch.distributions' Bernoulli), A = 1 folded in (1 + 0 y is
// not folded by the compiler): the same values for every finite or NaN target (an infinite one gives inf or NaN
// where the weighted form gives NaN; torch gives inf or NaN too).
template <class T, bool kUnit = false>
FV_HD T bce_logits_term(T l, T y, T w, T pw) {
  const T a = l < T(0) ? -l : l;
  const T c = l > T(0) ? T(1) - y : (kUnit ? y : pw * y);
  const T lin = c == T(0) ? T(0) : c * a;
  const T L = dropin_log1p_small(fv_exp_nonpos(-a));  // -a <= 0 (or NaN)
  if constexpr (kUnit) return lin + L;
  else return w * (lin + (T(1) + (pw - T(1)) * y) * L);
}

// g d/d(l, y): g w (A sigmoid(l) - pw y) and g w ((pw - 1) softplus(-l) - l), the latter as
// (l < 0 ? -pw l : -l) + (pw - 1) log(1 + e^-|l|); one exponential for both. kWantY false: d/dy is not computed
// (the common case, a target without gradient: one log less).
template <bool kWantY, class T, bool kUnit = false>
FV_HD void bce_logits_grad(T g, T l, T y, T w, T pw, T* dl, T* dy) {
  const T gw = kUnit ? g : g * w;
  const T a = l < T(0) ? -l : l;
  const T t = fv_exp_nonpos(-a);
  if constexpr (kUnit) *dl = gw * (dropin_sigmoid_given(l, t) - y);
  else *dl = gw * ((T(1) + (pw - T(1)) * y) * dropin_sigmoid_given(l, t) - pw * y);
  if (kWantY) {
    const T lin = mul0(l < T(0) ? pw : T(1), -l);
    *dy = mul0(gw, lin + (pw - T(1)) * dropin_log1p_small(t));
  }
}

}  // namespace fastvae
