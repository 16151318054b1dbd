// The schemas of the drop-in ops, declared once; DropinOps<B> (ops.h) implements them for the CPU (cpu.cpp) and
// CUDA (cuda.cpp) backends, and fastvae/dropin_ops.py gives each its fake (meta) and autograd formulas and the
// wrappers that lay torch-broadcastable operands out for them.
//
// Layout: N is the largest operand's numel; every operand has a numel P dividing N and is read as p[i % P] for the
// flat output index i (P = N full, 1 a scalar, the product of trailing dims a per-feature operand). The forward
// returns N / row_len values, factor * the sum of the per-element terms of each run of row_len elements (row_len 1:
// element-wise), float32 for 16-bit inputs, else the inputs' dtype (all operands of one op share one dtype). A
// backward returns full-size (N, the inputs' dtype) gradients of the operands output_mask asks for (empty
// otherwise); element i's incoming gradient is factor * grad[i / row_len].
//
//   dropin_normal_nll: -log N(x | loc, spread) - 0.5 log(2 pi) + const, spread by param: 0 scale, 1 variance
//     (max(var, floor), F.gaussian_nll_loss), 2 log-variance
//   dropin_normal_kl: KL(N(loc_p, scale_p) || N(loc_q, scale_q))
//   dropin_normal_rsample: loc + scale * eps, loc and scale of one shape, eps the stream of reparameterize; with
//     n_samples k: (k, *loc.shape). Backward: (sum over samples of grad_z, of grad_z * eps)
//   dropin_bce_with_logits: weight ((1 + (pos_weight - 1) target) softplus(-logits) + (1 - target) logits), the
//     absent weights 1
//
// The *_with_grad ops (CPU only: there the per-element math, not memory, bounds these ops) return the forward, a
// 0-dim int32 `nonfinite` (1 if any returned gradient is inf or NaN) and the gradients output_mask asks for, as the
// backward op would return them for grad = 1 on every output, all from one pass: the backward of a first-order
// gradient then scales them by the rows' incoming gradients (fastvae/dropin_ops.py) instead of recomputing.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("dropin_normal_nll(Tensor x, Tensor loc, Tensor spread, int param, float floor, float const, float factor,"
        " int row_len) -> Tensor");
  m.def("dropin_normal_nll_backward(Tensor grad, Tensor x, Tensor loc, Tensor spread, int param, float floor,"
        " float const, float factor, int row_len, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("dropin_normal_kl(Tensor loc_p, Tensor scale_p, Tensor loc_q, Tensor scale_q, float factor, int row_len)"
        " -> Tensor");
  m.def("dropin_normal_kl_backward(Tensor grad, Tensor loc_p, Tensor scale_p, Tensor loc_q, Tensor scale_q,"
        " float factor, int row_len, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("dropin_normal_rsample(Tensor loc, Tensor scale, Tensor seed, int? n_samples) -> Tensor");
  m.def("dropin_normal_rsample_backward(Tensor grad_z, Tensor scale, Tensor seed, int? n_samples,"
        " bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("dropin_bce_with_logits(Tensor logits, Tensor target, Tensor? weight, Tensor? pos_weight, float factor,"
        " int row_len) -> Tensor");
  m.def("dropin_bce_with_logits_backward(Tensor grad, Tensor logits, Tensor target, Tensor? weight,"
        " Tensor? pos_weight, float factor, int row_len, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("dropin_normal_nll_with_grad(Tensor x, Tensor loc, Tensor spread, int param, float floor, float const,"
        " float factor, int row_len, bool[3] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("dropin_normal_kl_with_grad(Tensor loc_p, Tensor scale_p, Tensor loc_q, Tensor scale_q, float factor,"
        " int row_len, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("dropin_bce_with_logits_with_grad(Tensor logits, Tensor target, Tensor? weight, Tensor? pos_weight,"
        " float factor, int row_len, bool[2] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}
