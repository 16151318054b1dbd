// The two constructs a .cu source writes differently so that it builds both with nvcc and, as C++, against the
// CUDA execution model of the tests (tests/cudasim/cuda_sim.h; no #ifdef in kernel code):
//
//   fv_launch(kernel, grid, block, smem, stream, args...)   in place of kernel<<<grid, block, smem, stream>>>(args...);
//       returns cudaPeekAtLastError() (cudaError_t): the launch's error, which also stays pending for a later
//       cudaGetLastError() exactly as after a bare <<<>>> (so launchers that ignore the return value and let the
//       caller check cudaGetLastError() keep working; cudaGetLastError() here would swallow the error).
//       All four launch parameters are required. A kernel template needs explicit template arguments
//       (kernel<T>): <<<>>> deduces them from the call's arguments, a function pointer cannot.
//   FV_DYNAMIC_SHARED(T, name);                              in place of extern __shared__ T name[];
//       (16-byte aligned; `name` is an array under nvcc and a T* const under the execution model)
//
// Under nvcc this header needs only <cuda_runtime.h>.
#pragma once

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#include <utility>

namespace fv_launch_detail {
template <class... P, class... A>
inline cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
  return cudaPeekAtLastError();
}
}  // namespace fv_launch_detail

#define fv_launch(...) ::fv_launch_detail::launch(__VA_ARGS__)
#define FV_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]

#else  // the execution model: its builds force-include tests/cudasim/cuda_sim.h (g++ -include)

#if !defined(CUDASIM)
#error "a .cu is compiled by nvcc, or by g++ with -include tests/cudasim/cuda_sim.h (see tests/cudasim/README.md)"
#endif

#define fv_launch(...) ::cudasim::launch(#__VA_ARGS__, __VA_ARGS__)
#define FV_DYNAMIC_SHARED(T, name) T* const name = static_cast<T*>(::cudasim::detail::dynamic_shared())

#endif
