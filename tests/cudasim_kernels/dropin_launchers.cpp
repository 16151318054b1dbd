// Driver of the drop-in CUDA launchers (csrc/cuda/dropin.cu) under the execution model (tests/cudasim), for
// tests/cuda_on_cpu/test_dropin_cuda_on_cpu.py. Built with g++ together with csrc/cuda/dropin.cu (compiled unchanged,
// -include cudasim/cuda_sim.h) and tests/cudasim/cudasim.cpp.
//
//   dropin_launchers OP DIR     OP: nll_fwd, nll_bwd, kl_fwd, kl_bwd, bce_fwd, bce_bwd, rsample_fwd, rsample_bwd
//
// Params: dtype, N, row_len, P0 .. P3 (the operands' periods, 0 for an absent one), param, floor, cst, factor;
// rsample: numel, n_samples, seed. Inputs a0 .. a3 (P_k elements), g (N / row_len sums' type, or the sampled shape);
// outputs out (N / row_len), d0 .. d3 (N; need_dK 0 passes null). The rest: driver.h.
#include <string>

#include "cuda/dropin_kernels.h"
#include "driver.h"

using namespace fastvae;
using namespace driver;

namespace {

int run(const std::string& op) {
  const DType t = static_cast<DType>(ip("dtype"));
  const size_t e = esz_of(t), acc = acc_of(t);
  if (op == "rsample_fwd" || op == "rsample_bwd") {
    const int64_t numel = ip("numel"), k = ip("n_samples");
    const int64_t* seed = seed_ptr();
    if (op == "rsample_fwd")
      return cuda::dropin_normal_rsample_fwd(t, input("a0", numel, e), input("a1", numel, e),
                                             output("z", numel * k, e), numel, k, seed, nullptr);
    const void* gz = input("g", numel * k, e);
    return cuda::dropin_normal_rsample_bwd(t, gz, opt_output("d0", numel, e), opt_output("d1", numel, e), numel, k,
                                           seed, nullptr);
  }
  const int64_t N = ip("N"), R = ip("row_len");
  const int K = op.rfind("nll", 0) == 0 ? 3 : 4;
  cuda::PeriodicArg a[4] = {{nullptr, 1}, {nullptr, 1}, {nullptr, 1}, {nullptr, 1}};
  for (int k = 0; k < K; ++k) {
    const int64_t P = ip_or("P" + std::to_string(k), 0);
    if (P > 0) a[k] = {input("a" + std::to_string(k), P, e), P};
  }
  const double factor = dp("factor");
  const bool fwd = op.size() > 4 && op.compare(op.size() - 4, 4, "_fwd") == 0;
  void* out = nullptr;
  void* ws = nullptr;
  const void* g = nullptr;
  void* d[4] = {nullptr, nullptr, nullptr, nullptr};
  if (fwd) {
    out = output("out", N / R, acc);
    ws = workspace(cuda::dropin_workspace_bytes(N, R), false);  // needs no initialisation
  } else {
    g = input("g", N / R, acc);
    for (int k = 0; k < (op == "bce_bwd" ? 2 : K); ++k) d[k] = opt_output("d" + std::to_string(k), N, e);
  }
  const int param = static_cast<int>(ip_or("param", 0));
  if (op == "nll_fwd")
    return cuda::dropin_normal_nll_fwd(t, a[0], a[1], a[2], param, dp("floor"), dp("cst"), factor, N, R, out, ws,
                                       nullptr);
  if (op == "nll_bwd")
    return cuda::dropin_normal_nll_bwd(t, g, a[0], a[1], a[2], param, dp("floor"), factor, N, R, d[0], d[1], d[2],
                                       nullptr);
  if (op == "kl_fwd") return cuda::dropin_normal_kl_fwd(t, a[0], a[1], a[2], a[3], factor, N, R, out, ws, nullptr);
  if (op == "kl_bwd")
    return cuda::dropin_normal_kl_bwd(t, g, a[0], a[1], a[2], a[3], factor, N, R, d[0], d[1], d[2], d[3], nullptr);
  if (op == "bce_fwd") return cuda::dropin_bce_fwd(t, a[0], a[1], a[2], a[3], factor, N, R, out, ws, nullptr);
  if (op == "bce_bwd") return cuda::dropin_bce_bwd(t, g, a[0], a[1], a[2], a[3], factor, N, R, d[0], d[1], nullptr);
  printf("error unknown op %s\n", op.c_str());
  exit(2);
}

}  // namespace

int main(int argc, char** argv) { return driver_main(argc, argv, run); }
