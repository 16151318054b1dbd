// The discretized logistics' forward with gradients as a C++ autograd node (autograd.cpp), bound into the
// module fastvae._C.
#pragma once
#include <torch/extension.h>

namespace fastvae {

void bind_logistic_autograd(pybind11::module_& m);

}  // namespace fastvae
