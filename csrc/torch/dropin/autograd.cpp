// The drop-ins' forward with gradients as a C++ autograd node (fastvae/ops/dropin.py's fast path in eager mode on
// the CPU): the same graph as the Python torch.autograd.Function it replaces, without that Function's Python round
// trips: at small batches that fixed cost was most of a drop-in's time.
//
// forward: the *_with_grad op below the autograd key (its own autograd formula only raises), keeping the
// operands and, where every returned gradient is finite, the gradients (for an incoming gradient of 1).
// backward: on the first use of a finite node with grad mode off, the kept gradients scaled in place by the rows'
// incoming gradients (through an alias with a version counter of its own, so that the saved tensor is not marked as
// modified) and summed over the tiles of a periodic operand; otherwise (a non-finite gradient, a second backward
// through a retained graph, create_graph=True) the Python fallback registered by fastvae/ops/dropin.py, which
// recomputes through the op's registered backward, differentiable when asked.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "torch/autograd_node.h"
#include "torch/dropin/autograd.h"

namespace fastvae {
namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// kind -> (the op, its tensor operands, its scalar arguments between the operands and row_len, the leading operands
// it gives gradients of: its output mask's length)
struct Kind {
  const char* op;
  int n_operands;
  int n_args;
  int n_grads;
};
constexpr std::array<Kind, 3> kKinds{{{"fastvae::dropin_normal_nll_with_grad", 3, 4, 3},
                                      {"fastvae::dropin_normal_kl_with_grad", 4, 1, 4},
                                      {"fastvae::dropin_bce_with_logits_with_grad", 4, 1, 2}}};

const c10::OperatorHandle& op_of(int kind) {
  static const std::array<c10::OperatorHandle, 3> handles{
      c10::Dispatcher::singleton().findSchemaOrThrow(kKinds[0].op, ""),
      c10::Dispatcher::singleton().findSchemaOrThrow(kKinds[1].op, ""),
      c10::Dispatcher::singleton().findSchemaOrThrow(kKinds[2].op, "")};
  return handles[kind];
}

PyFallback fallback("drop-in");  // fastvae/ops/dropin.py's _recompute

// the gradient of a periodic operand from the full-size one: summed over its tiles
at::Tensor fold(const at::Tensor& full, const at::Tensor& t) {
  if (full.numel() == t.numel()) return full.view(t.sizes());
  return full.view({-1, t.numel()}).sum(0).view(t.sizes());
}

struct WithGrad : public torch::autograd::Function<WithGrad> {
  static at::Tensor forward(AutogradContext* ctx, int64_t kind, const std::optional<at::Tensor>& a,
                            const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& c,
                            const std::optional<at::Tensor>& d, const std::vector<double>& args, int64_t row_len,
                            const std::vector<bool>& mask) {
    const Kind& k = kKinds[kind];
    const c10::OperatorHandle& op = op_of(static_cast<int>(kind));
    const auto& schema = op.schema().arguments();
    torch::jit::Stack stack;
    const std::optional<at::Tensor>* operands[4] = {&a, &b, &c, &d};
    for (int i = 0; i < k.n_operands; ++i) stack.emplace_back(*operands[i]);
    for (int i = 0; i < k.n_args; ++i) {
      const auto& arg = schema[k.n_operands + i];
      if (arg.type()->kind() != c10::TypeKind::IntType) {
        stack.emplace_back(args[i]);
        continue;
      }
      TORCH_CHECK_VALUE(args[i] == std::floor(args[i]), "fastvae._C.dropin_with_grad: ", arg.name(), " of ", k.op,
                        " must be an integer; got ", args[i]);
      stack.emplace_back(static_cast<int64_t>(args[i]));
    }
    stack.emplace_back(row_len);
    c10::List<bool> mask_list;
    for (const bool m : mask) mask_list.push_back(m);
    stack.emplace_back(std::move(mask_list));
    {
      at::AutoDispatchBelowAutograd below;  // (the op's autograd formula only raises)
      op.callBoxed(&stack);
    }
    at::Tensor out = stack[0].toTensor();
    const bool finite = stack[1].toTensor().item<int>() == 0;
    std::vector<at::Tensor> saved;
    for (int i = 0; i < k.n_operands; ++i) saved.push_back(operands[i]->has_value() ? **operands[i] : at::Tensor());
    if (finite)
      for (int i = 0; i < static_cast<int>(mask.size()); ++i) saved.push_back(stack[2 + i].toTensor());
    ctx->save_for_backward(saved);
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["args"] = c10::List<double>(args);
    ctx->saved_data["row_len"] = row_len;
    ctx->saved_data["finite"] = finite;
    ctx->saved_data["used"] = false;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t kind = ctx->saved_data["kind"].toInt();
    const Kind& k = kKinds[kind];
    const int64_t row_len = ctx->saved_data["row_len"].toInt();
    const bool first = !ctx->saved_data["used"].toBool();
    ctx->saved_data["used"] = true;
    const variable_list saved = ctx->get_saved_variables();
    // which operands want a gradient: the graph's edges are the defined operands, in order
    std::vector<bool> needs(k.n_operands, false);
    for (int i = 0, edge = 0; i < k.n_operands; ++i)
      if (saved[i].defined()) needs[i] = ctx->needs_input_grad(edge++);
    variable_list out(1 + 4 + 3, at::Tensor());  // one per forward argument: kind, a, b, c, d, args, row_len, mask
    const at::Tensor& grad = grads[0];
    if (ctx->saved_data["finite"].toBool() && first && !at::GradMode::is_enabled()) {
      const at::Tensor rows = grad.reshape({-1, 1});
      for (int i = 0; i + k.n_operands < static_cast<int>(saved.size()); ++i) {
        if (!needs[i] || !saved[i].defined()) continue;
        at::Tensor g = fresh_alias(saved[k.n_operands + i]);  // scaled in place: used up
        g.view({-1, row_len}).mul_(rows);
        out[1 + i] = fold(g, saved[i]);
      }
      return out;
    }
    py::gil_scoped_acquire gil;
    py::list operands, needs_py;
    for (int i = 0; i < k.n_operands; ++i) {
      operands.append(saved[i].defined() ? py::cast(saved[i]) : py::none());
      needs_py.append(py::bool_(needs[i]));
    }
    const auto args = ctx->saved_data["args"].toDoubleList();
    py::list args_py;
    for (const double v : args) args_py.append(v);
    py::sequence res = fallback(kind, operands, args_py, row_len, needs_py, grad);
    for (int i = 0; i < k.n_operands; ++i)
      if (!res[i].is_none()) out[1 + i] = res[i].cast<at::Tensor>();
    return out;
  }
};

// Normal.rsample's node (dropin_normal_rsample: z = loc + scale * eps, eps drawn from the seed; its backward draws
// eps again): the fused backward op with grad mode off, else (create_graph=True) the Python fallback (kind 3).
struct Rsample : public torch::autograd::Function<Rsample> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& loc, const at::Tensor& scale,
                            const at::Tensor& seed, std::optional<int64_t> k) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastvae::dropin_normal_rsample", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 std::optional<int64_t>)>();
    at::AutoDispatchBelowAutograd below;
    ctx->save_for_backward({scale, seed});
    ctx->saved_data["k"] = k.has_value() ? c10::IValue(*k) : c10::IValue();
    return op.call(loc, scale, seed, k);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastvae::dropin_normal_rsample_backward", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, std::optional<int64_t>,
                                                                         std::array<bool, 2>)>();
    const variable_list saved = ctx->get_saved_variables();
    const c10::IValue& kv = ctx->saved_data["k"];
    const std::optional<int64_t> k = kv.isNone() ? std::nullopt : std::optional<int64_t>(kv.toInt());
    const bool need_loc = ctx->needs_input_grad(0), need_scale = ctx->needs_input_grad(1);
    const at::Tensor& grad_z = grads[0];
    variable_list out(4, at::Tensor());
    if (!at::GradMode::is_enabled()) {
      at::AutoDispatchBelowAutograd below;
      auto [gl, gs] = op.call(grad_z, saved[0], saved[1], k, {need_loc && k.has_value(), need_scale});
      if (need_loc) out[0] = k.has_value() ? gl : grad_z;  // without samples the loc gradient is grad_z itself
      if (need_scale) out[1] = gs;
      return out;
    }
    py::gil_scoped_acquire gil;
    py::list args_py;
    args_py.append(k.has_value() ? py::cast(*k) : py::none());
    py::list needs_py;
    needs_py.append(py::bool_(need_loc));
    needs_py.append(py::bool_(need_scale));
    py::sequence res = fallback(3, py::make_tuple(saved[0], saved[1]), args_py, 0, needs_py, grad_z);
    for (int i = 0; i < 2; ++i)
      if (!res[i].is_none()) out[i] = res[i].cast<at::Tensor>();
    return out;
  }
};

