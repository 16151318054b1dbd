// The drop-in ops (schemas and layout in schema.cpp), written once for every backend: checks, contiguity, outputs and
// shapes. A backend (cpu.cpp, cuda.cpp) turns the prepared tensors into raw pointers, periods and sizes and calls its
// kernels; `typename B::Guard` sets the device for the call.
#pragma once
#include <array>
#include <initializer_list>
#include <utility>

#include "torch/checks.h"

namespace fastvae {

// N output elements in rows of row_len; each operand's period is its numel.
struct DropinShape {
  int64_t N, row_len;
};

using NamedTensor = std::pair<const at::Tensor*, const char*>;

template <class B>
struct DropinOps {
  using Guard = typename B::Guard;

  // The operands (absent optional ones left out): the first is the reference (floating, of a dtype the backend
  // takes), the others share its device and dtype; N = the largest numel, which every other numel divides.
  static DropinShape check(const char* op, std::initializer_list<NamedTensor> ts, int64_t row_len) {
    const NamedTensor& ref = *ts.begin();
    check_main<B>(op, *ref.first, ref.second);
    int64_t N = 0;
    const char* largest = ref.second;
    for (const auto& t : ts) {
      if (t.first != ref.first) check_like(op, *ref.first, ref.second, *t.first, t.second);
      if (t.first->numel() > N) {
        N = t.first->numel();
        largest = t.second;
      }
    }
    for (const auto& t : ts) {
      const int64_t P = t.first->numel();
      TORCH_CHECK_VALUE(N == 0 ? P == 0 : P > 0 && N % P == 0, "fastvae.", op, ": ", t.second, " has ", P,
                        " elements (shape ", t.first->sizes(), "), which must divide the ", N, " elements of ", largest,
                        " (the output; an operand is tiled over it)");
    }
    TORCH_CHECK_VALUE(row_len >= 1 && N % row_len == 0, "fastvae.", op, ": row_len must be >= 1 and divide the ", N,
                      " output elements; got ", row_len);
    return {N, row_len};
  }

  static at::Tensor sums(const at::Tensor& ref, const DropinShape& sh) {
    return at::empty({sh.N / sh.row_len}, ref.options().dtype(compute_type(ref.scalar_type())));
  }
  // the incoming gradient of a backward: (N / row_len), converted to the accumulation dtype
  static at::Tensor grad_in(const char* op, const at::Tensor& g, const at::Tensor& ref, const char* ref_name,
                            const DropinShape& sh) {
    check_grad(op, g, "grad", {sh.N / sh.row_len}, ref, ref_name);
    return g.contiguous().to(compute_type(ref.scalar_type()));
  }
  static at::Tensor grad_out(const at::Tensor& ref, int64_t n, bool want) {
    return at::empty({want ? n : 0}, ref.options());
  }

  // ---- normal_nll ------------------------------------------------------------------------------------------------

  static void check_nll(const char* op, int64_t param, double floor) {
    TORCH_CHECK_VALUE(param >= 0 && param <= 2, "fastvae.", op, ": param must be 0 (scale), 1 (var) or 2 (logvar); ",
                      "got ", param);
    TORCH_CHECK_VALUE(floor >= 0, "fastvae.", op, ": floor must be >= 0; got ", floor);
  }

