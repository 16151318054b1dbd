// CUDA kernels of the Gaussian VAE ops. Torch-free: raw pointers, sizes and a stream.
//
// Every thread works on 4 consecutive elements: one Philox call gives their 4 normals, and each input is read
// once with one 16-byte (float32) or 8-byte (float16/bfloat16) load when the address allows it.
// Per-row sums (the per-sample losses) are reduced in the same launch:
//  - rows of at most kSmallRow elements: 2^k lanes of a warp per row, warp-shuffle reduction;
//  - longer rows: one block per kChunk-element chunk; the last block of a row (atomic ticket) adds the
//    chunk partials in chunk order, so the result does not depend on block scheduling.
// Bytes moved (float32): reparameterize_kl 12 B/element (+ 4 B/row), gaussian_nll 8 B/element (x, mean) +
// 4 with a per-element logvar, backward passes read what they need once and write each gradient once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gaussian_kernels.h"
#include "cuda/launch.h"
#include "fastvae/gaussian_math.h"
#include "fastvae/philox.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr index_t kSmallRow = 2048;  // rows up to this length use lanes-per-row kernels
constexpr index_t kChunk = 8192;     // elements per block on longer rows (a multiple of 4)
constexpr int kColGroups = 64;       // row groups of the per-feature gradient reduction

// ---- element types (AccOf, to_acc, store: cuda/common.cuh) ----------------------------------------------------

// One aligned load/store of 4 elements (none for double: the float64 path is for checks, not speed).
template <class S>
struct Vec4 {
  using type = uint2;  // 4 x 16-bit
};
template <>
struct Vec4<float> {
  using type = float4;
};

template <class S>
__device__ __forceinline__ bool vec_ok(const S* p) {
  return sizeof(S) != 8 && (reinterpret_cast<uintptr_t>(p) % (4 * sizeof(S))) == 0;
}

template <class S, class T>
__device__ __forceinline__ void load4(const S* __restrict__ p, int n, T v[4]) {
  if (n == 4 && vec_ok(p)) {
    const typename Vec4<S>::type raw = *reinterpret_cast<const typename Vec4<S>::type*>(p);
    const S* e = reinterpret_cast<const S*>(&raw);
#pragma unroll
    for (int t = 0; t < 4; ++t) v[t] = to_acc(e[t]);
  } else {
#pragma unroll
    for (int t = 0; t < 4; ++t) v[t] = t < n ? to_acc(p[t]) : T(0);
  }
}

template <class S, class T>
__device__ __forceinline__ void store4(S* __restrict__ p, int n, const T v[4]) {
  if (n == 4 && vec_ok(p)) {
    typename Vec4<S>::type raw;
    S* e = reinterpret_cast<S*>(&raw);
#pragma unroll
    for (int t = 0; t < 4; ++t) store(&e[t], v[t]);
    *reinterpret_cast<typename Vec4<S>::type*>(p) = raw;
  } else {
#pragma unroll
    for (int t = 0; t < 4; ++t)
      if (t < n) store(&p[t], v[t]);
  }
}

// Where the element (row, i) of a secondary operand is, by layout (nullptr when absent).
template <class S>
__device__ __forceinline__ const S* operand_at(const S* p, Layout layout, index_t row, index_t D, index_t i) {
  if (layout == Layout::None) return nullptr;
  return layout == Layout::Full ? p + row * D + i : p + i;
}

template <class S, class T>
__device__ __forceinline__ void load4_opt(const S* p, int n, T v[4]) {
  if (p) {
    load4(p, n, v);
  } else {
#pragma unroll
    for (int t = 0; t < 4; ++t) v[t] = T(0);
  }
}

__device__ __forceinline__ uint64_t key_of(const int64_t* seed) { return static_cast<uint64_t>(*seed); }

