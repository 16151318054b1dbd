// cudasim: a small execution model of CUDA that runs CUDA C++ kernels on the CPU, one fiber per CUDA thread.
// A check of logic, not of speed: see README.md (how to build a .cu for it, what it checks, what it does not).
//
// Build a .cu as C++ against it:
//   g++ -std=c++17 -O1 -I csrc -I tests/cudasim/shim -I <cuda include dir>
//       -include tests/cudasim/cuda_sim.h -x c++ FILE.cu -x none cudasim.o
// (cudasim.o is tests/cudasim/cudasim.cpp compiled with the same flags; the shim directory must come before the
// CUDA include directory so that <cub/cub.cuh> is the host implementation in shim/cub.)
//
// The toolkit's own headers are used for every type (dim3, float4, cudaError_t, cudaStream_t, ...) and for the
// 16-bit floats (the host paths of cuda_fp16.h / cuda_bf16.h); this header supplies what nvcc would: the
// keywords, threadIdx & co., barriers, warp collectives, atomics, device intrinsics and the launch.
#pragma once

#if defined(__CUDACC__)
#error "cuda_sim.h is for building .cu sources with a host C++ compiler; nvcc uses the real CUDA runtime"
#endif
#if !defined(__GNUC__)
#error "cudasim needs GCC or Clang"
#endif

#define CUDASIM 1

// ---- keywords (before the toolkit headers: crt/host_defines.h keeps definitions it finds) ------------------
// Blocks run one after another and every CUDA thread of a block is a fiber of the one OS thread, so a static
// variable is block-shared storage. thread_local rather than plain static: GCC drops section attributes on
// static locals of templates, while TLS symbols are easy to find in the ELF symbol table, which is how the
// runtime sizes, counts (per kernel) and poisons the __shared__ variables (see README.md).
#undef __shared__
#undef __global__
#undef __device__
#undef __host__
#undef __constant__
#undef __managed__
#undef __grid_constant__
#undef __launch_bounds__
#undef __cluster_dims__
#if defined(__SANITIZE_THREAD__)
// The race-checking build (README.md, "Race and init checks"): every __shared__ variable starts a 64 KiB slot of
// its own (more than the 48 KiB a static variable may have), so an index past its end or before its start lands in
// a gap that no variable owns, which the instrumented access reports.
#define __shared__ alignas(65536) static thread_local
#else
#define __shared__ static thread_local
#endif
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __cluster_dims__(...)

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#undef __maxnreg__
#define __maxnreg__(...)

#include <math.h>  // libstdc++'s math.h: the float overloads of log, exp, fma, ... in the global namespace

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- built-in variables ----------------------------------------------------------------------------------------
// Plain globals: the scheduler stores the running fiber's values into them before every switch into a fiber,
// and every switch goes through an opaque call, so compiled code never keeps a stale copy.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
static constexpr int warpSize = 32;

// The C++ overloads cuda_runtime.h declares only for nvcc.
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* func) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(func));
}

