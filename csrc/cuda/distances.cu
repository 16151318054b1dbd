// CUDA kernels of the sample distances: MMD / energy distance (tiled pair sums, forward and backward) and
// sliced-Wasserstein (segmented sort of the projections, comparison with the sorted target). Torch-free: raw
// pointers, sizes, a cudaStream_t; the binding is csrc/torch/distances/cuda.cpp.
//
// MMD, launch shapes and bytes moved:
//   prep     column means of x (grid (ceil(d/32), B), 32x32 threads), the scale of the centred points (one block
//            per batch: data_scale() of the largest |coordinate|; the tiles divide the points by it, exactly) and
//            |row - mean|^2 / scale^2 of x and y (one thread per row): reads 3 (N + M) d elements.
//   forward  one block of 256 threads per 64 x 64 tile of pairs (upper triangles for x-x and y-y, all of x-y),
//            grid (tiles, B). Each thread holds a 4 x 4 block of dot products in registers; the two 64 x 32
//            operand slices are staged in shared memory, centred on the mean of x (every kernel is translation
//            invariant, and centring keeps |a|^2 + |b|^2 - 2 a.b from cancelling; a near pair, near_pair(), takes
//            |a - b|^2 from the differences in global memory instead). Every bandwidth's kernel is
//            applied in registers (compensated sums); the tile's sum goes to a per-tile double partial (no
//            atomics), and `mmd_finish` adds the partials of a batch in a fixed order: bitwise reproducible.
//            Reads 2 * 64 * d elements per tile: ~ d / 32 FLOP per byte on the dot products alone.
//   backward one block per 64 rows of x (or y), grid (row blocks, B), looping over every panel of 64 columns
//            of both sets: dot products as in forward, then w = dk/du in shared memory and G += W * panel with
//            the gradient rows in double registers (d <= kMaxDim): grad_i = s_i a_i - G_i, written once.
// Dot products run on the FP32 (or FP64) pipes: TF32 tensor cores would round the codes to 10 mantissa bits
// before |a - b|^2 is formed, which is too coarse for the distances of nearby codes.
//
// Sliced-Wasserstein: a stable sort of the B L rows that stays on the device (two passes of
// cub::DeviceRadixSort, see sort_rows), then one block per row for the comparison with the sorted target (the
// normal quantiles, or the sorted py) and a fixed-order sum.
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <type_traits>

#include "cuda/distances_kernels.h"
#include "cuda/launch.h"
#include "fastvae/distance_math.h"
#include "fastvae/philox.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 256;
constexpr int kDk = 16;  // d slice staged in shared memory per step
constexpr int kPad = kTile + 1;

inline size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

// A launcher returns the error of a failed runtime call after reading it with cudaGetLastError(): left pending, it
// would fail the next launch check of the binding, which would blame another op.
inline cudaError_t consumed(cudaError_t e) {
  cudaGetLastError();
  return e;
}

inline dim3 grid1d(index_t n, int threads) { return dim3(static_cast<unsigned>((n + threads - 1) / threads)); }

// Batches are the grid's y dimension, which CUDA caps at 65535: the launchers loop over groups of batches, b0 the
// first batch of a launch.
#ifndef FV_MAX_GRID_Y  // a test build may shrink it (-DFV_MAX_GRID_Y=2) so that the loops over groups iterate
#define FV_MAX_GRID_Y 65535
#endif
constexpr index_t kMaxGridY = FV_MAX_GRID_Y;
inline unsigned grid_y(index_t B, index_t b0) {
  return static_cast<unsigned>(B - b0 < kMaxGridY ? B - b0 : kMaxGridY);
}

template <class T>
struct Dev {
  const T* x;
  const T* y;
  const T* center;  // (B, d) or null
  const T* nx;      // (B, N) |x - c|^2
  const T* ny;      // (B, M)
  const T* scale;   // (B,) data_scale() of the centred points (they are divided by it), or null: 1
  index_t N, M, d;
  DistKernel kernel;
  int n_bw;
  double bw[kMaxBandwidths];
  // the kernel parameters of batch b (they depend on its scale) and 1 / scale
  __device__ __forceinline__ T load_params(index_t b, T* params) const {
    const double s = scale ? static_cast<double>(scale[b]) : 1.0;
    for (int h = 0; h < n_bw; ++h) params[h] = kernel_param_as<T>(kernel, bw[h], static_cast<double>(d), s);
    return static_cast<T>(1.0 / s);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// prep

template <class T>
__global__ void column_mean_kernel(const T* __restrict__ x, index_t N, index_t d, T* __restrict__ center,
                                   index_t b0) {
  __shared__ double part[32][33];
  const index_t b = b0 + blockIdx.y;
  const index_t k = static_cast<index_t>(blockIdx.x) * 32 + threadIdx.x;
  double s = 0;
  if (k < d)
    for (index_t i = threadIdx.y; i < N; i += 32) s += static_cast<double>(x[(b * N + i) * d + k]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && k < d) {
    double t = 0;
    for (int r = 0; r < 32; ++r) t += part[r][threadIdx.x];
    center[b * d + k] = static_cast<T>(t / static_cast<double>(N));
  }
}

// One block per batch: data_scale() of max |x - c| and |y - c| over its rows (the centred coordinates, rounded as
// the tiles round them; a NaN gives 1).
template <class T>
__global__ void __launch_bounds__(kThreads) scale_kernel(const T* __restrict__ x, const T* __restrict__ y, index_t N,
                                                         index_t M, index_t d, const T* __restrict__ center,
                                                         T* __restrict__ scale) {
  __shared__ double red[kThreads];
  const index_t b = blockIdx.x;
  const T* c = center + b * d;
  double m = 0;
  for (index_t t = threadIdx.x; t < (N + M) * d; t += kThreads) {
    const index_t k = t % d;
    const T v = t < N * d ? x[b * N * d + t] - c[k] : y[b * M * d + t - N * d] - c[k];
    const double a = fabs(static_cast<double>(v));
    m = a <= m ? m : a;  // a NaN replaces m, and stays
  }
  red[threadIdx.x] = m;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      const double o = red[threadIdx.x + w];
      red[threadIdx.x] = o <= red[threadIdx.x] ? red[threadIdx.x] : o;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) scale[b] = static_cast<T>(data_scale<T>(red[0]));
}

template <class T>
__global__ void sq_norm_kernel(const T* __restrict__ x, index_t B, index_t n, index_t d, const T* __restrict__ center,
                               const T* __restrict__ scale, T* __restrict__ out) {
  const index_t r = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= B * n) return;
  const index_t b = r / n;
  const T inv = scale ? T(1) / scale[b] : T(1);  // a power of two: exact
  T s = 0;
  for (index_t k = 0; k < d; ++k) {
    const T v = (x[r * d + k] - (center ? center[b * d + k] : T(0))) * inv;
    s += v * v;
  }
  out[r] = s;
}

