// CUDA kernels of the drop-in ops (csrc/include/fastvae/dropin_math.h has the per-element math, shared with the CPU
// kernels; csrc/cpu/dropin_kernels.h the period layout). Torch-free: raw pointers, sizes and a stream.
//
// An operand of period P is read at i % P (no modulo when P is N or 1). Forward sums, deterministic (the order
// depends on the sizes only, no atomics):
//  - row_len 1: one thread per element, out[i] = factor * term(i);
//  - row_len <= kThreadRow: one thread per row (sequential, in double);
//  - row_len <= kWarpRow: one warp per row (lanes stride the row, in double, shuffle tree);
//  - longer rows: one block per kChunk elements of a row (block tree in double), then one thread per row adds its
//    chunks' partials in chunk order (a second launch; one chunk writes the row directly).
// Backward: one thread per element, its incoming gradient factor * g[i / row_len], every requested gradient stored.
// rsample: 4 consecutive elements per thread, their normals from one Philox call (the stream of reparameterize).
// float16/bfloat16 data are computed in float32; sums and incoming gradients are float32 (float64 for float64 data).
// Bytes moved (float32, full operands): forward 4 K + 4 / row_len per element (K operands), backward 4 K + 4 per
// requested gradient.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/dropin_kernels.h"
#include "cuda/launch.h"
#include "fastvae/dropin_math.h"
#include "fastvae/philox.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr index_t kThreadRow = 16;   // rows up to this length: a thread each
constexpr index_t kWarpRow = 2048;   // rows up to this length: a warp each
constexpr index_t kChunk = 4096;     // elements per block on longer rows

// ---- operands -------------------------------------------------------------------------------------------------

template <class S>
struct Op {  // an operand in the period layout (csrc/cpu/dropin_kernels.h); p null: absent, reads as 1
  const S* p;
  index_t P;
};

template <class S>
Op<S> op_of(const PeriodicArg& a) {
  return {static_cast<const S*>(a.p), a.P};
}

template <class S>
__device__ __forceinline__ typename AccOf<S>::type at(const Op<S>& o, index_t i, index_t N) {
  using T = typename AccOf<S>::type;
  if (!o.p) return T(1);
  return to_acc(o.p[o.P == N ? i : o.P == 1 ? 0 : i % o.P]);
}

// The per-element terms and gradients of each op, over up to 4 operands (dropin_math.h).
template <class S>
struct NllTerm {
  using T = typename AccOf<S>::type;
  Op<S> a[3];
  int param;
  T floor, cst;
  __device__ T term(index_t i, index_t N) const {
    const T x = at(a[0], i, N), m = at(a[1], i, N), s = at(a[2], i, N);
    if (param == 0) return nll_scale_term(x, m, s, cst);
    if (param == 1) return nll_var_term(x, m, s, floor, cst);
    return nll_logvar_term(x, m, s, cst);
  }
  __device__ void grad(T g, index_t i, index_t N, T d[4]) const {
    const T x = at(a[0], i, N), m = at(a[1], i, N), s = at(a[2], i, N);
    if (param == 0) nll_scale_grad(g, x, m, s, &d[0], &d[1], &d[2]);
    else if (param == 1) nll_var_grad(g, x, m, s, floor, &d[0], &d[1], &d[2]);
    else nll_logvar_grad(g, x, m, s, &d[0], &d[1], &d[2]);
  }
};

template <class S>
struct KlTerm {
  using T = typename AccOf<S>::type;
  Op<S> a[4];
  __device__ T term(index_t i, index_t N) const {
    return kl_normal_scale_term(at(a[0], i, N), at(a[1], i, N), at(a[2], i, N), at(a[3], i, N));
  }
  __device__ void grad(T g, index_t i, index_t N, T d[4]) const {
    kl_normal_scale_grad(g, at(a[0], i, N), at(a[1], i, N), at(a[2], i, N), at(a[3], i, N), &d[0], &d[1], &d[2],
                         &d[3]);
  }
};

