// Driver of the discretized-logistic CUDA launchers (csrc/cuda/logistic.cu) under the execution model (tests/cudasim),
// for tests/cuda_on_cpu/test_logistic_cuda_on_cpu.py. Built with g++ together with csrc/cuda/logistic.cu (compiled
// unchanged, -include cudasim/cuda_sim.h) and tests/cudasim/cudasim.cpp.
//
//   logistic_launchers OP DIR        OP: logistic_fwd or logistic_bwd
//
// logistic_fwd with `checked 1` in the params also checks x (validate_x): the output first_off_grid (one int64).
//
// The params, the guarded buffers, the outputs and the checks after the launch: driver.h (shared with
// fastvae_launchers.cpp, which this driver does not link: that one needs gaussian.cu and distances.cu).
#include <string>

#include "cuda/logistic_kernels.h"
#include "driver.h"

using namespace fastvae;
using namespace driver;

namespace {

int run(const std::string& op) {
  const DType t = static_cast<DType>(ip("dtype"));
  const size_t e = esz_of(t), acc = acc_of(t);  // per-row losses and incoming gradients in the accumulation type
  const int64_t rows = ip("rows"), D = ip("D"), K = ip("K"), x_rows = ip("x_rows"), n_bits = ip("n_bits");
  const bool mix = ip("mix") != 0;
  const void* x = input("x", x_rows * D, e);
  const void* lg = mix ? input("logits", rows * D * K, e) : nullptr;
  const void* m = input("means", rows * D * K, e);
  const void* ls = input("log_scales", rows * D * K, e);
  if (op == "logistic_fwd") {
    void* ws = workspace(cuda::logistic_workspace_bytes(rows, D), false);  // needs no initialisation
    void* out = output("out", rows, acc);
    int64_t* first = ip_or("checked", 0) ? static_cast<int64_t*>(output("first_off_grid", 1, 8)) : nullptr;
    return cuda::logistic_fwd(t, x, lg, m, ls, out, rows, D, K, x_rows, static_cast<int>(n_bits), ws, nullptr,
                              first);
  }
  if (op == "logistic_bwd") {
    const void* g = input("g", rows, acc);
    void* glg = mix ? output("grad_logits", rows * D * K, e) : nullptr;
    void* gm = output("grad_means", rows * D * K, e);
    void* gls = output("grad_log_scales", rows * D * K, e);
    return cuda::logistic_bwd(t, g, x, lg, m, ls, glg, gm, gls, rows, D, K, x_rows, static_cast<int>(n_bits),
                              nullptr);
  }
  printf("error unknown op %s\n", op.c_str());
  exit(2);
}

}  // namespace

int main(int argc, char** argv) { return driver_main(argc, argv, run); }
