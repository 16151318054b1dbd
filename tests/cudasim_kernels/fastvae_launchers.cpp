// Driver of the fastvae CUDA launchers (csrc/cuda/kernels.h) under the execution model (csrc/cudasim), for
// tests/test_cuda_kernels_on_cpu.py. Built with g++ together with csrc/cuda/gaussian.cu, csrc/cuda/distances.cu
// (compiled unchanged, -include cudasim/cuda_sim.h) and csrc/cudasim/cudasim.cpp.
//
//   fastvae_launchers OP DIR
//
// DIR/params holds "name value" lines (sizes, dtype, seed, p, ...); DIR/NAME.bin the raw bytes of each input.
// Every input, output, workspace and the seed lives in its own guarded buffer: its end lies against a PROT_NONE
// page (an access past it kills the process with the model's report), or, with `offset 1` in params, the data
// starts one element later than a 16-byte aligned address would (a misaligned pointer, as a tensor view offset
// by one element; then an overrun of one element is not caught, one of two is). Outputs start as 0xFF bytes (NaN)
// and are written to DIR/out_NAME.bin; an optional output (`need_NAME 0` in params) is passed as null, as the
// bindings pass an output the op does not compute. A launcher returns its errors and leaves none pending (a pending
// error would be reported by the next, unrelated, launch check of the binding): the driver checks that too. Prints
// "OK" or "error ..." and exits 0 / 1.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/kernels.h"

using namespace fastvae;

namespace {

std::string dir;
std::map<std::string, std::string> params;
std::vector<std::pair<std::string, std::pair<void*, size_t>>> outputs;

std::string param(const std::string& k) {
  auto it = params.find(k);
  if (it == params.end()) {
    printf("error missing param %s\n", k.c_str());
    exit(2);
  }
  return it->second;
}
int64_t ip(const std::string& k) { return std::stoll(param(k)); }
double dp(const std::string& k) { return std::stod(param(k)); }

// A guarded buffer of n elements of esz bytes, ending at a page boundary (see the header comment for `offset`:
// one element more, the data at its start, so with n esz a multiple of 16 the data starts 16 - esz past an
// aligned address).
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

void* workspace(size_t bytes, bool zero) {
  if (bytes == 0) return nullptr;
  void* p = cudasim::guarded_alloc(bytes, "workspace");
  memset(p, zero ? 0 : 0xFF, bytes);
  return p;
}

const int64_t* seed_ptr() {
  int64_t* s = static_cast<int64_t*>(cudasim::guarded_alloc(sizeof(int64_t), "seed"));
  *s = ip("seed");
  return s;
}

size_t esz_of(DType t) { return t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : 2; }
size_t acc_of(DType t) { return t == DType::Float64 ? 8 : 4; }  // per-row outputs: float32 or float64
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

// A parameter with a default (the optional ones: x_rows, need_*).
int64_t ip_or(const std::string& k, int64_t v) { return params.count(k) ? ip(k) : v; }

// An output that the launcher writes only when the op asks for it (need_NAME, default 1); null otherwise.
void* opt_output(const std::string& name, size_t n, size_t esz) {
  return ip_or("need_" + name, 1) != 0 ? output(name, n, esz) : nullptr;
}

int run(const std::string& op) {
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
  const int err = op.rfind("mmd_", 0) == 0 || op.rfind("sw_", 0) == 0 ? run_distance(op) : run(op);
  const cudaError_t pending = cudaGetLastError();
  const cudaError_t sync = cudaDeviceSynchronize();
  if (err != 0 || pending != cudaSuccess || sync != cudaSuccess) {
    printf("error launcher %d (%s), pending %s, sync %s: %s\n", err, cuda::error_string(err),
           cudaGetErrorName(pending), cudaGetErrorName(sync), cudasim::last_error_message());
    return 1;
  }
  for (auto& o : outputs) {
    std::ofstream f(dir + "/out_" + o.first + ".bin", std::ios::binary);
    f.write(static_cast<const char*>(o.second.first), static_cast<std::streamsize>(o.second.second));
  }
  printf("OK\n");
  return 0;
}