template <class S>
struct BceTerm {
  using T = typename AccOf<S>::type;
  Op<S> a[4];
  bool want_y;  // d/dtarget wanted (else not computed)
  __device__ T term(index_t i, index_t N) const {
    return bce_logits_term(at(a[0], i, N), at(a[1], i, N), at(a[2], i, N), at(a[3], i, N));
  }
  __device__ void grad(T g, index_t i, index_t N, T d[4]) const {
    const T l = at(a[0], i, N), y = at(a[1], i, N), w = at(a[2], i, N), pw = at(a[3], i, N);
    if (want_y) bce_logits_grad<true>(g, l, y, w, pw, &d[0], &d[1]);
    else bce_logits_grad<false>(g, l, y, w, pw, &d[0], &d[1]);
    d[2] = d[3] = T(0);
  }
};

// ---- reductions -------------------------------------------------------------------------------------------------

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ double block_sum(double v) {  // every thread calls it; the sum is valid in thread 0
  __shared__ double sh[kThreads / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : 0.0;
  if (w == 0) v = warp_sum(v);
  return v;
}

// ---- forward ----------------------------------------------------------------------------------------------------

template <class Term, class T>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(Term op, index_t N, T factor, T* out) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; i < N;
       i += static_cast<index_t>(gridDim.x) * kThreads)
    out[i] = factor * op.term(i, N);
}

template <class Term, class T>
__global__ void __launch_bounds__(kThreads) thread_rows_kernel(Term op, index_t N, index_t R, double factor, T* out) {
  const index_t r = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= N / R) return;
  double s = 0;
  for (index_t i = r * R; i < (r + 1) * R; ++i) s += static_cast<double>(op.term(i, N));
  out[r] = static_cast<T>(factor * s);
}

template <class Term, class T>
__global__ void __launch_bounds__(kThreads) warp_rows_kernel(Term op, index_t N, index_t R, double factor, T* out) {
  const index_t r = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= N / R) return;  // the whole warp (its lanes share r)
  double s = 0;
  for (index_t i = r * R + lane; i < (r + 1) * R; i += 32) s += static_cast<double>(op.term(i, N));
  s = warp_sum(s);
  if (lane == 0) out[r] = static_cast<T>(factor * s);
}

template <class Term, class T>
__global__ void __launch_bounds__(kThreads)
    chunk_rows_kernel(Term op, index_t N, index_t R, index_t nchunks, double factor, T* out, double* partial) {
  const index_t b = blockIdx.x;
  const index_t row = b / nchunks, c = b % nchunks;
  const index_t i0 = row * R + c * kChunk;
  const index_t i1 = (c + 1) * kChunk < R ? i0 + kChunk : (row + 1) * R;
  double s = 0;
  for (index_t i = i0 + threadIdx.x; i < i1; i += kThreads) s += static_cast<double>(op.term(i, N));
  s = block_sum(s);
  if (threadIdx.x != 0) return;
  if (nchunks == 1) out[row] = static_cast<T>(factor * s);
  else partial[b] = s;
}

template <class T>
__global__ void finish_kernel(const double* partial, T* out, index_t rows, index_t nchunks, double factor) {
  const index_t r = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= rows) return;
  double total = 0;
  for (index_t c = 0; c < nchunks; ++c) total += partial[r * nchunks + c];
  out[r] = static_cast<T>(factor * total);
}

unsigned int grid_for(index_t n) {
  const index_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > 65536 * 8 ? 65536 * 8 : b));
}