// ---- reductions -------------------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ T lanes_sum(T v, int width) {
  for (int o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T>
__device__ T block_sum(T v) {  // every thread of the block calls it; the sum is valid in thread 0
  __shared__ double raw[kThreads / 32];
  T* sh = reinterpret_cast<T*>(raw);
  v = lanes_sum(v, 32);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : T(0);
  if (w == 0) v = lanes_sum(v, 32);
  return v;
}

// Op: `T operator()(index_t row, index_t i, int n)` handles elements i .. i+n-1 (n <= 4) of the row and
// returns their contribution to the row's sum.
template <class Op, class T>
__global__ void __launch_bounds__(kThreads) rows_small(Op op, index_t rows, index_t D, int lanes_log2, T* out) {
  const int lanes = 1 << lanes_log2;
  const index_t row = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) >> lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  T s = 0;
  if (row < rows)
    for (index_t i = 4 * lane; i < D; i += 4 * lanes) s += op(row, i, static_cast<int>(D - i < 4 ? D - i : 4));
  s = lanes_sum(s, lanes);
  if (out && row < rows && lane == 0) out[row] = s;
}

template <class Op, class T>
__global__ void __launch_bounds__(kThreads)
    rows_chunked(Op op, index_t rows, index_t D, index_t nchunks, T* out, double* partial, unsigned int* tickets) {
  const index_t b = blockIdx.x;
  const index_t row = b / nchunks, c = b % nchunks;
  const index_t i0 = c * kChunk, i1 = i0 + kChunk < D ? i0 + kChunk : D;
  T s = 0;
  for (index_t i = i0 + 4 * threadIdx.x; i < i1; i += 4 * kThreads)
    s += op(row, i, static_cast<int>(i1 - i < 4 ? i1 - i : 4));
  s = block_sum(s);
  if (!out) return;
  if (nchunks == 1) {
    if (threadIdx.x == 0) out[row] = s;
    return;
  }
  __shared__ bool last;
  if (threadIdx.x == 0) {
    partial[row * nchunks + c] = s;
    __threadfence();
    last = atomicAdd(&tickets[row], 1u) == static_cast<unsigned int>(nchunks - 1);
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    __threadfence();
    // partials and total in double: a float32 running sum over 2^17 chunks loses ~1e-3 relative
    const volatile double* p = partial + row * nchunks;
    double total = 0;
    for (index_t k = 0; k < nchunks; ++k) total += p[k];
    out[row] = static_cast<T>(total);
    tickets[row] = 0;  // the workspace stays zeroed for the next launch
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

index_t chunks_of(index_t D) { return (D + kChunk - 1) / kChunk; }

template <class Op, class T>
void launch_rows(const Op& op, index_t rows, index_t D, T* out, void* workspace, cudaStream_t st) {
  if (rows == 0) return;
  if (D == 0) {  // a sum over no elements
    if (out) cudaMemsetAsync(out, 0, sizeof(T) * static_cast<size_t>(rows), st);
    return;
  }
  if (D <= kSmallRow) {
    int lanes_log2 = 0;
    while (lanes_log2 < 5 && (index_t(4) << lanes_log2) < D) ++lanes_log2;
    const index_t rows_per_block = kThreads >> lanes_log2;
    const index_t blocks = (rows + rows_per_block - 1) / rows_per_block;
    fv_launch(rows_small<Op, T>, static_cast<unsigned int>(blocks), kThreads, 0, st, op, rows, D, lanes_log2, out);
  } else {
    const index_t nchunks = chunks_of(D);
    double* partial = static_cast<double*>(workspace);
    auto* tickets = reinterpret_cast<unsigned int*>(static_cast<char*>(workspace) +
                                                    align256(sizeof(double) * rows * nchunks));
    fv_launch(rows_chunked<Op, T>, static_cast<unsigned int>(rows * nchunks), kThreads, 0, st, op, rows, D, nchunks,
              out, partial, tickets);
  }
}

// Per-feature sums over rows (gradients of per-feature parameters), deterministic, in two launches:
// partial[g][a][i] over fixed row groups, then the sum over groups. Op::col(row, i, T c[2]) writes the
// element's per-element outputs and returns its (up to two) per-feature contributions in c.
template <class Op, class T>
__global__ void __launch_bounds__(kThreads)
    cols_partial(Op op, index_t rows, index_t D, index_t rows_per_group, int n_acc, T* partial) {
  const index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  const index_t g = blockIdx.y;
  if (i >= D) return;
  T a0 = 0, a1 = 0;
  const index_t r1 = (g + 1) * rows_per_group < rows ? (g + 1) * rows_per_group : rows;
  for (index_t r = g * rows_per_group; r < r1; ++r) {
    T c[2];
    op.col(r, i, c);
    a0 += c[0];
    a1 += c[1];
  }
  partial[(g * n_acc) * D + i] = a0;
  if (n_acc > 1) partial[(g * n_acc + 1) * D + i] = a1;
}

template <class S, class T>
__global__ void cols_finish(const T* partial, index_t G, index_t D, int n_acc, S* out0, S* out1) {
  const index_t k = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= n_acc * D) return;
  const index_t a = k / D, i = k % D;
  T s = 0;
  for (index_t g = 0; g < G; ++g) s += partial[(g * n_acc + a) * D + i];
  store((a == 0 ? out0 : out1) + i, s);
}

struct ColGrid {
  index_t groups, rows_per_group;
};

ColGrid col_grid(index_t rows) {
  const index_t rpg = rows < kColGroups ? 1 : (rows + kColGroups - 1) / kColGroups;
  return {rows == 0 ? 0 : (rows + rpg - 1) / rpg, rpg};
}

template <class S, class Op>
void launch_cols(const Op& op, index_t rows, index_t D, int n_acc, S* out0, S* out1, void* workspace,
                 cudaStream_t st) {
  using T = typename AccOf<S>::type;
  const ColGrid cg = col_grid(rows);
  if (cg.groups == 0 || D == 0) return;
  T* partial = static_cast<T*>(workspace);
  const dim3 grid(static_cast<unsigned int>((D + kThreads - 1) / kThreads), static_cast<unsigned int>(cg.groups));
  fv_launch(cols_partial<Op, T>, grid, kThreads, 0, st, op, rows, D, cg.rows_per_group, n_acc, partial);
  const index_t total = n_acc * D;
  fv_launch(cols_finish<S, T>, static_cast<unsigned int>((total + kThreads - 1) / kThreads), kThreads, 0, st, partial,
            cg.groups, D, n_acc, out0, out1);
}

unsigned int grid_for(index_t groups_of_4) {
  const index_t b = (groups_of_4 + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > FV_MAX_GRID ? FV_MAX_GRID : b));
}

