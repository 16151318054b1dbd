// What the C++ autograd nodes of the families' fast paths share (csrc/torch/<family>/autograd.cpp): such a node
// replaces a torch.autograd.Function of the Python fast path, whose Python round trips cost about as much as a small
// batch's kernel. A node does the common backward itself and hands the rest (recomputing, create_graph=True) to a
// Python function its family registers once.
#pragma once
#include <torch/extension.h>

#include <utility>

namespace fastvae {

// A tensor on t's memory with a version counter of its own: writing it does not mark the saved t as modified (the
// forwards with gradients scale their saved gradients in place in the backward, and read them no more).
inline at::Tensor fresh_alias(const at::Tensor& t) {
  return at::empty({0}, t.options()).set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
}

// The Python fallback of a family's nodes: set once at import, never freed (it may be called until the end).
class PyFallback {
 public:
  explicit PyFallback(const char* family) : family_(family) {}
  void set(pybind11::object fn) {
    delete fn_;
    fn_ = new pybind11::object(std::move(fn));
  }
  template <class... Args>
  pybind11::object operator()(Args&&... args) const {
    TORCH_CHECK(fn_ != nullptr, "fastvae: the ", family_, " nodes' Python backward is not registered");
    return (*fn_)(std::forward<Args>(args)...);
  }

 private:
  const char* family_;
  pybind11::object* fn_ = nullptr;
};

}  // namespace fastvae