unsigned int blocks_for(index_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

index_t chunks_of(index_t R) { return (R + kChunk - 1) / kChunk; }

template <class Term, class T>
void launch_fwd(const Term& op, index_t N, index_t R, double factor, T* out, void* workspace, cudaStream_t st) {
  if (N == 0) return;
  const index_t rows = N / R;
  if (R == 1) {
    fv_launch(elementwise_kernel<Term, T>, grid_for(N), kThreads, 0, st, op, N, static_cast<T>(factor), out);
  } else if (R <= kThreadRow) {
    fv_launch(thread_rows_kernel<Term, T>, blocks_for(rows), kThreads, 0, st, op, N, R, factor, out);
  } else if (R <= kWarpRow) {
    fv_launch(warp_rows_kernel<Term, T>, blocks_for(rows * 32), kThreads, 0, st, op, N, R, factor, out);
  } else {
    const index_t nchunks = chunks_of(R);
    double* partial = static_cast<double*>(workspace);
    fv_launch(chunk_rows_kernel<Term, T>, static_cast<unsigned int>(rows * nchunks), kThreads, 0, st, op, N, R,
              nchunks, factor, out, partial);
    if (nchunks > 1)
      fv_launch(finish_kernel<T>, blocks_for(rows), kThreads, 0, st, partial, out, rows, nchunks, factor);
  }
}

// ---- backward ---------------------------------------------------------------------------------------------------

template <class Term, class S>
__global__ void __launch_bounds__(kThreads) bwd_kernel(Term op, const typename AccOf<S>::type* g, index_t N,
                                                       index_t R, typename AccOf<S>::type factor, S* d0, S* d1, S* d2,
                                                       S* d3) {
  using T = typename AccOf<S>::type;
  for (index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; i < N;
       i += static_cast<index_t>(gridDim.x) * kThreads) {
    T d[4];
    op.grad(factor * g[R == 1 ? i : i / R], i, N, d);
    if (d0) store(d0 + i, d[0]);
    if (d1) store(d1 + i, d[1]);
    if (d2) store(d2 + i, d[2]);
    if (d3) store(d3 + i, d[3]);
  }
}

template <class Term, class S>
void launch_bwd(const Term& op, const void* g, index_t N, index_t R, double factor, void* d0, void* d1, void* d2,
                void* d3, cudaStream_t st) {
  using T = typename AccOf<S>::type;
  if (N == 0) return;
  fv_launch(bwd_kernel<Term, S>, grid_for(N), kThreads, 0, st, op, static_cast<const T*>(g), N, R,
            static_cast<T>(factor), static_cast<S*>(d0), static_cast<S*>(d1), static_cast<S*>(d2),
            static_cast<S*>(d3));
}

// ---- rsample ----------------------------------------------------------------------------------------------------

template <class S>
__global__ void __launch_bounds__(kThreads)
    rsample_fwd_kernel(const S* loc, const S* scale, S* z, index_t numel, index_t total, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  const uint64_t key = static_cast<uint64_t>(*seed);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * 4;
  for (index_t j0 = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; j0 < total; j0 += stride) {
    const int n = static_cast<int>(total - j0 < 4 ? total - j0 : 4);
    float e[4];
    eps4(key, j0, n, e);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (t >= n) break;
      const index_t i = (j0 + t) % numel;
      store(z + j0 + t, to_acc(loc[i]) + to_acc(scale[i]) * static_cast<T>(e[t]));
    }
  }
}

