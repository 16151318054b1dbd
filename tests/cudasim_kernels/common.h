// Host helpers shared by the cudasim test programs. Plain CUDA runtime calls only: every program here builds with
// nvcc (and would run on a GPU) as well as with g++ against tests/cudasim (see tests/cuda_on_cpu/test_cudasim_core.py).
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/launch.h"

// Prints "error <name> <message>" for a failed call and returns true.
inline bool report(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return false;
  printf("error %s %s: %s\n", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return true;
}

template <class T>
T* to_device(const std::vector<T>& h) {
  void* p = nullptr;
  if (report("cudaMalloc", cudaMalloc(&p, h.size() * sizeof(T)))) exit(2);
  if (!h.empty()) cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n) cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

// The test case named on the command line.
inline bool is_case(int argc, char** argv, const char* name) { return argc > 1 && strcmp(argv[1], name) == 0; }
