// The CPU kernels of the discretized-logistic likelihoods (logistic.cpp; math in fastvae/logistic_math.h): raw
// pointers and sizes in, no framework types. logistic_kernels<T>() returns the table built for the instruction set
// in use (isa.h).
//
// x (x_rows, D) on the grid of 2^n_bits levels in [-1, 1];
// logits, means, log_scales (rows, D, K), mixture dim last; logits null: one logistic per pixel (K = 1).
#pragma once
#include <cstdint>

#include "fastvae/types.h"

namespace fastvae {
namespace cpu {

template <class T>
struct LogisticKernels {
  const char* isa;
  // out[r] = sum_i -log sum_k softmax(logits[r, i])_k P(x[r % x_rows, i] | means[r, i, k], log_scales[r, i, k])
  void (*fwd)(const T* x, const T* logits, const T* means, const T* log_scales, T* out, index_t rows, index_t D,
              index_t K, index_t x_rows, int n_bits);
  // the gradients of sum_r g[r] out[r] with respect to logits (skipped when null), means and log_scales
  void (*bwd)(const T* g, const T* x, const T* logits, const T* means, const T* log_scales, T* grad_logits,
              T* grad_means, T* grad_log_scales, index_t rows, index_t D, index_t K, index_t x_rows, int n_bits);
};

template <class T>
const LogisticKernels<T>& logistic_kernels();

}  // namespace cpu
}  // namespace fastvae
