// The schemas of the sample-distance ops (MMD / energy distance, sliced-Wasserstein), declared once; Ops<B>
// (ops.h) implements them for the CPU (cpu.cpp) and CUDA (cuda.cpp) backends, and fastvae/distances.py gives each
// its fake (meta) and autograd formulas.
//
//   mmd(x (B, N, d), y (B, M, d) | None, seed | None, kernel, bandwidth[], unbiased) -> (B,)
//     y None: the standard normal prior; "rbf" in closed form, the other kernels with N prior samples drawn
//     from the Philox stream of `seed` (eps[(b N + j) d + k] is y[b, j, k]; backward draws the same).
//   sliced_wasserstein_projected(px (B, L, N), py (B, L, N) | None, p) -> (loss (B,), perm_x, perm_y)
//     the 1-D part of sliced-Wasserstein on projections (one row per direction); py None: the normal
//     quantile target. perm_* (int32, (B, L, N)) are the sorting permutations saved for backward.
//   sliced_wasserstein_projected_backward(grad (B,), px, py, perm_x, perm_y, p, need_py) -> (grad_px, grad_py)
//     perm_x / perm_y must be the permutations the forward returned for these px / py (the autograd formula is
//     the only caller that needs the op, and it passes them). The CPU kernel checks that every row is a
//     permutation of 0 .. N-1 (an O(N) pass per row) and refuses anything else; the CUDA kernel cannot check
//     without a device synchronisation, so it skips indices outside [0, N) (never an out-of-bounds access) and
//     its outputs start zeroed (no uninitialised entry where an index repeats): wrong input, defined output.
//   random_directions(seed, d, n) -> (d, n) float32: n unit directions, column l the normalised
//     eps[l d : (l + 1) d] of the seed's stream (the same on every device and process).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  m.def("mmd(Tensor x, Tensor? y, Tensor? seed, str kernel, float[] bandwidth, bool unbiased) -> Tensor");
  m.def("mmd_backward(Tensor grad, Tensor x, Tensor? y, Tensor? seed, str kernel, float[] bandwidth, bool unbiased,"
        " bool need_y) -> (Tensor, Tensor)");
  m.def("sliced_wasserstein_projected(Tensor px, Tensor? py, float p) -> (Tensor, Tensor, Tensor)");
  m.def("sliced_wasserstein_projected_backward(Tensor grad, Tensor px, Tensor? py, Tensor perm_x, Tensor perm_y,"
        " float p, bool need_py) -> (Tensor, Tensor)");
  m.def("random_directions(Tensor seed, int d, int n) -> Tensor");
}
