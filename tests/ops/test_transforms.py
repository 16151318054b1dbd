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
from fastvae.ops import _transforms

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
    return fastvae.bernoulli_nll(torch.sigmoid(x), logits, reduction="none").reshape(-1)


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
    kw = dict(projections=rest[0] + PROJ.to(th.dtype)) if given else dict(n_projections=6, generator=_gen())
    return fastvae.sliced_wasserstein(x, y, p=p, **kw).reshape(-1)


def _logistic(th, per_feature=False):
    mean, ls = _split(th, (2, 3), (3,) if per_feature else (2, 3))
    return fastvae.discretized_logistic_nll(X_LOGISTIC.to(th.dtype), 0.3 * mean, 0.5 * ls - 2, reduction="none")


def _mixture(th):
    lg, m, ls = _split(th, (2, 3, 4), (2, 3, 4), (2, 3, 4))
    return fastvae.discretized_logistic_mixture_nll(X_MIX.to(th.dtype), lg, 0.3 * m, 0.5 * ls - 2, reduction="none")


def _mmd_module(th):
    x, y = _split(th, (5, 2), (4, 2))
    return fastvae.MMDLoss(kernel="rbf", bandwidth=1.2)(x, y).reshape(-1)


def _sw_module(th):
    x, y = _split(th, (5, 3), (5, 3))
    return fastvae.SlicedWassersteinLoss(projections=PROJ.to(th.dtype), p=1.5)(x, y).reshape(-1)


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


# ---- the two paths: fused outside transforms, the composite (same values, same generator use) under one ----------