// ---- reparameterize -----------------------------------------------------------------------------------

template <class S>
__global__ void __launch_bounds__(kThreads)
    reparam_fwd_kernel(const S* mu, const S* lv, S* z, index_t numel, index_t total, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  const uint64_t key = key_of(seed);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * 4;
  for (index_t j0 = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; j0 < total; j0 += stride) {
    const int n = static_cast<int>(total - j0 < 4 ? total - j0 : 4);
    float e[4];
    eps4(key, j0, n, e);
    const index_t i0 = j0 % numel;
    T m[4], l[4];
    if (i0 + n <= numel) {
      load4(mu + i0, n, m);
      load4(lv + i0, n, l);
    } else {  // the 4 elements wrap into the next sample
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const index_t i = (i0 + t) % numel;
        m[t] = t < n ? to_acc(mu[i]) : T(0);
        l[t] = t < n ? to_acc(lv[i]) : T(0);
      }
    }
    T out[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) out[t] = reparam_z(m[t], quarter_exp(l[t]), static_cast<T>(e[t]));
    store4(z + j0, n, out);
  }
}

template <class S>
__global__ void __launch_bounds__(kThreads) reparam_bwd_kernel(const S* gz, const S* lv, S* grad_mu, S* grad_lv,
                                                               index_t numel, index_t n_samples, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  const uint64_t key = key_of(seed);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * 4;
  for (index_t i0 = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; i0 < numel; i0 += stride) {
    const int n = static_cast<int>(numel - i0 < 4 ? numel - i0 : 4);
    T l[4], acc_lv[4] = {0, 0, 0, 0}, acc_mu[4] = {0, 0, 0, 0};
    load4(lv + i0, n, l);
    for (index_t s = 0; s < n_samples; ++s) {
      const index_t j0 = s * numel + i0;
      float e[4];
      eps4(key, j0, n, e);
      T g[4];
      load4(gz + j0, n, g);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        acc_lv[t] += g[t] * static_cast<T>(e[t]);
        acc_mu[t] += g[t];
      }
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) acc_lv[t] = T(0.5) * mul_q2(acc_lv[t], quarter_exp(l[t]));
    store4(grad_lv + i0, n, acc_lv);
    if (grad_mu) store4(grad_mu + i0, n, acc_mu);
  }
}