// ---------------------------------------------------------------------------------------------------------------
// tiles

// Stage rows [row0, row0 + 64) x dims [k0, k0 + kDk) of a (n, d) set, centred and scaled, transposed: S[k][r].
template <class T>
__device__ __forceinline__ void stage_slice(const T* __restrict__ a, index_t n, index_t d, index_t row0, index_t k0,
                                            const T* __restrict__ c, T inv, T (*S)[kPad]) {
  for (int t = threadIdx.x; t < kTile * kDk; t += kThreads) {
    const int r = t / kDk, k = t % kDk;
    const index_t gi = row0 + r, gk = k0 + k;
    T v = 0;
    if (gi < n && gk < d) v = (a[gi * d + gk] - (c ? c[gk] : T(0))) * inv;
    S[k][r] = v;
  }
}

// acc[i][j] = a_{row0 + 4 ty + i} . b_{col0 + 4 tx + j}
template <class T>
__device__ __forceinline__ void tile_dots(const T* __restrict__ a, index_t na, index_t row0, const T* __restrict__ b,
                                          index_t nb, index_t col0, index_t d, const T* __restrict__ c, T inv,
                                          T (*As)[kPad], T (*Bs)[kPad], T acc[4][4]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;
  for (index_t k0 = 0; k0 < d; k0 += kDk) {
    __syncthreads();
    stage_slice(a, na, d, row0, k0, c, inv, As);
    stage_slice(b, nb, d, col0, k0, c, inv, Bs);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDk; ++k) {
      T av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[k][4 * ty + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[k][4 * tx + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
  }
}

// |a - b|^2 of two rows from their differences, centred and scaled as stage_slice() rounds them: the distance of
// a near pair (near_pair(), distance_math.h), which the dot-product form cannot resolve. Rare, so a plain loop.
template <class T>
__device__ T sq_dist_direct(const T* __restrict__ a, const T* __restrict__ b, index_t d, const T* __restrict__ c,
                            T inv) {
  T s = 0;
  for (index_t k = 0; k < d; ++k) {
    const T ck = c ? c[k] : T(0);
    const T t = (a[k] - ck) * inv - (b[k] - ck) * inv;
    s += t * t;
  }
  return s;
}

// Kahan-Babuska (Neumaier) summation in T: the error of a sum of n terms is ~2 eps of the sum of their magnitudes
// plus O(n eps^2), not O(n eps), at 4 extra additions per term (no double adds: slow on most GPUs). No fast-math:
// the compensation must not be reassociated away.
template <class T>
struct Compensated {
  T sum = 0, c = 0;
  __device__ __forceinline__ void add(T v) {
    const T t = sum + v;
    c += fabs(sum) >= fabs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  __device__ __forceinline__ double value() const { return static_cast<double>(sum) + static_cast<double>(c); }
};

__device__ __forceinline__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const double out = red[0];
  __syncthreads();
  return out;
}

// Tiles of one batch: [0, tri_x) x-x upper triangle, [tri_x, tri_x + nbx * nby) x-y, then the y-y triangle.
__device__ __forceinline__ void tri_decode(index_t t, index_t nb, index_t* I, index_t* J) {
  // rows I hold nb - I tiles (J = I .. nb - 1); offset(I) = I nb - I (I - 1) / 2
  const double fb = 2.0 * static_cast<double>(nb) + 1.0;
  index_t i = static_cast<index_t>((fb - sqrt(fb * fb - 8.0 * static_cast<double>(t))) / 2.0);
  if (i < 0) i = 0;
  while (i > 0 && i * nb - i * (i - 1) / 2 > t) --i;
  while ((i + 1) * nb - (i + 1) * i / 2 <= t) ++i;
  *I = i;
  *J = i + (t - (i * nb - i * (i - 1) / 2));
}

template <class T, DistKernel K>
__global__ void __launch_bounds__(kThreads) mmd_tiles_kernel(Dev<T> p, double* __restrict__ partials,
                                                                          index_t b0) {
  __shared__ T As[kDk][kPad];
  __shared__ T Bs[kDk][kPad];
  __shared__ double red[kThreads];
  const index_t b = b0 + blockIdx.y;
  const index_t nbx = (p.N + kTile - 1) / kTile, nby = p.y ? (p.M + kTile - 1) / kTile : 0;
  const index_t tri_x = nbx * (nbx + 1) / 2, cross = nbx * nby, tri_y = nby * (nby + 1) / 2;
  const index_t ntiles = tri_x + cross + tri_y;
  const index_t t = blockIdx.x;
  index_t I, J;
  const T *A, *Bp, *na, *nb;
  index_t nA, nB;
  bool same;
  if (t < tri_x) {
    tri_decode(t, nbx, &I, &J);
    A = p.x; Bp = p.x; nA = nB = p.N; na = nb = p.nx + b * p.N; same = true;
  } else if (t < tri_x + cross) {
    I = (t - tri_x) / nby; J = (t - tri_x) % nby;
    A = p.x; Bp = p.y; nA = p.N; nB = p.M; na = p.nx + b * p.N; nb = p.ny + b * p.M; same = false;
  } else {
    tri_decode(t - tri_x - cross, nby, &I, &J);
    A = p.y; Bp = p.y; nA = nB = p.M; na = nb = p.ny + b * p.M; same = true;
  }
  A += b * nA * p.d;
  Bp += b * nB * p.d;
  const T* c = p.center ? p.center + b * p.d : nullptr;
  T acc[4][4];
  T params[kMaxBandwidths];
  const T inv = p.load_params(b, params);
  tile_dots(A, nA, I * kTile, Bp, nB, J * kTile, p.d, c, inv, As, Bs, acc);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  Compensated<T> s;  // a thread's 16 pairs x n_bw kernel values: error independent of their number
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const index_t gi = I * kTile + 4 * ty + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const index_t gj = J * kTile + 4 * tx + j;
      if (gi >= nA || gj >= nB || (same && gi == gj)) continue;
      T u = na[gi] + nb[gj] - T(2) * acc[i][j];
      u = u < T(0) ? T(0) : u;
      if (near_pair(u, na[gi], nb[gj])) u = sq_dist_direct(A + gi * p.d, Bp + gj * p.d, p.d, c, inv);
      for (int h = 0; h < p.n_bw; ++h) s.add(PairKernel<K>::value(u, params[h]));
    }
  }
  const double tot = block_sum(s.value(), red);
  if (threadIdx.x == 0) partials[b * ntiles + t] = (same && J != I ? 2.0 : 1.0) * tot;
}

struct Finish {
  double cxx, cyy, cxy, k0;  // coefficients; k0 = sum over bandwidths of k(0) (biased diagonal)
  bool biased, prior_rbf;
  bool accumulate;  // add to out (a later group of bandwidths) instead of writing it
  int n_bw;
  double bw[kMaxBandwidths];
};

// One block per batch: the three pair sums in a fixed order, then MMD^2.
template <class T>
__global__ void __launch_bounds__(kThreads) mmd_finish_kernel(const double* __restrict__ partials, index_t nbx,
                                                                index_t nby, index_t N, index_t M, index_t d,
                                                                const T* __restrict__ nx, Finish f, T* out) {
  __shared__ double red[kThreads];
  const index_t b = blockIdx.x;
  const index_t tri_x = nbx * (nbx + 1) / 2, cross = nbx * nby, tri_y = nby * (nby + 1) / 2;
  const double* pb = partials + b * (tri_x + cross + tri_y);
  double sx = 0, sxy = 0, sy = 0;
  for (index_t t = threadIdx.x; t < tri_x; t += kThreads) sx += pb[t];
  for (index_t t = threadIdx.x; t < cross; t += kThreads) sxy += pb[tri_x + t];
  for (index_t t = threadIdx.x; t < tri_y; t += kThreads) sy += pb[tri_x + cross + t];
  sx = block_sum(sx, red);
  sxy = block_sum(sxy, red);
  sy = block_sum(sy, red);
  double prior = 0;  // rbf against N(0, I): sum_i sum_h a_h exp(-|x_i|^2 / (2 (h^2 + 1)))
  if (f.prior_rbf) {
    for (index_t i = threadIdx.x; i < N; i += kThreads) {
      for (int h = 0; h < f.n_bw; ++h)
        prior += rbf_prior_cross(static_cast<double>(nx[b * N + i]), f.bw[h], static_cast<double>(d));
    }
    prior = block_sum(prior, red);
  }
  if (threadIdx.x == 0) {
    if (f.biased) {
      sx += f.k0 * static_cast<double>(N);
      sy += f.k0 * static_cast<double>(M);
    }
    double v = f.cxx * sx;
    if (f.prior_rbf) {
      double yy = 0;
      for (int h = 0; h < f.n_bw; ++h) yy += rbf_prior_yy(f.bw[h], static_cast<double>(d));
      v += yy - 2.0 / static_cast<double>(N) * prior;
    } else {
      v += f.cyy * sy + f.cxy * sxy;
    }
    out[b] = static_cast<T>(f.accumulate ? static_cast<double>(out[b]) + v : v);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// backward

struct GradRole {
  bool rows_are_x;        // A = x (else y)
  double coef_same;       // 4 c_AA: same-set pairs
  double coef_cross;      // 2 c_xy: cross pairs (0 when the other set is absent)
  bool prior_rbf;         // add the closed-form prior term to s_i
  double inv_n;           // 1 / N for the prior term
  bool accumulate;        // add to grad (a later group of bandwidths) instead of writing it
  double bw[kMaxBandwidths];  // the bandwidths themselves (prior term)
};

template <class T, DistKernel K, int DC>
__global__ void __launch_bounds__(kThreads) mmd_grad_kernel(Dev<T> p, GradRole role, const T* __restrict__ g,
                                                              T* __restrict__ grad, index_t b0) {
  FV_DYNAMIC_SHARED(unsigned char, smem_raw);
  T(*Ws)[kPad] = reinterpret_cast<T(*)[kPad]>(smem_raw);                             // 64 x 65
  T(*Pn)[kPad] = reinterpret_cast<T(*)[kPad]>(smem_raw + sizeof(T) * kTile * kPad);  // 64 x 65 panel rows
  T(*As)[kPad] = Pn;                                                                 // kDk x 65 (aliases Pn)
  T(*Bs)[kPad] = Pn + kDk;                                                           // kDk x 65
  double* sred = reinterpret_cast<double*>(smem_raw + 2 * sizeof(T) * kTile * kPad);  // 64 x 16

  const index_t b = b0 + blockIdx.y, I = blockIdx.x;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* A = role.rows_are_x ? p.x + b * p.N * p.d : p.y + b * p.M * p.d;
  const index_t nA = role.rows_are_x ? p.N : p.M;
  const T* nAv = role.rows_are_x ? p.nx + b * p.N : p.ny + b * p.M;
  const T* Other = role.rows_are_x ? (p.y ? p.y + b * p.M * p.d : nullptr) : p.x + b * p.N * p.d;
  const index_t nO = role.rows_are_x ? p.M : p.N;
  const T* nOv = role.rows_are_x ? (p.y ? p.ny + b * p.M : nullptr) : p.nx + b * p.N;
  const T* c = p.center ? p.center + b * p.d : nullptr;
  const double gb = static_cast<double>(g[b]);
  T params[kMaxBandwidths];
  const T inv = p.load_params(b, params);

  double G[4][4 * DC];
  double s[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s[i] = 0;
#pragma unroll
    for (int k = 0; k < 4 * DC; ++k) G[i][k] = 0;
  }
  for (int set = 0; set < 2; ++set) {
    const T* Bset = set == 0 ? A : Other;
    if (!Bset) continue;
    const index_t nB = set == 0 ? nA : nO;
    const T* nBv = set == 0 ? nAv : nOv;
    const double coef = (set == 0 ? role.coef_same : role.coef_cross) * gb;
    const index_t npanel = (nB + kTile - 1) / kTile;
    for (index_t J = 0; J < npanel; ++J) {
      T acc[4][4];
      tile_dots(A, nA, I * kTile, Bset, nB, J * kTile, p.d, c, inv, As, Bs, acc);
      __syncthreads();  // As / Bs (aliasing Pn) are read; Ws free
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const index_t gi = I * kTile + 4 * ty + i;
        T srow = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const index_t gj = J * kTile + 4 * tx + j;
          T w = 0;
          if (gi < nA && gj < nB && !(set == 0 && gi == gj)) {
            T u = nAv[gi] + nBv[gj] - T(2) * acc[i][j];
            u = u < T(0) ? T(0) : u;
            if (near_pair(u, nAv[gi], nBv[gj])) u = sq_dist_direct(A + gi * p.d, Bset + gj * p.d, p.d, c, inv);
            Compensated<T> wk;  // the pair's weight summed over the bandwidths, rounded once
            for (int h = 0; h < p.n_bw; ++h) wk.add(PairKernel<K>::dk_du(u, params[h]));
            w = static_cast<T>(coef * wk.value());
          }
          Ws[4 * ty + i][4 * tx + j] = w;
          srow += w;
        }
        s[i] += static_cast<double>(srow);
      }
#pragma unroll
      for (int dc = 0; dc < DC; ++dc) {
        __syncthreads();
        for (int t = threadIdx.x; t < kTile * kTile; t += kThreads) {  // panel rows, dims [64 dc, 64 dc + 64)
          const int r = t / kTile, k = t % kTile;
          const index_t gj = J * kTile + r, gk = static_cast<index_t>(dc) * kTile + k;
          T v = 0;
          if (gj < nB && gk < p.d) v = (Bset[gj * p.d + gk] - (c ? c[gk] : T(0))) * inv;
          Pn[r][k] = v;
        }
        __syncthreads();
        T t4[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int k = 0; k < 4; ++k) t4[i][k] = 0;
        for (int j = 0; j < kTile; ++j) {
          T wv[4], bv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) wv[i] = Ws[4 * ty + i][j];
#pragma unroll
          for (int k = 0; k < 4; ++k) bv[k] = Pn[j][4 * tx + k];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int k = 0; k < 4; ++k) t4[i][k] = fma(wv[i], bv[k], t4[i][k]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int k = 0; k < 4; ++k) G[i][4 * dc + k] += static_cast<double>(t4[i][k]);
      }
      __syncthreads();
    }
  }
  // s_i: the 16 threads of a row group in a fixed order