namespace cudasim {

// Order in which the threads of a block run between two synchronisation points, and the blocks of a grid.
enum class Order : int { Forward = 0, Reverse = 1, Random = 2 };
void set_order(Order order, uint64_t seed = 0);  // for the following launches (default: env CUDASIM_ORDER)
Order order();
const char* order_name(Order order);

// The message of the most recent error (kernel, block, thread and reason), "" when none.
const char* last_error_message();
// Clears the sticky execution error (a real context would be gone; tests continue).
void reset();

// Guarded host buffers for the data a harness hands to kernels: the buffer lies against a PROT_NONE page, so
// the first byte past its end (Placement::End) or before its start (Placement::Start) faults, and the SIGSEGV
// handler reports the kernel, block and thread and names the buffer. `align` (a power of two; 0 = the largest
// power of two <= 256 that divides bytes) may leave up to align - 1 unguarded bytes after the end.
enum class Placement : int { End = 0, Start = 1 };
void* guarded_alloc(size_t bytes, const char* name = nullptr, Placement placement = Placement::End, size_t align = 0);
void guarded_free(void* p);
// A guarded buffer for a problem larger than the memory (scale mode): mapped without reserving memory and not
// filled (it reads as zeros; only the pages a kernel touches use memory). Pair with set_block_window.
void* sparse_alloc(size_t bytes, const char* name = nullptr);
// Scale mode: every following launch runs only the blocks of linear index [first, first + count) of its grid
// (first < 0: counted from the end; count < 0: all blocks, the default). Env: CUDASIM_BLOCKS=first:count.
void set_block_window(int64_t first, int64_t count);
template <class T>
T* guarded(size_t n, const char* name = nullptr, Placement placement = Placement::End) {
  return static_cast<T*>(guarded_alloc(n * sizeof(T), name, placement, alignof(T)));
}

// Launch statistics of the most recent launch (for tests).
struct LaunchStats {
  size_t static_smem;   // bytes of __shared__ variables the kernel touched (known so far)
  size_t dynamic_smem;  // the launch's dynamic shared memory
  uint64_t switches;    // fiber switches
};
LaunchStats last_launch_stats();

// For the initcheck of the race-checking build (README.md): the bytes [p, p + bytes) of a guarded buffer hold
// nothing a kernel may read before something writes them (as cudaMalloc'd memory: the harness's outputs, garbage
// workspaces). cudaMemcpy / cudaMemset and kernel writes initialise. A no-op in other builds.
void mark_uninitialised(const void* p, size_t bytes);

namespace detail {

// ---- warp collectives --------------------------------------------------------------------------------------
enum class WOp : int {
  Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp, MatchAny, MatchAll,
  ReduceAdd, ReduceMin, ReduceMax, ReduceAnd, ReduceOr, ReduceXor
};
struct WarpArgs {
  WOp op;
  unsigned mask;
  int arg;    // source lane, delta, lane mask; the predicate of votes
  int width;  // shuffles
  int size;   // bytes of the value
  int is_signed;
  unsigned char val[16];
  const char* file;
  int line;
};
struct WarpResult {
  unsigned char val[16];
  unsigned bits;
  int pred;
};
void warp_collective(const WarpArgs& a, WarpResult* r);
void* guarded_map(size_t bytes, const char* name, Placement placement, size_t align, bool fill);

// ---- barriers ------------------------------------------------------------------------------------------------
enum class BOp : int { Sync = 0, Count = 1, And = 2, Or = 3 };
int barrier(BOp op, int pred, const char* file, int line);

// ---- errors raised by device code (__trap, bad arguments to intrinsics): the block stops, the launch fails ----
[[noreturn]] void device_error(const char* what, const char* file, int line);
unsigned lane_id();
unsigned lanes_alive();

// ---- dynamic shared memory -------------------------------------------------------------------------------------
void* dynamic_shared();

// ---- the race-checking build (-fsanitize=thread: the runtime implements the __tsan_* callbacks itself) -------
void race_fence();
void race_atomic(void* address, unsigned size, void* pc);

// ---- launch -------------------------------------------------------------------------------------------------------
using Invoker = void (*)(const void* call);
cudaError_t launch(const char* text, const void* key, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Invoker invoke, const void* call, const char* signature);

template <class... P>
struct KernelCall {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;  // converted once, as <<<>>> does; each thread gets its own copies
  static void run(const void* self) {
    const auto* c = static_cast<const KernelCall*>(self);
    std::apply(c->kernel, c->args);
  }
};

template <class... P>
const char* signature_of() {
  return __PRETTY_FUNCTION__;  // "... [with P = {const float*, float*, int}]": parsed by the runtime
}

template <class T>
inline T from_bytes(const unsigned char* b) {
  T v;
  std::memcpy(&v, b, sizeof(T));
  return v;
}

}  // namespace detail

// The simulated `kernel<<<grid, block, smem, stream>>>(args...)` + cudaPeekAtLastError(). Use it through
// fv_launch (launch.h), which gives the runtime the kernel's name.
template <class... P, class... A>
cudaError_t launch(const char* text, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "cudasim::launch: wrong number of kernel arguments");
  const detail::KernelCall<P...> call{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  detail::launch(text, reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                 &detail::KernelCall<P...>::run, &call, detail::signature_of<P...>());
  return cudaPeekAtLastError();
}

}  // namespace cudasim