class _OpLog(TorchDispatchMode):
    """Records the names of the ops that reach the dispatcher's backends."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


FUSED = {"reparameterize": "reparameterize", "reparameterize_kl": "reparameterize_kl",
         "reparameterize_tril": "reparameterize_tril", "gaussian_nll": "gaussian_nll", "bernoulli_nll": "bernoulli_nll",
         "kl_normal": "kl_normal", "mmd_imq": "mmd", "energy_distance": "mmd",
         "sliced_wasserstein": "sliced_wasserstein_projected", "discretized_logistic_nll": "discretized_logistic_nll",
         "discretized_logistic_mixture_nll": "discretized_logistic_nll", "MMDLoss": "mmd",
         "SlicedWassersteinLoss": "sliced_wasserstein_projected"}


@pytest.mark.parametrize("name", list(FUSED))
def test_ordinary_call_runs_the_fused_op_and_a_transform_does_not(name):
    op = f"fastvae.{FUSED[name]}"
    theta = _theta(name)
    with _OpLog() as log:
        CASES[name][1](theta)
    assert op in log.names
    with _OpLog() as log:
        torch.func.jvp(CASES[name][1], (theta,), (torch.ones_like(theta),))
    assert op not in log.names and log.names


@pytest.mark.parametrize("name", NAMES)
def test_composite_values_equal_the_fused_float32(name):
    """The composite (here under forward AD) computes what the kernel computes, in float32: sums of at most 72
    terms of size ~1-30, rounded differently (measured: at most 1e-6 apart), within rtol 1e-5, atol 5e-6."""
    theta = _theta(name, dtype=torch.float32)
    expected = CASES[name][1](theta)
    out, tangent = torch.func.jvp(CASES[name][1], (theta,), (torch.ones_like(theta),))
    assert out.dtype == expected.dtype == torch.float32
    _close(out, expected, rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("transform", ["jvp", "grad", "vmap", "dual"])
def test_random_ops_draw_the_fused_noise_and_consume_the_generator_alike(transform):
    mu, lv = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.manual_seed(11)
    expected = [fastvae.reparameterize(mu, lv, n_samples=2), fastvae.reparameterize_kl(mu, lv)[0],
                fastvae.reparameterize_tril(mu, torch.diag_embed(lv.exp()))[0]]
    after = torch.randn(4)  # what the default generator gives next

    def draws(m):
        return torch.cat([fastvae.reparameterize(m, lv, n_samples=2).reshape(-1),
                          fastvae.reparameterize_kl(m, lv)[0].reshape(-1),
                          fastvae.reparameterize_tril(m, torch.diag_embed(lv.exp()))[0].reshape(-1)])
    torch.manual_seed(11)
    if transform == "jvp":
        out = torch.func.jvp(draws, (mu,), (mu,))[0]
    elif transform == "grad":
        out = torch.func.grad(lambda m: (lambda d: (d.sum(), d))(draws(m)), has_aux=True)(mu)[1]
    elif transform == "vmap":
        out = torch.func.vmap(draws, randomness="same")(mu.unsqueeze(0))[0]
    else:
        with fwAD.dual_level():
            out = fwAD.unpack_dual(draws(fwAD.make_dual(mu, mu))).primal
    torch.testing.assert_close(torch.randn(4), after, rtol=0, atol=0)  # one draw per op, as on the fused path
    torch.testing.assert_close(out, torch.cat([e.reshape(-1) for e in expected]), rtol=1e-14, atol=1e-14)


# ---- what is refused, with an error that names fastvae, the function and the transform ----------------------------

@pytest.mark.parametrize("call, public", [
    (lambda m: fastvae.reparameterize(m, m), "fastvae.reparameterize"),
    (lambda m: fastvae.reparameterize_kl(m, m)[0], "fastvae.reparameterize_kl"),
    (lambda m: fastvae.reparameterize_tril(m, torch.diag_embed(m.exp()))[0], "fastvae.reparameterize_tril"),
    (lambda m: fastvae.mmd(m, kernel="imq"), "fastvae.mmd"),
    (lambda m: fastvae.sliced_wasserstein(m, n_projections=3), "fastvae.sliced_wasserstein"),
])
@pytest.mark.parametrize("transform", ["vmap", "jacfwd", "hessian"])
def test_random_op_under_vmap_asks_for_a_randomness_mode(call, public, transform):
    m = torch.randn(3, 2, dtype=torch.float64)
    f = {"vmap": lambda: torch.func.vmap(call)(m.unsqueeze(0)),
         "jacfwd": lambda: torch.func.jacfwd(call)(m),
         "hessian": lambda: torch.func.hessian(lambda t: call(t).sum())(m)}[transform]
    with pytest.raises(RuntimeError, match=f"{public} draws random numbers.*vmap.*randomness='same'"):
        f()


def test_vmap_randomness_different_draws_per_element():
    mu, lv = torch.zeros(4, 2, 3), torch.zeros(2, 3)
    z = torch.func.vmap(lambda m: fastvae.reparameterize(m, lv), randomness="different")(mu)
    same = torch.func.vmap(lambda m: fastvae.reparameterize(m, lv), randomness="same")(mu)
    assert all(not torch.equal(z[0], z[i]) for i in range(1, 4))
    assert all(torch.equal(same[0], same[i]) for i in range(1, 4))


def test_value_checks_read_the_values_under_vmap():
    x = torch.stack([X_LOGISTIC, X_LOGISTIC]).clone()
    x[1, 0, 1] += 0.8 / 255  # off the grid (0.4 of a level), in the second vmapped element only
    mean = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="grid"):
        torch.func.vmap(lambda xx: fastvae.discretized_logistic_nll(xx, mean, mean))(x)
    L = torch.eye(3, dtype=torch.float64).repeat(2, 2, 1, 1)
    L[1, 0, 0, 2] = 1.0  # above the diagonal, in the second element
    with pytest.raises(ValueError, match="lower triangular"):
        torch.func.vmap(lambda ll: fastvae.reparameterize_tril(torch.zeros(2, 3, dtype=torch.float64), ll),
                        randomness="same")(L)
    L[1, 0, 0, 2] = 0.0
    L[0, 1, 2, 2] = 0.0  # singular, in the first element
    with pytest.raises(ValueError, match="singular"):
        torch.func.vmap(lambda ll: fastvae.reparameterize_tril(torch.zeros(2, 3, dtype=torch.float64), ll),
                        randomness="same")(L)


def _under(transform, f, x):
    if transform == "dual":
        with fwAD.dual_level():
            return f(fwAD.make_dual(x, x))
    return {"jvp": lambda: torch.func.jvp(f, (x,), (x,)), "grad": lambda: torch.func.grad(lambda t: f(t).sum())(x),
            "vmap": lambda: torch.func.vmap(f)(x.unsqueeze(0))}[transform]()


@pytest.mark.parametrize("transform, words", [("jvp", "torch.func.jvp"), ("grad", "torch.func.grad"),
                                              ("vmap", "torch.func.vmap"), ("dual", "forward-mode AD")])
def test_route_helper(transform, words):
    """_transforms.route: the op outside transforms, the composite under one, and an op without a composite
    refused naming the function and the transform; active() says which applies."""
    op = torch.ops.fastvae.kl_normal
    calls = []
    routed = _transforms.route(op, lambda *args: calls.append(args) or fastvae.reference.kl_normal(
        *args, reduction="none"))
    refused = _transforms.route(op, None, "fastvae.some_op")
    mu = torch.randn(2, 3, dtype=torch.float64)
    assert not _transforms.active()
    torch.testing.assert_close(routed(mu, mu, None, None), op(mu, mu, None, None))
    torch.testing.assert_close(refused(mu, mu, None, None), op(mu, mu, None, None))
    assert not calls
    seen = []
    _under(transform, lambda t: (seen.append(_transforms.active()), routed(t, t, None, None))[1], mu)
    assert seen == [True] and len(calls) == 1
    with pytest.raises(RuntimeError, match=f"fastvae.some_op does not support {words}"):
        _under(transform, lambda t: refused(t, t, None, None), mu)


def test_plain_removes_every_wrapper():
    x = torch.randn(2, 3, 4)

    def f(t):
        assert torch.equal(_transforms.plain(t), x) and not _transforms.plain(t).requires_grad
        return t.sum()
    torch.func.vmap(torch.func.grad(f))(x)


@pytest.mark.slow
def test_compiled_transforms():
    """torch.compile over a transform takes the composite too: never the fused op's zero tangent (had the check been
    skipped while compiling, compile(jvp) would trace the fused op and give 0). compile(grad, fullgraph=True) is not
    supported: dynamo cannot trace the level read under grad (a graph break; without fullgraph it is right)."""
    mu, lv, t = (torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(3))
    torch._dynamo.reset()
    jvp = torch.compile(lambda m, tt: torch.func.jvp(lambda a: fastvae.kl_normal(a, lv), (m,), (tt,)),
                        backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(jvp(mu, t)[1], (mu * t).sum() / 3)
    torch._dynamo.reset()
    grad = torch.compile(torch.func.grad(lambda m: fastvae.kl_normal(m, lv)), backend="aot_eager")
    torch.testing.assert_close(grad(mu), mu / 3)


def test_vae_loss_under_grad_and_per_sample_vmap():
    """A whole VAE loss (reparameterize_kl, gaussian_nll, ...) through torch.func.functional_call: grad equals
    autograd's on the fused path, and vmap(grad) gives per-sample gradients, each equal to autograd's on that sample
    alone (randomness="same": the noise of one unbatched call)."""
    torch.manual_seed(0)
    model = fastvae.VAE(6, 2, hidden_dims=(8,)).double()
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb):
        return torch.func.functional_call(model, p, (xb,), dict(generator=_gen())).loss
    expected = torch.autograd.grad(model(x, generator=_gen()).loss, list(model.parameters()))
    got = torch.func.grad(loss)(params, x)
    for k, e in zip(params, expected):
        torch.testing.assert_close(got[k], e, rtol=1e-12, atol=1e-12)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, xi: loss(p, xi.unsqueeze(0))), in_dims=(None, 0),
                                 randomness="same")(params, x)
    for k, v in per_sample.items():
        assert v.shape == (4, *params[k].shape)
        for i in range(4):
            one = torch.autograd.grad(model(x[i:i + 1], generator=_gen()).loss, model.get_parameter(k))[0]
            torch.testing.assert_close(v[i], one, rtol=1e-12, atol=1e-12)