#pragma unroll
  for (int i = 0; i < 4; ++i) sred[(4 * ty + i) * 16 + tx] = s[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = 4 * ty + i;
    const index_t gi = I * kTile + r;
    if (gi >= nA) continue;
    double si = 0;
    for (int q = 0; q < 16; ++q) si += sred[r * 16 + q];
    if (role.prior_rbf) {  // d/dx_i of -2/N sum_h a_h exp(-|x_i|^2 / (2 (h^2 + 1))) = (...) x_i
      double e = 0;
      for (int h = 0; h < p.n_bw; ++h)
        e += rbf_prior_cross(static_cast<double>(nAv[gi]), role.bw[h], static_cast<double>(p.d)) /
             (role.bw[h] * role.bw[h] + 1.0);
      si += gb * 2.0 * role.inv_n * e;
    }
#pragma unroll
    for (int dc = 0; dc < DC; ++dc)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const index_t gk = static_cast<index_t>(dc) * kTile + 4 * tx + k;
        if (gk >= p.d) continue;
        // on points divided by s: dk/du = s^-2 dk/du', a - b = s (a' - b'): the gradient is 1/s of the scaled one's
        const double a = static_cast<double>((A[gi * p.d + gk] - (c ? c[gk] : T(0))) * inv);
        T& dst = grad[(role.rows_are_x ? b * p.N : b * p.M) * p.d + gi * p.d + gk];
        const double v = (si * a - G[i][4 * dc + k]) * static_cast<double>(inv);
        dst = static_cast<T>(role.accumulate ? static_cast<double>(dst) + v : v);
      }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// host side: MMD

template <class T>
struct MmdLayout {
  size_t partials, center, scale, nx, ny, total;
  index_t nbx, nby, ntiles;
};

template <class T>
MmdLayout<T> mmd_layout(const MmdProblem<T>& a) {
  MmdLayout<T> l;
  l.nbx = (a.N + kTile - 1) / kTile;
  l.nby = a.y ? (a.M + kTile - 1) / kTile : 0;
  l.ntiles = l.nbx * (l.nbx + 1) / 2 + l.nbx * l.nby + l.nby * (l.nby + 1) / 2;
  size_t off = 0;
  l.partials = off;
  off += align_up(sizeof(double) * static_cast<size_t>(a.B * l.ntiles));
  l.center = off;
  off += align_up(sizeof(T) * static_cast<size_t>(a.B * a.d));
  l.scale = off;
  off += align_up(sizeof(T) * static_cast<size_t>(a.B));
  l.nx = off;
  off += align_up(sizeof(T) * static_cast<size_t>(a.B * a.N));
  l.ny = off;
  off += align_up(sizeof(T) * static_cast<size_t>(a.B * (a.y ? a.M : 1)));
  l.total = off;
  return l;
}

// The bandwidths h0 .. h0 + kMaxBandwidths - 1 of a (kernel parameters travel by value, kMaxBandwidths at a time:
// the launchers run the tile / gradient kernels once per group and accumulate, so any number of bandwidths works).
inline int group_size(int n_bw, int h0) { return n_bw - h0 < kMaxBandwidths ? n_bw - h0 : kMaxBandwidths; }

template <class T>
Dev<T> prepare(const MmdProblem<T>& a, const MmdLayout<T>& l, unsigned char* ws, cudaStream_t st) {
  Dev<T> p;
  p.x = a.x;
  p.y = a.y;
  p.N = a.N;
  p.M = a.M;
  p.d = a.d;
  p.kernel = a.kernel;
  T* center = reinterpret_cast<T*>(ws + l.center);
  T* scale = reinterpret_cast<T*>(ws + l.scale);
  T* nx = reinterpret_cast<T*>(ws + l.nx);
  T* ny = reinterpret_cast<T*>(ws + l.ny);
  // the closed-form prior is neither translation nor scale invariant: no centring, no scaling
  p.center = a.y ? center : nullptr;
  p.scale = a.y ? scale : nullptr;
  if (a.y) {
    for (index_t b0 = 0; b0 < a.B; b0 += kMaxGridY)
      fv_launch(column_mean_kernel<T>, dim3(static_cast<unsigned>((a.d + 31) / 32), grid_y(a.B, b0)), dim3(32, 32), 0,
                st, a.x, a.N, a.d, center, b0);
    fv_launch(scale_kernel<T>, static_cast<unsigned>(a.B), kThreads, 0, st, a.x, a.y, a.N, a.M, a.d, center, scale);
  }
  fv_launch(sq_norm_kernel<T>, grid1d(a.B * a.N, 256), 256, 0, st, a.x, a.B, a.N, a.d, p.center, p.scale, nx);
  if (a.y) fv_launch(sq_norm_kernel<T>, grid1d(a.B * a.M, 256), 256, 0, st, a.y, a.B, a.M, a.d, p.center, p.scale, ny);
  p.nx = nx;
  p.ny = a.y ? ny : nullptr;
  return p;
}

template <class T, DistKernel K>
void launch_tiles(const Dev<T>& p, const MmdLayout<T>& l, index_t B, double* partials, cudaStream_t st) {
  for (index_t b0 = 0; b0 < B; b0 += kMaxGridY)
    fv_launch(mmd_tiles_kernel<T, K>, dim3(static_cast<unsigned>(l.ntiles), grid_y(B, b0)), kThreads, 0, st, p,
              partials, b0);
}

