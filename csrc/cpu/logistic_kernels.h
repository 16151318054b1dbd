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
  // the index of the first of x[0 .. n) that is not data on the grid of 2^n_bits levels (logistic_off_grid: NaN,
  // outside [-1, 1] or more than a quarter bin from a level), -1 when there is none (the ops' validate_x)
  index_t (*first_off_grid)(const T* x, index_t n, int n_bits);
  // One logistic per pixel (K = 1): fwd's out (the same values) and, for an incoming gradient of 1 on every row, the
  // gradients with respect to means and log_scales; *nonfinite = 1 if any of those is inf or NaN (where a zero
  // incoming gradient must give 0, the caller then recomputes through bwd).
  void (*single_fwd_grad)(const T* x, const T* means, const T* log_scales, T* out, T* grad_means,
                          T* grad_log_scales, index_t rows, index_t D, index_t x_rows, int n_bits, int* nonfinite);
  // A mixture (logits given): fwd's out (the same values) and, for an incoming gradient of 1 on every row, the
  // gradients with respect to logits, means and log_scales (bwd's at g = 1, the same values); *nonfinite as above.
  void (*mix_fwd_grad)(const T* x, const T* logits, const T* means, const T* log_scales, T* out, T* grad_logits,
                       T* grad_means, T* grad_log_scales, index_t rows, index_t D, index_t K, index_t x_rows,
                       int n_bits, int* nonfinite);
};

template <class T>
const LogisticKernels<T>& logistic_kernels();

}  // namespace cpu
}  // namespace fastvae
