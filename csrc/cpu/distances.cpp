// CPU kernels of the sample distances, compiled once per instruction set like every CPU kernel file (-DFV_ISA, see
// isa.h, which also sets FV_VEC_BYTES, the vector width); its registration (the last line) picks the table of the
// instruction set in use.
//
// MMD: the pair sums are computed in tiles of kRg rows x kTile columns, never as an N x M matrix.
//   dot_tile    kRg x kTile dot products, register-blocked (kRg x CV vector accumulators), vectorised over
//               the columns of a transposed panel of the other set (GCC vector extensions: zmm/ymm/xmm);
//   eval loops  u = max(|a|^2 + |b|^2 - 2 a.b, 0) and every bandwidth's kernel in one pass (omp simd); a near
//               pair (near_pair()) takes u from the differences instead, in a scalar pass over its row;
//   grad_tile   backward only: G += W * rows of the panel, register-blocked over d.
// Both sets are centred on the mean of x first (every kernel is translation invariant), which keeps the
// dot-product form of |a - b|^2 from cancelling. Each task owns a block of kTile rows; its partial sums are
// T over the kTile columns of one row and one bandwidth, double above that (bandwidths, rows, tiles: blocked
// summation, whose error bound does not grow with the number of bandwidths or pairs; a pair's gradient weight is
// summed over blocks of 8 bandwidths in T, the blocks in double), and tasks combine in a fixed order: the result
// does not depend on the thread count. Memory: the packed sets, O((N + M) d), plus O(kTile d) per task.
//
// Sliced-Wasserstein: one task per (batch, direction) row: LSD radix sort (8-bit digits, stable) of the
// projections with their indices, then the comparison with the sorted target. Memory O(L N).
// Every standard header before isa.h (see there).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cpu/distances_kernels.h"  // declarations only
#include "cpu/isa.h"
#include "fastvae/distance_math.h"