template <class T, DistKernel K, int DC>
int launch_grad_dc(const Dev<T>& p, const GradRole& role, index_t B, index_t nrows, const T* g, T* grad,
                   cudaStream_t st) {
  const size_t smem = 2 * sizeof(T) * kTile * kPad + sizeof(double) * kTile * 16;
  // float64: 74,752 B, above the opt-in maximum of sm_75 (64 KiB; the build targets sm_80 and later): a device that
  // refuses it fails the op with this error
  const cudaError_t e = cudaFuncSetAttribute(mmd_grad_kernel<T, K, DC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem));
  if (e != cudaSuccess) return consumed(e);
  const unsigned blocks = static_cast<unsigned>((nrows + kTile - 1) / kTile);
  for (index_t b0 = 0; b0 < B; b0 += kMaxGridY)
    fv_launch(mmd_grad_kernel<T, K, DC>, dim3(blocks, grid_y(B, b0)), kThreads, smem, st, p, role, g, grad, b0);
  return cudaGetLastError();
}

template <class T, DistKernel K>
int launch_grad(const Dev<T>& p, const GradRole& role, index_t B, index_t nrows, const T* g, T* grad,
                cudaStream_t st) {
  switch ((p.d + kTile - 1) / kTile) {
    case 1: return launch_grad_dc<T, K, 1>(p, role, B, nrows, g, grad, st);
    case 2: return launch_grad_dc<T, K, 2>(p, role, B, nrows, g, grad, st);
    case 3: return launch_grad_dc<T, K, 3>(p, role, B, nrows, g, grad, st);
    case 4: return launch_grad_dc<T, K, 4>(p, role, B, nrows, g, grad, st);
    default: return cudaErrorInvalidValue;
  }
}

template <class T, class F>
int with_kernel(DistKernel k, const F& f) {
  switch (k) {
    case DistKernel::Rbf: return f(std::integral_constant<DistKernel, DistKernel::Rbf>{});
    case DistKernel::Imq: return f(std::integral_constant<DistKernel, DistKernel::Imq>{});
    case DistKernel::Laplacian: return f(std::integral_constant<DistKernel, DistKernel::Laplacian>{});
    default: return f(std::integral_constant<DistKernel, DistKernel::Energy>{});
  }
}

// ---------------------------------------------------------------------------------------------------------------
// sliced-Wasserstein

// The sort of the B L rows of px (and py), stable like the CPU's radix sort and without any host
// synchronisation (graph-capturable; cub's DeviceSegmentedSort copies the segment sizes to the host above 500
// segments): two passes of cub::DeviceRadixSort::SortPairs, which is stable and stays on the device. Pass 1 sorts
// every element by value, carrying its flat index; pass 2 sorts those indices by their row (only the bits that row
// numbers use), so each row ends up sorted by value, ties in index order: the CPU's permutation.
__global__ void iota_kernel(int32_t* __restrict__ idx, index_t n) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) idx[t] = static_cast<int32_t>(t);
}

// Order-preserving unsigned keys of the values, as the CPU sort makes them (negative values flipped entirely,
// positive ones get the top bit): sorting the keys as integers orders -0.0 before +0.0 and NaNs by their bits,
// as on the CPU (cub's float keys would treat -0.0 and +0.0 as equal).
template <class T>
struct KeyOf {
  using type = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
};

template <class T>
__global__ void order_key_kernel(const T* __restrict__ v, typename KeyOf<T>::type* __restrict__ key, index_t n) {
  using K = typename KeyOf<T>::type;
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  K b;
  memcpy(&b, &v[t], sizeof(K));
  const K top = K(1) << (sizeof(K) * 8 - 1);
  key[t] = (b & top) ? ~b : (b | top);
}

__global__ void row_of_kernel(const int32_t* __restrict__ idx, uint32_t* __restrict__ row, index_t n, index_t N) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) row[t] = static_cast<uint32_t>(idx[t] / N);
}

// flat -> in-row indices (perm, in place) and the sorted values of each row
template <class T>
__global__ void gather_sorted_kernel(const T* __restrict__ v, int32_t* __restrict__ perm, T* __restrict__ sorted,
                                     index_t n, index_t N) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int32_t f = perm[t];
  sorted[t] = v[f];
  perm[t] = static_cast<int32_t>(f % N);
}

// One block per row: sum_i |xs_i - t_i|^p with t the sorted py row or the normal quantile.
template <class T>
__global__ void __launch_bounds__(kThreads) sw_rows_kernel(const T* __restrict__ xs, const T* __restrict__ ys,
                                                             index_t N, double p, double* __restrict__ part) {
  __shared__ double red[kThreads];
  const index_t r = blockIdx.x;
  double s = 0;
  for (index_t i = threadIdx.x; i < N; i += kThreads) {
    const double t = ys ? static_cast<double>(ys[r * N + i]) : normal_order_target(i, N);
    s += abs_pow(static_cast<double>(xs[r * N + i]) - t, p);
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) part[r] = s;
}

template <class T>
__global__ void __launch_bounds__(kThreads) sw_finish_kernel(const double* __restrict__ part, index_t L, index_t N,
                                                               T* __restrict__ out) {
  __shared__ double red[kThreads];
  double s = 0;
  for (index_t l = threadIdx.x; l < L; l += kThreads) s += part[blockIdx.x * L + l];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<T>(s / static_cast<double>(L * N));
}

