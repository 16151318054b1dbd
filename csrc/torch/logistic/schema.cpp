// The schemas of the discretized-logistic likelihoods, declared once; LogisticOps<B> (ops.h) implements them for the
// CPU (cpu.cpp) and CUDA (cuda.cpp) backends, and fastvae/logistic.py gives each its fake (meta) and autograd
// formulas.
//
//   discretized_logistic_nll(x, logit_probs | None, means, log_scales, n_bits) -> (B,) or (k, B)
//     x (B, *F) on the grid of 2^n_bits levels in [-1, 1]; means, log_scales (and logit_probs) (*x.shape, K) or
//     (k, *x.shape, K), the mixture dim last; logit_probs None: one logistic per pixel (K = 1). The per-sample
//     -log likelihood, summed over every pixel of a sample.
//   discretized_logistic_nll_backward(grad, x, logit_probs, means, log_scales, n_bits)
//     -> (grad_logit_probs (empty without logit_probs), grad_means, grad_log_scales)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("discretized_logistic_nll(Tensor x, Tensor? logit_probs, Tensor means, Tensor log_scales, int n_bits)"
        " -> Tensor");
  m.def("discretized_logistic_nll_backward(Tensor grad, Tensor x, Tensor? logit_probs, Tensor means,"
        " Tensor log_scales, int n_bits) -> (Tensor, Tensor, Tensor)");
}
