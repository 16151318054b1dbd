// The schemas of the discretized-logistic likelihoods, declared once; LogisticOps<B> (ops.h) implements them for the
// CPU (cpu.cpp) and CUDA (cuda.cpp) backends, and fastvae/logistic.py gives each its fake (meta) and autograd
// formulas.
//
//   discretized_logistic_nll(x, logit_probs | None, means, log_scales, n_bits, reduction=0, validate_x=False)
//       -> (B,) or (k, B); () when reduced
//     x (B, *F) on the grid of 2^n_bits levels in [-1, 1]; means, log_scales (and logit_probs) (*x.shape, K) or
//     (k, *x.shape, K), the mixture dim last; logit_probs None: one logistic per pixel (K = 1; then means and
//     log_scales of x's shape are taken too). The per-sample -log likelihood, summed over every pixel of a sample;
//     reduction 0 none, 1 sum, 2 mean over the per-sample values (torch/reduction.h). validate_x: a value of x off
//     the grid (NaN, outside [-1, 1], more than a quarter bin from a level) is refused with the public functions'
//     message; unchecked, the kernels snap x to the nearest level in [-1, 1].
//   discretized_logistic_nll_backward(grad, x, logit_probs, means, log_scales, n_bits, reduction=0)
//     -> (grad_logit_probs (empty without logit_probs), grad_means, grad_log_scales); grad of the forward's shape
//   discretized_logistic_nll_with_grad(x, means, log_scales, n_bits, reduction=0, validate_x=False)
//     -> (loss, nonfinite (0-dim int32), grad_means, grad_log_scales): CPU only, one logistic per pixel. The forward
//     and, in the same pass, the gradients of the per-sample losses for an incoming gradient of 1 on each (the
//     public function's backward scales them); nonfinite = 1 when one of them is inf or NaN. The per-element math
//     is compute-bound on the CPU, and the backward would otherwise compute it all again.
//   discretized_logistic_mixture_nll_with_grad(x, logit_probs, means, log_scales, n_bits, reduction=0,
//     validate_x=False) -> (loss, nonfinite, grad_logit_probs, grad_means, grad_log_scales): the same for a mixture
//     (CPU only); the loss is discretized_logistic_nll's and the gradients its backward's at 1, bit for bit.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("discretized_logistic_nll(Tensor x, Tensor? logit_probs, Tensor means, Tensor log_scales, int n_bits,"
        " int reduction=0, bool validate_x=False) -> Tensor");
  m.def("discretized_logistic_nll_backward(Tensor grad, Tensor x, Tensor? logit_probs, Tensor means,"
        " Tensor log_scales, int n_bits, int reduction=0) -> (Tensor, Tensor, Tensor)");
  m.def("discretized_logistic_nll_with_grad(Tensor x, Tensor means, Tensor log_scales, int n_bits,"
        " int reduction=0, bool validate_x=False) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("discretized_logistic_mixture_nll_with_grad(Tensor x, Tensor logit_probs, Tensor means, Tensor log_scales,"
        " int n_bits, int reduction=0, bool validate_x=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