template <class T>
__global__ void sw_backward_kernel(const T* __restrict__ g, const T* __restrict__ px, const T* __restrict__ py,
                                   const int32_t* __restrict__ perm_x, const int32_t* __restrict__ perm_y,
                                   T* __restrict__ gpx, T* __restrict__ gpy, index_t B, index_t L, index_t N,
                                   double p) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * L * N) return;
  const index_t r = t / N, i = t % N;
  const index_t row = r * N;
  // perm must be the forward's permutation; an index out of range (a caller's error the host cannot check without
  // a synchronisation) is skipped, never followed: the outputs were zeroed
  const index_t ix = perm_x[t];
  const index_t iy = py ? perm_y[t] : 0;
  if (ix < 0 || ix >= N || iy < 0 || iy >= N) return;
  const double tgt = py ? static_cast<double>(py[row + iy]) : normal_order_target(i, N);
  const double gr = static_cast<double>(g[r / L]) / static_cast<double>(L * N) *
                    abs_pow_grad(static_cast<double>(px[row + ix]) - tgt, p);
  gpx[row + ix] = static_cast<T>(gr);
  if (gpy) gpy[row + iy] = static_cast<T>(-gr);
}

struct SwLayout {
  size_t idx, idx2, rows, rows2, keys, keys2, xs, ys, part, temp, total;
};

// the number of bits of row indices 0 .. rows - 1 (at least 1)
inline int row_bits(index_t rows) {
  int b = 1;
  while (b < 32 && (index_t(1) << b) < rows) ++b;
  return b;
}

template <class T>
size_t sort_temp_bytes(index_t n) {
  size_t by_value = 0, by_row = 0;
  using K = typename KeyOf<T>::type;
  cub::DeviceRadixSort::SortPairs(nullptr, by_value, static_cast<const K*>(nullptr), static_cast<K*>(nullptr),
                                  static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                  static_cast<int>(n));
  cub::DeviceRadixSort::SortPairs(nullptr, by_row, static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(n));
  return by_value > by_row ? by_value : by_row;
}

template <class T>
SwLayout sw_layout(index_t B, index_t L, index_t N, bool with_y) {
  const size_t n = static_cast<size_t>(B * L * N);
  SwLayout l;
  size_t off = 0;
  auto take = [&off](size_t bytes) {  // the offset of the next buffer of `bytes` bytes
    const size_t at = off;
    off += align_up(bytes);
    return at;
  };
  l.idx = take(sizeof(int32_t) * n);
  l.idx2 = take(sizeof(int32_t) * n);
  l.rows = take(sizeof(uint32_t) * n);
  l.rows2 = take(sizeof(uint32_t) * n);
  l.keys = take(sizeof(T) * n);
  l.keys2 = take(sizeof(T) * n);
  l.xs = take(sizeof(T) * n);
  l.ys = take(with_y ? sizeof(T) * n : 0);
  l.part = take(sizeof(double) * static_cast<size_t>(B * L));
  l.temp = take(sort_temp_bytes<T>(static_cast<index_t>(n)));
  l.total = off;
  return l;
}

// perm (B L rows of N) = the stable sorting permutation of each row of v, sorted = the sorted rows
template <class T>
cudaError_t sort_rows(const T* v, int32_t* perm, T* sorted, index_t rows, index_t N, const SwLayout& l,
                      unsigned char* ws, cudaStream_t st) {
  using K = typename KeyOf<T>::type;
  const index_t n = rows * N;
  K* key = reinterpret_cast<K*>(ws + l.keys);
  K* key2 = reinterpret_cast<K*>(ws + l.keys2);
  int32_t* idx = reinterpret_cast<int32_t*>(ws + l.idx);
  int32_t* idx2 = reinterpret_cast<int32_t*>(ws + l.idx2);
  uint32_t* row = reinterpret_cast<uint32_t*>(ws + l.rows);
  uint32_t* row2 = reinterpret_cast<uint32_t*>(ws + l.rows2);
  void* temp = ws + l.temp;
  size_t temp_bytes = l.total - l.temp;
  fv_launch(iota_kernel, grid1d(n, 256), 256, 0, st, idx, n);
  fv_launch(order_key_kernel<T>, grid1d(n, 256), 256, 0, st, v, key, n);
  // pass 1: by value (its order-preserving key)
  cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, key, key2, idx, idx2, static_cast<int>(n), 0,
                                                  static_cast<int>(sizeof(K) * 8), st);
  if (e != cudaSuccess) return consumed(e);
  // pass 2: by row, stable, on the bits row numbers use
  fv_launch(row_of_kernel, grid1d(n, 256), 256, 0, st, idx2, row, n, N);
  e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, row, row2, idx2, perm, static_cast<int>(n), 0,
                                      row_bits(rows), st);
  if (e != cudaSuccess) return consumed(e);
  fv_launch(gather_sorted_kernel<T>, grid1d(n, 256), 256, 0, st, v, perm, sorted, n, N);
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// launchers

template <class T>
size_t mmd_workspace_bytes(const MmdProblem<T>& a) {
  return mmd_layout(a).total;
}

bool mmd_grid_fits(index_t N, index_t M) {
  const index_t nbx = (N + kTile - 1) / kTile, nby = (M + kTile - 1) / kTile;
  const index_t tiles = nbx * (nbx + 1) / 2 + nbx * nby + nby * (nby + 1) / 2;
  return tiles < (index_t(1) << 31);
}