template <class S>
struct ReparamKlFwd {
  using T = typename AccOf<S>::type;
  const S* mu;
  const S* lv;
  S* z;
  index_t D;
  const int64_t* seed;
  __device__ T operator()(index_t row, index_t i, int n) const {
    const index_t j = row * D + i;
    T m[4], l[4], out[4];
    load4(mu + j, n, m);
    load4(lv + j, n, l);
    float e[4];
    eps4(key_of(seed), j, n, e);
    T s = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const T q = quarter_exp(l[t]);
      out[t] = reparam_z(m[t], q, static_cast<T>(e[t]));
      if (t < n) s += kl_std_term_q(m[t], l[t], q);  // e^lv from the same exp
    }
    store4(z + j, n, out);
    return s;
  }
};

template <class S>
struct ReparamKlBwd {
  using T = typename AccOf<S>::type;
  const S* gz;
  const T* gkl;
  const S* mu;
  const S* lv;
  S* grad_mu;
  S* grad_lv;
  index_t D;
  const int64_t* seed;
  __device__ T operator()(index_t row, index_t i, int n) const {
    const index_t j = row * D + i;
    T g[4], m[4], l[4], gm[4], gl[4];
    load4(gz + j, n, g);
    load4(mu + j, n, m);
    load4(lv + j, n, l);
    float e[4];
    eps4(key_of(seed), j, n, e);
    const T gk = gkl[row];
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const T q = quarter_exp(l[t]);
      gm[t] = g[t] + gk * m[t];
      gl[t] = T(0.5) * (mul_q2(g[t] * static_cast<T>(e[t]), q) + kl_std_grad_q(gk, l[t], q));  // as on CPU
    }
    store4(grad_mu + j, n, gm);
    store4(grad_lv + j, n, gl);
    return T(0);
  }
};

// ---- likelihoods ----------------------------------------------------------------------------------------

template <class S>
struct GaussianNllFwd {
  using T = typename AccOf<S>::type;
  const S* x;
  const S* mean;
  const S* lv;
  Layout layout;
  index_t D, x_rows;
  __device__ T operator()(index_t row, index_t i, int n) const {
    T xv[4], m[4], l[4];
    load4(x + (row % x_rows) * D + i, n, xv);
    load4(mean + row * D + i, n, m);
    load4_opt(operand_at(lv, layout, row, D, i), n, l);
    T s = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t)
      if (t < n) s += gaussian_nll_term(xv[t], m[t], l[t]);
    return s;
  }
};