// =====================================================================================================================
// Device functions, in the global namespace as nvcc provides them. The source location arguments are defaulted so
// that calls look as in CUDA; they name the call site in error messages and identify __syncthreads call sites.
// =====================================================================================================================

#define CUDASIM_SITE const char *cudasim_file_ = __builtin_FILE(), int cudasim_line_ = __builtin_LINE()

// ---- barriers ------------------------------------------------------------------------------------------------------
inline void __syncthreads(CUDASIM_SITE) {
  cudasim::detail::barrier(cudasim::detail::BOp::Sync, 0, cudasim_file_, cudasim_line_);
}
inline int __syncthreads_count(int pred, CUDASIM_SITE) {
  return cudasim::detail::barrier(cudasim::detail::BOp::Count, pred != 0, cudasim_file_, cudasim_line_);
}
inline int __syncthreads_and(int pred, CUDASIM_SITE) {
  return cudasim::detail::barrier(cudasim::detail::BOp::And, pred != 0, cudasim_file_, cudasim_line_);
}
inline int __syncthreads_or(int pred, CUDASIM_SITE) {
  return cudasim::detail::barrier(cudasim::detail::BOp::Or, pred != 0, cudasim_file_, cudasim_line_);
}

// Memory fences order a thread's memory operations; fibers of one OS thread see each other's writes at once. In the
// race-checking build a fence is an event of the happens-before model: a later atomic of the thread releases what
// preceded the fence (README.md).
#if defined(__SANITIZE_THREAD__)
inline void __threadfence() { cudasim::detail::race_fence(); }
inline void __threadfence_block() { cudasim::detail::race_fence(); }
inline void __threadfence_system() { cudasim::detail::race_fence(); }
#else
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif

