// The binding layer: op schemas (declared once, here), tensor checks, CPU dispatch, and the Python module
// `fastvae._C`. The CUDA implementations register in ops_cuda.cpp under the same schemas.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "fastvae/cpu_kernels.h"
#include "fastvae/philox.h"
#include "ops_impl.h"

namespace fastvae {

void parallel_for(index_t begin, index_t end, index_t grain, const std::function<void(index_t, index_t)>& fn) {
  at::parallel_for(begin, end, grain, fn);
}

namespace {

template <class T>
const T* in(const at::Tensor& t) { return t.data_ptr<T>(); }
template <class T>
const T* in(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }
template <class T>
T* out(at::Tensor& t) { return t.numel() ? t.data_ptr<T>() : nullptr; }

uint64_t key_of(const at::Tensor& seed) { return static_cast<uint64_t>(seed.item<int64_t>()); }

// Calls of the CPU kernel tables on prepared (contiguous, checked) tensors; see ops_impl.h.
struct CpuBackend {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  // the dtype rule of dispatch_cpu, checked by the op (Ops::check_main) before any kernel call below
  static constexpr const char* kOp = "cpu";
  static void check_dtype(const char* op, const at::Tensor& t, const char*) {
    dispatch_cpu(op, t.scalar_type(), [](auto) {});
  }
  static void check_tril_dim(const char*, int64_t) {}

  static void reparam_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, int64_t k,
                          const at::Tensor& seed) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().reparam_fwd(in<T>(mu), in<T>(lv), out<T>(z), mu.numel(), k, key_of(seed));
    });
  }
  static void reparam_bwd(const at::Tensor& gz, const at::Tensor& lv, at::Tensor& grad_mu, at::Tensor& grad_lv,
                          int64_t k, const at::Tensor& seed) {
    dispatch_cpu(kOp, lv.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().reparam_bwd(in<T>(gz), in<T>(lv), out<T>(grad_mu), out<T>(grad_lv), lv.numel(), k,
                                    key_of(seed));
    });
  }
  static void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& lv, at::Tensor& z, at::Tensor& kl,
                             const at::Tensor& seed) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().reparam_kl_fwd(in<T>(mu), in<T>(lv), out<T>(z), out<T>(kl), rows_of(mu), per_row(mu),
                                       key_of(seed));
    });
  }
  static void reparam_kl_bwd(const at::Tensor& gz, const at::Tensor& gkl, const at::Tensor& mu, const at::Tensor& lv,
                             at::Tensor& grad_mu, at::Tensor& grad_lv, const at::Tensor& seed) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().reparam_kl_bwd(in<T>(gz), in<T>(gkl), in<T>(mu), in<T>(lv), out<T>(grad_mu),
                                       out<T>(grad_lv), rows_of(mu), per_row(mu), key_of(seed));
    });
  }
  static void tril_fwd(const at::Tensor& mu, const at::Tensor& L, at::Tensor& z, at::Tensor& log_q, int64_t k,
                       const at::Tensor& seed) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().tril_fwd(in<T>(mu), in<T>(L), out<T>(z), out<T>(log_q), mu.size(0), mu.size(1), k,
                                 key_of(seed));
    });
  }
  static void tril_bwd(const at::Tensor& gz, const at::Tensor& glq, const at::Tensor& L, at::Tensor& grad_mu,
                       at::Tensor& grad_L, int64_t k, const at::Tensor& seed) {
    dispatch_cpu(kOp, L.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().tril_bwd(in<T>(gz), in<T>(glq), in<T>(L), out<T>(grad_mu), out<T>(grad_L), L.size(0),
                                 L.size(1), k, key_of(seed));
    });
  }
  static void gaussian_nll_fwd(const at::Tensor& x, const at::Tensor& mean, const std::optional<at::Tensor>& lv,
                               Layout layout, at::Tensor& res, const LikShape& sh) {
    dispatch_cpu(kOp, mean.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().gaussian_nll_fwd(in<T>(x), in<T>(mean), in<T>(lv), layout, out<T>(res), sh.rows, sh.D,
                                         sh.x_rows);
    });
  }
  static void gaussian_nll_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean,
                               const std::optional<at::Tensor>& lv, Layout layout, at::Tensor& grad_mean,
                               at::Tensor& grad_lv, const LikShape& sh) {
    dispatch_cpu(kOp, mean.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().gaussian_nll_bwd(in<T>(g), in<T>(x), in<T>(mean), in<T>(lv), layout, out<T>(grad_mean),
                                         out<T>(grad_lv), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void bernoulli_nll_fwd(const at::Tensor& logits, const at::Tensor& x, at::Tensor& res, const LikShape& sh) {
    dispatch_cpu(kOp, logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().bernoulli_nll_fwd(in<T>(logits), in<T>(x), out<T>(res), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void bernoulli_nll_bwd(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& x, at::Tensor& grad,
                                const LikShape& sh) {
    dispatch_cpu(kOp, logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().bernoulli_nll_bwd(in<T>(g), in<T>(logits), in<T>(x), out<T>(grad), sh.rows, sh.D, sh.x_rows);
    });
  }
  static void kl_normal_fwd(const at::Tensor& mu, const at::Tensor& lv, const std::optional<at::Tensor>& mp, Layout lm,
                            const std::optional<at::Tensor>& lp, Layout ll, at::Tensor& res) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().kl_normal_fwd(in<T>(mu), in<T>(lv), in<T>(mp), lm, in<T>(lp), ll, out<T>(res), rows_of(mu),
                                      per_row(mu));
    });
  }
  static void kl_normal_bwd(const at::Tensor& g, const at::Tensor& mu, const at::Tensor& lv,
                            const std::optional<at::Tensor>& mp, Layout lm, const std::optional<at::Tensor>& lp,
                            Layout ll, at::Tensor& g_mu, at::Tensor& g_lv, at::Tensor& g_mp, at::Tensor& g_lp) {
    dispatch_cpu(kOp, mu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      cpu::kernels<T>().kl_normal_bwd(in<T>(g), in<T>(mu), in<T>(lv), in<T>(mp), lm, in<T>(lp), ll, out<T>(g_mu),
                                      out<T>(g_lv), out<T>(g_mp), out<T>(g_lp), rows_of(mu), per_row(mu));
    });
  }
};

