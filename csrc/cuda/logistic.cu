// CUDA kernels of the discretized-logistic likelihoods (csrc/include/fastvae/logistic_math.h has the per-element
// math, shared with the CPU kernels). Torch-free: raw pointers, sizes and a stream.
//
// One thread per pixel: it reads x once and its K components (contiguous, the mixture dim last), keeps both
// log-sum-exps over the components online in registers (logits, and logits + log P), and never stores anything per
// component. Forward: blocks of kChunk pixels of one row sum their pixels' losses (block tree, in double), and a
// second launch adds each row's chunk partials in chunk order (deterministic, no atomics, no zeroed workspace).
// Backward: the same thread recomputes the two log-sum-exps, then each component's log mass with its derivatives,
// and writes the three gradients. float16/bfloat16 data are computed in float32.
// Bytes moved (float32, K components): forward 4 (1 + 3K) per pixel (+ 8 per chunk), backward 4 (1 + 6K).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/logistic_kernels.h"
#include "cuda/launch.h"
#include "fastvae/logistic_math.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr index_t kChunk = kThreads;  // pixels per forward block, one per thread (B = 64 x 3 x 32 x 32: 768 blocks)

// ---- per pixel ------------------------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ T mx_inf() {
  return static_cast<T>(INFINITY);
}

// Adds v to the running log-sum-exp (mx, s): sum = s e^mx. -inf adds nothing (also while mx is still -inf); NaN
// makes the sum NaN.
template <class T>
__device__ __forceinline__ void lse_push(T v, T& mx, T& s) {
  if (v > mx) {
    s = s * fv_exp(mx - v) + T(1);  // e^(-inf) = 0 for the first finite value
    mx = v;
  } else if (v != -mx_inf<T>()) {
    s += fv_exp(v - mx);
  }
}

// The pixel's two log-sum-exps: (mx1, s1) over the logits, (mx2, s2) over logits + log P.
template <class S, class T>
__device__ void pixel_lse(T xv, const S* lg, const S* m, const S* ls, index_t K, const LogisticGrid<T>& g, T& mx1,
                          T& s1, T& mx2, T& s2) {
  mx1 = -mx_inf<T>();
  mx2 = -mx_inf<T>();
  s1 = 0;
  s2 = 0;
  for (index_t k = 0; k < K; ++k) {
    const T a = to_acc(lg[k]);
    lse_push(a, mx1, s1);
    lse_push(a + logistic_logp<T, false>(xv, to_acc(m[k]), to_acc(ls[k]), g, nullptr, nullptr), mx2, s2);
  }
}

// -log of the pixel's mixture mass (one logistic when lg is null)
template <class S, class T>
__device__ T pixel_nll(T xv, const S* lg, const S* m, const S* ls, index_t K, const LogisticGrid<T>& g) {
  if (!lg) return -logistic_logp<T, false>(xv, to_acc(m[0]), to_acc(ls[0]), g, nullptr, nullptr);
  T mx1, s1, mx2, s2;
  pixel_lse(xv, lg, m, ls, K, g, mx1, s1, mx2, s2);
  return mixture_nll(mx1, s1, mx2, s2);
}

// ---- forward ------------------------------------------------------------------------------------------------

