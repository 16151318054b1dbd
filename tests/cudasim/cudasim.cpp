// cudasim runtime: fibers, the block scheduler, barriers and warp collectives, launch checks, shared-memory
// accounting, guarded buffers, the fault reporter and the CUDA runtime API functions the kernels' launchers call.
// Single-threaded by design: launches from several host threads at once are not supported.
#include "cuda_sim.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <numeric>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// ---- context switch ------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
// cudasim_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control word on the current
// stack, stores the stack pointer in *save, and resumes the context whose stack pointer is `to`.
extern "C" void cudasim_switch(void** save, void* to);
extern "C" void cudasim_fiber_start();
asm(R"(
  .text
  .p2align 4
  .globl cudasim_switch
  .hidden cudasim_switch
  .type cudasim_switch, @function
cudasim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cudasim_switch, .-cudasim_switch

  .p2align 4
  .globl cudasim_fiber_start
  .hidden cudasim_fiber_start
  .type cudasim_fiber_start, @function
cudasim_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size cudasim_fiber_start, .-cudasim_fiber_start
)");
#else
#include <ucontext.h>
#endif

namespace cudasim {
namespace detail {
namespace {

// ---- limits of sm_90 ------------------------------------------------------------------------------------------------
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxBlockX = 1024, kMaxBlockY = 1024, kMaxBlockZ = 64;
constexpr unsigned long long kMaxGridX = 2147483647ull;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kSmemDefault = 48 * 1024;  // static + dynamic without the opt-in attribute
constexpr size_t kSmemOptin = 227 * 1024;   // cudaDevAttrMaxSharedMemoryPerBlockOptin on sm_90
constexpr unsigned char kPoison = 0xFF;     // NaN in every float format, -1 in every integer

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// The opt-in maximum of static + dynamic shared memory per block: sm_90's, or CUDASIM_SMEM_OPTIN_KB (a smaller
// device's: 64 on sm_75, 163 on sm_80), never above sm_90's.
size_t smem_optin() {
  static const size_t v = [] {
    const char* e = getenv("CUDASIM_SMEM_OPTIN_KB");
    const size_t kb = e && *e ? strtoull(e, nullptr, 0) : kSmemOptin / 1024;
    return std::min(std::max<size_t>(kb * 1024, kSmemDefault), kSmemOptin);
  }();
  return v;
}

bool env_flag(const char* name) {
  const char* v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

// ---- state ------------------------------------------------------------------------------------------------------------
enum class St : unsigned char { Ready, Barrier, Warp, Exited };

struct Fiber {
  void* sp = nullptr;
  St st = St::Exited;
  unsigned linear = 0;
  uint3 tid{};
  const char* file = nullptr;  // where it waits
  int line = 0;
  BOp bop = BOp::Sync;
  int pred = 0, bres = 0;
  WarpArgs w{};
  WarpResult* wres = nullptr;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
};

struct KernelInfo {
  std::string name;
  long max_dyn = -1;               // cudaFuncAttributeMaxDynamicSharedMemorySize, -1 when never set
  std::vector<char> touched;       // per __shared__ variable of its module
  size_t static_bytes = 0;         // sum of the touched variables' sizes
  int module = -1;
};

struct ShVar {
  size_t off, size;
  std::string name;
};
struct Module {
  std::string path;
  std::vector<ShVar> vars;
  bool parsed = false, has_symtab = false;
};

struct Guarded {
  uintptr_t map_lo, map_hi, lo, hi;
  std::string name;
  bool freed;
};

struct Launch {
  const KernelInfo* kernel = nullptr;
  Invoker invoke = nullptr;
  const void* call = nullptr;
  unsigned nthreads = 0;
  uint3 block{};
  bool failed = false;
};

struct State {
  // errors
  cudaError_t last = cudaSuccess, sticky = cudaSuccess, msg_code = cudaSuccess;
  std::string msg, msg_full;
  bool abort_on_error = false, verbose = false;
  // order
  bool order_init = false;
  Order order = Order::Forward;
  uint64_t seed = 0;
  // the window of blocks each launch runs (scale mode): linear block indices [first, first + count) of the grid,
  // first < 0 counting from the end; count < 0: all
  int64_t win_first = 0, win_count = -1;
  // fibers
  char* stacks = nullptr;
  size_t stack_bytes = 0;  // usable bytes per fiber (a guard page lies below each)
  Fiber fibers[kMaxThreads];
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  Fiber* cur = nullptr;
  unsigned n = 0, n_live = 0, n_bar = 0, n_exit = 0, n_warp = 0;
  std::vector<unsigned> order_buf;
  Launch launch;
  uint64_t switches = 0;
  // kernels, modules
  std::unordered_map<const void*, KernelInfo> kernels;
  std::vector<Module> modules;
  // dynamic shared memory: one mapping of the opt-in maximum with a guard page after it
  char* dyn_map = nullptr;
  size_t dyn_map_bytes = 0;
  char* dyn_ptr = nullptr;
  size_t dyn_bytes = 0;
  // guarded buffers
  std::vector<Guarded> bufs;
  unsigned mallocs = 0;
  LaunchStats stats{};
  bool handlers = false;
};

State* g_state = nullptr;  // never destroyed: fault handlers may run during exit
inline State& S() {
  if (__builtin_expect(g_state == nullptr, 0)) g_state = new State();
  return *g_state;
}

// the race and init checks (racecheck.inc, included below): hooks of the scheduler
namespace race {
void block_begin(unsigned n);
void barrier_done(unsigned n);
void warp_sync(unsigned base, unsigned mask);
}  // namespace race

void init_order() {
  State& s = S();
  if (s.order_init) return;
  s.order_init = true;
  s.abort_on_error = env_flag("CUDASIM_ABORT");
  s.verbose = env_flag("CUDASIM_VERBOSE");
  if (const char* o = getenv("CUDASIM_ORDER")) {
    if (!strcmp(o, "forward") || !*o) s.order = Order::Forward;
    else if (!strcmp(o, "reverse")) s.order = Order::Reverse;
    else if (!strcmp(o, "random")) s.order = Order::Random;
    else {
      fprintf(stderr, "cudasim: CUDASIM_ORDER must be forward, reverse or random; got '%s'\n", o);
      abort();
    }
  }
  if (const char* v = getenv("CUDASIM_SEED")) s.seed = strtoull(v, nullptr, 0);
  if (const char* w = getenv("CUDASIM_BLOCKS")) {  // "first:count"
    char* end = nullptr;
    s.win_first = strtoll(w, &end, 0);
    if (!end || *end != ':') {
      fprintf(stderr, "cudasim: CUDASIM_BLOCKS must be FIRST:COUNT (FIRST < 0 counts from the end); got '%s'\n", w);
      abort();
    }
    s.win_count = strtoll(end + 1, nullptr, 0);
  }
}

// ---- errors ----------------------------------------------------------------------------------------------------------
const char* std_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "unknown error";
  }
}
const char* std_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

std::string dim_str(uint3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }
std::string dim_str(dim3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }

// "kernel K, block (x,y,z), thread (x,y,z)" of what runs now.
std::string where() {
  State& s = S();
  if (!s.launch.kernel) return "host code";
  std::string w = "kernel " + s.launch.kernel->name + ", block " + dim_str(s.launch.block);
  if (s.cur) w += ", thread " + dim_str(s.cur->tid);
  return w;
}

void record(cudaError_t code, const std::string& msg, bool sticky) {
  State& s = S();
  s.last = code;
  if (sticky) s.sticky = code;
  s.msg = "cudasim: " + msg;
  s.msg_code = code;
  if (s.verbose || s.abort_on_error) fprintf(stderr, "%s [%s]\n", s.msg.c_str(), std_name(code));
  if (s.abort_on_error) {
    signal(SIGABRT, SIG_DFL);
    abort();
  }
}

// ---- fibers ------------------------------------------------------------------------------------------------------
void fiber_main(Fiber* f);

void ensure_stacks() {
  State& s = S();
  if (s.stacks) return;
  size_t kb = 64;
  if (const char* v = getenv("CUDASIM_STACK_KB")) kb = std::max<size_t>(16, strtoull(v, nullptr, 0));
  s.stack_bytes = round_up(kb * 1024, page_size());
  const size_t per = s.stack_bytes + page_size();
  void* m = mmap(nullptr, per * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) {
    perror("cudasim: mmap of the fiber stacks");
    abort();
  }
  s.stacks = static_cast<char*>(m);
  for (unsigned i = 0; i < kMaxThreads; ++i) mprotect(s.stacks + i * per, page_size(), PROT_NONE);
}

char* stack_lo(unsigned i) {
  State& s = S();
  return s.stacks + i * (s.stack_bytes + page_size()) + page_size();
}

#if defined(__x86_64__)
void init_context(Fiber* f, unsigned i, uint32_t mxcsr, uint16_t fpucw) {
  const uintptr_t top = reinterpret_cast<uintptr_t>(stack_lo(i) + S().stack_bytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  sp[0] = mxcsr | (static_cast<uint64_t>(fpucw) << 32);
  sp[1] = 0;                                           // r15
  sp[2] = 0;                                           // r14
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);     // r13
  sp[4] = reinterpret_cast<uint64_t>(f);               // r12
  sp[5] = 0;                                           // rbx
  sp[6] = 0;                                           // rbp
  sp[7] = reinterpret_cast<uint64_t>(&cudasim_fiber_start);
  f->sp = sp;
}
inline void switch_to(Fiber* f) {
  cudasim_switch(&S().sched_sp, f->sp);
}
inline void switch_out(Fiber* f) {
  cudasim_switch(&f->sp, S().sched_sp);
}
#else
void fiber_entry(unsigned lo, unsigned hi) {
  fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
void init_context(Fiber* f, unsigned i, uint32_t, uint16_t) {
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = stack_lo(i);
  f->uc.uc_stack.ss_size = S().stack_bytes;
  f->uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->uc, reinterpret_cast<void (*)()>(&fiber_entry), 2, static_cast<unsigned>(p),
              static_cast<unsigned>(p >> 32));
}
inline void switch_to(Fiber* f) { swapcontext(&S().sched_uc, &f->uc); }
inline void switch_out(Fiber* f) { swapcontext(&f->uc, &S().sched_uc); }
#endif

// Leaves the running fiber; returns when the scheduler resumes it.
void yield() {
  State& s = S();
  Fiber* f = s.cur;
  switch_out(f);
}

// An error raised by the running fiber: the block stops, the launch fails, the error is sticky (the context of a
// real GPU would be unusable). The fiber is abandoned.
[[noreturn]] void fail(cudaError_t code, const std::string& why) {
  State& s = S();
  record(code, why + " [" + where() + "]", true);
  s.launch.failed = true;
  Fiber* f = s.cur;
  f->st = St::Exited;
  switch_out(f);
  abort();  // never resumed
}

std::string site(const char* file, int line) {
  if (!file) return "?";
  const char* b = strrchr(file, '/');
  return fmt("%s:%d", b ? b + 1 : file, line);
}

const char* wop_name(WOp op) {
  switch (op) {
    case WOp::Shfl: return "__shfl_sync";
    case WOp::ShflUp: return "__shfl_up_sync";
    case WOp::ShflDown: return "__shfl_down_sync";
    case WOp::ShflXor: return "__shfl_xor_sync";
    case WOp::Ballot: return "__ballot_sync";
    case WOp::Any: return "__any_sync";
    case WOp::All: return "__all_sync";
    case WOp::SyncWarp: return "__syncwarp";
    case WOp::MatchAny: return "__match_any_sync";
    case WOp::MatchAll: return "__match_all_sync";
    case WOp::ReduceAdd: return "__reduce_add_sync";
    case WOp::ReduceMin: return "__reduce_min_sync";
    case WOp::ReduceMax: return "__reduce_max_sync";
    case WOp::ReduceAnd: return "__reduce_and_sync";
    case WOp::ReduceOr: return "__reduce_or_sync";
    case WOp::ReduceXor: return "__reduce_xor_sync";
  }
  return "?";
}
const char* bop_name(BOp op) {
  switch (op) {
    case BOp::Sync: return "__syncthreads";
    case BOp::Count: return "__syncthreads_count";
    case BOp::And: return "__syncthreads_and";
    case BOp::Or: return "__syncthreads_or";
  }
  return "?";
}

std::string thread_str(const Fiber& f) {
  return fmt("thread (%u,%u,%u) [warp %u lane %u]", f.tid.x, f.tid.y, f.tid.z, f.linear / 32, f.linear % 32);
}
std::string wait_str(const Fiber& f) {
  switch (f.st) {
    case St::Ready: return "running";
    case St::Exited: return "exited";
    case St::Barrier: return fmt("waits at %s at %s", bop_name(f.bop), site(f.file, f.line).c_str());
    case St::Warp:
      return fmt("waits at %s(mask 0x%08x) at %s", wop_name(f.w.op), f.w.mask, site(f.file, f.line).c_str());
  }
  return "?";
}

void fiber_main(Fiber* f) {
  State& s = S();
  s.launch.invoke(s.launch.call);
  f->st = St::Exited;
  --s.n_live;
  ++s.n_exit;
  // sm_70+ and the CUDA programming guide: __syncthreads in conditional code is allowed only when the condition
  // is the same for the whole block; a thread that returned early and others waiting at a barrier is that case.
  if (s.n_live > 0 && s.n_bar == s.n_live) {
    for (unsigned i = 0; i < s.n; ++i)
      if (s.fibers[i].st == St::Barrier)
        fail(cudaErrorLaunchFailure,
             fmt("divergent barrier: %s exited while the block's other live threads wait at a barrier (%s %s)",
                 thread_str(*f).c_str(), thread_str(s.fibers[i]).c_str(), wait_str(s.fibers[i]).c_str()));
  }
  // A lane waiting at a warp collective that names this lane now waits forever.
  const unsigned base = f->linear & ~31u, lane = f->linear & 31u;
  for (unsigned j = 0; s.n_warp > 0 && j < 32 && base + j < s.n; ++j) {
    const Fiber& g = s.fibers[base + j];
    if (g.st == St::Warp && (g.w.mask >> lane & 1u))
      fail(cudaErrorLaunchFailure,
           fmt("warp collective never completes: %s exited, but %s %s, naming it in its mask",
               thread_str(*f).c_str(), thread_str(g).c_str(), wait_str(g).c_str()));
  }
  switch_out(f);
  abort();  // never resumed
}

// ---- barriers ---------------------------------------------------------------------------------------------------------
void complete_barrier() {
  State& s = S();
  const Fiber* ref = nullptr;
  int count = 0, all = 1, any = 0;
  for (unsigned i = 0; i < s.n; ++i) {
    const Fiber& f = s.fibers[i];
    if (f.st == St::Exited && s.n_exit > 0) {
      fail(cudaErrorLaunchFailure,
           fmt("divergent barrier: the block's live threads wait at a barrier, but %s has exited",
               thread_str(f).c_str()));
    }
    if (f.st != St::Barrier) continue;
    if (!ref) {
      ref = &f;
    } else if (f.line != ref->line || f.bop != ref->bop || (f.file != ref->file && strcmp(f.file, ref->file) != 0)) {
      fail(cudaErrorLaunchFailure,
           fmt("divergent barrier: %s %s, while %s %s", thread_str(*ref).c_str(), wait_str(*ref).c_str(),
               thread_str(f).c_str(), wait_str(f).c_str()));
    }
    count += f.pred;
    all &= f.pred;
    any |= f.pred;
  }
  const int res = ref->bop == BOp::Count ? count : ref->bop == BOp::And ? all : ref->bop == BOp::Or ? any : 0;
  for (unsigned i = 0; i < s.n; ++i) {
    Fiber& f = s.fibers[i];
    if (f.st == St::Barrier) {
      f.bres = res;
      f.st = St::Ready;
    }
  }
  s.n_bar = 0;
  race::barrier_done(s.n);
}

// ---- warp collectives ----------------------------------------------------------------------------------------------
bool is_pow2(int w) { return w > 0 && (w & (w - 1)) == 0; }

// The lane whose value `lane` receives, or `lane` itself where CUDA returns the caller's own value.
unsigned source_lane(const WarpArgs& a, unsigned lane) {
  const unsigned w = static_cast<unsigned>(a.width);
  const unsigned seg = lane & ~(w - 1);
  switch (a.op) {
    case WOp::Shfl: return seg + (static_cast<unsigned>(a.arg) & (w - 1));
    case WOp::ShflUp: return (lane - seg) < static_cast<unsigned>(a.arg) ? lane : lane - a.arg;
    case WOp::ShflDown: return (lane - seg) + static_cast<unsigned>(a.arg) >= w ? lane : lane + a.arg;
    case WOp::ShflXor: {
      const unsigned src = lane ^ static_cast<unsigned>(a.arg);
      return src >= seg + w ? lane : src;  // a later segment (or beyond the warp): own value
    }
    default: return lane;
  }
}

void complete_warp(unsigned base, unsigned mask) {
  State& s = S();
  Fiber* lanes[32] = {};
  for (unsigned j = 0; j < 32; ++j)
    if (mask >> j & 1u) lanes[j] = &s.fibers[base + j];
  const Fiber& ref = *lanes[__builtin_ctz(mask)];
  const WOp op = ref.w.op;
  unsigned bits = 0;
  int all = 1, any = 0;
  for (unsigned j = 0; j < 32; ++j)
    if (lanes[j] && lanes[j]->w.arg) bits |= 1u << j;
  for (unsigned j = 0; j < 32; ++j) {
    if (!lanes[j]) continue;
    all &= lanes[j]->w.arg != 0;
    any |= lanes[j]->w.arg != 0;
  }
  // integer reductions
  uint32_t radd = 0, rand = ~0u, ror = 0, rxor = 0;
  int64_t rmin = INT64_MAX, rmax = INT64_MIN;
  if (op >= WOp::ReduceAdd) {
    for (unsigned j = 0; j < 32; ++j) {
      if (!lanes[j]) continue;
      uint32_t u;
      std::memcpy(&u, lanes[j]->w.val, 4);
      const int64_t v = ref.w.is_signed ? static_cast<int64_t>(static_cast<int32_t>(u)) : static_cast<int64_t>(u);
      radd += u;
      rand &= u;
      ror |= u;
      rxor ^= u;
      rmin = std::min(rmin, v);
      rmax = std::max(rmax, v);
    }
  }
  if (op == WOp::SyncWarp) race::warp_sync(base, mask);  // the one collective that orders memory
  for (unsigned j = 0; j < 32; ++j) {
    Fiber* f = lanes[j];
    if (!f) continue;
    WarpResult& r = *f->wres;
    std::memset(&r, 0, sizeof r);
    switch (op) {
      case WOp::Shfl:
      case WOp::ShflUp:
      case WOp::ShflDown:
      case WOp::ShflXor: {
        const unsigned src = source_lane(f->w, j);
        std::memcpy(r.val, lanes[src] ? lanes[src]->w.val : f->w.val, 16);
        break;
      }
      case WOp::Ballot: r.bits = bits; break;
      case WOp::Any: r.pred = any; break;
      case WOp::All: r.pred = all; break;
      case WOp::SyncWarp: break;
      case WOp::MatchAny:
      case WOp::MatchAll: {
        unsigned same = 0;
        for (unsigned k = 0; k < 32; ++k)
          if (lanes[k] && std::memcmp(lanes[k]->w.val, f->w.val, static_cast<size_t>(f->w.size)) == 0) same |= 1u << k;
        if (op == WOp::MatchAny) {
          r.bits = same;
        } else {
          r.pred = same == mask;
          r.bits = same == mask ? mask : 0;
        }
        break;
      }
      case WOp::ReduceAdd: std::memcpy(r.val, &radd, 4); break;
      case WOp::ReduceAnd: std::memcpy(r.val, &rand, 4); break;
      case WOp::ReduceOr: std::memcpy(r.val, &ror, 4); break;
      case WOp::ReduceXor: std::memcpy(r.val, &rxor, 4); break;
      case WOp::ReduceMin: {
        const uint32_t v = static_cast<uint32_t>(rmin);
        std::memcpy(r.val, &v, 4);
        break;
      }
      case WOp::ReduceMax: {
        const uint32_t v = static_cast<uint32_t>(rmax);
        std::memcpy(r.val, &v, 4);
        break;
      }
    }
    f->st = St::Ready;
    --s.n_warp;
  }
}

// Why the warp collective of lane `f` cannot complete (for the deadlock report), or "" if it can still complete.
std::string warp_blocker(const Fiber& f) {
  State& s = S();
  const unsigned base = f.linear & ~31u;
  for (unsigned j = 0; j < 32; ++j) {
    if (!(f.w.mask >> j & 1u)) continue;
    const Fiber& g = s.fibers[base + j];
    if (g.st == St::Warp && g.w.op == f.w.op && g.w.mask == f.w.mask && g.w.size == f.w.size) continue;
    return fmt("%s %s, but %s named in its mask %s", thread_str(f).c_str(), wait_str(f).c_str(),
               thread_str(g).c_str(), wait_str(g).c_str());
  }
  return "";
}

// ---- random numbers for the orders ---------------------------------------------------------------------------------
struct Rng {
  uint64_t x;
  explicit Rng(uint64_t seed) : x(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) { next(); }
  uint64_t next() {  // splitmix64
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

// ---- one block -----------------------------------------------------------------------------------------------------
// Runs every thread of the block to completion; false when the launch failed.
bool run_block(uint64_t block_seed) {
  State& s = S();
  const unsigned n = s.launch.nthreads;
  s.n = n;
  s.n_live = n;
  s.n_bar = 0;
  s.n_exit = 0;
  s.n_warp = 0;
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
#if defined(__x86_64__)
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(fpucw));
#endif
  const dim3 bd = blockDim;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    f.st = St::Ready;
    f.linear = i;
    f.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    f.file = nullptr;
    f.line = 0;
    init_context(&f, i, mxcsr, fpucw);
  }
  race::block_begin(n);
  std::vector<unsigned>& order = s.order_buf;
  order.resize(n);
  for (unsigned i = 0; i < n; ++i) order[i] = s.order == Order::Reverse ? n - 1 - i : i;
  Rng rng(block_seed);
  for (;;) {
    if (s.order == Order::Random)
      for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
    bool ran = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber* f = &s.fibers[order[k]];
      if (f->st != St::Ready) continue;
      ran = true;
      s.cur = f;
      threadIdx = f->tid;
      ++s.switches;
      switch_to(f);
      s.cur = nullptr;
      if (s.launch.failed) return false;
    }
    if (s.n_live == 0) return true;
    if (!ran) {  // nothing can run: a deadlock among warp collectives (and barriers)
      std::string why;
      for (unsigned i = 0; i < n && why.empty(); ++i)
        if (s.fibers[i].st == St::Warp) why = warp_blocker(s.fibers[i]);
      if (why.empty()) why = "no thread can run";
      s.cur = nullptr;
      record(cudaErrorLaunchFailure, "deadlock: " + why + " [" + where() + "]", true);
      s.launch.failed = true;
      return false;
    }
  }
}

// ---- __shared__ variables: the TLS symbols of the kernel's module --------------------------------------------------
std::string demangle(const char* name) {
  int st = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &st);
  std::string r = st == 0 && d ? d : name;
  free(d);
  return r;
}

void parse_module(Module& m) {
  m.parsed = true;
  const int fd = open(m.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat stt;
  if (fstat(fd, &stt) != 0 || stt.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) {
    close(fd);
    return;
  }
  const size_t len = static_cast<size_t>(stt.st_size);
  void* p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return;
  const char* base = static_cast<const char*>(p);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
      eh->e_shoff + static_cast<size_t>(eh->e_shnum) * sizeof(Elf64_Shdr) > len) {
    munmap(p, len);
    return;
  }
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
  for (unsigned i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
    m.has_symtab = true;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
    const char* strs = base + sh[sh[i].sh_link].sh_offset;
    const size_t nsym = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < nsym; ++k) {
      const Elf64_Sym& y = syms[k];
      if (ELF64_ST_TYPE(y.st_info) != STT_TLS || y.st_shndx == SHN_UNDEF || y.st_size == 0) continue;
      const char* name = strs + y.st_name;
      if (!strncmp(name, "_ZGV", 4) || !strncmp(name, "_ZTH", 4) || !strncmp(name, "_ZTW", 4)) continue;
      m.vars.push_back({static_cast<size_t>(y.st_value), static_cast<size_t>(y.st_size), demangle(name)});
    }
  }
  munmap(p, len);
  std::sort(m.vars.begin(), m.vars.end(), [](const ShVar& a, const ShVar& b) { return a.off < b.off; });
  m.vars.erase(std::unique(m.vars.begin(), m.vars.end(), [](const ShVar& a, const ShVar& b) { return a.off == b.off; }),
               m.vars.end());
}

struct FindMod {
  uintptr_t addr;
  std::string path;
  char* tls = nullptr;
  bool found = false;
};
int find_mod_cb(dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<FindMod*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (q->addr >= lo && q->addr < lo + ph.p_memsz) {
      q->found = true;
      q->path = info->dlpi_name && *info->dlpi_name ? info->dlpi_name : "/proc/self/exe";
      q->tls = static_cast<char*>(info->dlpi_tls_data);
      return 1;
    }
  }
  return 0;
}

// The module of the kernel (parsed once) and this thread's TLS block of it (nullptr when it has none yet).
Module* module_of(KernelInfo& k, const void* fn, char** tls) {
  State& s = S();
  FindMod q;
  q.addr = reinterpret_cast<uintptr_t>(fn);
  dl_iterate_phdr(find_mod_cb, &q);
  *tls = q.tls;
  if (!q.found) return nullptr;
  if (k.module < 0) {
    for (size_t i = 0; i < s.modules.size(); ++i)
      if (s.modules[i].path == q.path) k.module = static_cast<int>(i);
    if (k.module < 0) {
      s.modules.push_back(Module{q.path, {}, false, false});
      k.module = static_cast<int>(s.modules.size() - 1);
    }
  }
  Module& m = s.modules[static_cast<size_t>(k.module)];
  if (!m.parsed) parse_module(m);
  if (k.touched.size() != m.vars.size()) k.touched.assign(m.vars.size(), 0);
  return &m;
}

void poison_vars(const Module& m, char* tls, const std::vector<char>* only) {
  for (size_t i = 0; i < m.vars.size(); ++i)
    if (!only || (*only)[i]) std::memset(tls + m.vars[i].off, kPoison, m.vars[i].size);
}

// Adds the variables whose bytes are no longer all poison to the kernel's set; returns whether any was added.
bool scan_touched(KernelInfo& k, const Module& m, char* tls) {
  bool added = false;
  for (size_t i = 0; i < m.vars.size(); ++i) {
    if (k.touched[i]) continue;
    const unsigned char* p = reinterpret_cast<const unsigned char*>(tls + m.vars[i].off);
    for (size_t b = 0; b < m.vars[i].size; ++b)
      if (p[b] != kPoison) {
        k.touched[i] = 1;
        k.static_bytes += m.vars[i].size;
        added = true;
        break;
      }
  }
  return added;
}

std::string touched_list(const KernelInfo& k, const Module* m) {
  std::string r;
  if (!m) return "unknown";
  for (size_t i = 0; i < m->vars.size(); ++i)
    if (k.touched[i]) r += (r.empty() ? "" : ", ") + m->vars[i].name + fmt(" (%zu B)", m->vars[i].size);
  return r.empty() ? "none" : r;
}

// The launch's shared memory against the limits; "" when it fits.
std::string smem_problem(const KernelInfo& k, size_t dyn, const Module* m) {
  const size_t st = k.static_bytes;
  if (k.max_dyn < 0) {
    if (st + dyn <= kSmemDefault) return "";
    return fmt("%zu B static + %zu B dynamic shared memory exceeds the default limit of %zu B; a larger dynamic size "
               "needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first "
               "(static variables touched: %s)",
               st, dyn, kSmemDefault, touched_list(k, m).c_str());
  }
  if (dyn > static_cast<size_t>(k.max_dyn))
    return fmt("%zu B of dynamic shared memory exceeds the %ld B set with cudaFuncAttributeMaxDynamicSharedMemorySize",
               dyn, k.max_dyn);
  if (st + dyn > smem_optin())
    return fmt("%zu B static + %zu B dynamic shared memory exceeds the %zu B opt-in maximum of the device (static "
               "variables touched: %s)",
               st, dyn, smem_optin(), touched_list(k, m).c_str());
  return "";
}

// ---- guarded buffers -------------------------------------------------------------------------------------------
void install_handlers();

Guarded* find_buffer(uintptr_t a) {
  State& s = S();
  for (auto& g : s.bufs)
    if (a >= g.map_lo && a < g.map_hi) return &g;
  return nullptr;
}

void ensure_dynamic_map() {
  State& s = S();
  if (s.dyn_map) return;
  const size_t pg = page_size();
  const size_t data = round_up(kSmemOptin, pg);
  s.dyn_map_bytes = data + 2 * pg;
  void* m = mmap(nullptr, s.dyn_map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    perror("cudasim: mmap of the dynamic shared memory");
    abort();
  }
  s.dyn_map = static_cast<char*>(m);
  mprotect(s.dyn_map + pg, data, PROT_READ | PROT_WRITE);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(s.dyn_map);
  s.bufs.push_back({lo, lo + s.dyn_map_bytes, lo + pg + data, lo + pg + data, "the dynamic shared memory", false});
}

void set_dynamic(size_t bytes) {
  State& s = S();
  const size_t pg = page_size();
  char* end = s.dyn_map + pg + round_up(kSmemOptin, pg);
  s.dyn_ptr = end - round_up(bytes, 16);
  s.dyn_bytes = bytes;
  std::memset(s.dyn_ptr + bytes, kPoison, round_up(bytes, 16) - bytes);  // the slack: checked after every block
  Guarded& g = s.bufs.front();  // the first buffer registered is the dynamic shared memory
  g.lo = reinterpret_cast<uintptr_t>(s.dyn_ptr);
  g.name = fmt("the dynamic shared memory (%zu B of this launch)", bytes);
}

// ---- fault reports --------------------------------------------------------------------------------------------------
struct sigaction g_old_segv, g_old_bus, g_old_fpe, g_old_abrt;
char* g_altstack = nullptr;

void write_err(const std::string& m) {
  const char* p = m.c_str();
  size_t n = m.size();
  while (n > 0) {
    const ssize_t w = write(2, p, n);
    if (w <= 0) break;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

std::string describe_address(uintptr_t a) {
  State& s = S();
  if (s.stacks) {
    const size_t per = s.stack_bytes + page_size();
    const uintptr_t lo = reinterpret_cast<uintptr_t>(s.stacks);
    if (a >= lo && a < lo + per * kMaxThreads && (a - lo) % per < page_size())
      return "stack overflow of a CUDA thread's fiber (raise CUDASIM_STACK_KB)";
  }
  if (const Guarded* g = find_buffer(a)) {
    const size_t bytes = g->hi - g->lo;
    if (g->freed) return fmt("use after free of guarded buffer '%s' (%zu B at %#lx)", g->name.c_str(), bytes, g->lo);
    if (a >= g->hi)
      return fmt("%lu B past the end of guarded buffer '%s' (%zu B at %#lx)", static_cast<unsigned long>(a - g->hi),
                 g->name.c_str(), bytes, g->lo);
    if (a < g->lo)
      return fmt("%lu B before the start of guarded buffer '%s' (%zu B at %#lx)",
                 static_cast<unsigned long>(g->lo - a), g->name.c_str(), bytes, g->lo);
    return fmt("inside guarded buffer '%s'", g->name.c_str());
  }
  return "not next to any guarded buffer (a null or wild pointer, or an unguarded host buffer)";
}

void on_fault(int sig, siginfo_t* si, void* ctx) {
  State& s = S();
  const uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  std::string what;
  if (sig == SIGSEGV || sig == SIGBUS) {
    const bool ours = s.launch.kernel || find_buffer(a);
    if (!ours && !(si->si_code == SI_KERNEL && a == 0)) {  // not ours: the previous handler's business
      sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
      return;
    }
    if (si->si_code == SI_KERNEL && a == 0)
      what = "general-protection fault: an aligned vector access (float4, double2, int4, ...) at an address that is "
             "not a multiple of its size, or a non-canonical pointer";
    else
      what = fmt("invalid %s at %#lx: %s", sig == SIGSEGV ? "memory access" : "bus access",
                 static_cast<unsigned long>(a), describe_address(a).c_str());
  } else if (sig == SIGFPE) {
    if (!s.launch.kernel) {
      sigaction(sig, &g_old_fpe, nullptr);
      return;
    }
    what = "arithmetic fault (integer division by zero or overflow; on a GPU the result would be undefined)";
  }
  write_err("cudasim: " + what + " [" + where() + "]\n");
  (void)ctx;
  _exit(128 + sig);
}

void on_abort(int) {
  State& s = S();
  if (s.launch.kernel) write_err("cudasim: abort() [" + where() + "]\n");
  sigaction(SIGABRT, &g_old_abrt, nullptr);
  raise(SIGABRT);
}

void on_sanitizer_death() {
  State& s = S();
  if (s.launch.kernel) write_err("cudasim: sanitizer report above [" + where() + "]\n");
}

#define CUDASIM_RACECHECK_PART 1
#include "racecheck.inc"
#undef CUDASIM_RACECHECK_PART

}  // namespace
}  // namespace detail
}  // namespace cudasim

extern "C" void __sanitizer_set_death_callback(void (*)(void)) __attribute__((weak));

namespace cudasim {
namespace detail {
namespace {
void install_handlers() {
  State& s = S();
  if (s.handlers) return;
  s.handlers = true;
  const size_t alt = 64 * 1024;
  g_altstack = static_cast<char*>(malloc(alt));
  stack_t ss{};
  ss.ss_sp = g_altstack;
  ss.ss_size = alt;
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
  sigaction(SIGFPE, &sa, &g_old_fpe);
  struct sigaction ab{};
  ab.sa_handler = on_abort;
  ab.sa_flags = SA_ONSTACK;
  sigemptyset(&ab.sa_mask);
  sigaction(SIGABRT, &ab, &g_old_abrt);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(on_sanitizer_death);
}

std::string kernel_name(const char* text, const char* pretty) {
  // text: the arguments of fv_launch; the kernel is what precedes the first top-level comma
  std::string t = text ? text : "kernel";
  int depth = 0;
  size_t end = t.size();
  for (size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (c == '<' || c == '(' || c == '[') ++depth;
    if (c == '>' || c == ')' || c == ']') --depth;
    if (c == ',' && depth == 0) {
      end = i;
      break;
    }
  }
  std::string name = t.substr(0, end);
  while (!name.empty() && isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  while (!name.empty() && isspace(static_cast<unsigned char>(name.front()))) name.erase(0, 1);
  // pretty: "... [with P = {const float*, float*}]" or "... [with P = {}]"
  std::string params;
  if (pretty) {
    const char* w = strstr(pretty, "P = {");
    if (w) {
      const char* e = strrchr(w, '}');
      if (e) params.assign(w + 5, e);
    }
  }
  return name + "(" + params + ")";
}

}  // namespace

// ---- the public detail API -------------------------------------------------------------------------------------
#define CUDASIM_RACECHECK_PART 2
#include "racecheck.inc"
#undef CUDASIM_RACECHECK_PART

void warp_collective(const WarpArgs& a, WarpResult* r) {
  State& s = S();
  Fiber* f = s.cur;
  if (!f) {
    fprintf(stderr, "cudasim: %s called outside a kernel at %s\n", wop_name(a.op), site(a.file, a.line).c_str());
    abort();
  }
  const unsigned lane = f->linear & 31u, base = f->linear & ~31u;
  f->file = a.file;
  f->line = a.line;
  if (!(a.mask >> lane & 1u))
    fail(cudaErrorLaunchFailure, fmt("%s at %s: mask 0x%08x does not name the calling lane %u", wop_name(a.op),
                                     site(a.file, a.line).c_str(), a.mask, lane));
  if (a.op <= WOp::ShflXor && (!is_pow2(a.width) || a.width > 32))
    fail(cudaErrorLaunchFailure, fmt("%s at %s: width %d is not a power of two in [1, 32]", wop_name(a.op),
                                     site(a.file, a.line).c_str(), a.width));
  f->w = a;
  f->wres = r;
  f->st = St::Warp;
  ++s.n_warp;
  bool complete = true;
  for (unsigned j = 0; j < 32; ++j) {
    if (!(a.mask >> j & 1u)) continue;
    if (base + j >= s.n)
      fail(cudaErrorLaunchFailure, fmt("%s at %s: mask 0x%08x names lane %u, which does not exist (the block has %u "
                                       "threads)", wop_name(a.op), site(a.file, a.line).c_str(), a.mask, j, s.n));
    const Fiber& g = s.fibers[base + j];
    if (g.st == St::Exited)
      fail(cudaErrorLaunchFailure, fmt("%s at %s: mask 0x%08x names lane %u, which has exited", wop_name(a.op),
                                       site(a.file, a.line).c_str(), a.mask, j));
    if (g.st != St::Warp || g.w.op != a.op || g.w.mask != a.mask || g.w.size != a.size) complete = false;
  }
  if (complete) {
    // a shuffle reading a lane that is not in the mask reads an undefined value
    if (a.op <= WOp::ShflXor)
      for (unsigned j = 0; j < 32; ++j) {
        if (!(a.mask >> j & 1u)) continue;
        const Fiber& g = s.fibers[base + j];
        const unsigned src = source_lane(g.w, j);
        if (!(a.mask >> src & 1u))
          fail(cudaErrorLaunchFailure,
               fmt("%s at %s: lane %u reads lane %u, which mask 0x%08x does not name (an undefined value)",
                   wop_name(a.op), site(g.w.file, g.w.line).c_str(), j, src, a.mask));
      }
    complete_warp(base, a.mask);
  }
  yield();
}

int barrier(BOp op, int pred, const char* file, int line) {
  State& s = S();
  Fiber* f = s.cur;
  if (!f) {
    fprintf(stderr, "cudasim: %s called outside a kernel at %s\n", bop_name(op), site(file, line).c_str());
    abort();
  }
  f->st = St::Barrier;
  f->bop = op;
  f->pred = pred;
  f->file = file;
  f->line = line;
  ++s.n_bar;
  if (s.n_bar == s.n_live) complete_barrier();
  yield();
  return f->bres;
}

void device_error(const char* what, const char* file, int line) {
  State& s = S();
  if (!s.cur) {
    fprintf(stderr, "cudasim: %s in host code at %s\n", what, site(file, line).c_str());
    abort();
  }
  fail(cudaErrorLaunchFailure, fmt("%s at %s", what, site(file, line).c_str()));
}

unsigned lane_id() {
  State& s = S();
  return s.cur ? s.cur->linear & 31u : 0u;
}

unsigned lanes_alive() {
  State& s = S();
  if (!s.cur) return 0;
  const unsigned base = s.cur->linear & ~31u;
  unsigned m = 0;
  for (unsigned j = 0; j < 32 && base + j < s.n; ++j)
    if (s.fibers[base + j].st != St::Exited) m |= 1u << j;
  return m;
}

void* dynamic_shared() { return S().dyn_ptr; }

// The bytes between the end of the dynamic shared memory a launch asked for and its 16-byte rounding: still poison
// after a block, or the launch fails (a write past the end that the guard page does not catch; the race-checking
// build reports reads there too, with the source line).
bool slack_intact() {
  State& s = S();
  const size_t slack = round_up(s.dyn_bytes, 16) - s.dyn_bytes;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.dyn_ptr + s.dyn_bytes);
  for (size_t i = 0; i < slack; ++i)
    if (p[i] != kPoison) {
      s.cur = nullptr;
      record(cudaErrorLaunchFailure,
             fmt("write past the end of the dynamic shared memory: byte %zu of the launch's %zu B was written (the "
                 "16-byte rounding the model maps is not the kernel's) [%s]",
                 s.dyn_bytes + i, s.dyn_bytes, where().c_str()),
             true);
      return false;
    }
  return true;
}

cudaError_t launch(const char* text, const void* key, dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Invoker invoke, const void* call, const char* signature) {
  State& s = S();
  init_order();
  install_handlers();
  ensure_stacks();
  ensure_dynamic_map();
  if (s.launch.kernel) {
    fprintf(stderr, "cudasim: a kernel launch from device code (dynamic parallelism) is not supported [%s]\n",
            where().c_str());
    abort();
  }
  KernelInfo& k = s.kernels[key];
  if (k.name.empty()) k.name = kernel_name(text, signature);
  s.stats = LaunchStats{k.static_bytes, smem, 0};
  if (s.sticky != cudaSuccess) {  // a failed kernel leaves the context unusable, as on a GPU
    s.last = s.sticky;
    return s.sticky;
  }
  // configuration
  const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  std::string bad;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad = "a grid dimension is 0";
  else if (block.x == 0 || block.y == 0 || block.z == 0) bad = "a block dimension is 0";
  else if (block.x > kMaxBlockX || block.y > kMaxBlockY || block.z > kMaxBlockZ)
    bad = fmt("blockDim exceeds (%u,%u,%u)", kMaxBlockX, kMaxBlockY, kMaxBlockZ);
  else if (threads > kMaxThreads) bad = fmt("%llu threads per block exceed %u", threads, kMaxThreads);
  else if (grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    bad = fmt("gridDim exceeds (%llu,%u,%u)", kMaxGridX, kMaxGridYZ, kMaxGridYZ);
  if (!bad.empty()) {
    record(cudaErrorInvalidConfiguration,
           fmt("launch of kernel %s with grid %s, block %s: %s", k.name.c_str(), dim_str(grid).c_str(),
               dim_str(block).c_str(), bad.c_str()),
           false);
    return cudaErrorInvalidConfiguration;
  }
  char* tls = nullptr;
  Module* mod = module_of(k, key, &tls);
  std::string smem_bad = smem_problem(k, smem, mod);
  if (!smem_bad.empty()) {
    record(cudaErrorInvalidValue, fmt("launch of kernel %s: %s", k.name.c_str(), smem_bad.c_str()), false);
    return cudaErrorInvalidValue;
  }
  if (s.verbose)
    fprintf(stderr, "cudasim: launch %s grid %s block %s smem %zu order %s\n", k.name.c_str(), dim_str(grid).c_str(),
            dim_str(block).c_str(), smem, order_name(s.order));
  set_dynamic(smem);
  if (mod && tls) poison_vars(*mod, tls, nullptr);
  race::launch_begin(key, mod, tls);
  gridDim = grid;
  blockDim = block;
  s.launch = Launch{&k, invoke, call, static_cast<unsigned>(threads), uint3{}, false};
  const uint64_t gx = grid.x, gy = grid.y, nblocks_all = gx * gy * grid.z;
  // scale mode: only the window's blocks run (in the launch's order among themselves)
  uint64_t win_lo = 0, nblocks = nblocks_all;
  if (s.win_count >= 0) {
    const int64_t first = s.win_first < 0 ? static_cast<int64_t>(nblocks_all) + s.win_first : s.win_first;
    win_lo = static_cast<uint64_t>(std::min<int64_t>(std::max<int64_t>(first, 0), static_cast<int64_t>(nblocks_all)));
    nblocks = std::min<uint64_t>(static_cast<uint64_t>(s.win_count), nblocks_all - win_lo);
  }
  // block order: forward, reverse, or random: a shuffled list up to 2^20 blocks, above that an affine bijection
  // i -> (a i + c) mod n
  uint64_t mul = 1, add = 0;
  std::vector<uint32_t> shuffled;
  if (s.order == Order::Random && nblocks > 1) {
    Rng r(s.seed ^ 0xB10C);
    if (nblocks <= (1u << 20)) {
      shuffled.resize(nblocks);
      for (uint32_t i = 0; i < nblocks; ++i) shuffled[i] = i;
      for (uint64_t i = nblocks; i > 1; --i) std::swap(shuffled[i - 1], shuffled[r.next() % i]);
    } else {
      mul = r.next() % nblocks;
      while (mul < 2 || std::gcd(mul, nblocks) != 1) mul = (mul + 1) % nblocks;
      add = r.next() % nblocks;
    }
  }
  const uint64_t sw0 = s.switches;
  bool ok = true;
  for (uint64_t i = 0; i < nblocks; ++i) {
    uint64_t b = i;
    if (s.order == Order::Reverse) b = nblocks - 1 - i;
    if (!shuffled.empty()) b = shuffled[i];
    else if (s.order == Order::Random && nblocks > 1)
      b = static_cast<uint64_t>((static_cast<unsigned __int128>(mul) * i + add) % nblocks);
    b += win_lo;
    s.launch.block = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                           static_cast<unsigned>(b / (gx * gy))};
    blockIdx = s.launch.block;
    if (i > 0 && mod && tls) poison_vars(*mod, tls, &k.touched);
    if (smem) std::memset(s.dyn_ptr, kPoison, round_up(smem, 16));
    ok = run_block(s.seed * 0x100000001B3ull + b) && slack_intact();
    if (!ok) break;
    if (i == 0 && mod && tls && scan_touched(k, *mod, tls)) {
      smem_bad = smem_problem(k, smem, mod);
      if (!smem_bad.empty()) {  // first launch: the static size became known with the first block
        race::launch_end();
        record(cudaErrorInvalidValue,
               fmt("launch of kernel %s: %s (found after its first block ran: static shared memory is measured by "
                   "what the kernel touches)",
                   k.name.c_str(), smem_bad.c_str()),
               false);
        s.launch = Launch{};
        return cudaErrorInvalidValue;
      }
    }
  }
  if (ok && mod && tls) scan_touched(k, *mod, tls);
  if (nblocks == 0 && s.verbose) fprintf(stderr, "cudasim: no block of the launch lies in the window\n");
  const std::string hazard = race::launch_end();
  if (ok && !hazard.empty()) {  // a race, an uninitialised read or a shared-memory overrun: the launch failed
    s.cur = nullptr;
    record(cudaErrorLaunchFailure, hazard, true);
    ok = false;
  }
  s.stats = LaunchStats{k.static_bytes, smem, s.switches - sw0};
  s.launch = Launch{};
  s.cur = nullptr;
  if (!ok) return s.sticky;
  return cudaSuccess;  // an earlier error stays for cudaGetLastError, as with the CUDA runtime
}

}  // namespace detail

// ---- public API --------------------------------------------------------------------------------------------------
void set_order(Order order, uint64_t seed) {
  detail::init_order();
  detail::S().order = order;
  detail::S().seed = seed;
}
Order order() {
  detail::init_order();
  return detail::S().order;
}
const char* order_name(Order o) {
  return o == Order::Forward ? "forward" : o == Order::Reverse ? "reverse" : "random";
}
const char* last_error_message() { return detail::S().msg.c_str(); }
void reset() {
  detail::State& s = detail::S();
  s.sticky = cudaSuccess;
  s.last = cudaSuccess;
}
LaunchStats last_launch_stats() { return detail::S().stats; }
void mark_uninitialised(const void* p, size_t bytes) { detail::race::mark(p, bytes, false); }
void set_block_window(int64_t first, int64_t count) {
  detail::init_order();
  detail::S().win_first = first;
  detail::S().win_count = count;
}

void* guarded_alloc(size_t bytes, const char* name, Placement placement, size_t align) {
  return detail::guarded_map(bytes, name, placement, align, true);
}
void* sparse_alloc(size_t bytes, const char* name) {
  return detail::guarded_map(bytes, name, Placement::End, 0, false);
}

namespace detail {
void* guarded_map(size_t bytes, const char* name, Placement placement, size_t align, bool fill) {
  detail::State& s = detail::S();
  detail::install_handlers();
  detail::ensure_dynamic_map();  // keeps it the first registered buffer
  if (align == 0) {
    align = 256;
    while (align > 1 && bytes % align != 0) align >>= 1;
  }
  const size_t pg = detail::page_size();
  const size_t data = detail::round_up(bytes ? bytes : 1, pg);
  void* m = mmap(nullptr, data + 2 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  char* map = static_cast<char*>(m);
  mprotect(map + pg, data, PROT_READ | PROT_WRITE);
  uintptr_t lo;
  if (placement == Placement::Start) {
    lo = reinterpret_cast<uintptr_t>(map + pg);
  } else {
    lo = (reinterpret_cast<uintptr_t>(map + pg + data) - bytes) & ~(static_cast<uintptr_t>(align) - 1);
  }
  const uintptr_t ml = reinterpret_cast<uintptr_t>(map);
  s.bufs.push_back({ml, ml + data + 2 * pg, lo, lo + bytes,
                    name ? std::string(name) : detail::fmt("buffer #%zu", s.bufs.size()), false});
  if (fill) std::memset(reinterpret_cast<void*>(lo), detail::kPoison, bytes);  // uninitialised device memory
  return reinterpret_cast<void*>(lo);
}
}  // namespace detail

void guarded_free(void* p) {
  detail::State& s = detail::S();
  for (auto& g : s.bufs) {
    if (g.lo == reinterpret_cast<uintptr_t>(p) && !g.freed && &g != &s.bufs.front()) {
      g.freed = true;  // keep the range reserved: a later access is reported as use after free
      mprotect(reinterpret_cast<void*>(g.map_lo), g.map_hi - g.map_lo, PROT_NONE);
      madvise(reinterpret_cast<void*>(g.map_lo), g.map_hi - g.map_lo, MADV_DONTNEED);
      return;
    }
  }
  fprintf(stderr, "cudasim: guarded_free of %p, which is not a live guarded buffer\n", p);
  abort();
}

}  // namespace cudasim

long long clock64() {
  static long long t = 0;
  return t += 1000;
}

// =====================================================================================================================
// CUDA runtime API (the subset launchers use). Streams are ignored: every call completes before it returns.
// =====================================================================================================================
using cudasim::detail::S;

extern "C" {

cudaError_t cudaGetLastError(void) {
  auto& s = S();
  const cudaError_t e = s.sticky != cudaSuccess ? s.sticky : s.last;
  s.last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  auto& s = S();
  return s.sticky != cudaSuccess ? s.sticky : s.last;
}

const char* cudaGetErrorName(cudaError_t error) { return cudasim::detail::std_name(error); }

// The standard text; for the most recent error also the simulator's account of it (kernel, block, thread, reason).
const char* cudaGetErrorString(cudaError_t error) {
  auto& s = S();
  if (error != cudaSuccess && error == s.msg_code && !s.msg.empty()) {
    s.msg_full = std::string(cudasim::detail::std_string(error)) + " (" + s.msg + ")";
    return s.msg_full.c_str();
  }
  return cudasim::detail::std_string(error);
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  auto& s = S();
  auto& k = s.kernels[func];
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || k.static_bytes + static_cast<size_t>(value) > cudasim::detail::smem_optin()) {
      cudasim::detail::record(
          cudaErrorInvalidValue,
          cudasim::detail::fmt("cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d): more than the %zu B opt-in "
                               "maximum of the device less %zu B static",
                               value, cudasim::detail::smem_optin(), k.static_bytes),
          false);
      return cudaErrorInvalidValue;
    }
    k.max_dyn = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100) return s.last = cudaErrorInvalidValue;
    return cudaSuccess;
  }
  return cudaSuccess;  // other attributes do not change what the simulation does
}