// ---- test hooks ----

std::vector<uint32_t> philox_kat(std::vector<uint32_t> ctr, std::vector<uint32_t> key) {
  TORCH_CHECK(ctr.size() == 4 && key.size() == 2, "philox_kat takes a 4-word counter and a 2-word key");
  const Philox4 p = philox4x32_10_full(ctr.data(), key.data());
  return {p.v[0], p.v[1], p.v[2], p.v[3]};
}

at::Tensor normals_cpu(int64_t start, int64_t n, int64_t key) {
  check_stream_range("normals_cpu", start, n);
  auto res = at::empty({n}, at::kFloat);
  cpu::kernels<float>().normals(res.data_ptr<float>(), start, n, static_cast<uint64_t>(key));
  return res;
}

// eps[start .. start + n) of the stream of `seed` (the op form, so CUDA can answer the same question).
at::Tensor normals_op_cpu(const at::Tensor& seed, int64_t start, int64_t n) {
  check_normals("_normals", seed, start, n);
  return normals_cpu(start, n, seed.item<int64_t>());
}

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY(fastvae, m) {
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor seed, int? n_samples) -> Tensor");
  m.def("reparameterize_backward(Tensor grad_z, Tensor logvar, Tensor seed, int? n_samples) -> (Tensor, Tensor)");
  m.def("reparameterize_kl(Tensor mu, Tensor logvar, Tensor seed) -> (Tensor, Tensor)");
  m.def("reparameterize_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor seed)"
        " -> (Tensor, Tensor)");
  m.def("reparameterize_tril(Tensor mu, Tensor scale_tril, Tensor seed, int? n_samples) -> (Tensor, Tensor)");
  m.def("reparameterize_tril_backward(Tensor grad_z, Tensor grad_log_q, Tensor scale_tril, Tensor seed,"
        " int? n_samples) -> (Tensor, Tensor)");
  m.def("gaussian_nll(Tensor x, Tensor mean, Tensor? logvar) -> Tensor");
  m.def("gaussian_nll_backward(Tensor grad, Tensor x, Tensor mean, Tensor? logvar, bool need_mean,"
        " bool need_logvar) -> (Tensor, Tensor)");
  m.def("bernoulli_nll(Tensor logits, Tensor x) -> Tensor");
  m.def("bernoulli_nll_backward(Tensor grad, Tensor logits, Tensor x) -> Tensor");
  m.def("kl_normal(Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior) -> Tensor");
  m.def("kl_normal_backward(Tensor grad, Tensor mu, Tensor logvar, Tensor? mu_prior, Tensor? logvar_prior,"
        " bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_normals(Tensor seed, int start, int n) -> Tensor");  // the raw eps stream, for tests
}

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  fastvae::register_gaussian_ops<fastvae::CpuBackend>(m);
  m.impl("_normals", &fastvae::normals_op_cpu);
}

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
}
