// The instruction set a CPU kernel file is being compiled for, and the registration of its tables. The build
// (setup.py, CPU_ISAS) compiles each kernel file of csrc/cpu once per instruction set, with -DFV_ISA=avx512, avx2
// or baseline, into differently named objects; the registration below lets a family's getter pick the build of
// its table for the instruction set in use at run time (isa.cpp). This header turns the name into the GCC target
// of the code that follows it, the namespace of its tables (fastvae::cpu::FV_ISA) and the vector width. Include it
// after every standard header: the target then applies to fastvae's own code only, never to inline library code
// (an inline function such as std::sort<float*> built for AVX-512 could otherwise be the copy the linker keeps for
// every caller, baseline ones included).
#pragma once

#include "cpu/common.h"  // isa_level(); before the target below, as every standard header

#define FV_ISA_ID_baseline 1
#define FV_ISA_ID_avx2 2
#define FV_ISA_ID_avx512 3
#define FV_CAT_(a, b) a##b
#define FV_CAT(a, b) FV_CAT_(a, b)
#define FV_STR_(x) #x
#define FV_STR(x) FV_STR_(x)

#if !defined(FV_ISA)
#error "compile the CPU kernel files with -DFV_ISA=avx512|avx2|baseline (setup.py does)"
#elif FV_CAT(FV_ISA_ID_, FV_ISA) == 3
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi2")
#define FV_VEC_BYTES 64
#elif FV_CAT(FV_ISA_ID_, FV_ISA) == 2
#pragma GCC target("avx2,fma,bmi2")
#define FV_VEC_BYTES 32
#elif FV_CAT(FV_ISA_ID_, FV_ISA) == 1
#define FV_VEC_BYTES 16
#else
#error "FV_ISA must be avx512, avx2 or baseline"
#endif

#define FV_ISA_NAME FV_STR(FV_ISA)

// ---- registration of a kernel file's tables ------------------------------------------------------------------
// FV_REGISTER_TABLE(Type, var, init, getter): at namespace scope, after the code `init` calls. Every build defines
// `constexpr Type var = init` in its namespace fastvae::cpu::<isa>: a constant, written into the library by the
// compiler, so that no code of the file runs when the library is loaded (a dynamic initialiser would be compiled
// for the file's instruction set, and loading the library on a CPU without it would stop with SIGILL before any
// dispatch; constexpr makes that a compile error). The baseline build (the one compiled for every CPU)
// also defines `getter` (a declaration, e.g. `const Foo& foo()` or `template <> const Foo<float>& foo<float>()`,
// declared in the family's header) returning the var of the instruction set in use. No list elsewhere names it.
#define FV_ISA_DEFINE_(Type, var, init)   \
  namespace fastvae {                     \
  namespace cpu {                         \
  namespace FV_ISA {                      \
  extern constexpr Type var = init;       \
  }                                       \
  }                                       \
  }
#if FV_CAT(FV_ISA_ID_, FV_ISA) == 1
#define FV_REGISTER_TABLE(Type, var, init, getter)                                               \
  FV_ISA_DEFINE_(Type, var, init)                                                                \
  namespace fastvae {                                                                            \
  namespace cpu {                                                                                \
  namespace avx512 {                                                                             \
  extern const Type var;                                                                         \
  }                                                                                              \
  namespace avx2 {                                                                               \
  extern const Type var;                                                                         \
  }                                                                                              \
  getter {                                                                                       \
    const int level = isa_level();                                                               \
    return level == 2 ? avx512::var : level == 1 ? avx2::var : baseline::var;                    \
  }                                                                                              \
  }                                                                                              \
  }
#else
#define FV_REGISTER_TABLE(Type, var, init, getter) FV_ISA_DEFINE_(Type, var, init)
#endif

// FV_REGISTER_KERNELS(Table, getter, make): a family's tables Table<float> and Table<double>, built by
// make<T>(isa name) (a function template of the kernel file), and the specialisations getter<float>() and
// getter<double>() of the getter its header declares (template <class T> const Table<T>& getter();). One line at
// the end of the family's kernel file.
#define FV_REGISTER_KERNELS(Table, getter, make)                                                           \
  FV_REGISTER_TABLE(Table<float>, getter##_f32, make<float>(FV_ISA_NAME),                                \
                    template <> const Table<float>& getter<float>())                                        \
  FV_REGISTER_TABLE(Table<double>, getter##_f64, make<double>(FV_ISA_NAME),                              \
                    template <> const Table<double>& getter<double>())