at::Tensor with_grad(int64_t kind, const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b,
                     const std::optional<at::Tensor>& c, const std::optional<at::Tensor>& d,
                     const std::vector<double>& args, int64_t row_len, const std::vector<bool>& mask) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < static_cast<int64_t>(kKinds.size()), "fastvae._C.dropin_with_grad: kind must "
                    "be 0 (normal_nll), 1 (normal_kl) or 2 (bce_with_logits); got ", kind);
  const Kind& k = kKinds[kind];
  TORCH_CHECK_VALUE(static_cast<int>(args.size()) == k.n_args, "fastvae._C.dropin_with_grad: ", k.op, " takes ",
                    k.n_args, " scalar arguments; got ", args.size());
  TORCH_CHECK_VALUE(static_cast<int>(mask.size()) == k.n_grads, "fastvae._C.dropin_with_grad: the output mask of ",
                    k.op, " has ", k.n_grads, " entries; got ", mask.size());
  TORCH_CHECK_VALUE(k.n_operands == 4 || !d.has_value(), "fastvae._C.dropin_with_grad: ", k.op, " takes ",
                    k.n_operands, " tensor operands; got a fourth");
  return WithGrad::apply(kind, a, b, c, d, args, row_len, mask);
}

}  // namespace

void bind_dropin_autograd(pybind11::module_& m) {
  m.def("dropin_with_grad", &with_grad,
        "the forward with gradients of a drop-in op (kind 0 normal_nll, 1 normal_kl, 2 bce_with_logits) as a C++ "
        "autograd node (fastvae/ops/dropin.py)");
  m.def(
      "dropin_rsample",
      [](const at::Tensor& loc, const at::Tensor& scale, const at::Tensor& seed, std::optional<int64_t> k) {
        return Rsample::apply(loc, scale, seed, k);
      },
        "dropin_normal_rsample(loc, scale, seed, n_samples) as a C++ autograd node (fastvae/ops/dropin.py)");
  m.def(
      "set_dropin_recompute",
      [](py::object fn) { fallback.set(std::move(fn)); },
      "the Python fallback of the nodes' backward: fn(kind, operands, args, row_len, needs, grad) -> grads (kind "
      "3: rsample, operands (scale, seed), args (n_samples,))");
}

}  // namespace fastvae