template <class T>
__device__ double block_sum(double v) {  // every thread calls it; the sum is valid in thread 0
  __shared__ double sh[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : 0.0;
  if (w == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// off_grid (null: no check): the blocks of the first x_rows rows, which read every value of x once, lower it to
// the flat index of each x value that logistic_off_grid refuses (atomicMin: the first one in the end)
template <class S>
__global__ void __launch_bounds__(kThreads)
    fwd_kernel(const S* x, const S* lg, const S* m, const S* ls, double* partial, index_t D, index_t K,
               index_t x_rows, index_t nchunks, LogisticGrid<typename AccOf<S>::type> g,
               unsigned long long* off_grid) {
  using T = typename AccOf<S>::type;
  const index_t b = blockIdx.x;
  const index_t row = b / nchunks, c = b % nchunks;
  const index_t p1 = (c + 1) * kChunk < D ? (c + 1) * kChunk : D;
  const S* xr = x + (row % x_rows) * D;
  const bool check = off_grid != nullptr && row < x_rows;
  T s = 0;
  for (index_t p = c * kChunk + threadIdx.x; p < p1; p += kThreads) {
    const index_t o = (row * D + p) * K;
    const T xv = to_acc(xr[p]);
    if (check && logistic_off_grid(xv, g)) atomicMin(off_grid, static_cast<unsigned long long>(row * D + p));
    s += pixel_nll(xv, lg ? lg + o : nullptr, m + o, ls + o, K, g);
  }
  const double total = block_sum<T>(static_cast<double>(s));
  if (threadIdx.x == 0) partial[b] = total;
}

template <class T>
__global__ void finish_kernel(const double* partial, T* out, index_t rows, index_t nchunks) {
  const index_t r = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= rows) return;
  double total = 0;
  for (index_t c = 0; c < nchunks; ++c) total += partial[r * nchunks + c];
  out[r] = static_cast<T>(total);
}

// ---- backward -----------------------------------------------------------------------------------------------

template <class S>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(const typename AccOf<S>::type* gout, const S* x, const S* lg, const S* m, const S* ls, S* glg, S* gm,
               S* gls, index_t rows, index_t D, index_t K, index_t x_rows, LogisticGrid<typename AccOf<S>::type> g) {
  using T = typename AccOf<S>::type;
  const index_t total = rows * D;
  for (index_t j = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; j < total;
       j += static_cast<index_t>(gridDim.x) * kThreads) {
    const index_t row = j / D, p = j % D;
    const T gr = gout[row];
    const T xv = to_acc(x[(row % x_rows) * D + p]);
    const index_t o = j * K;
    T mx1 = 0, s1 = 1, mx2 = 0, s2 = 1;
    if (lg) pixel_lse(xv, lg + o, m + o, ls + o, K, g, mx1, s1, mx2, s2);
    const T is1 = T(1) / s1, is2 = inverse_or_zero(s2);
    for (index_t k = 0; k < K; ++k) {
      T dm, dls;
      const T lp = logistic_logp<T, true>(xv, to_acc(m[o + k]), to_acc(ls[o + k]), g, &dm, &dls);
      T w = 1;  // the component's responsibility (1 for one logistic)
      if (lg) {
        const T a = to_acc(lg[o + k]);
        w = fv_exp(a + lp - mx2) * is2;
        store(glg + o + k, gr * (fv_exp(a - mx1) * is1 - w));
      }
      const T gw = -gr * w;
      store(gm + o + k, mul0(gw, dm));  // a zero weight times an overflowed derivative: 0
      store(gls + o + k, mul0(gw, dls));
    }
  }
}

index_t chunks_of(index_t D) { return (D + kChunk - 1) / kChunk; }

unsigned int grid_for(index_t n) {
  const index_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > FV_MAX_GRID ? FV_MAX_GRID : b));
}

}  // namespace

size_t logistic_workspace_bytes(index_t rows, index_t D) {
  return sizeof(double) * static_cast<size_t>(rows * chunks_of(D));
}

int logistic_fwd(DType t, const void* x, const void* logits, const void* means, const void* log_scales, void* out,
                 index_t rows, index_t D, index_t K, index_t x_rows, int n_bits, void* workspace, void* stream,
                 int64_t* first_off_grid) {
  const cudaStream_t st = as_stream(stream);
  unsigned long long* off_grid = reinterpret_cast<unsigned long long*>(first_off_grid);
  if (off_grid) {  // 0x7f7f...: above every index
    const cudaError_t e = cudaMemsetAsync(off_grid, 0x7f, sizeof(*off_grid), st);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  if (rows == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    if (D == 0) {  // a sum over no pixels
      cudaMemsetAsync(out, 0, sizeof(T) * static_cast<size_t>(rows), st);
      return;
    }
    const index_t nchunks = chunks_of(D);
    double* partial = static_cast<double*>(workspace);
    fv_launch(fwd_kernel<S>, static_cast<unsigned int>(rows * nchunks), kThreads, 0, st, static_cast<const S*>(x),
              static_cast<const S*>(logits), static_cast<const S*>(means), static_cast<const S*>(log_scales), partial,
              D, K, x_rows, nchunks, logistic_grid<T>(n_bits), off_grid);
    fv_launch(finish_kernel<T>, static_cast<unsigned int>((rows + kThreads - 1) / kThreads), kThreads, 0, st,
              static_cast<const double*>(partial), static_cast<T*>(out), rows, nchunks);
  });
  return static_cast<int>(cudaGetLastError());
}

int logistic_bwd(DType t, const void* g, const void* x, const void* logits, const void* means, const void* log_scales,
                 void* grad_logits, void* grad_means, void* grad_log_scales, index_t rows, index_t D, index_t K,
                 index_t x_rows, int n_bits, void* stream) {
  if (rows * D * K == 0) return 0;  // nothing to launch
  dispatch(t, [&](auto tag) {
    using S = decltype(tag);
    using T = typename AccOf<S>::type;
    fv_launch(bwd_kernel<S>, grid_for(rows * D), kThreads, 0, as_stream(stream), static_cast<const T*>(g),
              static_cast<const S*>(x), static_cast<const S*>(logits), static_cast<const S*>(means),
              static_cast<const S*>(log_scales), static_cast<S*>(grad_logits), static_cast<S*>(grad_means),
              static_cast<S*>(grad_log_scales), rows, D, K, x_rows, logistic_grid<T>(n_bits));
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastvae
