// Per-pair kernel functions of the sample distances (MMD, energy distance) and the normal quantile of the
// sliced-Wasserstein prior target, shared by the CPU and CUDA kernels.
//
// Every kernel is a function of u = |x - y|^2, computed by the callers from dot products
// (u = |x|^2 + |y|^2 - 2 x.y) and clamped at 0 (`u < 0 ? 0 : u`, which lets a NaN through), so that cancellation
// never gives a negative distance. That form carries an absolute error of a few eps (|x|^2 + |y|^2): for pairs
// closer than near_pair() says, the callers take u from the differences instead, sum_k (x_k - y_k)^2, exact to a
// few eps of u itself (the square root of the cancelled form made coincident points 1e-8 |x| apart in float64).
// `p` is the per-bandwidth parameter from kernel_param_as(); value() is k(u) and dk_du() is dk/du, the
// gradient weight: d k / d x = 2 dk_du(u) (x - y), set to 0 at u = 0 for every kernel (x = y: the gradient of
// |x - y| there is 0, never NaN).
#pragma once
#include <cfloat>
#include <cmath>

#include "fastvae/distances_types.h"
#include "fastvae/types.h"
#include "fastvae/vmath.h"

namespace fastvae {

// The per-bandwidth parameter, in forms that are finite for every positive finite bandwidth h:
//   rbf        p = 1 / (2 h^2)      k = exp(-p u)
//   imq        c = 1 / (2 d h^2)    k = C / (C + u) = 1 / (1 + c u)   (C = 2 d h^2 itself overflows for large h)
//   laplacian  p = 1 / h            k = exp(-p sqrt(u))
//   energy     p = 1                k = -p sqrt(u)
// The kernels see the points divided by a power of two s (see data_scale()), u = |x - y|^2 / s^2: the parameter of
// bandwidth h on them is that of h / s (energy: p = s). A tiny h makes p (c) overflow: kernel_param_as()
// saturates it at the element type's largest finite value, which keeps the limits k(0) = 1 and k(u > 0) = 0 (a
// huge h gives p = 0 and k = 1, the other limit).
FV_HD double kernel_param(DistKernel k, double h, double d, double s) {
  const double r = s / h;
  switch (k) {
    case DistKernel::Rbf: return 0.5 * r * r;
    case DistKernel::Imq: return 0.5 * r * r / d;
    case DistKernel::Laplacian: return r;
    default: return s;
  }
}

template <class T>
FV_HD T kernel_param_as(DistKernel k, double h, double d, double s) {
  const double big = sizeof(T) == sizeof(float) ? FLT_MAX : DBL_MAX;
  const double p = kernel_param(k, h, d, s);
  return static_cast<T>(p < big ? p : big);
}

// The power of two s by which the (centred) points are divided so that the largest coordinate magnitude m falls in
// [1/2, 1): |x - y|^2 can then neither overflow (|x| > 1.8e19 in float32 made u = inf, and the energy kernel
// -sqrt(inf) - -sqrt(inf) NaN) nor underflow (points at 1e-25 had u = 0). Exact: scaling by a power of two
// changes no rounding of the points and distances (results on ordinary data differ from those of s = 1 only by
// the double rounding of the parameters). s stays where s and 1/s are normal in T (1 for m = 0 or not finite).
template <class T>
FV_HD double data_scale(double m) {
  if (!(m > 0) || !(m <= DBL_MAX)) return 1.0;
  int e;
  frexp(m, &e);  // m = f 2^e, f in [1/2, 1)
  const int lim = sizeof(T) == sizeof(float) ? 125 : 1021;
  e = e < -lim ? -lim : (e > lim ? lim : e);
  return ldexp(1.0, e);
}

// Whether u from the dot-product form is too close to its rounding error (a few eps (na + nb)) to be used: below
// 1/8 of na + nb the relative error of u would exceed ~8 (d + 2) eps, so such pairs (coincident and near-coincident
// ones; rare among the pairs of spread-out points) are recomputed from the differences. NaN: false (stays NaN).
// float64 only: in float32 (the training path) the test alone cost 10-14% of the imq and laplacian MMD (measured),
// and float32 distances keep the dot-product form's ~sqrt(eps32) |x| resolution of coincident points.
template <class T>
FV_HD bool near_pair(T u, T na, T nb) {
  return sizeof(T) == sizeof(double) && u < T(0.125) * (na + nb);
}

FV_HD float fv_sqrt(float u) { return sqrtf(u); }
FV_HD double fv_sqrt(double u) { return sqrt(u); }

// dk/du of a pair at u = 0 (coincident points, or closer than the dot-product form resolves) is taken as 0 for
// every kernel: the pair's gradient is dk/du (a - b) with a - b = 0, and a saturated parameter (rbf, imq with a
// tiny h) would otherwise turn that 0 into inf - inf in the s_i a_i - G_i form of the gradient.
template <DistKernel K>
struct PairKernel;

// k = exp(-u / (2 h^2))
template <>
struct PairKernel<DistKernel::Rbf> {
  template <class T>
  FV_HD T value(T u, T p) { return fv_exp(-p * u); }
  template <class T>
  FV_HD T dk_du(T u, T p) { return u == T(0) ? T(0) : -p * fv_exp(-p * u); }
};

// k = 1 / (1 + c u)
template <>
struct PairKernel<DistKernel::Imq> {
  template <class T>
  FV_HD T value(T u, T c) { return T(1) / (T(1) + c * u); }
  template <class T>
  FV_HD T dk_du(T u, T c) {
    const T t = T(1) / (T(1) + c * u);
    return u == T(0) ? T(0) : -(c * t) * t;
  }
};

// k = exp(-sqrt(u) / h)
template <>
struct PairKernel<DistKernel::Laplacian> {
  template <class T>
  FV_HD T value(T u, T p) { return fv_exp(-p * fv_sqrt(u)); }
  template <class T>
  FV_HD T dk_du(T u, T p) {
    const T r = fv_sqrt(u);
    const T safe = r == T(0) ? T(1) : r;  // not r > 0 ? r : 1, which turned a NaN distance into 1
    const T w = T(-0.5) * p * fv_exp(-p * r) / safe;
    return r == T(0) ? T(0) : w;  // (a NaN distance stays NaN)
  }
};

// k = -p sqrt(u) (p = s: the distance in the units of the points)
template <>
struct PairKernel<DistKernel::Energy> {
  template <class T>
  FV_HD T value(T u, T p) { return -p * fv_sqrt(u); }
  template <class T>
  FV_HD T dk_du(T u, T p) {
    const T r = fv_sqrt(u);
    const T safe = r == T(0) ? T(1) : r;  // not r > 0 ? r : 1: a NaN distance stays NaN (its pair's weight)
    return r == T(0) ? T(0) : T(-0.5) * p / safe;
  }
};

// k(x, x) of one bandwidth: 1 for the bounded kernels, 0 for the energy kernel.
FV_HD double kernel_at_zero(DistKernel k) { return k == DistKernel::Energy ? 0.0 : 1.0; }

// MMD^2 = xx S_xx + yy S_yy + xy S_xy for the pair sums S (S_xx over i != j for the unbiased estimator).
struct MmdCoefs {
  double xx, yy, xy;
};

FV_HD MmdCoefs mmd_coefs(index_t N, index_t M, bool unbiased) {
  const double n = static_cast<double>(N), m = static_cast<double>(M);
  return MmdCoefs{unbiased ? 1.0 / (n * (n - 1.0)) : 1.0 / (n * n), unbiased ? 1.0 / (m * (m - 1.0)) : 1.0 / (m * m),
                  -2.0 / (n * m)};
}

// The rbf kernel against y ~ N(0, I_d), in closed form, for one bandwidth h:
//   E_y k(x, y) = (h^2 / (h^2 + 1))^(d/2) exp(-|x|^2 / (2 (h^2 + 1)))    (rbf_prior_cross, of n2 = |x|^2)
//   d/dx of it = -x rbf_prior_cross / (h^2 + 1)
//   E_{y,y'} k(y, y') = (h^2 / (h^2 + 2))^(d/2)                           (rbf_prior_yy)
FV_HD double rbf_prior_cross(double n2, double h, double d) {
  // h^2 / (h^2 + 1) = 1 / (1 + h^-2): finite for h^2 over- or underflowing (0 and 1 are the limits)
  const double h2 = h * h;
  return exp(-0.5 * d * log1p(1.0 / h2)) * exp(-n2 / (2.0 * (h2 + 1.0)));
}

FV_HD double rbf_prior_yy(double h, double d) { return exp(-0.5 * d * log1p(2.0 / (h * h))); }

// Standard normal quantile Phi^-1(q), q in (0, 1), to double precision: Acklam's rational approximation
// (relative error 1.2e-9) refined by one Halley step on erfc.
FV_HD double normal_quantile(double q) {
  const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                       1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                       6.680131188771972e+01,  -1.328068155288572e+01};
  const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                       -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  const double e[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00};
  const double lo = 0.02425, hi = 1.0 - lo;
  double x;
  if (q < lo) {
    const double t = sqrt(-2.0 * log(q));
    x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) /
        ((((e[0] * t + e[1]) * t + e[2]) * t + e[3]) * t + 1.0);
  } else if (q <= hi) {
    const double s = q - 0.5, t = s * s;
    x = (((((a[0] * t + a[1]) * t + a[2]) * t + a[3]) * t + a[4]) * t + a[5]) * s /
        (((((b[0] * t + b[1]) * t + b[2]) * t + b[3]) * t + b[4]) * t + 1.0);
  } else {
    const double t = sqrt(-2.0 * log(1.0 - q));
    x = -(((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) /
        ((((e[0] * t + e[1]) * t + e[2]) * t + e[3]) * t + 1.0);
  }
  // Halley: f(x) = Phi(x) - q, Phi(x) = erfc(-x / sqrt 2) / 2
  const double err = 0.5 * erfc(-x * 0.70710678118654752440) - q;
  const double u = err * 2.50662827463100050242 * exp(0.5 * x * x);
  return x - u / (1.0 + 0.5 * x * u);
}

// The sorted standard-normal target of the sliced-Wasserstein prior: Phi^-1((i + 1/2) / n).
FV_HD double normal_order_target(index_t i, index_t n) {
  return normal_quantile((static_cast<double>(i) + 0.5) / static_cast<double>(n));
}

// d/dd |d|^p, p >= 1 (0 at d = 0 for p = 1: the subgradient of |d| there; NaN for NaN: diff * 0).
FV_HD double abs_pow_grad(double diff, double p) {
  const double a = diff < 0 ? -diff : diff;
  const double s = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : diff * 0.0);
  if (p == 1.0) return s;
  if (p == 2.0) return 2.0 * diff;
  return a > 0 ? s * p * pow(a, p - 1.0) : diff * 0.0;
}

FV_HD double abs_pow(double diff, double p) {
  const double a = diff < 0 ? -diff : diff;
  if (p == 1.0) return a;
  if (p == 2.0) return a * a;
  return pow(a, p);
}

}  // namespace fastvae