// ---- warp collectives ------------------------------------------------------------------------------------------
namespace cudasim {
namespace detail {
template <class T>
inline T shuffle(WOp op, unsigned mask, T var, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of an unsupported type");
  WarpArgs a{};
  a.op = op;
  a.mask = mask;
  a.arg = arg;
  a.width = width;
  a.size = static_cast<int>(sizeof(T));
  std::memcpy(a.val, &var, sizeof(T));
  a.file = file;
  a.line = line;
  WarpResult r;
  warp_collective(a, &r);
  return from_bytes<T>(r.val);
}
inline WarpResult vote(WOp op, unsigned mask, int arg, const void* val, int size, int is_signed, const char* file,
                       int line) {
  WarpArgs a{};
  a.op = op;
  a.mask = mask;
  a.arg = arg;
  a.width = 32;
  a.size = size;
  a.is_signed = is_signed;
  if (val) std::memcpy(a.val, val, static_cast<size_t>(size));
  a.file = file;
  a.line = line;
  WarpResult r;
  warp_collective(a, &r);
  return r;
}
}  // namespace detail
}  // namespace cudasim

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, CUDASIM_SITE) {
  return cudasim::detail::shuffle(cudasim::detail::WOp::Shfl, mask, var, srcLane, width, cudasim_file_,
                                  cudasim_line_);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, CUDASIM_SITE) {
  return cudasim::detail::shuffle(cudasim::detail::WOp::ShflUp, mask, var, static_cast<int>(delta), width,
                                  cudasim_file_, cudasim_line_);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, CUDASIM_SITE) {
  return cudasim::detail::shuffle(cudasim::detail::WOp::ShflDown, mask, var, static_cast<int>(delta), width,
                                  cudasim_file_, cudasim_line_);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, CUDASIM_SITE) {
  return cudasim::detail::shuffle(cudasim::detail::WOp::ShflXor, mask, var, laneMask, width, cudasim_file_,
                                  cudasim_line_);
}
inline unsigned __ballot_sync(unsigned mask, int pred, CUDASIM_SITE) {
  return cudasim::detail::vote(cudasim::detail::WOp::Ballot, mask, pred != 0, nullptr, 0, 0, cudasim_file_,
                               cudasim_line_).bits;
}
inline int __any_sync(unsigned mask, int pred, CUDASIM_SITE) {
  return cudasim::detail::vote(cudasim::detail::WOp::Any, mask, pred != 0, nullptr, 0, 0, cudasim_file_,
                               cudasim_line_).pred;
}
inline int __all_sync(unsigned mask, int pred, CUDASIM_SITE) {
  return cudasim::detail::vote(cudasim::detail::WOp::All, mask, pred != 0, nullptr, 0, 0, cudasim_file_,
                               cudasim_line_).pred;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDASIM_SITE) {
  cudasim::detail::vote(cudasim::detail::WOp::SyncWarp, mask, 0, nullptr, 0, 0, cudasim_file_, cudasim_line_);
}
// The lanes of the warp that have not exited (under independent thread scheduling the set of converged lanes is
// the hardware's choice; this is its largest value).
inline unsigned __activemask() { return cudasim::detail::lanes_alive(); }
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, CUDASIM_SITE) {
  static_assert(std::is_integral<T>::value || std::is_floating_point<T>::value, "__match_any_sync type");
  return cudasim::detail::vote(cudasim::detail::WOp::MatchAny, mask, 0, &value, sizeof(T), 0, cudasim_file_,
                               cudasim_line_).bits;
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred, CUDASIM_SITE) {
  static_assert(std::is_integral<T>::value || std::is_floating_point<T>::value, "__match_all_sync type");
  const auto r = cudasim::detail::vote(cudasim::detail::WOp::MatchAll, mask, 0, &value, sizeof(T), 0,
                                       cudasim_file_, cudasim_line_);
  *pred = r.pred;
  return r.bits;
}
#define CUDASIM_REDUX(NAME, OP)                                                                                  \
  inline unsigned NAME(unsigned mask, unsigned value, CUDASIM_SITE) {                                            \
    return cudasim::detail::from_bytes<unsigned>(                                                                 \
        cudasim::detail::vote(cudasim::detail::WOp::OP, mask, 0, &value, 4, 0, cudasim_file_, cudasim_line_).val); \
  }
CUDASIM_REDUX(__reduce_add_sync, ReduceAdd)
CUDASIM_REDUX(__reduce_and_sync, ReduceAnd)
CUDASIM_REDUX(__reduce_or_sync, ReduceOr)
CUDASIM_REDUX(__reduce_xor_sync, ReduceXor)
#undef CUDASIM_REDUX
inline unsigned __reduce_min_sync(unsigned mask, unsigned value, CUDASIM_SITE) {
  return cudasim::detail::from_bytes<unsigned>(cudasim::detail::vote(cudasim::detail::WOp::ReduceMin, mask, 0, &value,
                                                                     4, 0, cudasim_file_, cudasim_line_).val);
}
inline int __reduce_min_sync(unsigned mask, int value, CUDASIM_SITE) {
  return cudasim::detail::from_bytes<int>(cudasim::detail::vote(cudasim::detail::WOp::ReduceMin, mask, 0, &value, 4,
                                                                1, cudasim_file_, cudasim_line_).val);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned value, CUDASIM_SITE) {
  return cudasim::detail::from_bytes<unsigned>(cudasim::detail::vote(cudasim::detail::WOp::ReduceMax, mask, 0, &value,
                                                                     4, 0, cudasim_file_, cudasim_line_).val);
}
inline int __reduce_max_sync(unsigned mask, int value, CUDASIM_SITE) {
  return cudasim::detail::from_bytes<int>(cudasim::detail::vote(cudasim::detail::WOp::ReduceMax, mask, 0, &value, 4,
                                                                1, cudasim_file_, cudasim_line_).val);
}