template <class S>
struct GaussianNllBwd {
  using T = typename AccOf<S>::type;
  const T* g;
  const S* x;
  const S* mean;
  const S* lv;
  Layout layout;
  S* grad_mean;  // may be null
  S* grad_lv;    // Full layout only (per-feature sums go through col())
  index_t D, x_rows;
  __device__ T operator()(index_t row, index_t i, int n) const {
    T xv[4], m[4], l[4], dm[4], dl[4];
    load4(x + (row % x_rows) * D + i, n, xv);
    load4(mean + row * D + i, n, m);
    load4_opt(operand_at(lv, layout, row, D, i), n, l);
    const T gr = g[row];
#pragma unroll
    for (int t = 0; t < 4; ++t) gaussian_nll_term_grad(gr, xv[t], m[t], l[t], &dm[t], &dl[t]);
    if (grad_mean) store4(grad_mean + row * D + i, n, dm);
    if (grad_lv && layout == Layout::Full) store4(grad_lv + row * D + i, n, dl);
    return T(0);
  }
  __device__ void col(index_t row, index_t i, T c[2]) const {
    const T xv = to_acc(x[(row % x_rows) * D + i]), m = to_acc(mean[row * D + i]), l = to_acc(lv[i]);
    T dm, dl;
    gaussian_nll_term_grad(g[row], xv, m, l, &dm, &dl);
    if (grad_mean) store(grad_mean + row * D + i, dm);
    c[0] = dl;
    c[1] = T(0);
  }
};

template <class S>
struct BernoulliNllFwd {
  using T = typename AccOf<S>::type;
  const S* logits;
  const S* x;
  index_t D, x_rows;
  __device__ T operator()(index_t row, index_t i, int n) const {
    T l[4], xv[4];
    load4(logits + row * D + i, n, l);
    load4(x + (row % x_rows) * D + i, n, xv);
    T s = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t)
      if (t < n) s += bernoulli_nll_term(l[t], xv[t]);
    return s;
  }
};

template <class S>
struct BernoulliNllBwd {
  using T = typename AccOf<S>::type;
  const T* g;
  const S* logits;
  const S* x;
  S* grad;
  index_t D, x_rows;
  __device__ T operator()(index_t row, index_t i, int n) const {
    T l[4], xv[4], out[4];
    load4(logits + row * D + i, n, l);
    load4(x + (row % x_rows) * D + i, n, xv);
    const T gr = g[row];
#pragma unroll
    for (int t = 0; t < 4; ++t) out[t] = gr * (sigmoid(l[t]) - xv[t]);
    store4(grad + row * D + i, n, out);
    return T(0);
  }
};

// ---- KL -----------------------------------------------------------------------------------------------------

template <class S>
struct KlFwd {
  using T = typename AccOf<S>::type;
  const S* mu;
  const S* lv;
  const S* mp;
  const S* lp;
  Layout mp_layout, lp_layout;
  index_t D;
  __device__ T operator()(index_t row, index_t i, int n) const {
    T m[4], l[4], pm[4], pl[4];
    load4(mu + row * D + i, n, m);
    load4(lv + row * D + i, n, l);
    load4_opt(operand_at(mp, mp_layout, row, D, i), n, pm);
    load4_opt(operand_at(lp, lp_layout, row, D, i), n, pl);
    T s = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t)
      if (t < n) s += kl_term(m[t], l[t], pm[t], pl[t]);
    return s;
  }
};

template <class S>
struct KlBwd {
  using T = typename AccOf<S>::type;
  const T* g;
  const S* mu;
  const S* lv;
  const S* mp;
  const S* lp;
  Layout mp_layout, lp_layout;
  S* grad_mu;
  S* grad_lv;
  S* grad_mp;  // Full layout handled per element; per-feature sums go through col()
  S* grad_lp;
  index_t D;
  __device__ void grads(index_t row, index_t i, T* a, T* b, T* c, T* d) const {
    const T pm = mp_layout == Layout::None ? T(0) : to_acc(*operand_at(mp, mp_layout, row, D, i));
    const T pl = lp_layout == Layout::None ? T(0) : to_acc(*operand_at(lp, lp_layout, row, D, i));
    kl_term_grad(g[row], to_acc(mu[row * D + i]), to_acc(lv[row * D + i]), pm, pl, a, b, c, d);
    if (grad_mu) store(grad_mu + row * D + i, *a);
    if (grad_lv) store(grad_lv + row * D + i, *b);
    if (grad_mp && mp_layout == Layout::Full) store(grad_mp + row * D + i, *c);
    if (grad_lp && lp_layout == Layout::Full) store(grad_lp + row * D + i, *d);
  }
  __device__ T operator()(index_t row, index_t i, int n) const {
    for (int t = 0; t < n; ++t) {
      T a, b, c, d;
      grads(row, i + t, &a, &b, &c, &d);
    }
    return T(0);
  }
  // per-feature prior gradients: c[0] = first requested (mp, else lp), c[1] = lp when both are
  __device__ void col(index_t row, index_t i, T c[2]) const {
    T a, b, cm, cl;
    grads(row, i, &a, &b, &cm, &cl);
    const bool fm = grad_mp && mp_layout == Layout::PerFeature;
    c[0] = fm ? cm : cl;
    c[1] = cl;
  }
};

