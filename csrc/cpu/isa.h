// The instruction set a CPU kernel file is being compiled for. The build (setup.py, CPU_ISAS) compiles each
// kernel file of csrc/cpu (gaussian.cpp, distances.cpp) once per instruction set, with -DFV_ISA=avx512, avx2 or
// baseline, into differently named objects; isa.cpp picks one set of tables at run time. This header turns the
// name into the GCC target of the code that follows it, the namespace of its tables (fastvae::cpu::FV_ISA) and
// the vector width. Include it after every standard header: the target then applies to fastvae's own code only,
// never to inline library code (an inline function such as std::sort<float*> built for AVX-512 could otherwise be
// the copy the linker keeps for every caller, baseline ones included).
#pragma once

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
