// Driver of the discretized-logistic CUDA launchers (csrc/cuda/logistic.cu) under the execution model (csrc/cudasim),
// for tests/test_logistic_cuda_on_cpu.py. Built with g++ together with csrc/cuda/logistic.cu (compiled unchanged,
// -include cudasim/cuda_sim.h) and csrc/cudasim/cudasim.cpp.
//
//   logistic_launchers OP DIR        OP: logistic_fwd or logistic_bwd
//
// The conventions of fastvae_launchers.cpp (which this driver does not link: that one needs gaussian.cu and
// distances.cu): DIR/params holds "name value" lines, DIR/NAME.bin the raw bytes of each input; every input, output
// and workspace lives in its own guarded buffer ending against an inaccessible page, or, with `offset 1`, starting
// one element past a 16-byte aligned address; outputs start as 0xFF bytes (NaN) and are written to DIR/out_NAME.bin.
// Prints "OK" or "error ..." and exits 0 / 1.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "cuda/kernels.h"

using namespace fastvae;

namespace {

std::string dir;
std::map<std::string, std::string> params;
std::vector<std::pair<std::string, std::pair<void*, size_t>>> outputs;

int64_t ip(const std::string& k) {
  auto it = params.find(k);
  if (it == params.end()) {
    printf("error missing param %s\n", k.c_str());
    exit(2);
  }
  return std::stoll(it->second);
}

void* alloc(const std::string& name, size_t n, size_t esz) {
  const bool off = params.count("offset") && ip("offset") != 0;
  const size_t bytes = (n + (off ? 1 : 0)) * esz;
  return cudasim::guarded_alloc(bytes ? bytes : esz, name.c_str(), cudasim::Placement::End, esz);
}

void* input(const std::string& name, size_t n, size_t esz) {
  std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (b.size() != n * esz) {
    printf("error input %s has %zu bytes, expected %zu\n", name.c_str(), b.size(), n * esz);
    exit(2);
  }
  void* p = alloc(name, n, esz);
  memcpy(p, b.data(), b.size());
  return p;
}

void* output(const std::string& name, size_t n, size_t esz) {
  void* p = alloc(name, n, esz);
  memset(p, 0xFF, n * esz);
  outputs.push_back({name, {p, n * esz}});
  return p;
}

int run(const std::string& op) {
  const DType t = static_cast<DType>(ip("dtype"));
  const size_t e = t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : 2;
  const size_t acc = t == DType::Float64 ? 8 : 4;  // per-row losses and incoming gradients: float32 or float64
  const int64_t rows = ip("rows"), D = ip("D"), K = ip("K"), x_rows = ip("x_rows"), n_bits = ip("n_bits");
  const bool mix = ip("mix") != 0;
  const void* x = input("x", x_rows * D, e);
  const void* lg = mix ? input("logits", rows * D * K, e) : nullptr;
  const void* m = input("means", rows * D * K, e);
  const void* ls = input("log_scales", rows * D * K, e);
  if (op == "logistic_fwd") {
    const size_t ws_bytes = cuda::logistic_workspace_bytes(rows, D);
    void* ws = ws_bytes ? cudasim::guarded_alloc(ws_bytes, "workspace") : nullptr;
    if (ws) memset(ws, 0xFF, ws_bytes);  // no initialisation needed: garbage in it must not matter
    return cuda::logistic_fwd(t, x, lg, m, ls, output("out", rows, acc), rows, D, K, x_rows,
                              static_cast<int>(n_bits), ws, nullptr);
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

int main(int argc, char** argv) {
  if (argc != 3) {
    printf("usage: %s OP DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1];
  dir = argv[2];
  std::ifstream pf(dir + "/params");
  for (std::string k, v; pf >> k >> v;) params[k] = v;
  const int err = run(op);
  const cudaError_t sync = cudaDeviceSynchronize();
  if (err != 0 || sync != cudaSuccess) {
    printf("error launcher %d, sync %s: %s\n", err, cudaGetErrorName(sync), cudasim::last_error_message());
    return 1;
  }
  for (auto& o : outputs) {
    std::ofstream f(dir + "/out_" + o.first + ".bin", std::ios::binary);
    f.write(static_cast<const char*>(o.second.first), static_cast<std::streamsize>(o.second.second));
  }
  printf("OK\n");
  return 0;
}