// What the simulation knows of a kernel: static shared memory touched so far, the dynamic maximum.
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  auto& k = S().kernels[func];
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = 1024;
  attr->sharedSizeBytes = k.static_bytes;
  attr->maxDynamicSharedSizeBytes =
      k.max_dyn >= 0 ? static_cast<int>(k.max_dyn) : static_cast<int>(cudasim::detail::kSmemDefault - k.static_bytes);
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t) {
  if (S().sticky != cudaSuccess) return S().sticky;
  if (count) std::memset(devPtr, value, count);
  cudasim::detail::race::mark(devPtr, count, true);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* devPtr, int value, size_t count) { return cudaMemsetAsync(devPtr, value, count, nullptr); }

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind, cudaStream_t) {
  if (S().sticky != cudaSuccess) return S().sticky;
  if (count) std::memmove(dst, src, count);
  cudasim::detail::race::mark(dst, count, true);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, count, kind, nullptr);
}

// Guarded buffers. The buffer ends at a guard page (CUDASIM_MALLOC_PLACEMENT=start: begins after one), so its
// alignment is the largest power of two <= 256 that divides the size, not the 256 bytes cudaMalloc guarantees.
cudaError_t cudaMalloc(void** devPtr, size_t size) {
  auto& s = S();
  const char* pl = getenv("CUDASIM_MALLOC_PLACEMENT");
  const auto placement = pl && !strcmp(pl, "start") ? cudasim::Placement::Start : cudasim::Placement::End;
  const std::string name = cudasim::detail::fmt("cudaMalloc #%u (%zu B)", ++s.mallocs, size);
  *devPtr = cudasim::guarded_alloc(size, name.c_str(), placement, 0);
  if (*devPtr) cudasim::detail::race::mark(*devPtr, size, false);  // uninitialised device memory (initcheck)
  return *devPtr ? cudaSuccess : (s.last = cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void* devPtr) {
  if (devPtr) cudasim::guarded_free(devPtr);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return S().sticky; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return S().sticky; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

// An H100 (sm_90) as far as launch configuration is concerned.
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(cudasim::detail::smem_optin()); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

}  // extern "C"

#define CUDASIM_RACECHECK_PART 3
#include "racecheck.inc"
#undef CUDASIM_RACECHECK_PART