// ---- atomics ---------------------------------------------------------------------------------------------------
// A fiber runs uninterrupted between synchronisation points, so a read-modify-write is atomic by construction.
// Integer arithmetic wraps (as on the GPU) through the unsigned type.
// In the race-checking build an atomic is not instrumented as plain accesses: it tells the runtime (which records it
// as an atomic access, an acquire and a release), from a call that is never inlined so that the caller is known.
#if defined(__SANITIZE_THREAD__)
#define CUDASIM_ATOMIC_FN inline __attribute__((no_sanitize_thread, noinline))
#define CUDASIM_ATOMIC_HOOK(address) \
  cudasim::detail::race_atomic(address, sizeof(*(address)), __builtin_return_address(0))
#else
#define CUDASIM_ATOMIC_FN inline
#define CUDASIM_ATOMIC_HOOK(address) (void)0
#endif
#define CUDASIM_ATOMIC_RMW(NAME, T, EXPR)   \
  CUDASIM_ATOMIC_FN T NAME(T* address, T val) { \
    CUDASIM_ATOMIC_HOOK(address);           \
    const T old = *address;                 \
    *address = (EXPR);                      \
    return old;                             \
  }
#define CUDASIM_WRAP(T, U, OP) static_cast<T>(static_cast<U>(old) OP static_cast<U>(val))
CUDASIM_ATOMIC_RMW(atomicAdd, int, CUDASIM_WRAP(int, unsigned, +))
CUDASIM_ATOMIC_RMW(atomicAdd, unsigned int, old + val)
CUDASIM_ATOMIC_RMW(atomicAdd, unsigned long long, old + val)
CUDASIM_ATOMIC_RMW(atomicAdd, float, old + val)
CUDASIM_ATOMIC_RMW(atomicAdd, double, old + val)
CUDASIM_ATOMIC_RMW(atomicAdd, __half, __float2half_rn(__half2float(old) + __half2float(val)))
CUDASIM_ATOMIC_RMW(atomicAdd, __nv_bfloat16, __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(val)))
CUDASIM_ATOMIC_RMW(atomicSub, int, CUDASIM_WRAP(int, unsigned, -))
CUDASIM_ATOMIC_RMW(atomicSub, unsigned int, old - val)
CUDASIM_ATOMIC_RMW(atomicExch, int, val)
CUDASIM_ATOMIC_RMW(atomicExch, unsigned int, val)
CUDASIM_ATOMIC_RMW(atomicExch, unsigned long long, val)
CUDASIM_ATOMIC_RMW(atomicExch, float, val)
CUDASIM_ATOMIC_RMW(atomicMin, int, val < old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMin, unsigned int, val < old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMin, long long, val < old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMin, unsigned long long, val < old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMax, int, val > old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMax, unsigned int, val > old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMax, long long, val > old ? val : old)
CUDASIM_ATOMIC_RMW(atomicMax, unsigned long long, val > old ? val : old)
CUDASIM_ATOMIC_RMW(atomicAnd, int, old & val)
CUDASIM_ATOMIC_RMW(atomicAnd, unsigned int, old & val)
CUDASIM_ATOMIC_RMW(atomicAnd, unsigned long long, old & val)
CUDASIM_ATOMIC_RMW(atomicOr, int, old | val)
CUDASIM_ATOMIC_RMW(atomicOr, unsigned int, old | val)
CUDASIM_ATOMIC_RMW(atomicOr, unsigned long long, old | val)
CUDASIM_ATOMIC_RMW(atomicXor, int, old ^ val)
CUDASIM_ATOMIC_RMW(atomicXor, unsigned int, old ^ val)
CUDASIM_ATOMIC_RMW(atomicXor, unsigned long long, old ^ val)
CUDASIM_ATOMIC_RMW(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
CUDASIM_ATOMIC_RMW(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef CUDASIM_WRAP
#undef CUDASIM_ATOMIC_RMW
#define CUDASIM_ATOMIC_CAS(T)                          \
  CUDASIM_ATOMIC_FN T atomicCAS(T* address, T compare, T val) { \
    CUDASIM_ATOMIC_HOOK(address);                      \
    const T old = *address;                            \
    if (old == compare) *address = val;                \
    return old;                                        \
  }
CUDASIM_ATOMIC_CAS(int)
CUDASIM_ATOMIC_CAS(unsigned int)
CUDASIM_ATOMIC_CAS(unsigned long long)
CUDASIM_ATOMIC_CAS(unsigned short)
#undef CUDASIM_ATOMIC_CAS
// The _block and _system scopes are the same operation here.
template <class T, class V>
inline T atomicAdd_block(T* a, V v) { return atomicAdd(a, static_cast<T>(v)); }
template <class T, class V>
inline T atomicAdd_system(T* a, V v) { return atomicAdd(a, static_cast<T>(v)); }

// ---- loads with cache hints: plain loads --------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldca(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldlu(const T* p) { return *p; }
template <class T>
inline T __ldcv(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stwb(T* p, T v) { *p = v; }
template <class T>
inline void __stwt(T* p, T v) { *p = v; }

// ---- math intrinsics: the correctly rounded (or libm) host function for each fast/rounding-mode variant --------
// The GPU's fast intrinsics (__expf, __logf, __sinf, __fdividef, ...) are less accurate than these; a test that
// compares the simulated kernel with a reference checks the logic, not those intrinsics' error bounds.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / cbrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
#define CUDASIM_RN4(NAME, EXPR)                             \
  inline float NAME##_rn(float x, float y) { return EXPR; } \
  inline float NAME##_rz(float x, float y) { return EXPR; } \
  inline float NAME##_ru(float x, float y) { return EXPR; } \
  inline float NAME##_rd(float x, float y) { return EXPR; }
CUDASIM_RN4(__fadd, x + y)
CUDASIM_RN4(__fsub, x - y)
CUDASIM_RN4(__fmul, x * y)
CUDASIM_RN4(__fdiv, x / y)
#undef CUDASIM_RN4
#define CUDASIM_RN4D(NAME, EXPR)                                \
  inline double NAME##_rn(double x, double y) { return EXPR; } \
  inline double NAME##_rz(double x, double y) { return EXPR; } \
  inline double NAME##_ru(double x, double y) { return EXPR; } \
  inline double NAME##_rd(double x, double y) { return EXPR; }
CUDASIM_RN4D(__dadd, x + y)
CUDASIM_RN4D(__dsub, x - y)
CUDASIM_RN4D(__dmul, x * y)
CUDASIM_RN4D(__ddiv, x / y)
#undef CUDASIM_RN4D
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_rz(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_ru(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_rd(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline double __fma_rz(double a, double b, double c) { return fma(a, b, c); }
inline double __fma_ru(double a, double b, double c) { return fma(a, b, c); }
inline double __fma_rd(double a, double b, double c) { return fma(a, b, c); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dsqrt_rn(double x) { return sqrt(x); }
inline void sincospif(float x, float* s, float* c) {
  *s = static_cast<float>(sin(M_PI * static_cast<double>(x)));
  *c = static_cast<float>(cos(M_PI * static_cast<double>(x)));
}
inline void sincospi(double x, double* s, double* c) { *s = sin(M_PI * x); *c = cos(M_PI * x); }
inline float sinpif(float x) { return static_cast<float>(sin(M_PI * static_cast<double>(x))); }
inline float cospif(float x) { return static_cast<float>(cos(M_PI * static_cast<double>(x))); }
inline double sinpi(double x) { return sin(M_PI * x); }
inline double cospi(double x) { return cos(M_PI * x); }
inline float normcdff(float x) { return 0.5f * erfcf(-x * static_cast<float>(M_SQRT1_2)); }
inline double normcdf(double x) { return 0.5 * erfc(-x * M_SQRT1_2); }

// bit casts and conversions
inline int __float_as_int(float x) { return __builtin_bit_cast(int, x); }
inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
inline unsigned __float_as_uint(float x) { return __builtin_bit_cast(unsigned, x); }
inline float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }
inline long long __double_as_longlong(double x) { return __builtin_bit_cast(long long, x); }
inline double __longlong_as_double(long long x) { return __builtin_bit_cast(double, x); }
inline int __double2hiint(double x) { return static_cast<int>(__builtin_bit_cast(unsigned long long, x) >> 32); }
inline int __double2loint(double x) { return static_cast<int>(__builtin_bit_cast(unsigned long long, x)); }
inline double __hiloint2double(int hi, int lo) {
  return __builtin_bit_cast(double, (static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) |
                                        static_cast<unsigned>(lo));
}
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(nearbyintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }
inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }

// integer intrinsics
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline int __mul24(int x, int y) { return static_cast<int>(static_cast<unsigned>((x << 8) >> 8) * static_cast<unsigned>((y << 8) >> 8)); }
inline unsigned __umul24(unsigned x, unsigned y) { return (x & 0xffffffu) * (y & 0xffffffu); }
inline int __mulhi(int x, int y) { return static_cast<int>((static_cast<long long>(x) * y) >> 32); }
inline unsigned __umulhi(unsigned x, unsigned y) { return static_cast<unsigned>((static_cast<unsigned long long>(x) * y) >> 32); }
inline long long __mul64hi(long long x, long long y) { return static_cast<long long>((static_cast<__int128>(x) * y) >> 64); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(x) * y) >> 64);
}
inline unsigned __sad(int x, int y, unsigned z) { return z + static_cast<unsigned>(x > y ? x - y : y - x); }
inline unsigned __usad(unsigned x, unsigned y, unsigned z) { return z + (x > y ? x - y : y - x); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
  return static_cast<unsigned>(((static_cast<unsigned long long>(hi) << 32 | lo) << (s & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  return static_cast<unsigned>((static_cast<unsigned long long>(hi) << 32 | lo) >> (s & 31));
}

// min / max as CUDA declares them for host and device code (same-type and the signed/unsigned mixes)
#define CUDASIM_MINMAX(T)                               \
  inline T min(T a, T b) { return b < a ? b : a; }      \
  inline T max(T a, T b) { return a < b ? b : a; }
CUDASIM_MINMAX(int)
CUDASIM_MINMAX(unsigned int)
CUDASIM_MINMAX(long)
CUDASIM_MINMAX(unsigned long)
CUDASIM_MINMAX(long long)
CUDASIM_MINMAX(unsigned long long)
#undef CUDASIM_MINMAX
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline unsigned long long min(long long a, unsigned long long b) { return min(static_cast<unsigned long long>(a), b); }
inline unsigned long long min(unsigned long long a, long long b) { return min(a, static_cast<unsigned long long>(b)); }
inline unsigned long long max(long long a, unsigned long long b) { return max(static_cast<unsigned long long>(a), b); }
inline unsigned long long max(unsigned long long a, long long b) { return max(a, static_cast<unsigned long long>(b)); }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

// ---- other device built-ins -------------------------------------------------------------------------------------
long long clock64();
inline void __nanosleep(unsigned) {}
[[noreturn]] inline void __trap(CUDASIM_SITE) { cudasim::detail::device_error("__trap()", cudasim_file_, cudasim_line_); }
[[noreturn]] inline void __brkpt(CUDASIM_SITE) { cudasim::detail::device_error("__brkpt()", cudasim_file_, cudasim_line_); }
inline unsigned __lanemask_lt() { return (1u << cudasim::detail::lane_id()) - 1u; }
inline unsigned __lanemask_le() { return (2u << cudasim::detail::lane_id()) - 1u; }
inline unsigned __lanemask_eq() { return 1u << cudasim::detail::lane_id(); }
inline unsigned __lanemask_gt() { return ~__lanemask_le(); }
inline unsigned __lanemask_ge() { return ~__lanemask_lt(); }