template <class T>
int mmd_forward(const MmdProblem<T>& a, T* out, void* workspace, void* stream) {
  if (a.B == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const MmdLayout<T> l = mmd_layout(a);
  Dev<T> p = prepare(a, l, ws, st);
  double* partials = reinterpret_cast<double*>(ws + l.partials);
  const MmdCoefs c = mmd_coefs(a.N, a.M, a.unbiased);
  for (int h0 = 0; h0 < a.n_bw; h0 += kMaxBandwidths) {  // MMD^2 is a sum over the bandwidths
    const int n = group_size(a.n_bw, h0);
    p.n_bw = n;
    for (int h = 0; h < n; ++h) p.bw[h] = a.bandwidths[h0 + h];
    with_kernel<T>(a.kernel, [&](auto kc) {
      launch_tiles<T, decltype(kc)::value>(p, l, a.B, partials, st);
      return 0;
    });
    Finish f;
    f.cxx = c.xx;
    f.cyy = c.yy;
    f.cxy = c.xy;
    f.k0 = kernel_at_zero(a.kernel) * n;
    f.biased = !a.unbiased;
    f.prior_rbf = a.y == nullptr;
    f.accumulate = h0 > 0;
    f.n_bw = n;
    for (int h = 0; h < n; ++h) f.bw[h] = p.bw[h];
    fv_launch(mmd_finish_kernel<T>, static_cast<unsigned>(a.B), kThreads, 0, st, partials, l.nbx, l.nby, a.N,
              a.y ? a.M : 0, a.d, p.nx, f, out);
  }
  return cudaGetLastError();
}

template <class T>
int mmd_backward(const MmdProblem<T>& a, const T* g, T* grad_x, T* grad_y, void* workspace, void* stream) {
  if (a.d > kMaxDim) return cudaErrorInvalidValue;
  if (a.B == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const MmdLayout<T> l = mmd_layout(a);
  Dev<T> p = prepare(a, l, ws, st);
  const MmdCoefs c = mmd_coefs(a.N, a.M, a.unbiased);
  return with_kernel<T>(a.kernel, [&](auto kc) {
    constexpr DistKernel K = decltype(kc)::value;
    for (int h0 = 0; h0 < a.n_bw; h0 += kMaxBandwidths) {  // the gradient is a sum over the bandwidths
      const int n = group_size(a.n_bw, h0);
      p.n_bw = n;
      for (int h = 0; h < n; ++h) p.bw[h] = a.bandwidths[h0 + h];
      GradRole rx{true, 4.0 * c.xx, a.y ? 2.0 * c.xy : 0.0, a.y == nullptr, 1.0 / static_cast<double>(a.N), h0 > 0,
                  {}};
      for (int h = 0; h < n; ++h) rx.bw[h] = p.bw[h];
      int err = launch_grad<T, K>(p, rx, a.B, a.N, g, grad_x, st);
      if (err) return err;
      if (!grad_y || !a.y) continue;
      GradRole ry = rx;
      ry.rows_are_x = false;
      ry.coef_same = 4.0 * c.yy;
      ry.prior_rbf = false;
      err = launch_grad<T, K>(p, ry, a.B, a.M, g, grad_y, st);
      if (err) return err;
    }
    return 0;
  });
}

template <class T>
size_t sw_workspace_bytes(index_t B, index_t L, index_t N, bool with_y) {
  return sw_layout<T>(B, L, N, with_y).total;
}

template <class T>
int sw_forward(const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, index_t B, index_t L, index_t N,
               double p, void* workspace, size_t workspace_bytes, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const SwLayout l = sw_layout<T>(B, L, N, py != nullptr);
  if (workspace_bytes < l.total) return cudaErrorInvalidValue;
  const index_t rows = B * L;
  if (rows == 0) return 0;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  T* xs = reinterpret_cast<T*>(ws + l.xs);
  T* ys = py ? reinterpret_cast<T*>(ws + l.ys) : nullptr;
  double* part = reinterpret_cast<double*>(ws + l.part);
  cudaError_t e = sort_rows(px, perm_x, xs, rows, N, l, ws, st);
  if (e == cudaSuccess && py) e = sort_rows(py, perm_y, ys, rows, N, l, ws, st);
  if (e != cudaSuccess) return e;
  fv_launch(sw_rows_kernel<T>, static_cast<unsigned>(rows), kThreads, 0, st, xs, ys, N, p, part);
  fv_launch(sw_finish_kernel<T>, static_cast<unsigned>(B), kThreads, 0, st, part, L, N, out);
  return cudaGetLastError();
}

template <class T>
int sw_backward(const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y, T* gpx, T* gpy,
                index_t B, index_t L, index_t N, double p, void* stream) {
  if (B * L * N == 0) return 0;
  fv_launch(sw_backward_kernel<T>, grid1d(B * L * N, 256), 256, 0, static_cast<cudaStream_t>(stream), g, px, py, perm_x,
            perm_y, gpx, gpy, B, L, N, p);
  return cudaGetLastError();
}

#define FV_INSTANTIATE(T)                                                                                            \
  template size_t mmd_workspace_bytes<T>(const MmdProblem<T>&);                                                       \
  template int mmd_forward<T>(const MmdProblem<T>&, T*, void*, void*);                                                \
  template int mmd_backward<T>(const MmdProblem<T>&, const T*, T*, T*, void*, void*);                                 \
  template size_t sw_workspace_bytes<T>(index_t, index_t, index_t, bool);                                          \
  template int sw_forward<T>(const T*, const T*, T*, int32_t*, int32_t*, index_t, index_t, index_t, double, void*, \
                             size_t, void*);                                                                       \
  template int sw_backward<T>(const T*, const T*, const T*, const int32_t*, const int32_t*, T*, T*, index_t, index_t, \
                              index_t, double, void*);
FV_INSTANTIATE(float)
FV_INSTANTIATE(double)
#undef FV_INSTANTIATE

}  // namespace cuda
}  // namespace fastvae