template <class S>
__global__ void __launch_bounds__(kThreads) rsample_bwd_kernel(const S* gz, S* gloc, S* gscale, index_t numel,
                                                               index_t n_samples, const int64_t* seed) {
  using T = typename AccOf<S>::type;
  const uint64_t key = static_cast<uint64_t>(*seed);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * 4;
  for (index_t i0 = (static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; i0 < numel; i0 += stride) {
    const int n = static_cast<int>(numel - i0 < 4 ? numel - i0 : 4);
    T acc_l[4] = {0, 0, 0, 0}, acc_s[4] = {0, 0, 0, 0};
    for (index_t s = 0; s < n_samples; ++s) {
      const index_t j0 = s * numel + i0;
      float e[4] = {0, 0, 0, 0};
      if (gscale) eps4(key, j0, n, e);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const T g = t < n ? to_acc(gz[j0 + t]) : T(0);
        acc_l[t] += g;
        acc_s[t] += g * static_cast<T>(e[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (t >= n) break;
      if (gloc) store(gloc + i0 + t, acc_l[t]);
      if (gscale) store(gscale + i0 + t, acc_s[t]);
    }
  }
}

}  // namespace

size_t dropin_workspace_bytes(index_t N, index_t row_len) {
  if (N == 0 || row_len <= kWarpRow) return 0;
  const index_t nchunks = chunks_of(row_len);
  return nchunks > 1 ? sizeof(double) * static_cast<size_t>(N / row_len * nchunks) : 0;
}

int dropin_normal_nll_fwd(DType t, PeriodicArg x, PeriodicArg loc, PeriodicArg spread, int param, double floor,
                          double cst, double factor, index_t N, index_t row_len, void* out, void* workspace,
                          void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const NllTerm<S> op{{op_of<S>(x), op_of<S>(loc), op_of<S>(spread)}, param, T(floor), T(cst)};
    launch_fwd(op, N, row_len, factor, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_normal_nll_bwd(DType t, const void* g, PeriodicArg x, PeriodicArg loc, PeriodicArg spread, int param,
                          double floor, double factor, index_t N, index_t row_len, void* gx, void* gloc,
                          void* gspread, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const NllTerm<S> op{{op_of<S>(x), op_of<S>(loc), op_of<S>(spread)}, param, T(floor), T(0)};
    launch_bwd<NllTerm<S>, S>(op, g, N, row_len, factor, gx, gloc, gspread, nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_normal_kl_fwd(DType t, PeriodicArg lp, PeriodicArg sp, PeriodicArg lq, PeriodicArg sq, double factor,
                         index_t N, index_t row_len, void* out, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const KlTerm<S> op{{op_of<S>(lp), op_of<S>(sp), op_of<S>(lq), op_of<S>(sq)}};
    launch_fwd(op, N, row_len, factor, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_normal_kl_bwd(DType t, const void* g, PeriodicArg lp, PeriodicArg sp, PeriodicArg lq, PeriodicArg sq,
                         double factor, index_t N, index_t row_len, void* glp, void* gsp, void* glq, void* gsq,
                         void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    const KlTerm<S> op{{op_of<S>(lp), op_of<S>(sp), op_of<S>(lq), op_of<S>(sq)}};
    launch_bwd<KlTerm<S>, S>(op, g, N, row_len, factor, glp, gsp, glq, gsq, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_bce_fwd(DType t, PeriodicArg l, PeriodicArg y, PeriodicArg w, PeriodicArg pw, double factor, index_t N,
                   index_t row_len, void* out, void* workspace, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    const BceTerm<S> op{{op_of<S>(l), op_of<S>(y), op_of<S>(w), op_of<S>(pw)}, false};
    launch_fwd(op, N, row_len, factor, static_cast<T*>(out), workspace, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_bce_bwd(DType t, const void* g, PeriodicArg l, PeriodicArg y, PeriodicArg w, PeriodicArg pw,
                   double factor, index_t N, index_t row_len, void* gl, void* gy, void* stream) {
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    const BceTerm<S> op{{op_of<S>(l), op_of<S>(y), op_of<S>(w), op_of<S>(pw)}, gy != nullptr};
    launch_bwd<BceTerm<S>, S>(op, g, N, row_len, factor, gl, gy, nullptr, nullptr, as_stream(stream));
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_normal_rsample_fwd(DType t, const void* loc, const void* scale, void* z, index_t numel, index_t n_samples,
                              const int64_t* seed, void* stream) {
  const index_t total = numel * n_samples;
  if (total == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    fv_launch(rsample_fwd_kernel<S>, grid_for((total + 3) / 4), kThreads, 0, as_stream(stream),
              static_cast<const S*>(loc), static_cast<const S*>(scale), static_cast<S*>(z), numel, total, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

int dropin_normal_rsample_bwd(DType t, const void* gz, void* gloc, void* gscale, index_t numel, index_t n_samples,
                              const int64_t* seed, void* stream) {
  if (numel == 0 || (!gloc && !gscale)) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    fv_launch(rsample_bwd_kernel<S>, grid_for((numel + 3) / 4), kThreads, 0, as_stream(stream),
              static_cast<const S*>(gz), static_cast<S*>(gloc), static_cast<S*>(gscale), numel, n_samples, seed);
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastvae
