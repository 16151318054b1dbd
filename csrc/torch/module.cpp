// The Python module fastvae._C (build information, the CPU instruction-set switch, test hooks), the op namespace
// `fastvae` (each family declares its ops in its schema.cpp) and the CPU kernels' thread pool (torch's).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "cpu/common.h"
#include "fastvae/philox.h"
#include "torch/checks.h"
#include "torch/dropin/autograd.h"
#include "torch/logistic/autograd.h"

namespace fastvae {

void parallel_for(index_t begin, index_t end, index_t grain, const std::function<void(index_t, index_t)>& fn) {
  at::parallel_for(begin, end, grain, fn);
}

namespace {

std::vector<uint32_t> philox_kat(std::vector<uint32_t> ctr, std::vector<uint32_t> key) {
  TORCH_CHECK(ctr.size() == 4 && key.size() == 2, "philox_kat takes a 4-word counter and a 2-word key");
  const Philox4 p = philox4x32_10_full(ctr.data(), key.data());
  return {p.v[0], p.v[1], p.v[2], p.v[3]};
}

at::Tensor normals_cpu(int64_t start, int64_t n, int64_t key) {
  check_stream_range("normals_cpu", start, n);
  auto res = at::empty({n}, at::kFloat);
  cpu::normal_stream().normals(res.data_ptr<float>(), start, n, static_cast<uint64_t>(key));
  return res;
}

}  // namespace
}  // namespace fastvae

// The namespace of every op; each family adds its schemas as a fragment (csrc/torch/<family>/schema.cpp).
TORCH_LIBRARY(fastvae, m) {}

#ifndef FASTVAE_TORCH_VERSION
#define FASTVAE_TORCH_VERSION "unknown"
#endif
#ifndef FASTVAE_CUDA_ARCHS
#define FASTVAE_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastvae compiled kernels (the ops live in torch.ops.fastvae)";
  m.def("build_info", []() {
    pybind11::dict d;
    d["torch_version"] = FASTVAE_TORCH_VERSION;
#ifdef FASTVAE_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_archs"] = FASTVAE_CUDA_ARCHS;
    d["cpu_isa"] = fastvae::cpu::best_isa();
    return d;
  });
  m.def("cpu_isa", &fastvae::cpu::active_isa, "the instruction set of the CPU kernels in use");
  m.def("force_cpu_isa", &fastvae::cpu::force_isa, "use the CPU kernels built for one instruction set (tests)");
  m.def("philox_kat", &fastvae::philox_kat);
  m.def("normals_cpu", &fastvae::normals_cpu, "eps[start:start+n] of the stream of `key`");
  fastvae::bind_dropin_autograd(m);
  fastvae::bind_logistic_autograd(m);
}
