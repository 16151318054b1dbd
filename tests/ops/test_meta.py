"""Every public function and module runs on meta tensors and under FakeTensorMode (shape inference, as the ops do):
the outputs and the gradients have the shapes and dtypes of the CPU results."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastvae as F


class Maker:
    """Seeded CPU tensors, converted to the device under test (requires_grad leaves there)."""

    def __init__(self, convert, dtype):
        self.convert, self.dtype = convert, dtype
        self.g = torch.Generator().manual_seed(0)
        self.leaves = []

    def __call__(self, *shape, tril=False):
        t = torch.randn(shape, generator=self.g, dtype=torch.float64)
        if tril:  # a valid Cholesky factor: validate_args reads it on the CPU
            t = torch.tril(t, -1) + torch.diag_embed(1 + t.diagonal(dim1=-2, dim2=-1).abs())
        t = self.convert(t.to(self.dtype)).requires_grad_()
        self.leaves.append(t)
        return t


def gen():
    return torch.Generator().manual_seed(1)


# (name, call(make)): every function of fastvae.__all__ and both modules, over their operand layouts
CASES = {
    "reparameterize": lambda t: F.reparameterize(t(3, 4), t(3, 4), generator=gen()),
    "reparameterize n_samples": lambda t: F.reparameterize(t(3, 4), t(3, 4), n_samples=2),
    "reparameterize 0-dim": lambda t: F.reparameterize(t(), t(), generator=gen()),
    "reparameterize_kl": lambda t: F.reparameterize_kl(t(3, 2, 2), t(3, 2, 2), generator=gen()),
    "reparameterize_tril": lambda t: F.reparameterize_tril(t(2, 3), t(2, 3, 3, tril=True), generator=gen()),
    "reparameterize_tril batch n_samples": lambda t: F.reparameterize_tril(t(2, 3, 4), t(2, 3, 4, 4, tril=True),
                                                                           n_samples=2),
    "gaussian_nll": lambda t: F.gaussian_nll(t(3, 4), t(3, 4)),
    "gaussian_nll full logvar none": lambda t: F.gaussian_nll(t(3, 4), t(3, 4), t(3, 4), reduction="none"),
    "gaussian_nll per-feature k": lambda t: F.gaussian_nll(t(3, 4), t(2, 3, 4), t(4), reduction="none"),
    "gaussian_nll 0-dim logvar sum": lambda t: F.gaussian_nll(t(3, 2, 2), t(3, 2, 2), t(), reduction="sum"),
    "bernoulli_nll": lambda t: F.bernoulli_nll(t(3, 4).sigmoid(), t(3, 4)),
    "bernoulli_nll k none": lambda t: F.bernoulli_nll(t(3, 4).sigmoid(), t(2, 3, 4), reduction="none"),
    "kl_normal": lambda t: F.kl_normal(t(3, 4), t(3, 4)),
    "kl_normal priors none": lambda t: F.kl_normal(t(3, 4), t(3, 4), t(4), t(3, 4), reduction="none"),
    "mmd prior imq": lambda t: F.mmd(t(5, 3), generator=gen()),
    "mmd prior rbf": lambda t: F.mmd(t(5, 3), kernel="rbf"),
    "mmd y batched": lambda t: F.mmd(t(2, 5, 3), t(2, 6, 3), kernel="laplacian", bandwidth=[1.0, 2.0],
                                     estimator="biased"),
    "energy_distance": lambda t: F.energy_distance(t(5, 3), t(4, 3)),
    "sliced_wasserstein random": lambda t: F.sliced_wasserstein(t(5, 3), n_projections=7, generator=gen()),
    "sliced_wasserstein random default generator": lambda t: F.sliced_wasserstein(t(2, 5, 3), t(2, 5, 3)),
    "sliced_wasserstein projections": lambda t: F.sliced_wasserstein(t(5, 3), t(5, 3), p=1, projections=t(3, 4)),
    "MMDLoss": lambda t: F.MMDLoss(kernel="energy")(t(5, 3), t(6, 3)),
    "SlicedWassersteinLoss": lambda t: F.SlicedWassersteinLoss(n_projections=4, generator=gen())(t(5, 3)),
    "SlicedWassersteinLoss projections": lambda t: F.SlicedWassersteinLoss(p=3, projections=t(3, 2))(t(5, 3)),
}


def _run(case, convert, dtype):
    """(shape, dtype) of every output and of the gradient of every input."""
    make = Maker(convert, dtype)
    out = CASES[case](make)
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(sum(o.float().sum() for o in outs), make.leaves, allow_unused=True,
                                materialize_grads=True)
    return [(o.device.type, tuple(o.shape), o.dtype) for o in (*outs, *grads)]


def _on(device):
    return lambda results: [(device, s, dt) for _, s, dt in results]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_meta_and_fake_tensors_give_the_cpu_shapes_and_dtypes(case, dtype):
    cpu = _run(case, lambda t: t, dtype)
    assert _run(case, lambda t: t.to("meta"), dtype) == _on("meta")(cpu)
    with FakeTensorMode() as mode:
        assert _run(case, mode.from_tensor, dtype) == cpu  # fake CPU tensors report the CPU device
