// Driver of the Gaussian and distance CUDA launchers (csrc/cuda/gaussian_kernels.h, distances_kernels.h) under
// the execution model (tests/cudasim), for tests/cuda_on_cpu/test_cuda_kernels_on_cpu.py. Built with g++ together with
// csrc/cuda/gaussian.cu, csrc/cuda/distances.cu (compiled unchanged, -include cudasim/cuda_sim.h) and
// tests/cudasim/cudasim.cpp.
//
//   fastvae_launchers OP DIR
//
// The params, the guarded buffers, the outputs and the checks after the launch: driver.h; this file has the ops.
#include <sstream>
#include <string>
#include <vector>

#include "cuda/distances_kernels.h"
#include "cuda/gaussian_kernels.h"
#include "cuda/normals.h"
#include "driver.h"

using namespace fastvae;
using namespace driver;

namespace {

Layout layout(const std::string& k) { return static_cast<Layout>(ip(k)); }
// elements of a secondary operand of the given layout against (rows, D)
size_t n_of(Layout l, int64_t rows, int64_t D) {
  return l == Layout::Full ? rows * D : l == Layout::PerFeature ? D : 0;
}
const void* opt_input(const std::string& name, Layout l, int64_t rows, int64_t D, size_t esz) {
  return l == Layout::None ? nullptr : input(name, n_of(l, rows, D), esz);
}

template <class T>
int mmd_t(bool backward) {
  const int64_t B = ip("B"), N = ip("N"), M = ip("M"), d = ip("d");
  const bool with_y = ip("with_y") != 0;
  std::vector<double> bw;
  std::istringstream s(param("bandwidths"));
  for (std::string v; std::getline(s, v, ',');) bw.push_back(std::stod(v));
  MmdProblem<T> a{static_cast<const T*>(input("x", B * N * d, sizeof(T))),
                  with_y ? static_cast<const T*>(input("y", B * M * d, sizeof(T))) : nullptr,
                  B, N, M, d, static_cast<DistKernel>(ip("kernel")), bw.data(), static_cast<int>(bw.size()),
                  ip("unbiased") != 0};
  void* ws = workspace(cuda::mmd_workspace_bytes(a), false);
  if (!backward) return cuda::mmd_forward(a, static_cast<T*>(output("out", B, sizeof(T))), ws, nullptr);
  const T* g = static_cast<const T*>(input("g", B, sizeof(T)));
  T* grad_x = static_cast<T*>(output("grad_x", B * N * d, sizeof(T)));
  T* grad_y = with_y ? static_cast<T*>(output("grad_y", B * M * d, sizeof(T))) : nullptr;
  return cuda::mmd_backward(a, g, grad_x, grad_y, ws, nullptr);
}

template <class T>
int sw_backward_t() {
  const int64_t B = ip("B"), L = ip("L"), N = ip("N");
  const bool with_y = ip("with_y") != 0;
  const size_t n = B * L * N;
  const T* g = static_cast<const T*>(input("g", B, sizeof(T)));
  const T* px = static_cast<const T*>(input("px", n, sizeof(T)));
  const T* py = with_y ? static_cast<const T*>(input("py", n, sizeof(T))) : nullptr;
  const int32_t* perm_x = static_cast<const int32_t*>(input("perm_x", n, 4));
  const int32_t* perm_y = with_y ? static_cast<const int32_t*>(input("perm_y", n, 4)) : nullptr;
  T* gpx = static_cast<T*>(output("gpx", n, sizeof(T)));
  T* gpy = with_y ? static_cast<T*>(output("gpy", n, sizeof(T))) : nullptr;
  return cuda::sw_backward<T>(g, px, py, perm_x, perm_y, gpx, gpy, B, L, N, dp("p"), nullptr);
}

template <class T>
int sw_forward_t() {
  const int64_t B = ip("B"), L = ip("L"), N = ip("N");
  const bool with_y = ip("with_y") != 0;
  const size_t n = B * L * N;
  const T* px = static_cast<const T*>(input("px", n, sizeof(T)));
  const T* py = with_y ? static_cast<const T*>(input("py", n, sizeof(T))) : nullptr;
  T* out = static_cast<T*>(output("out", B, sizeof(T)));
  int32_t* perm_x = static_cast<int32_t*>(output("perm_x", n, 4));
  int32_t* perm_y = with_y ? static_cast<int32_t*>(output("perm_y", n, 4)) : nullptr;
  const size_t bytes = cuda::sw_workspace_bytes<T>(B, L, N, with_y);
  return cuda::sw_forward<T>(px, py, out, perm_x, perm_y, B, L, N, dp("p"), workspace(bytes, false), bytes, nullptr);
}

int run_gaussian(const std::string& op) {
  const DType t = static_cast<DType>(ip("dtype"));
  const size_t e = esz_of(t), a = acc_of(t);
  if (op == "normals") {
    const int64_t n = ip("n");
    return cuda::normals(static_cast<float*>(output("eps", n, 4)), ip("start"), n, seed_ptr(), nullptr);
  }
  if (op == "reparam_fwd") {
    const int64_t numel = ip("numel"), k = ip("n_samples");
    const void* mu = input("mu", numel, e);
    const void* lv = input("lv", numel, e);
    return cuda::reparam_fwd(t, mu, lv, output("z", numel * k, e), numel, k, seed_ptr(), nullptr);
  }
  if (op == "reparam_bwd") {  // need_grad_mu 0: the op without n_samples (no gradient of mu)
    const int64_t numel = ip("numel"), k = ip("n_samples");
    const void* gz = input("gz", numel * k, e);
    const void* lv = input("lv", numel, e);
    void* grad_mu = opt_output("grad_mu", numel, e);
    return cuda::reparam_bwd(t, gz, lv, grad_mu, output("grad_lv", numel, e), numel, k, seed_ptr(), nullptr);
  }
  if (op == "tril_fwd" || op == "tril_bwd") {  // per-sample outputs and gradients in the accumulation type
    const int64_t R = ip("R"), d = ip("d"), k = ip("n_samples");
    if (op == "tril_fwd") {
      const void* mu = input("mu", R * d, e);
      const void* L = input("L", R * d * d, e);
      void* z = output("z", k * R * d, e);
      return cuda::tril_fwd(t, mu, L, z, output("log_q", k * R, a), R, d, k, seed_ptr(), nullptr);
    }
    const void* gz = input("gz", k * R * d, e);
    const void* glogq = input("glogq", k * R, a);
    const void* L = input("L", R * d * d, e);
    void* grad_mu = output("grad_mu", R * d, a);
    return cuda::tril_bwd(t, gz, glogq, L, grad_mu, output("grad_L", R * d * d, a), R, d, k, seed_ptr(), nullptr);
  }
  // row ops: rows of D elements; x (likelihoods) has x_rows rows, broadcast over rows = k x_rows
  const int64_t rows = ip("rows"), D = ip("D"), x_rows = ip_or("x_rows", rows);
  if (op == "reparam_kl_fwd") {
    const void* mu = input("mu", rows * D, e);
    const void* lv = input("lv", rows * D, e);
    void* z = output("z", rows * D, e);
    void* kl = output("kl", rows, a);
    return cuda::reparam_kl_fwd(t, mu, lv, z, kl, rows, D, seed_ptr(),
                                workspace(cuda::reduce_workspace_bytes(rows, D), true), nullptr);
  }
  if (op == "reparam_kl_bwd") {
    const void* gz = input("gz", rows * D, e);
    const void* gkl = input("gkl", rows, a);
    const void* mu = input("mu", rows * D, e);
    const void* lv = input("lv", rows * D, e);
    void* grad_mu = output("grad_mu", rows * D, e);
    return cuda::reparam_kl_bwd(t, gz, gkl, mu, lv, grad_mu, output("grad_lv", rows * D, e), rows, D, seed_ptr(),
                                nullptr);
  }
  if (op == "gaussian_nll_fwd") {
    const void* x = input("x", x_rows * D, e);
    const void* mean = input("mean", rows * D, e);
    const void* lv = opt_input("lv", layout("lv_layout"), rows, D, e);
    void* out = output("out", rows, a);
    return cuda::gaussian_nll_fwd(t, x, mean, lv, layout("lv_layout"), out, rows, D, x_rows,
                                  workspace(cuda::reduce_workspace_bytes(rows, D), true), nullptr);
  }
  if (op == "gaussian_nll_bwd") {  // the column workspace needs no initialisation: it starts as NaN
    const Layout l = layout("lv_layout");
    const void* g = input("g", rows, a);
    const void* x = input("x", x_rows * D, e);
    const void* mean = input("mean", rows * D, e);
    const void* lv = opt_input("lv", l, rows, D, e);
    void* grad_mean = opt_output("grad_mean", rows * D, e);
    void* grad_lv = l == Layout::None ? nullptr : opt_output("grad_lv", n_of(l, rows, D), e);
    return cuda::gaussian_nll_bwd(t, g, x, mean, lv, l, grad_mean, grad_lv, rows, D, x_rows,
                                  workspace(cuda::col_workspace_bytes(rows, D, 1, t), false), nullptr);
  }
  if (op == "bernoulli_nll_fwd") {
    const void* logits = input("logits", rows * D, e);
    const void* x = input("x", x_rows * D, e);
    void* out = output("out", rows, a);
    return cuda::bernoulli_nll_fwd(t, logits, x, out, rows, D, x_rows,
                                   workspace(cuda::reduce_workspace_bytes(rows, D), true), nullptr);
  }
  if (op == "bernoulli_nll_bwd") {
    const void* g = input("g", rows, a);
    const void* logits = input("logits", rows * D, e);
    const void* x = input("x", x_rows * D, e);
    return cuda::bernoulli_nll_bwd(t, g, logits, x, output("grad", rows * D, e), rows, D, x_rows, nullptr);
  }
  if (op == "kl_normal_fwd" || op == "kl_normal_bwd") {
    const Layout lm = layout("mp_layout"), ll = layout("lp_layout");
    const void* g = op == "kl_normal_bwd" ? input("g", rows, a) : nullptr;
    const void* mu = input("mu", rows * D, e);
    const void* lv = input("lv", rows * D, e);
    const void* mp = opt_input("mp", lm, rows, D, e);
    const void* lp = opt_input("lp", ll, rows, D, e);
    if (op == "kl_normal_fwd")
      return cuda::kl_normal_fwd(t, mu, lv, mp, lm, lp, ll, output("out", rows, a), rows, D,
                                 workspace(cuda::reduce_workspace_bytes(rows, D), true), nullptr);
    void* grad_mu = opt_output("grad_mu", rows * D, e);
    void* grad_lv = opt_output("grad_lv", rows * D, e);
    void* grad_mp = lm == Layout::None ? nullptr : opt_output("grad_mp", n_of(lm, rows, D), e);
    void* grad_lp = ll == Layout::None ? nullptr : opt_output("grad_lp", n_of(ll, rows, D), e);
    return cuda::kl_normal_bwd(t, g, mu, lv, mp, lm, lp, ll, grad_mu, grad_lv, grad_mp, grad_lp, rows, D,
                               workspace(cuda::col_workspace_bytes(rows, D, 2, t), false), nullptr);
  }
  printf("error unknown op %s\n", op.c_str());
  exit(2);
}

int run_distance(const std::string& op) {
  const bool f64 = static_cast<DType>(ip("dtype")) == DType::Float64;
  if (op == "mmd_forward" || op == "mmd_backward")
    return f64 ? mmd_t<double>(op == "mmd_backward") : mmd_t<float>(op == "mmd_backward");
  if (op == "sw_backward") return f64 ? sw_backward_t<double>() : sw_backward_t<float>();
  return f64 ? sw_forward_t<double>() : sw_forward_t<float>();
}

int run(const std::string& op) {
  return op.rfind("mmd_", 0) == 0 || op.rfind("sw_", 0) == 0 ? run_distance(op) : run_gaussian(op);
}

}  // namespace

int main(int argc, char** argv) { return driver_main(argc, argv, run); }