// ---- full covariance ------------------------------------------------------------------------------------

// Blocks per launch of the per-sample (per-row) kernels below, which loop over the rest: a grid of 2^32 or more
// blocks would be truncated by the launch (and the samples past it left unwritten).
unsigned int blocks_for(index_t n) { return static_cast<unsigned int>(n < (index_t(1) << 20) ? n : index_t(1) << 20); }

// Block-stride over the samples t = s * R + r: eps in shared memory, thread i computes z_i = mu_i + sum_{j<=i}
// L_ij eps_j.
template <class S>
__global__ void __launch_bounds__(kThreads) tril_fwd_kernel(const S* mu, const S* L, S* z,
                                                            typename AccOf<S>::type* log_q, index_t R, index_t d,
                                                            index_t samples, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  FV_DYNAMIC_SHARED(float, eps);
  const uint64_t key = key_of(seed);
  for (index_t t = blockIdx.x; t < samples; t += gridDim.x) {
    const index_t r = t % R;
    __syncthreads();  // eps and block_sum's scratch of the previous sample are read
    for (index_t j = threadIdx.x; j < d; j += kThreads) eps[j] = normal_at(static_cast<uint64_t>(t * d + j), key);
    __syncthreads();
    const S* Lr = L + r * d * d;
    T sq = 0, logdet = 0;
    for (index_t i = threadIdx.x; i < d; i += kThreads) {
      T acc = 0;
      for (index_t j = 0; j <= i; ++j) acc += to_acc(Lr[i * d + j]) * static_cast<T>(eps[j]);
      store(z + t * d + i, to_acc(mu[r * d + i]) + acc);
      sq += static_cast<T>(eps[i]) * static_cast<T>(eps[i]);
      logdet += log(fabs(to_acc(Lr[i * d + i])));
    }
    const T part = block_sum(T(-0.5) * sq - logdet);
    if (threadIdx.x == 0) log_q[t] = part - T(0.5 * kLog2Pi) * static_cast<T>(d);
  }
}

// Block-stride over r: for each sample, eps and grad_z in shared memory; thread-owned entries of grad_L
// accumulate in the (accumulation-typed) output.
template <class S>
__global__ void __launch_bounds__(kThreads) tril_bwd_kernel(const S* gz, const typename AccOf<S>::type* glogq,
                                                            const S* L, typename AccOf<S>::type* grad_mu,
                                                            typename AccOf<S>::type* grad_L, index_t R, index_t d,
                                                            index_t n_samples, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  // g[d] in the accumulation type (float64 gradients keep their precision), then eps[d]
  FV_DYNAMIC_SHARED(unsigned char, smem);
  T* g = reinterpret_cast<T*>(smem);
  float* eps = reinterpret_cast<float*>(smem + sizeof(T) * d);
  const uint64_t key = key_of(seed);
  for (index_t r = blockIdx.x; r < R; r += gridDim.x) {
    T* gL = grad_L + r * d * d;
    for (index_t e = threadIdx.x; e < d * d; e += kThreads) gL[e] = T(0);
    for (index_t i = threadIdx.x; i < d; i += kThreads) grad_mu[r * d + i] = T(0);
    T gq = 0;
    for (index_t s = 0; s < n_samples; ++s) {
      const index_t t = s * R + r;
      __syncthreads();
      for (index_t j = threadIdx.x; j < d; j += kThreads) {
        eps[j] = normal_at(static_cast<uint64_t>(t * d + j), key);
        g[j] = to_acc(gz[t * d + j]);
      }
      __syncthreads();
      for (index_t e = threadIdx.x; e < d * d; e += kThreads) {
        const index_t i = e / d, j = e % d;
        if (j <= i) gL[e] += g[i] * static_cast<T>(eps[j]);
      }
      for (index_t i = threadIdx.x; i < d; i += kThreads) grad_mu[r * d + i] += g[i];
      gq += glogq[t];
    }
    __syncthreads();
    const S* Lr = L + r * d * d;
    for (index_t i = threadIdx.x; i < d; i += kThreads) gL[i * d + i] -= gq / to_acc(Lr[i * d + i]);
  }
}

}  // namespace

