// CUDA implementations of the distance ops (schemas in ops_distances.cpp): checks, workspaces from torch's
// caching allocator, the current stream, and the torch-free launchers of csrc/cuda/distances.cu.
// 16-bit inputs are computed in float32 (the losses are float32, as on CPU).
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <c10/cuda/CUDAGuard.h>

#include "distances_common.h"
#include "fastvae/cuda_distances.h"

namespace fastvae {
namespace {

void check_cuda(int err, const char* op) {
  TORCH_CHECK(err == 0, "fastvae.", op, ": CUDA error ", err, " (", cudaGetErrorString(static_cast<cudaError_t>(err)),
              ")");
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <class F>
void dispatch_dist_cuda(at::ScalarType t, const F& f) {
  if (t == at::kDouble) f(double{});
  else f(float{});
}

void* stream_of(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}

at::Tensor prior_samples_cuda(const at::Tensor& x, const at::Tensor& seed) {
  auto eps = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  check_cuda(cuda::fill_normals(eps.data_ptr<float>(), eps.numel(), seed_value(seed), stream_of(x)), "mmd");
  return eps.to(x.scalar_type());
}

// The limits of the CUDA kernels (bandwidths passed by value, grid dimensions), checked before any allocation.
void check_mmd_cuda(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y, const MmdSpec& spec) {
  TORCH_CHECK_VALUE(spec.bw.size() <= static_cast<size_t>(cuda::kMaxBandwidths), "fastvae.", op,
                    ": on CUDA at most ", cuda::kMaxBandwidths, " bandwidths; got ", spec.bw.size());
  TORCH_CHECK_VALUE(cuda::mmd_grid_fits(x.size(0), x.size(1), y ? y->size(1) : 0), "fastvae.", op,
                    ": on CUDA B <= 65535 and fewer than 2^31 tiles of 64 x 64 pairs; got B = ", x.size(0),
                    ", N = ", x.size(1), ", M = ", y ? y->size(1) : 0);
}

template <class T>
cuda::MmdArgs<T> args_of(const at::Tensor& x, const std::optional<at::Tensor>& y, const MmdSpec& spec,
                         bool unbiased) {
  cuda::MmdArgs<T> a{};
  a.x = x.data_ptr<T>();
  a.y = y ? y->data_ptr<T>() : nullptr;
  a.B = x.size(0);
  a.N = x.size(1);
  a.M = y ? y->size(1) : x.size(1);
  a.d = x.size(2);
  a.kernel = spec.kernel;
  a.n_bw = static_cast<int>(spec.bw.size());
  for (int h = 0; h < a.n_bw; ++h) a.bw[h] = spec.bw[h];
  a.unbiased = unbiased;
  return a;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::optional<at::Tensor> as_compute(const std::optional<at::Tensor>& t, at::ScalarType ct) {
  if (!t) return std::nullopt;
  return t->contiguous().to(ct);
}

at::Tensor mmd_cuda(const at::Tensor& x_, const std::optional<at::Tensor>& y_, const std::optional<at::Tensor>& seed,
                    c10::string_view kernel, at::ArrayRef<double> bandwidth, bool unbiased) {
  constexpr const char* op = "mmd";
  const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
  check_mmd_cuda(op, x_, y_, spec);
  const at::cuda::CUDAGuard guard(x_.device());
  const auto ct = compute_type(x_.scalar_type());
  const auto x = x_.contiguous().to(ct);
  auto y = as_compute(y_, ct);
  if (!y && spec.sample_prior) y = prior_samples_cuda(x, *seed);
  auto out = at::empty({x.size(0)}, x.options());
  dispatch_dist_cuda(ct, [&](auto tag) {
    using T = decltype(tag);
    const auto a = args_of<T>(x, y, spec, unbiased);
    auto ws = workspace(cuda::mmd_workspace_bytes(a), x);
    check_cuda(cuda::mmd_forward(a, out.data_ptr<T>(), ws.data_ptr(), stream_of(x)), op);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mmd_backward_cuda(const at::Tensor& grad, const at::Tensor& x_,
                                                     const std::optional<at::Tensor>& y_,
                                                     const std::optional<at::Tensor>& seed, c10::string_view kernel,
                                                     at::ArrayRef<double> bandwidth, bool unbiased, bool need_y) {
  constexpr const char* op = "mmd_backward";
  const MmdSpec spec = mmd_spec(op, x_, y_, seed, kernel, bandwidth, unbiased);
  check_grad(op, grad, "grad", {x_.size(0)}, x_, "x");
  check_mmd_cuda(op, x_, y_, spec);
  TORCH_CHECK_VALUE(x_.size(2) <= cuda::kMaxDim, "fastvae.", op, ": on CUDA d <= ", cuda::kMaxDim, "; got d = ",
                    x_.size(2));
  const at::cuda::CUDAGuard guard(x_.device());
  const auto ct = compute_type(x_.scalar_type());
  const auto x = x_.contiguous().to(ct);
  const auto g = grad.contiguous().to(ct);
  auto y = as_compute(y_, ct);
  if (!y && spec.sample_prior) y = prior_samples_cuda(x, *seed);
  auto grad_x = at::empty_like(x);
  auto grad_y = need_y && y_ ? at::empty_like(*y) : at::empty({0}, x.options());
  dispatch_dist_cuda(ct, [&](auto tag) {
    using T = decltype(tag);
    const auto a = args_of<T>(x, y, spec, unbiased);
    auto ws = workspace(cuda::mmd_workspace_bytes(a), x);
    check_cuda(cuda::mmd_backward(a, g.data_ptr<T>(), grad_x.data_ptr<T>(),
                                  grad_y.numel() ? grad_y.data_ptr<T>() : nullptr, ws.data_ptr(), stream_of(x)),
               op);
  });
  return {grad_x.to(x_.scalar_type()), need_y && y_ ? grad_y.to(y_->scalar_type()) : grad_y};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sw_projected_cuda(const at::Tensor& px_,
                                                                 const std::optional<at::Tensor>& py_, double p) {
  constexpr const char* op = "sliced_wasserstein_projected";
  check_sw(op, px_, py_, p);
  TORCH_CHECK_VALUE(px_.numel() < (int64_t(1) << 31), "fastvae.", op,
                    ": on CUDA px must have fewer than 2^31 elements; got shape ", px_.sizes());
  const at::cuda::CUDAGuard guard(px_.device());
  const auto ct = compute_type(px_.scalar_type());
  const auto px = px_.contiguous().to(ct);
  const auto py = as_compute(py_, ct);
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  auto out = at::empty({B}, px.options());
  auto perm_x = at::empty({B, L, N}, px.options().dtype(at::kInt));
  auto perm_y = py ? at::empty({B, L, N}, px.options().dtype(at::kInt)) : at::empty({0}, px.options().dtype(at::kInt));
  dispatch_dist_cuda(ct, [&](auto tag) {
    using T = decltype(tag);
    const size_t bytes = cuda::sw_workspace_bytes<T>(B, L, N, py.has_value());
    auto ws = workspace(bytes, px);
    check_cuda(cuda::sw_forward<T>(px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr, out.data_ptr<T>(),
                                   perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr, B, L, N, p,
                                   ws.data_ptr(), bytes, stream_of(px)),
               op);
  });
  return {out, perm_x, perm_y};
}

std::tuple<at::Tensor, at::Tensor> sw_projected_backward_cuda(const at::Tensor& grad, const at::Tensor& px_,
                                                              const std::optional<at::Tensor>& py_,
                                                              const at::Tensor& perm_x_, const at::Tensor& perm_y_,
                                                              double p, bool need_py) {
  constexpr const char* op = "sliced_wasserstein_projected_backward";
  check_sw_backward(op, grad, px_, py_, perm_x_, perm_y_, p);
  const at::cuda::CUDAGuard guard(px_.device());
  const auto ct = compute_type(px_.scalar_type());
  const auto px = px_.contiguous().to(ct);
  const auto py = as_compute(py_, ct);
  const auto perm_x = perm_x_.contiguous(), perm_y = perm_y_.contiguous();
  const auto g = grad.contiguous().to(ct);
  const int64_t B = px.size(0), L = px.size(1), N = px.size(2);
  // zeroed: the kernel writes each entry its permutation reaches, and skips indices out of range (perm is not
  // checked on the device, see ops_distances.cpp)
  auto gpx = at::zeros_like(px);
  auto gpy = need_py && py ? at::zeros_like(*py) : at::empty({0}, px.options());
  dispatch_dist_cuda(ct, [&](auto tag) {
    using T = decltype(tag);
    check_cuda(cuda::sw_backward<T>(g.data_ptr<T>(), px.data_ptr<T>(), py ? py->data_ptr<T>() : nullptr,
                                    perm_x.data_ptr<int32_t>(), py ? perm_y.data_ptr<int32_t>() : nullptr,
                                    gpx.data_ptr<T>(), gpy.numel() ? gpy.data_ptr<T>() : nullptr, B, L, N, p,
                                    stream_of(px)),
               op);
  });
  return {gpx.to(px_.scalar_type()), need_py && py_ ? gpy.to(py_->scalar_type()) : gpy};
}

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  using namespace fastvae;
  m.impl("mmd", &mmd_cuda);
  m.impl("mmd_backward", &mmd_backward_cuda);
  m.impl("sliced_wasserstein_projected", &sw_projected_cuda);
  m.impl("sliced_wasserstein_projected_backward", &sw_projected_backward_cuda);
}