  static at::Tensor normal_nll(const at::Tensor& x_, const at::Tensor& loc_, const at::Tensor& sp_, int64_t param,
                               double floor, double cst, double factor, int64_t row_len) {
    constexpr const char* op = "dropin_normal_nll";
    const DropinShape sh = check(op, {{&x_, "x"}, {&loc_, "loc"}, {&sp_, "spread"}}, row_len);
    check_nll(op, param, floor);
    Guard guard(x_);
    const auto x = x_.contiguous(), loc = loc_.contiguous(), sp = sp_.contiguous();
    auto out = sums(x, sh);
    if (sh.N > 0) B::normal_nll_fwd(x, loc, sp, out, static_cast<int>(param), floor, cst, factor, sh);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> normal_nll_backward(
      const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& loc_, const at::Tensor& sp_, int64_t param,
      double floor, double cst, double factor, int64_t row_len, std::array<bool, 3> mask) {
    constexpr const char* op = "dropin_normal_nll_backward";
    const DropinShape sh = check(op, {{&x_, "x"}, {&loc_, "loc"}, {&sp_, "spread"}}, row_len);
    check_nll(op, param, floor);
    (void)cst;  // a constant has no derivative
    const auto g = grad_in(op, g_, x_, "x", sh);
    Guard guard(x_);
    const auto x = x_.contiguous(), loc = loc_.contiguous(), sp = sp_.contiguous();
    auto gx = grad_out(x, sh.N, mask[0]), gl = grad_out(x, sh.N, mask[1]), gs = grad_out(x, sh.N, mask[2]);
    if (sh.N > 0 && (mask[0] || mask[1] || mask[2]))
      B::normal_nll_bwd(g, x, loc, sp, gx, gl, gs, static_cast<int>(param), floor, factor, sh);
    return {gx, gl, gs};
  }

  // ---- normal_kl -------------------------------------------------------------------------------------------------

  static at::Tensor normal_kl(const at::Tensor& lp_, const at::Tensor& sp_, const at::Tensor& lq_,
                              const at::Tensor& sq_, double factor, int64_t row_len) {
    constexpr const char* op = "dropin_normal_kl";
    const DropinShape sh =
        check(op, {{&lp_, "loc_p"}, {&sp_, "scale_p"}, {&lq_, "loc_q"}, {&sq_, "scale_q"}}, row_len);
    Guard guard(lp_);
    const auto lp = lp_.contiguous(), sp = sp_.contiguous(), lq = lq_.contiguous(), sq = sq_.contiguous();
    auto out = sums(lp, sh);
    if (sh.N > 0) B::normal_kl_fwd(lp, sp, lq, sq, out, factor, sh);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> normal_kl_backward(
      const at::Tensor& g_, const at::Tensor& lp_, const at::Tensor& sp_, const at::Tensor& lq_,
      const at::Tensor& sq_, double factor, int64_t row_len, std::array<bool, 4> mask) {
    constexpr const char* op = "dropin_normal_kl_backward";
    const DropinShape sh =
        check(op, {{&lp_, "loc_p"}, {&sp_, "scale_p"}, {&lq_, "loc_q"}, {&sq_, "scale_q"}}, row_len);
    const auto g = grad_in(op, g_, lp_, "loc_p", sh);
    Guard guard(lp_);
    const auto lp = lp_.contiguous(), sp = sp_.contiguous(), lq = lq_.contiguous(), sq = sq_.contiguous();
    auto glp = grad_out(lp, sh.N, mask[0]), gsp = grad_out(lp, sh.N, mask[1]);
    auto glq = grad_out(lp, sh.N, mask[2]), gsq = grad_out(lp, sh.N, mask[3]);
    if (sh.N > 0 && (mask[0] || mask[1] || mask[2] || mask[3]))
      B::normal_kl_bwd(g, lp, sp, lq, sq, glp, gsp, glq, gsq, factor, sh);
    return {glp, gsp, glq, gsq};
  }

  // ---- normal_rsample ----------------------------------------------------------------------------------------------

  static std::vector<int64_t> sampled(const at::Tensor& t, std::optional<int64_t> k) {
    std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
    if (k.has_value()) s.insert(s.begin(), *k);
    return s;
  }

  static at::Tensor normal_rsample(const at::Tensor& loc_, const at::Tensor& scale_, const at::Tensor& seed,
                                   std::optional<int64_t> k) {
    constexpr const char* op = "dropin_normal_rsample";
    check_main<B>(op, loc_, "loc");
    check_like(op, loc_, "loc", scale_, "scale");
    check_shape(op, scale_, "scale", loc_.sizes());
    check_seed(op, seed, loc_, "loc");
    check_n_samples(op, k);
    Guard guard(loc_);
    const auto loc = loc_.contiguous(), scale = scale_.contiguous();
    auto z = at::empty(sampled(loc, k), loc.options());
    if (z.numel() > 0) B::normal_rsample_fwd(loc, scale, z, k.value_or(1), seed);
    return z;
  }

  static std::tuple<at::Tensor, at::Tensor> normal_rsample_backward(const at::Tensor& gz_, const at::Tensor& scale_,
                                                                    const at::Tensor& seed, std::optional<int64_t> k,
                                                                    std::array<bool, 2> mask) {
    constexpr const char* op = "dropin_normal_rsample_backward";
    check_main<B>(op, scale_, "scale");
    check_seed(op, seed, scale_, "scale");
    check_n_samples(op, k);
    check_grad(op, gz_, "grad_z", sampled(scale_, k), scale_, "scale");
    Guard guard(scale_);
    const auto scale = scale_.contiguous(), gz = gz_.contiguous().to(scale.scalar_type());
    auto gl = mask[0] ? at::empty_like(scale) : at::empty({0}, scale.options());
    auto gs = mask[1] ? at::empty_like(scale) : at::empty({0}, scale.options());
    if (scale.numel() > 0 && (mask[0] || mask[1]))
      B::normal_rsample_bwd(gz, gl, gs, scale.numel(), k.value_or(1), seed);
    return {gl, gs};
  }

  // ---- bce_with_logits ---------------------------------------------------------------------------------------------

  static DropinShape check_bce(const char* op, const at::Tensor& l, const at::Tensor& y,
                               const std::optional<at::Tensor>& w, const std::optional<at::Tensor>& pw,
                               int64_t row_len) {
    if (w && pw) return check(op, {{&l, "logits"}, {&y, "target"}, {&*w, "weight"}, {&*pw, "pos_weight"}}, row_len);
    if (w) return check(op, {{&l, "logits"}, {&y, "target"}, {&*w, "weight"}}, row_len);
    if (pw) return check(op, {{&l, "logits"}, {&y, "target"}, {&*pw, "pos_weight"}}, row_len);
    return check(op, {{&l, "logits"}, {&y, "target"}}, row_len);
  }

  static at::Tensor bce_with_logits(const at::Tensor& l_, const at::Tensor& y_, const std::optional<at::Tensor>& w_,
                                    const std::optional<at::Tensor>& pw_, double factor, int64_t row_len) {
    constexpr const char* op = "dropin_bce_with_logits";
    const DropinShape sh = check_bce(op, l_, y_, w_, pw_, row_len);
    Guard guard(l_);
    const auto l = l_.contiguous(), y = y_.contiguous();
    const auto w = contiguous_opt(w_), pw = contiguous_opt(pw_);
    auto out = sums(l, sh);
    if (sh.N > 0) B::bce_fwd(l, y, w, pw, out, factor, sh);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> bce_with_logits_backward(
      const at::Tensor& g_, const at::Tensor& l_, const at::Tensor& y_, const std::optional<at::Tensor>& w_,
      const std::optional<at::Tensor>& pw_, double factor, int64_t row_len, std::array<bool, 2> mask) {
    constexpr const char* op = "dropin_bce_with_logits_backward";
    const DropinShape sh = check_bce(op, l_, y_, w_, pw_, row_len);
    const auto g = grad_in(op, g_, l_, "logits", sh);
    Guard guard(l_);
    const auto l = l_.contiguous(), y = y_.contiguous();
    const auto w = contiguous_opt(w_), pw = contiguous_opt(pw_);
    auto gl = grad_out(l, sh.N, mask[0]), gy = grad_out(l, sh.N, mask[1]);
    if (sh.N > 0 && (mask[0] || mask[1])) B::bce_bwd(g, l, y, w, pw, gl, gy, factor, sh);
    return {gl, gy};
  }

  // ---- forward with gradients (CPU): (out, nonfinite, the gradients of an incoming gradient of 1) ---------------

  static at::Tensor flag(const at::Tensor& ref) { return at::zeros({}, ref.options().dtype(at::kInt)); }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> normal_nll_with_grad(
      const at::Tensor& x_, const at::Tensor& loc_, const at::Tensor& sp_, int64_t param, double floor, double cst,
      double factor, int64_t row_len, std::array<bool, 3> mask) {
    constexpr const char* op = "dropin_normal_nll_with_grad";
    const DropinShape sh = check(op, {{&x_, "x"}, {&loc_, "loc"}, {&sp_, "spread"}}, row_len);
    check_nll(op, param, floor);
    Guard guard(x_);
    const auto x = x_.contiguous(), loc = loc_.contiguous(), sp = sp_.contiguous();
    auto out = sums(x, sh), bad = flag(x);
    auto gx = grad_out(x, sh.N, mask[0]), gl = grad_out(x, sh.N, mask[1]), gs = grad_out(x, sh.N, mask[2]);
    if (sh.N > 0)
      B::normal_nll_fwd_grad(x, loc, sp, out, gx, gl, gs, bad, static_cast<int>(param), floor, cst, factor, sh);
    return {out, bad, gx, gl, gs};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> normal_kl_with_grad(
      const at::Tensor& lp_, const at::Tensor& sp_, const at::Tensor& lq_, const at::Tensor& sq_, double factor,
      int64_t row_len, std::array<bool, 4> mask) {
    constexpr const char* op = "dropin_normal_kl_with_grad";
    const DropinShape sh =
        check(op, {{&lp_, "loc_p"}, {&sp_, "scale_p"}, {&lq_, "loc_q"}, {&sq_, "scale_q"}}, row_len);
    Guard guard(lp_);
    const auto lp = lp_.contiguous(), sp = sp_.contiguous(), lq = lq_.contiguous(), sq = sq_.contiguous();
    auto out = sums(lp, sh), bad = flag(lp);
    auto glp = grad_out(lp, sh.N, mask[0]), gsp = grad_out(lp, sh.N, mask[1]);
    auto glq = grad_out(lp, sh.N, mask[2]), gsq = grad_out(lp, sh.N, mask[3]);
    if (sh.N > 0) B::normal_kl_fwd_grad(lp, sp, lq, sq, out, glp, gsp, glq, gsq, bad, factor, sh);
    return {out, bad, glp, gsp, glq, gsq};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bce_with_logits_with_grad(
      const at::Tensor& l_, const at::Tensor& y_, const std::optional<at::Tensor>& w_,
      const std::optional<at::Tensor>& pw_, double factor, int64_t row_len, std::array<bool, 2> mask) {
    constexpr const char* op = "dropin_bce_with_logits_with_grad";
    const DropinShape sh = check_bce(op, l_, y_, w_, pw_, row_len);
    Guard guard(l_);
    const auto l = l_.contiguous(), y = y_.contiguous();
    const auto w = contiguous_opt(w_), pw = contiguous_opt(pw_);
    auto out = sums(l, sh), bad = flag(l);
    auto gl = grad_out(l, sh.N, mask[0]), gy = grad_out(l, sh.N, mask[1]);
    if (sh.N > 0) B::bce_fwd_grad(l, y, w, pw, out, gl, gy, bad, factor, sh);
    return {out, bad, gl, gy};
  }
};

template <class B>
void register_dropin_ops(torch::Library& m) {
  using O = DropinOps<B>;
  m.impl("dropin_normal_nll", &O::normal_nll);
  m.impl("dropin_normal_nll_backward", &O::normal_nll_backward);
  m.impl("dropin_normal_kl", &O::normal_kl);
  m.impl("dropin_normal_kl_backward", &O::normal_kl_backward);
  m.impl("dropin_normal_rsample", &O::normal_rsample);
  m.impl("dropin_normal_rsample_backward", &O::normal_rsample_backward);
  m.impl("dropin_bce_with_logits", &O::bce_with_logits);
  m.impl("dropin_bce_with_logits_backward", &O::bce_with_logits_backward);
}

// The forwards with gradients, for a backend that has them (the CPU's; see schema.cpp).
template <class B>
void register_dropin_with_grad_ops(torch::Library& m) {
  using O = DropinOps<B>;
  m.impl("dropin_normal_nll_with_grad", &O::normal_nll_with_grad);
  m.impl("dropin_normal_kl_with_grad", &O::normal_kl_with_grad);
  m.impl("dropin_bce_with_logits_with_grad", &O::bce_with_logits_with_grad);
}

}  // namespace fastvae