namespace fastvae {
namespace cpu {
namespace FV_ISA {
namespace {

#define FV_R __restrict__

constexpr index_t kTile = 64;  // rows per task and columns per panel
constexpr int kRg = 4;         // rows of the micro-kernels

template <class T>
struct VecOf {
  typedef T type __attribute__((vector_size(FV_VEC_BYTES)));
  static constexpr int W = FV_VEC_BYTES / static_cast<int>(sizeof(T));
};
// column vectors per micro-kernel pass: kRg x CV accumulators must fit the register file (32 zmm, 16 ymm/xmm)
constexpr int kCV = FV_VEC_BYTES == 64 ? 4 : 2;

template <class V, class T>
inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class T>
inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// ---------------------------------------------------------------------------------------------------------
// packing

// One set of points, centred and zero-padded: rows (np x dp), panels (np / kTile blocks of dp x kTile, the
// transposed rows), norms |row|^2 (np; computed from the same rounded values as the dot products).
template <class T>
struct Packed {
  index_t n = 0, np = 0, d = 0, dp = 0;
  std::vector<T> rows, panels, norms;
  const T* row(index_t i) const { return rows.data() + i * dp; }
  const T* panel(index_t p) const { return panels.data() + p * dp * kTile; }
};

// inv_scale: 1 / data_scale(), a power of two (exact)
template <class T>
void pack(const T* src, index_t n, index_t d, const double* center, T inv_scale, Packed<T>& out) {
  constexpr int W = VecOf<T>::W;
  out.n = n;
  out.d = d;
  out.np = (n + kTile - 1) / kTile * kTile;
  out.dp = (d + W - 1) / W * W;
  const index_t dp = out.dp;
  out.rows.assign(static_cast<size_t>(out.np * dp), T(0));
  out.panels.assign(static_cast<size_t>(out.np * dp), T(0));
  out.norms.assign(static_cast<size_t>(out.np), T(0));
  T* rows = out.rows.data();
  T* panels = out.panels.data();
  T* norms = out.norms.data();
  parallel_for(0, out.np / kTile, 4, [&](index_t b, index_t e) {
    for (index_t p = b; p < e; ++p) {
      for (index_t i = p * kTile; i < std::min(n, (p + 1) * kTile); ++i) {
        T s = 0;
        for (index_t k = 0; k < d; ++k) {
          const T v = static_cast<T>(src[i * d + k] - (center ? static_cast<T>(center[k]) : T(0))) * inv_scale;
          rows[i * dp + k] = v;
          panels[(p * dp + k) * kTile + (i - p * kTile)] = v;
          s += v * v;
        }
        norms[i] = s;
      }
    }
  });
}

// max_i,k |x[i, k] - c[k]| (as pack rounds the differences), in double; NaN if any is NaN
template <class T>
double max_abs_centred(const T* x, index_t n, index_t d, const double* c, double m) {
  for (index_t i = 0; i < n; ++i)
    for (index_t k = 0; k < d; ++k) {
      const double v = std::fabs(static_cast<double>(static_cast<T>(x[i * d + k] - static_cast<T>(c[k]))));
      m = v <= m ? m : v;  // a NaN replaces m, and stays
    }
  return m;
}

// mean of the rows of x (n x d), in double
template <class T>
void column_mean(const T* x, index_t n, index_t d, double* c) {
  for (index_t k = 0; k < d; ++k) c[k] = 0;
  for (index_t i = 0; i < n; ++i)
    for (index_t k = 0; k < d; ++k) c[k] += static_cast<double>(x[i * d + k]);
  for (index_t k = 0; k < d; ++k) c[k] /= static_cast<double>(n);
}

// ---------------------------------------------------------------------------------------------------------
// micro-kernels: plain functions over restrict pointers passed by value

// D[r][j] = sum_k a[r * dp + k] * panel[k * kTile + j], r < kRg, j < kTile
template <class T>
void dot_tile(const T* FV_R a, const T* FV_R panel, index_t dp, T* FV_R D) {
  using V = typename VecOf<T>::type;
  constexpr int W = VecOf<T>::W;
  for (int g = 0; g < kTile; g += kCV * W) {
    V acc[kRg][kCV];
    for (int r = 0; r < kRg; ++r)
      for (int v = 0; v < kCV; ++v) acc[r][v] = V{};
    for (index_t k = 0; k < dp; ++k) {
      const T* bp = panel + k * kTile + g;
      V b[kCV];
      for (int v = 0; v < kCV; ++v) b[v] = vload<V>(bp + v * W);
      for (int r = 0; r < kRg; ++r) {
        const T ar = a[r * dp + k];
        for (int v = 0; v < kCV; ++v) acc[r][v] += ar * b[v];
      }
    }
    for (int r = 0; r < kRg; ++r)
      for (int v = 0; v < kCV; ++v) vstore(D + r * kTile + g + v * W, acc[r][v]);
  }
}

// G[r * dp + k] += sum_{j < jn} w[r * kTile + j] * rows[j * dp + k] for k in [k0, k0 + NV * W)
template <class T, int NV>
void grad_tile_cols(const T* FV_R w, const T* FV_R rows, index_t dp, index_t jn, index_t k0, double* FV_R G) {
  using V = typename VecOf<T>::type;
  constexpr int W = VecOf<T>::W;
  V acc[kRg][NV];
  for (int r = 0; r < kRg; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (index_t j = 0; j < jn; ++j) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload<V>(rows + j * dp + k0 + v * W);
    for (int r = 0; r < kRg; ++r) {
      const T wr = w[r * kTile + j];
      for (int v = 0; v < NV; ++v) acc[r][v] += wr * b[v];
    }
  }
  alignas(64) T tmp[NV * W];
  for (int r = 0; r < kRg; ++r) {
    for (int v = 0; v < NV; ++v) vstore(tmp + v * W, acc[r][v]);
    double* FV_R g = G + r * dp + k0;
#pragma omp simd
    for (int t = 0; t < NV * W; ++t) g[t] += static_cast<double>(tmp[t]);
  }
}

template <class T>
void grad_tile(const T* FV_R w, const T* FV_R rows, index_t dp, index_t jn, double* FV_R G) {
  constexpr int W = VecOf<T>::W;
  index_t k0 = 0;
  for (; k0 + 4 * W <= dp; k0 += 4 * W) grad_tile_cols<T, 4>(w, rows, dp, jn, k0, G);
  switch ((dp - k0) / W) {
    case 3: grad_tile_cols<T, 3>(w, rows, dp, jn, k0, G); break;
    case 2: grad_tile_cols<T, 2>(w, rows, dp, jn, k0, G); break;
    case 1: grad_tile_cols<T, 1>(w, rows, dp, jn, k0, G); break;
    default: break;
  }
}

// u[j] = max(na + nb[j] - 2 D[j], 0): the squared distances of row a against a panel; near pairs (near_pair())
// from the differences, sum_k (a_k - panel[k][j])^2 over the d coordinates: a second vectorised pass over the
// panel (as long as the dot products') that only runs for a row that has one
template <class T>
void sq_dist_row(const T* FV_R a, T na, const T* FV_R panel, const T* FV_R nb, const T* FV_R D, index_t d,
                 T* FV_R u) {
  int near = 0;
#pragma omp simd reduction(| : near)
  for (index_t j = 0; j < kTile; ++j) {
    const T v = na + nb[j] - T(2) * D[j];
    u[j] = v < T(0) ? T(0) : v;  // NaN stays NaN
    near |= near_pair(v, na, nb[j]) ? 1 : 0;
  }
  if (!near) return;
  alignas(64) T s[kTile] = {};
  for (index_t k = 0; k < d; ++k) {
    const T ak = a[k];
    const T* FV_R pk = panel + k * kTile;
#pragma omp simd
    for (index_t j = 0; j < kTile; ++j) {
      const T t = ak - pk[j];
      s[j] += t * t;
    }
  }
#pragma omp simd
  for (index_t j = 0; j < kTile; ++j) u[j] = near_pair(u[j], na, nb[j]) ? s[j] : u[j];
}

template <class T, DistKernel K>
T kernel_sum(const T* FV_R u, T p, index_t jn) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t j = 0; j < jn; ++j) s += PairKernel<K>::value(u[j], p);
  return s;
}

// The gradient weight of a pair summed over the bandwidths: blocks of kBwBlock bandwidths in T, the blocks in
// double (blocked summation: the error bound, kBwBlock eps of the magnitudes, does not grow with the number of
// bandwidths, and up to kBwBlock bandwidths cost one conversion per pair).
constexpr int kBwBlock = 8;

// wf[j] = c dk/du(u[j]) of one bandwidth (the first of a block), and += for the others
template <class T, DistKernel K>
void kernel_grad_set(const T* FV_R u, T p, T c, T* FV_R wf, index_t jn) {
#pragma omp simd
  for (index_t j = 0; j < jn; ++j) wf[j] = c * PairKernel<K>::dk_du(u[j], p);
}

template <class T, DistKernel K>
void kernel_grad_add(const T* FV_R u, T p, T c, T* FV_R wf, index_t jn) {
#pragma omp simd
  for (index_t j = 0; j < jn; ++j) wf[j] += c * PairKernel<K>::dk_du(u[j], p);
}

// wd[j] (+)= wf[j] in double
template <class T>
void add_block_sum(const T* FV_R wf, double* FV_R wd, bool first, index_t jn) {
#pragma omp simd
  for (index_t j = 0; j < jn; ++j) wd[j] = (first ? 0.0 : wd[j]) + static_cast<double>(wf[j]);
}

// w[j] = coef sum_h dk/du(u[j]; params[h])
template <class T, DistKernel K>
void pair_weights(const T* FV_R u, const T* params, int nbw, double coef, T* FV_R w, index_t jn) {
  const T c = static_cast<T>(coef);
  if (nbw <= kBwBlock) {  // one block (the usual case): straight into w
    kernel_grad_set<T, K>(u, params[0], c, w, jn);
    for (int h = 1; h < nbw; ++h) kernel_grad_add<T, K>(u, params[h], c, w, jn);
    return;
  }
  alignas(64) T wf[kTile];
  alignas(64) double wd[kTile];
  for (int h0 = 0; h0 < nbw; h0 += kBwBlock) {
    kernel_grad_set<T, K>(u, params[h0], c, wf, jn);
    for (int h = h0 + 1; h < std::min(nbw, h0 + kBwBlock); ++h) kernel_grad_add<T, K>(u, params[h], c, wf, jn);
    add_block_sum(wf, wd, h0 == 0, jn);
  }
#pragma omp simd
  for (index_t j = 0; j < jn; ++j) w[j] = static_cast<T>(wd[j]);
}

template <class T>
T row_sum(const T* FV_R w, index_t jn) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (index_t j = 0; j < jn; ++j) s += w[j];
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// MMD

// Sum of k(a_i, b_j) over the rows i of block `ib` of A and the columns j of panels [jb0, jb1) of B.
// diag: A and B are the same set; the pair i = j is left out, and panels after ib count twice (the other
// triangle), so that jb0 = ib gives the sum over all i != j of the block's rows.
// Blocked summation: one row's kTile kernel values of one bandwidth are summed in T, everything above that
// (bandwidths, rows, panels) in double, so the error bound does not grow with the number of bandwidths or pairs.
template <class T, DistKernel K>
double pair_sum(const Packed<T>& A, index_t ib, const Packed<T>& Bs, index_t jb0, index_t jb1, const T* params,
                int nbw, bool diag) {
  alignas(64) T D[kRg * kTile];
  alignas(64) T u[kTile];
  double total = 0;
  const index_t i_end = std::min(A.n, (ib + 1) * kTile);
  for (index_t jb = jb0; jb < jb1; ++jb) {
    const index_t j0 = jb * kTile, jn = std::min(kTile, Bs.n - j0);
    const T* panel = Bs.panel(jb);
    const T* nb = Bs.norms.data() + j0;
    const double weight = diag && jb != ib ? 2.0 : 1.0;
    double tile = 0;
    for (index_t i0 = ib * kTile; i0 < i_end; i0 += kRg) {
      dot_tile(A.row(i0), panel, A.dp, D);
      for (int r = 0; r < kRg && i0 + r < i_end; ++r) {
        sq_dist_row(A.row(i0 + r), A.norms[i0 + r], panel, nb, D + r * kTile, A.d, u);
        const index_t dj = diag && jb == ib ? i0 + r - j0 : -1;
        for (int h = 0; h < nbw; ++h) {
          T s = kernel_sum<T, K>(u, params[h], jn);
          if (dj >= 0) s -= PairKernel<K>::value(u[dj], params[h]);
          tile += static_cast<double>(s);
        }
      }
    }
    total += weight * tile;
  }
  return total;
}

// For the rows of block ib of A: s_i += sum_j coef dk/du(a_i, b_j) and G_i += sum_j coef dk/du(a_i, b_j) b_j
// over every column of Bs (the pair i = j left out when diag). A pair's weight is summed over the bandwidths by
// pair_weights and rounded to T once; the sums over j are blocked (T within a panel, double across).
template <class T, DistKernel K>
void grad_sums(const Packed<T>& A, index_t ib, const Packed<T>& Bs, const T* params, int nbw, double coef, bool diag,
               double* s, double* G) {
  alignas(64) T D[kRg * kTile];
  alignas(64) T u[kTile];
  alignas(64) T w[kRg * kTile];
  const index_t i_end = std::min(A.n, (ib + 1) * kTile);
  const index_t nbp = Bs.np / kTile;
  for (index_t jb = 0; jb < nbp; ++jb) {
    const index_t j0 = jb * kTile, jn = std::min(kTile, Bs.n - j0);
    const T* panel = Bs.panel(jb);
    const T* nb = Bs.norms.data() + j0;
    for (index_t i0 = ib * kTile; i0 < i_end; i0 += kRg) {
      dot_tile(A.row(i0), panel, A.dp, D);
      std::fill(w, w + kRg * kTile, T(0));
      for (int r = 0; r < kRg && i0 + r < i_end; ++r) {
        sq_dist_row(A.row(i0 + r), A.norms[i0 + r], panel, nb, D + r * kTile, A.d, u);
        pair_weights<T, K>(u, params, nbw, coef, w + r * kTile, jn);
        const index_t dj = diag ? i0 + r - j0 : -1;
        if (dj >= 0 && dj < jn) w[r * kTile + dj] = 0;
        s[i0 + r - ib * kTile] += static_cast<double>(row_sum(w + r * kTile, jn));
      }
      grad_tile(w, Bs.row(j0), A.dp, jn, G + (i0 - ib * kTile) * A.dp);
    }
  }
}

// the kernel parameters on points divided by `scale`
template <class T>
std::vector<T> params_of(const MmdProblem<T>& pr, double scale) {
  std::vector<T> p(static_cast<size_t>(pr.n_bw));
  for (int h = 0; h < pr.n_bw; ++h)
    p[h] = kernel_param_as<T>(pr.kernel, pr.bandwidths[h], static_cast<double>(pr.d), scale);
  return p;
}

// Packs batch b's x and y, centred on the mean of x and divided by data_scale() of the result; returns that
// scale. y absent: the closed-form prior, neither centred nor scaled (it is not translation or scale invariant).
template <class T>
double pack_batch(const MmdProblem<T>& pr, index_t b, Packed<T>& X, Packed<T>& Y) {
  const T* x = pr.x + b * pr.N * pr.d;
  if (!pr.y) {
    pack(x, pr.N, pr.d, nullptr, T(1), X);
    return 1.0;
  }
  const T* y = pr.y + b * pr.M * pr.d;
  std::vector<double> c(static_cast<size_t>(pr.d));
  column_mean(x, pr.N, pr.d, c.data());
  const double scale =
      data_scale<T>(max_abs_centred(y, pr.M, pr.d, c.data(), max_abs_centred(x, pr.N, pr.d, c.data(), 0.0)));
  const T inv = static_cast<T>(1.0 / scale);
  pack(x, pr.N, pr.d, c.data(), inv, X);
  pack(y, pr.M, pr.d, c.data(), inv, Y);
  return scale;
}

// Tasks over the row blocks of a triangle, ordered 0, n-1, 1, n-2, ...: contiguous ranges of tasks (one per
// thread) then carry about the same number of pairs.
inline index_t zigzag(index_t t, index_t n) { return (t & 1) ? n - 1 - (t >> 1) : (t >> 1); }

template <class T, DistKernel K>
void mmd_fwd_k(const MmdProblem<T>& pr, T* out) {
  const MmdCoefs c = mmd_coefs(pr.N, pr.M, pr.unbiased);
  const double k0 = kernel_at_zero(pr.kernel) * pr.n_bw;
  for (index_t b = 0; b < pr.B; ++b) {
    Packed<T> X, Y;
    const std::vector<T> params = params_of(pr, pack_batch(pr, b, X, Y));
    const index_t nbx = X.np / kTile, nby = pr.y ? Y.np / kTile : 0;
    // tasks: [0, nbx) xx triangle, [nbx, 2 nbx) xy rows, [2 nbx, 2 nbx + nby) yy triangle
    const index_t ntask = 2 * nbx + nby;
    std::vector<double> part(static_cast<size_t>(ntask), 0.0);
    parallel_for(0, ntask, 1, [&](index_t tb, index_t te) {
      for (index_t t = tb; t < te; ++t) {
        if (t < nbx) {
          const index_t ib = zigzag(t, nbx);
          part[t] = pair_sum<T, K>(X, ib, X, ib, nbx, params.data(), pr.n_bw, true);
        } else if (t < 2 * nbx) {
          if (pr.y) part[t] = pair_sum<T, K>(X, t - nbx, Y, 0, nby, params.data(), pr.n_bw, false);
        } else {
          const index_t ib = zigzag(t - 2 * nbx, nby);
          part[t] = pair_sum<T, K>(Y, ib, Y, ib, nby, params.data(), pr.n_bw, true);
        }
      }
    });
    double sxx = 0, sxy = 0, syy = 0;
    for (index_t t = 0; t < nbx; ++t) sxx += part[t];
    for (index_t t = nbx; t < 2 * nbx; ++t) sxy += part[t];
    for (index_t t = 2 * nbx; t < ntask; ++t) syy += part[t];
    if (!pr.unbiased) {  // the diagonal pairs, k(x, x), left out of the tiles
      sxx += k0 * static_cast<double>(pr.N);
      syy += k0 * static_cast<double>(pr.M);
    }
    double v = c.xx * sxx;
    if (pr.y) {
      v += c.yy * syy + c.xy * sxy;
    } else {  // rbf against N(0, I): E k(y, y') - 2/N sum_i E_y k(x_i, y)
      const double d = static_cast<double>(pr.d);
      double e = 0, yy = 0;
      for (index_t i = 0; i < pr.N; ++i)
        for (int h = 0; h < pr.n_bw; ++h) e += rbf_prior_cross(static_cast<double>(X.norms[i]), pr.bandwidths[h], d);
      for (int h = 0; h < pr.n_bw; ++h) yy += rbf_prior_yy(pr.bandwidths[h], d);
      v += yy - 2.0 / static_cast<double>(pr.N) * e;
    }
    out[b] = static_cast<T>(v);
  }
}

// grad of set A's rows: g (s_i a_i - G_i) with s, G from the same-set pairs (coefficient 4 c_same: each
// unordered pair appears twice and d|a-b|^2/da = 2 (a - b)) and the cross pairs (2 c_cross), times inv_scale:
// on points divided by s, dk/du = s^-2 dk/du' and a - b = s (a' - b').
template <class T, DistKernel K>
void mmd_grad_rows(const Packed<T>& A, const Packed<T>* Bs, const T* params, int nbw, double coef_same,
                   double coef_cross, const double* extra_s, double inv_scale, index_t d, T* grad) {
  const index_t nb = A.np / kTile, dp = A.dp;
  parallel_for(0, nb, 1, [&](index_t tb, index_t te) {
    std::vector<double> s(kTile), G(static_cast<size_t>(kTile * dp));
    for (index_t ib = tb; ib < te; ++ib) {
      std::fill(s.begin(), s.end(), 0.0);
      std::fill(G.begin(), G.end(), 0.0);
      grad_sums<T, K>(A, ib, A, params, nbw, coef_same, true, s.data(), G.data());
      if (Bs) grad_sums<T, K>(A, ib, *Bs, params, nbw, coef_cross, false, s.data(), G.data());
      for (index_t i = ib * kTile; i < std::min(A.n, (ib + 1) * kTile); ++i) {
        const index_t r = i - ib * kTile;
        const double si = s[r] + (extra_s ? extra_s[i] : 0.0);
        const T* a = A.row(i);
        for (index_t k = 0; k < d; ++k)
          grad[i * d + k] = static_cast<T>((si * static_cast<double>(a[k]) - G[r * dp + k]) * inv_scale);
      }
    }
  });
}

template <class T, DistKernel K>
void mmd_bwd_k(const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y) {
  const MmdCoefs c = mmd_coefs(pr.N, pr.M, pr.unbiased);
  for (index_t b = 0; b < pr.B; ++b) {
    Packed<T> X, Y;
    const double scale = pack_batch(pr, b, X, Y);
    const std::vector<T> params = params_of(pr, scale);
    const double gb = static_cast<double>(g[b]);
    std::vector<double> extra;
    if (!pr.y) {  // d/dx_i of -2/N sum_h a_h exp(-|x_i|^2 / (2 (h^2 + 1))) = s_i x_i
      extra.assign(static_cast<size_t>(pr.N), 0.0);
      for (index_t i = 0; i < pr.N; ++i) {
        double e = 0;
        for (int h = 0; h < pr.n_bw; ++h) {
          const double hb = pr.bandwidths[h];
          e += rbf_prior_cross(static_cast<double>(X.norms[i]), hb, static_cast<double>(pr.d)) / (hb * hb + 1.0);
        }
        extra[i] = gb * 2.0 / static_cast<double>(pr.N) * e;
      }
    }
    mmd_grad_rows<T, K>(X, pr.y ? &Y : nullptr, params.data(), pr.n_bw, 4.0 * c.xx * gb, 2.0 * c.xy * gb,
                        pr.y ? nullptr : extra.data(), 1.0 / scale, pr.d, grad_x + b * pr.N * pr.d);
    if (grad_y && pr.y)
      mmd_grad_rows<T, K>(Y, &X, params.data(), pr.n_bw, 4.0 * c.yy * gb, 2.0 * c.xy * gb, nullptr, 1.0 / scale,
                          pr.d, grad_y + b * pr.M * pr.d);
  }
}

template <class T>
void mmd_fwd(const MmdProblem<T>& pr, T* out) {
  switch (pr.kernel) {
    case DistKernel::Rbf: return mmd_fwd_k<T, DistKernel::Rbf>(pr, out);
    case DistKernel::Imq: return mmd_fwd_k<T, DistKernel::Imq>(pr, out);
    case DistKernel::Laplacian: return mmd_fwd_k<T, DistKernel::Laplacian>(pr, out);
    default: return mmd_fwd_k<T, DistKernel::Energy>(pr, out);
  }
}

template <class T>
void mmd_bwd(const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y) {
  switch (pr.kernel) {
    case DistKernel::Rbf: return mmd_bwd_k<T, DistKernel::Rbf>(pr, g, grad_x, grad_y);
    case DistKernel::Imq: return mmd_bwd_k<T, DistKernel::Imq>(pr, g, grad_x, grad_y);
    case DistKernel::Laplacian: return mmd_bwd_k<T, DistKernel::Laplacian>(pr, g, grad_x, grad_y);
    default: return mmd_bwd_k<T, DistKernel::Energy>(pr, g, grad_x, grad_y);
  }
}

// ---------------------------------------------------------------------------------------------------------
// sliced-Wasserstein

// Order-preserving unsigned keys of floats: negative values flipped entirely, positive ones get the top bit.
inline uint32_t sort_key(float f) {
  const uint32_t b = __builtin_bit_cast(uint32_t, f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline float key_value(uint32_t k) {
  return __builtin_bit_cast(float, (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
inline uint64_t sort_key(double f) {
  const uint64_t b = __builtin_bit_cast(uint64_t, f);
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}
inline double key_value(uint64_t k) {
  return __builtin_bit_cast(double, (k & 0x8000000000000000ull) ? (k & 0x7fffffffffffffffull) : ~k);
}

// One scatter pass of an LSD radix sort over 64-bit records: digit = (e >> shift) & mask, offsets in h
// (exclusive prefix sums, advanced as records land). Stable.
inline void radix_pass(const uint64_t* FV_R src, uint64_t* FV_R dst, index_t n, int shift, uint64_t mask,
                       uint32_t* FV_R h) {
  for (index_t i = 0; i < n; ++i) {
    const uint64_t e = src[i];
    dst[h[(e >> shift) & mask]++] = e;
  }
}

// Exclusive prefix sums of a histogram; false when one bucket holds all n records (the pass changes nothing).
inline bool prefix(uint32_t* h, int buckets, index_t n) {
  uint32_t sum = 0;
  bool useful = true;
  for (int c = 0; c < buckets; ++c) {
    if (h[c] == static_cast<uint32_t>(n)) useful = false;
    const uint32_t t = h[c];
    h[c] = sum;
    sum += t;
  }
  return useful;
}

// Stable argsort of one row: perm receives the indices of v in ascending order and sorted the values.
// float: records (key << 32 | index) in 3 LSD passes of 10, 11 and 11 bits (the top digit, sign, exponent and
// 2 mantissa bits, spread over 4x the buckets of a 10-bit one: fewer runs of one bucket, whose counter increments
// wait on each other; 0.2 ms of 5 at L 256, N 4096). double: (key, index) pairs in
// 8 passes of 8 bits (the float64 path is for checks, not speed). scratch holds 4 n 64-bit words.
inline void argsort_row(const float* FV_R v, index_t n, int32_t* FV_R perm, float* FV_R sorted,
                        uint64_t* FV_R scratch) {
  uint64_t* a = scratch;
  uint64_t* b = scratch + n;
  uint32_t h0[1024], h1[2048], h2[2048];
  std::memset(h0, 0, sizeof(h0));
  std::memset(h1, 0, sizeof(h1));
  std::memset(h2, 0, sizeof(h2));
  // the top digit still takes few values, often the same one in a row: two counters per bucket, for even and
  // odd i, halve the chains of increments of one counter (0.3 ms of 5)
  uint32_t h2b[2048];
  std::memset(h2b, 0, sizeof(h2b));
  index_t i = 0;
  for (; i + 1 < n; i += 2) {
    const uint32_t k = sort_key(v[i]), k2 = sort_key(v[i + 1]);
    a[i] = (static_cast<uint64_t>(k) << 32) | static_cast<uint32_t>(i);
    a[i + 1] = (static_cast<uint64_t>(k2) << 32) | static_cast<uint32_t>(i + 1);
    ++h0[k & 1023u];
    ++h1[(k >> 10) & 2047u];
    ++h2[k >> 21];
    ++h0[k2 & 1023u];
    ++h1[(k2 >> 10) & 2047u];
    ++h2b[k2 >> 21];
  }
  for (; i < n; ++i) {
    const uint32_t k = sort_key(v[i]);
    a[i] = (static_cast<uint64_t>(k) << 32) | static_cast<uint32_t>(i);
    ++h0[k & 1023u];
    ++h1[(k >> 10) & 2047u];
    ++h2[k >> 21];
  }
  for (int c = 0; c < 2048; ++c) h2[c] += h2b[c];
  if (prefix(h0, 1024, n)) {
    radix_pass(a, b, n, 32, 1023u, h0);
    std::swap(a, b);
  }
  if (prefix(h1, 2048, n)) {
    radix_pass(a, b, n, 42, 2047u, h1);
    std::swap(a, b);
  }
  if (prefix(h2, 2048, n)) {
    radix_pass(a, b, n, 53, 2047u, h2);
    std::swap(a, b);
  }
  for (i = 0; i < n; ++i) {
    perm[i] = static_cast<int32_t>(static_cast<uint32_t>(a[i]));
    sorted[i] = key_value(static_cast<uint32_t>(a[i] >> 32));
  }
}

inline void argsort_row(const double* FV_R v, index_t n, int32_t* FV_R perm, double* FV_R sorted,
                        uint64_t* FV_R scratch) {
  uint64_t* ka = scratch;
  uint64_t* kb = scratch + n;
  uint64_t* ia = scratch + 2 * n;  // indices ride in 64-bit words
  uint64_t* ib = scratch + 3 * n;
  uint32_t hist[8][256];
  std::memset(hist, 0, sizeof(hist));
  for (index_t i = 0; i < n; ++i) {
    const uint64_t k = sort_key(v[i]);
    ka[i] = k;
    ia[i] = static_cast<uint64_t>(i);
    for (int p = 0; p < 8; ++p) ++hist[p][(k >> (8 * p)) & 0xff];
  }
  for (int p = 0; p < 8; ++p) {
    if (!prefix(hist[p], 256, n)) continue;
    for (index_t i = 0; i < n; ++i) {
      const uint32_t pos = hist[p][(ka[i] >> (8 * p)) & 0xff]++;
      kb[pos] = ka[i];
      ib[pos] = ia[i];
    }
    std::swap(ka, kb);
    std::swap(ia, ib);
  }
  for (index_t i = 0; i < n; ++i) {
    perm[i] = static_cast<int32_t>(ia[i]);
    sorted[i] = key_value(ka[i]);
  }
}

// The normal quantiles Phi^-1((i + 1/2) / N) in T: a rational approximation, an erfc and an exp each (~0.1 ms at
// N = 4096, as much as a tenth of the backward), so the calling thread keeps the last N's (up to kTargetsKept
// values; the same numbers either way).
constexpr index_t kTargetsKept = index_t(1) << 20;

template <class T>
const std::vector<T>& normal_targets(index_t N, std::vector<T>& own) {
  thread_local std::vector<T> kept;
  std::vector<T>& q = N <= kTargetsKept ? kept : own;
  if (static_cast<index_t>(q.size()) != N) {
    q.resize(static_cast<size_t>(N));
    for (index_t i = 0; i < N; ++i) q[i] = static_cast<T>(normal_order_target(i, N));
  }
  return q;
}

// sum_i |xs_i - t_i|^p over one sorted row, in double: the difference of two huge values (and its square) does
// not overflow T, and the rounding of the sum (~N eps of double) stays far below T's
template <class T>
double sw_row(const T* FV_R xs, const T* FV_R t, index_t N, double p) {
  double s = 0;
  if (p == 2.0) {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < N; ++i) {
      const double dd = static_cast<double>(xs[i]) - static_cast<double>(t[i]);
      s += dd * dd;
    }
  } else if (p == 1.0) {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < N; ++i) {
      const double dd = static_cast<double>(xs[i]) - static_cast<double>(t[i]);
      s += dd < 0 ? -dd : dd;
    }
  } else {
    for (index_t i = 0; i < N; ++i) s += abs_pow(static_cast<double>(xs[i]) - static_cast<double>(t[i]), p);
  }
  return s;
}

template <class T>
void sw_fwd(const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, index_t B, index_t L, index_t N,
            double p) {
  std::vector<T> own;
  const std::vector<T>& q = py ? own : normal_targets<T>(N, own);
  std::vector<double> part(static_cast<size_t>(B * L));
  parallel_for(0, B * L, 1, [&](index_t tb, index_t te) {
    std::vector<uint64_t> scratch(static_cast<size_t>(4 * N));
    std::vector<T> xs(static_cast<size_t>(N)), ys(py ? static_cast<size_t>(N) : 0);
    for (index_t r = tb; r < te; ++r) {
      argsort_row(px + r * N, N, perm_x + r * N, xs.data(), scratch.data());
      if (py) argsort_row(py + r * N, N, perm_y + r * N, ys.data(), scratch.data());
      part[r] = sw_row(xs.data(), py ? ys.data() : q.data(), N, p);
    }
  });
  for (index_t b = 0; b < B; ++b) {
    double s = 0;
    for (index_t l = 0; l < L; ++l) s += part[b * L + l];
    out[b] = static_cast<T>(s / static_cast<double>(L * N));
  }
}

// Reads and writes of a row in a permutation's (random) order: touch the row's cache lines in sequence first (a
// stream the hardware prefetcher follows; the random order missed once per line, the backward's main cost).
template <class T>
inline void prefetch_row(const T* v, index_t n, bool write) {
  constexpr index_t kLine = 64 / static_cast<index_t>(sizeof(T));
  for (index_t i = 0; i < n; i += kLine) write ? __builtin_prefetch(v + i, 1) : __builtin_prefetch(v + i);
}

// out[perm[i]] = v[i] (-v[i] if negate), a scalar loop: vectorised it is a vscatterdps, slower than one store per
// element (AMD Zen 4: the backward took twice as long). The empty asm on the index keeps the vectoriser off.
template <class T>
void scatter_row(const int32_t* FV_R perm, const T* FV_R v, T* FV_R out, index_t n, bool negate) {
  prefetch_row(out, n, true);
  for (index_t i = 0; i < n; ++i) {
    int32_t j = perm[i];
    asm("" : "+r"(j));
    out[j] = negate ? -v[i] : v[i];
  }
}

// d|d|^p/dd scaled by `scale`, in double (as the forward: no overflow of the difference), rounded once to T;
// gsorted (may be null for p = 2) receives the gradients in sorted order
template <class T>
void sw_grad_row(const T* FV_R x, const int32_t* FV_R permx, const T* FV_R t, T* FV_R gx, index_t N, double p,
                 double scale, T* FV_R gsorted) {
  prefetch_row(x, N, false);
  if (p == 2.0 && !gsorted) {  // one pass: gx[j] from x[j], both in cache after the prefetches
    prefetch_row(gx, N, true);
    for (index_t i = 0; i < N; ++i) {
      int32_t j = permx[i];
      asm("" : "+r"(j));  // scalar, as scatter_row
      gx[j] = static_cast<T>(2.0 * scale * (static_cast<double>(x[j]) - static_cast<double>(t[i])));
    }
    return;
  }
  if (p == 2.0) {
    for (index_t i = 0; i < N; ++i)
      gsorted[i] = static_cast<T>(2.0 * scale * (static_cast<double>(x[permx[i]]) - static_cast<double>(t[i])));
  } else if (p == 1.0) {
    const T s1 = static_cast<T>(scale);
    for (index_t i = 0; i < N; ++i) {
      const T xi = x[permx[i]];
      gsorted[i] = xi > t[i] ? s1 : (xi < t[i] ? -s1 : (xi - t[i]) * T(0));  // 0 when equal, NaN stays NaN
    }
  } else {
    for (index_t i = 0; i < N; ++i)
      gsorted[i] =
          static_cast<T>(scale * abs_pow_grad(static_cast<double>(x[permx[i]]) - static_cast<double>(t[i]), p));
  }
  scatter_row(permx, gsorted, gx, N, false);
}

template <class T>
void sw_bwd(const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y, T* gpx, T* gpy,
            index_t B, index_t L, index_t N, double p) {
  std::vector<T> own;
  const std::vector<T>& q = py ? own : normal_targets<T>(N, own);
  parallel_for(0, B * L, 4, [&](index_t tb, index_t te) {
    std::vector<T> ty(py ? static_cast<size_t>(N) : 0), gs(static_cast<size_t>(N));
    for (index_t r = tb; r < te; ++r) {
      const double scale = static_cast<double>(g[r / L]) / static_cast<double>(L * N);
      const int32_t* permy = py ? perm_y + r * N : nullptr;
      if (py) {
        prefetch_row(py + r * N, N, false);
        for (index_t i = 0; i < N; ++i) ty[i] = py[r * N + permy[i]];
      }
      sw_grad_row(px + r * N, perm_x + r * N, py ? ty.data() : q.data(), gpx + r * N, N, p, scale,
                  gpy || p != 2.0 ? gs.data() : nullptr);
      if (gpy) scatter_row(permy, gs.data(), gpy + r * N, N, true);
    }
  });
}

template <class T>
constexpr DistanceKernels<T> make_distance_table(const char* isa) {
  return DistanceKernels<T>{isa, &mmd_fwd<T>, &mmd_bwd<T>, &sw_fwd<T>, &sw_bwd<T>};
}

#undef FV_R

}  // namespace
}  // namespace FV_ISA
}  // namespace cpu
}  // namespace fastvae

FV_REGISTER_KERNELS(DistanceKernels, distance_kernels, make_distance_table)