size_t reduce_workspace_bytes(index_t rows, index_t D) {
  if (D <= kSmallRow) return 0;
  return align256(sizeof(double) * rows * chunks_of(D)) + align256(sizeof(unsigned int) * rows);
}

size_t col_workspace_bytes(index_t rows, index_t D, int n_acc, DType t) {
  return static_cast<size_t>(col_grid(rows).groups * n_acc * D) * (t == DType::Float64 ? 8 : 4);
}

int reparam_fwd(DType t, const void* mu, const void* lv, void* z, index_t numel, index_t n_samples,
                 const int64_t* seed, void* stream) {
  const index_t total = numel * n_samples;
  if (total == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    fv_launch(reparam_fwd_kernel<S>, grid_for((total + 3) / 4), kThreads, 0, as_stream(stream),
              static_cast<const S*>(mu), static_cast<const S*>(lv), static_cast<S*>(z), numel, total, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

int reparam_bwd(DType t, const void* gz, const void* lv, void* grad_mu, void* grad_lv, index_t numel,
                 index_t n_samples, const int64_t* seed, void* stream) {
  if (numel == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    fv_launch(reparam_bwd_kernel<S>, grid_for((numel + 3) / 4), kThreads, 0, as_stream(stream),
              static_cast<const S*>(gz), static_cast<const S*>(lv), static_cast<S*>(grad_mu), static_cast<S*>(grad_lv),
              numel, n_samples, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

int reparam_kl_fwd(DType t, const void* mu, const void* lv, void* z, void* kl, index_t rows, index_t D,
                    const int64_t* seed, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const ReparamKlFwd<S> op{static_cast<const S*>(mu), static_cast<const S*>(lv), static_cast<S*>(z), D, seed};
    launch_rows(op, rows, D, static_cast<T*>(kl), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int reparam_kl_bwd(DType t, const void* gz, const void* gkl, const void* mu, const void* lv, void* grad_mu,
                    void* grad_lv, index_t rows, index_t D, const int64_t* seed, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const ReparamKlBwd<S> op{static_cast<const S*>(gz), static_cast<const T*>(gkl), static_cast<const S*>(mu),
                             static_cast<const S*>(lv),  static_cast<S*>(grad_mu),   static_cast<S*>(grad_lv),
                             D,                          seed};
    launch_rows(op, rows, D, static_cast<T*>(nullptr), nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int gaussian_nll_fwd(DType t, const void* x, const void* mean, const void* lv, Layout lv_layout, void* out,
                      index_t rows, index_t D, index_t x_rows, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const GaussianNllFwd<S> op{static_cast<const S*>(x), static_cast<const S*>(mean), static_cast<const S*>(lv),
                               lv_layout, D, x_rows};
    launch_rows(op, rows, D, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int gaussian_nll_bwd(DType t, const void* g, const void* x, const void* mean, const void* lv, Layout lv_layout,
                      void* grad_mean, void* grad_lv, index_t rows, index_t D, index_t x_rows, void* col_workspace,
                      void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const GaussianNllBwd<S> op{static_cast<const T*>(g),  static_cast<const S*>(x),  static_cast<const S*>(mean),
                               static_cast<const S*>(lv), lv_layout,                 static_cast<S*>(grad_mean),
                               static_cast<S*>(grad_lv),  D,                         x_rows};
    if (lv_layout == Layout::PerFeature && grad_lv)
      launch_cols<S>(op, rows, D, 1, static_cast<S*>(grad_lv), static_cast<S*>(nullptr), col_workspace,
                     as_stream(stream));
    else
      launch_rows(op, rows, D, static_cast<T*>(nullptr), nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int bernoulli_nll_fwd(DType t, const void* logits, const void* x, void* out, index_t rows, index_t D,
                       index_t x_rows, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const BernoulliNllFwd<S> op{static_cast<const S*>(logits), static_cast<const S*>(x), D, x_rows};
    launch_rows(op, rows, D, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int bernoulli_nll_bwd(DType t, const void* g, const void* logits, const void* x, void* grad_logits, index_t rows,
                       index_t D, index_t x_rows, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const BernoulliNllBwd<S> op{static_cast<const T*>(g), static_cast<const S*>(logits), static_cast<const S*>(x),
                                static_cast<S*>(grad_logits), D, x_rows};
    launch_rows(op, rows, D, static_cast<T*>(nullptr), nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int kl_normal_fwd(DType t, const void* mu, const void* lv, const void* mp, Layout mp_layout, const void* lp,
                   Layout lp_layout, void* out, index_t rows, index_t D, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const KlFwd<S> op{static_cast<const S*>(mu), static_cast<const S*>(lv), static_cast<const S*>(mp),
                      static_cast<const S*>(lp), mp_layout, lp_layout, D};
    launch_rows(op, rows, D, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int kl_normal_bwd(DType t, const void* g, const void* mu, const void* lv, const void* mp, Layout mp_layout,
                   const void* lp, Layout lp_layout, void* grad_mu, void* grad_lv, void* grad_mp, void* grad_lp,
                   index_t rows, index_t D, void* col_workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const KlBwd<S> op{static_cast<const T*>(g),   static_cast<const S*>(mu), static_cast<const S*>(lv),
                      static_cast<const S*>(mp),  static_cast<const S*>(lp), mp_layout,
                      lp_layout,                  static_cast<S*>(grad_mu),  static_cast<S*>(grad_lv),
                      static_cast<S*>(grad_mp),   static_cast<S*>(grad_lp),  D};
    const bool fm = grad_mp && mp_layout == Layout::PerFeature;
    const bool fl = grad_lp && lp_layout == Layout::PerFeature;
    if (fm || fl)
      launch_cols<S>(op, rows, D, fm && fl ? 2 : 1, static_cast<S*>(fm ? grad_mp : grad_lp), static_cast<S*>(grad_lp),
                     col_workspace, as_stream(stream));
    else
      launch_rows(op, rows, D, static_cast<T*>(nullptr), nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int tril_fwd(DType t, const void* mu, const void* L, void* z, void* log_q, index_t R, index_t d,
              index_t n_samples, const int64_t* seed, void* stream) {
  const index_t samples = R * n_samples;
  if (samples == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    fv_launch(tril_fwd_kernel<S>, blocks_for(samples), kThreads, sizeof(float) * d, as_stream(stream),
              static_cast<const S*>(mu), static_cast<const S*>(L), static_cast<S*>(z), static_cast<T*>(log_q), R, d,
              samples, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

int tril_bwd(DType t, const void* gz, const void* glogq, const void* L, void* grad_mu, void* grad_L, index_t R,
              index_t d, index_t n_samples, const int64_t* seed, void* stream) {
  if (R == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    // float64: (8 + 4) d bytes, above the default 48 KiB for d > 4096 (d <= 6144: 72 KiB, sm_80 and later allow it)
    const size_t smem = (sizeof(T) + sizeof(float)) * static_cast<size_t>(d);
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(tril_bwd_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    fv_launch(tril_bwd_kernel<S>, blocks_for(R), kThreads, smem, as_stream(stream), static_cast<const S*>(gz),
              static_cast<const T*>(glogq), static_cast<const S*>(L), static_cast<T*>(grad_mu), static_cast<T*>(grad_L),
              R, d, n_samples, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastvae
