// Per-element log mass of a discretized logistic and its derivatives, shared by the CPU and CUDA kernels of the
// discretized-logistic likelihoods (T = float for float32/float16/bfloat16 data, double for float64).
//
// x lies on the grid of L = 2^n_bits levels c_k = 2k / (L - 1) - 1 in [-1, 1]; bins have half width h = 1 / (L - 1).
// P(x) = sigmoid((c + h - m) / s) - sigmoid((c - h - m) / s), s = e^ls, where the lowest bin reaches to -inf and the
// highest to +inf (the edge bins take the whole tail).
//
// Without cancellation, for every finite input: by the symmetry sigmoid(-z) = 1 - sigmoid(z) the bin is moved to the
// side of the mean where both of its ends, H > L, have H + L <= 0 ("the frame"). Then
//   log P = log sigmoid(H) - softplus(L) + log(1 - e^-d),  d = H - L = 2h e^-ls (computed as e^(log 2h - ls)),
// and each term is split into an exact part and a factor in [1/2, 1] (or [1 - 1/e, 1]):
//   log sigmoid(H) = min(H, 0) + log 1/(1 + e^-|H|),  -softplus(L) = log 1/(1 + e^L)  (L <= 0),
//   log(1 - e^-d) = log d + log((1 - e^-d) / d) for d < 1, else log(1 - e^-d),
// so one log of a product in [0.07, 1] remains: no log of 0, no difference of two nearly equal sigmoids, the
// midpoint-density limit log(2h) - ls - log 4 of a huge scale exact (no fallback threshold), and a tiny scale gives
// the bin's true mass (1 for a mean inside the bin, e^-(distance / s) outside; -inf only where that overflows).
// The derivatives: d log P / dm = -+ e^-ls (sigmoid(-H) - sigmoid(L)) (the 1/(e^d - 1) terms of the two ends cancel),
// d log P / dls = -H sigmoid(-H) + L sigmoid(L) - d / (e^d - 1); products of a vanishing sigmoid and an infinite end
// are 0 (their limit).
#pragma once
#include "fastvae/finite_math.h"
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

// The grid of n_bits (1 <= n_bits <= 16, checked by the binding).
template <class T>
struct LogisticGrid {
  T levels;  // L - 1 = 2^n_bits - 1, the index of the highest level
  T h;       // half a bin: 1 / (L - 1)
  T log_2h;  // log(2 h)
  T two_h;   // 2 h
};

template <class T>
inline LogisticGrid<T> logistic_grid(int n_bits) {
  const double levels = static_cast<double>((int64_t(1) << n_bits) - 1);
  return {static_cast<T>(levels), static_cast<T>(1.0 / levels), static_cast<T>(std::log(2.0 / levels)),
          static_cast<T>(2.0 / levels)};
}

// round to nearest for |v| < 2^22 (float) / 2^51 (double) without a call (vectorises on baseline x86-64)
FV_HD float lg_round(float v) { return fv_round_small(v); }
FV_HD double lg_round(double v) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  return (v + magic) - magic;
}

// log of a positive normal number (the product of the factors, in [0.07, 1], or a sum of exponentials >= 1)
FV_HD float lg_log(float v) { return fv_logf_pos(v); }
FV_HD double lg_log(double v) { return log(v); }

// Whether x is refused as data (the ops' validate_x, the check of the public functions): NaN, outside [-1, 1], or
// more than a quarter bin from the nearest level. Judged as fastvae/ops/logistic.py's _check_grid judged it in
// Python: t = (x + 1) (L - 1) / 2 in T (float32 for float32 and 16-bit data, float64 for float64), |t - round(t)|
// > 1/4. ((x + 1) / 2 is exact, so ((x + 1) / 2) (L - 1) is the one rounding of (x + 1) ((L - 1) / 2).)
template <class T>
FV_HD bool logistic_off_grid(T x, const LogisticGrid<T>& g) {
  const T t = (x + T(1)) * T(0.5) * g.levels;  // in [0, L - 1] for x in [-1, 1]: lg_round's range
  const T d = t - lg_round(t);
  return !(x >= T(-1)) | (x > T(1)) | (d > T(0.25)) | (d < T(-0.25));
}

// log P(x) of one logistic (m, ls) on the grid g; with kGrad also d log P / dm and d log P / dls. x is snapped to
// the nearest level (clamped to [-1, 1]; the public functions refuse x off the grid). kFwdValue (with kGrad): log P
// by the forward's own expression (one division more), so that a forward with gradients gives the forward's values.
template <class T, bool kGrad, bool kFwdValue = false>
FV_HD T logistic_logp(T x, T m, T ls, const LogisticGrid<T>& g, T* d_m, T* d_ls) {
  T k = lg_round((x + T(1)) * T(0.5) * g.levels);
  k = k < T(0) ? T(0) : k;
  k = k > g.levels ? g.levels : k;
  // bin centre - mean; the centre correctly rounded (a division, not a product with the rounded h: exact at -1, 0
  // and 1, where c - m is then exact for a mean close by)
  const T u = (T(2) * k - g.levels) / g.levels - m;
  const bool flip = u > T(0);
  const T au = flip ? -u : u;  // -|u|: the frame's centre
  const T q = fv_exp(T(-0.5) * ls);  // e^(-ls/2): a e^-ls = mul_q2(a, q), finite wherever the product is
  const T H = mul_q2(au + g.h, q), L = mul_q2(au - g.h, q);
  // The frame's ends that are infinite (the edge bins' tails), from the bin's index in the frame (mirrored when
  // flipped). Compares of numbers only, no select between two conditions: GCC vectorises these, not those.
  const T kf = flip ? g.levels - k : k;
  const bool hi_inf = kf > g.levels - T(0.5);
  const bool lo_inf = kf < T(0.5);
  const bool edge = (k < g.levels - k ? k : g.levels - k) < T(0.5);
  const T aH = H < T(0) ? -H : H;
  const T t = hi_inf ? T(0) : fv_exp_nonpos(-aH);  // e^-|H|
  const T h_lin = hi_inf ? T(0) : (H < T(0) ? H : T(0));
  const T eL = lo_inf ? T(0) : fv_exp_nonpos(L);  // e^L <= e^0 (L <= -|H| in the frame)
  // d = 2h e^-ls = (2h q) q (no exp of its own: finite wherever d is, 0 only where d is below the smallest normal and
  // the d < 1 branch carries it as log d = log 2h - ls). An edge bin has one infinite end, so d = inf there, which
  // makes the d terms vanish (e^-d = 0, factor 1, d / (e^d - 1) = 0).
  const T d = edge ? T(INFINITY) : (g.two_h * q) * q;
  const T ld = g.log_2h - ls;
  const bool small = d < T(1);
  const T ratio = T(1) - d * fv_exp_tail_series(small ? -d : T(0));  // (1 - e^-d) / d for d < 1
  const T emd = small ? T(1) - d * ratio : fv_exp_nonpos(-d);       // e^-d
  const T f3 = small ? ratio : T(1) - emd;
  const T d_lin = small ? ld : T(0);
  const T pt = T(1) + t, pl = T(1) + eL;  // in [1, 2]
  if constexpr (!kGrad) {
    return h_lin + d_lin + lg_log(f3 / (pt * pl));  // one division where the gradients need none
  } else {
    const T inv_t = T(1) / pt;
    const T inv_l = T(1) / pl;
    const T logp = kFwdValue ? h_lin + d_lin + lg_log(f3 / (pt * pl)) : h_lin + d_lin + lg_log((inv_t * inv_l) * f3);
    const T s_h = hi_inf ? T(0) : (H < T(0) ? inv_t : t * inv_t);  // sigmoid(-H)
    const T s_l = eL * inv_l;                                       // sigmoid(L), 0 at an infinite end
    const T diff = s_h - s_l;
    *d_m = mul_q2(flip ? diff : -diff, q);
    // d / (e^d - 1) = e^-d / ratio (d < 1) or d e^-d / (1 - e^-d)
    const T dr = (small ? emd : mul0(emd, d)) / f3;
    *d_ls = mul0(s_l, L) - mul0(s_h, H) - dr;
    return logp;
  }
}

// -log of a mixture's mass from the two log-sum-exps over its K components, sum_k e^a_k = s e^mx: (mx1, s1) over
// the logits, (mx2, s2) over logits + log P. s1 >= 1 (the largest logit's term); s2 = 0 when every component's
// mass underflowed: +inf. NaN stays NaN (a select on s2 > 0 made a NaN pixel +inf).
template <class T>
FV_HD T mixture_nll(T mx1, T s1, T mx2, T s2) {
  const T nll = (mx1 + lg_log(s1)) - (mx2 + lg_log(s2 == T(0) ? T(1) : s2));
  return s2 == T(0) ? T(INFINITY) : nll;
}

// 1 / s of such a sum, 0 for s = 0 (no component has mass: no weight), NaN for NaN
template <class T>
FV_HD T inverse_or_zero(T s) {
  return s == T(0) ? T(0) : T(1) / s;
}

}  // namespace fastvae
