// The discretized logistics' forward with gradients as a C++ autograd node (fastvae/ops/logistic.py's fast path on the
// CPU when the parameters need gradients; see csrc/torch/autograd_node.h): the graph of the Python
// torch.autograd.Function it replaces, without its Python round trips.
//
// forward: discretized_logistic_nll_with_grad (one logistic per pixel) or discretized_logistic_mixture_nll_with_grad
// below the autograd key (their autograd formulas only raise), keeping the inputs and, where every one is finite, the
// per-sample losses' gradients.
// backward: on the first use of a finite node with grad mode off, the kept gradients scaled in place to the
// registered backward's values, bit for bit (reduction "none": by the rows' incoming gradients; "sum" / "mean": by the
// one incoming gradient, divided by the rows for "mean", in double, then rounded once to the dtype by the multiply);
// otherwise (non-finite, a second backward through a retained graph, create_graph=True, where a double backward is
// refused) the Python fallback of fastvae/ops/logistic.py, through the registered backward.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <tuple>
#include <utility>

#include "torch/autograd_node.h"
#include "torch/logistic/autograd.h"

namespace fastvae {
namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kReductionNone = 0, kReductionMean = 2;  // the ops' reduction codes (none, sum, mean)

PyFallback fallback("discretized logistic");  // fastvae/ops/logistic.py's _single_recompute

// x, logit_probs (a mixture; absent: one logistic per pixel), means, log_scales: the graph's edges are the tensors given
struct LogisticWithGrad : public torch::autograd::Function<LogisticWithGrad> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& logits,
                            const at::Tensor& means, const at::Tensor& log_scales, int64_t n_bits, int64_t reduction,
                            bool validate) {
    using T = const at::Tensor&;
    static const auto single = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("fastvae::discretized_logistic_nll_with_grad", "")
                                   .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                                       T, T, T, int64_t, int64_t, bool)>();
    static const auto mixture = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("fastvae::discretized_logistic_mixture_nll_with_grad", "")
                                    .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                                        T, T, T, T, int64_t, int64_t, bool)>();
    at::Tensor out, nonfinite, g_lg, g_m, g_ls;
    {
      at::AutoDispatchBelowAutograd below;  // (their autograd formulas only raise)
      if (logits)
        std::tie(out, nonfinite, g_lg, g_m, g_ls) = mixture.call(x, *logits, means, log_scales, n_bits, reduction,
                                                                 validate);
      else
        std::tie(out, nonfinite, g_m, g_ls) = single.call(x, means, log_scales, n_bits, reduction, validate);
    }
    const bool finite = nonfinite.item<int>() == 0;
    std::vector<at::Tensor> saved{x, logits ? *logits : at::Tensor(), means, log_scales};
    if (finite) saved.insert(saved.end(), {g_lg, g_m, g_ls});  // (g_lg undefined for a single logistic)
    ctx->save_for_backward(saved);
    ctx->saved_data["n_bits"] = n_bits;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["finite"] = finite;
    ctx->saved_data["used"] = false;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool first = !ctx->saved_data["used"].toBool();
    ctx->saved_data["used"] = true;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &means = saved[2];
    bool needs[4] = {false, false, false, false};
    for (int i = 0, edge = 0; i < 4; ++i)
      if (saved[i].defined()) needs[i] = ctx->needs_input_grad(edge++);
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const at::Tensor& grad = grads[0];
    variable_list out(7, at::Tensor());
    if (ctx->saved_data["finite"].toBool() && first && !at::GradMode::is_enabled()) {
      const int64_t rows = x.size(0) * (means.dim() == x.dim() + 2 ? means.size(0) : 1);  // the per-sample losses
      for (int i = 1; i < 4; ++i) {
        if (!needs[i]) continue;
        at::Tensor d = fresh_alias(saved[3 + i]);  // scaled in place: used up (a second backward recomputes)
        if (reduction == kReductionNone)
          d.view({rows, -1}).mul_(grad.reshape({rows, 1}));
        else
          d.mul_(grad.item<double>() / static_cast<double>(reduction == kReductionMean ? rows : 1));
        out[i] = d;
      }
      if (needs[0]) out[0] = at::zeros_like(x);  // the loss depends on x only through its level
      return out;
    }
    py::gil_scoped_acquire gil;
    py::tuple operands(4), needs_py(4);
    for (int i = 0; i < 4; ++i) {
      operands[i] = saved[i].defined() ? py::cast(saved[i]) : py::none();
      needs_py[i] = py::bool_(needs[i]);
    }
    py::sequence res = fallback(operands, ctx->saved_data["n_bits"].toInt(), reduction, needs_py, grad);
    for (int i = 0; i < 4; ++i)
      if (!res[i].is_none()) out[i] = res[i].cast<at::Tensor>();
    return out;
  }
};

}  // namespace

void bind_logistic_autograd(pybind11::module_& m) {
  m.def(
      "logistic_with_grad",
      [](const at::Tensor& x, const std::optional<at::Tensor>& logits, const at::Tensor& means,
         const at::Tensor& log_scales, int64_t n_bits, int64_t reduction, bool validate) {
        return LogisticWithGrad::apply(x, logits, means, log_scales, n_bits, reduction, validate);
      },
      "discretized_logistic_nll_with_grad (logit_probs None) or discretized_logistic_mixture_nll_with_grad as a C++ "
      "autograd node (fastvae/ops/logistic.py)");
  m.def(
      "set_logistic_recompute", [](py::object fn) { fallback.set(std::move(fn)); },
      "the Python fallback of the node's backward: fn((x, logit_probs, means, log_scales), n_bits, reduction, needs, "
      "grad) -> their gradients");
}

}  // namespace fastvae
