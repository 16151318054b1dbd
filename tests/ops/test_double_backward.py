"""Double backward (gradient penalties, Hessian-vector products, meta-learning) is correct or refused, never
silent: gradgradcheck of every differentiable op over its operand layouts (float64, a fixed generator so that eps
is the same at every evaluation), second derivatives against fastvae.reference at the kernels' eps, the
first-order gradients of the differentiable path (create_graph=True) against the fused backward ops, and the
errors of what is not supported (MMD, the fused backward ops called directly)."""
import pytest
import torch
from torch.autograd import gradgradcheck

import fastvae
from fastvae import reference as ref

from helpers import assert_grad_close, f64, gen, kernel_eps, key_of

ops = torch.ops.fastvae


def _tril(*shape, seed=0):
    """A Cholesky factor (..., d, d) with diagonal entries of both signs, |L_ii| >= 0.5."""
    A = f64(*shape, seed=seed)
    diag = A.diagonal(dim1=-2, dim2=-1)
    return torch.tril(A, -1) * 0.5 + torch.diag_embed(torch.sign(diag) * (0.5 + diag.abs()))


def _directions(d, n, seed):
    return ops.random_directions(torch.tensor([key_of(seed)]), d, n).double()


# ---- the cases: (fastvae call, reference call at the kernels' eps, inputs) over the operand layouts -----------
# Each call takes the inputs positionally and returns a tensor or a tuple of tensors; inputs are float64 leaves.

def _gaussian(lv_shape, k):
    mean_shape = (3, 4) if k is None else (k, 3, 4)
    lv = () if lv_shape is None else (f64(*lv_shape, seed=3),)
    return (lambda x, m, *lv: fastvae.gaussian_nll(x, m, *lv, reduction="none"),
            lambda x, m, *lv: ref.gaussian_nll(x, m, *lv, reduction="none"),
            (f64(3, 4, seed=1), f64(*mean_shape, seed=2), *lv))


def _bernoulli(k):
    logits_shape = (3, 4) if k is None else (k, 3, 4)
    return (lambda l, x: fastvae.bernoulli_nll(x, l, reduction="none"),
            lambda l, x: ref.bernoulli_nll(x, l, reduction="none"),
            (2 * f64(*logits_shape, seed=1), torch.rand(3, 4, dtype=torch.float64, generator=gen(2))))


def _kl(prior_shapes):
    priors = tuple(None if s is None else f64(*s, seed=3 + i) for i, s in enumerate(prior_shapes))
    given = [p is not None for p in priors]

    def call(fn):
        def f(mu, lv, *ps):
            it = iter(ps)
            return fn(mu, lv, *(next(it) if g else None for g in given), reduction="none")
        return f
    return call(fastvae.kl_normal), call(ref.kl_normal), (f64(3, 4, seed=1), f64(3, 4, seed=2),
                                                          *(p for p in priors if p is not None))


def _reparameterize(shape, k):
    out_shape = shape if k is None else (k, *shape)
    return (lambda m, l: fastvae.reparameterize(m, l, n_samples=k, generator=gen(7)),
            lambda m, l: ref.reparameterize(m, l, n_samples=k, eps=kernel_eps(7, out_shape)),
            (f64(*shape, seed=1), f64(*shape, seed=2)))


def _reparameterize_kl():
    return (lambda m, l: fastvae.reparameterize_kl(m, l, generator=gen(8)),
            lambda m, l: ref.reparameterize_kl(m, l, eps=kernel_eps(8, (3, 2, 2))),
            (f64(3, 2, 2, seed=1), f64(3, 2, 2, seed=2)))


def _reparameterize_tril(batch, k):
    d = 3
    out_shape = (*(() if k is None else (k,)), *batch, d)
    # validate_args=False: gradgradcheck perturbs the zeros above the diagonal (the kernel ignores them)
    return (lambda m, L: fastvae.reparameterize_tril(m, L, n_samples=k, generator=gen(9), validate_args=False),
            lambda m, L: ref.reparameterize_tril(m, torch.tril(L), n_samples=k, eps=kernel_eps(9, out_shape)),
            (f64(*batch, d, seed=1), _tril(*batch, d, d, seed=2)))


def _sliced(p, with_y, projections):
    """projections: "given" (an input too) or "random" (drawn from the generator; the reference gets them)."""
    x = (f64(7, 3, seed=1),) + ((f64(7, 3, seed=2) - 0.3,) if with_y else ())
    if projections == "given":
        def f(*a):
            return fastvae.sliced_wasserstein(*a[:-1], p=p, projections=a[-1])

        def r(*a):
            return ref.sliced_wasserstein(*a[:-1], p=p, projections=a[-1])
        return f, r, (*x, _directions(3, 5, 10))
    theta = _directions(3, 5, 11)
    return (lambda *a: fastvae.sliced_wasserstein(*a, p=p, n_projections=5, generator=gen(11)),
            lambda *a: ref.sliced_wasserstein(*a, p=p, projections=theta), x)


CASES = {
    **{f"gaussian_nll logvar {lv} k={k}": _gaussian(lv, k) for lv in (None, (4,), ()) for k in (None, 2)},
    "gaussian_nll logvar full": _gaussian((3, 4), None),
    "gaussian_nll logvar full k=2": _gaussian((2, 3, 4), 2),
    "bernoulli_nll": _bernoulli(None),
    "bernoulli_nll k=2": _bernoulli(2),
    "kl_normal no prior": _kl((None, None)),
    "kl_normal mu_prior": _kl(((3, 4), None)),
    "kl_normal logvar_prior per-feature": _kl((None, (4,))),
    "kl_normal priors full": _kl(((3, 4), (3, 4))),
    "kl_normal priors per-feature": _kl(((4,), (4,))),
    "reparameterize": _reparameterize((3, 4), None),
    "reparameterize 0-dim": _reparameterize((), None),
    "reparameterize n_samples": _reparameterize((3, 4), 3),
    "reparameterize_kl": _reparameterize_kl(),
    "reparameterize_tril": _reparameterize_tril((2,), None),
    "reparameterize_tril batch n_samples": _reparameterize_tril((2, 2), 2),
    **{f"sliced_wasserstein p={p} {'y' if y else 'prior'} {proj}": _sliced(p, y, proj)
       for p in (1, 2, 3.5) for y in (True, False) for proj in ("given", "random")},
}


def _leaves(inputs):
    return tuple(t.detach().clone().requires_grad_() for t in inputs)


def _outputs(fn, inputs):
    out = fn(*inputs)
    return out if isinstance(out, tuple) else (out,)


def _weights(outputs):
    """Fixed grad outputs, not all ones (the backward is linear in them: a one would hide a missing factor)."""
    return [torch.randn(o.shape, dtype=o.dtype, generator=gen(20 + i)) + 0.5 for i, o in enumerate(outputs)]


def _first_and_second(fn, inputs, create_graph=True):
    """The gradients of sum_j <w_j, out_j> and the gradients of sum_i <v_i, grad_i> (a Hessian-vector product)."""
    xs = _leaves(inputs)
    outs = _outputs(fn, xs)
    loss = sum((o * w).sum() for o, w in zip(outs, _weights(outs)))
    grads = torch.autograd.grad(loss, xs, create_graph=create_graph, materialize_grads=True)
    if not create_graph:
        return grads, None
    vs = [torch.randn(x.shape, dtype=x.dtype, generator=gen(40 + i)) for i, x in enumerate(xs)]
    s = sum((g * v).sum() for g, v in zip(grads, vs) if g.requires_grad)
    second = torch.autograd.grad(s, xs, allow_unused=True, materialize_grads=True)
    return grads, second


@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck(case):
    fn, _, inputs = CASES[case]
    assert gradgradcheck(fn, _leaves(inputs))


@pytest.mark.parametrize("case", list(CASES))
def test_second_derivatives_match_the_reference(case):
    fn, ref_fn, inputs = CASES[case]
    grads, second = _first_and_second(fn, inputs)
    ref_grads, ref_second = _first_and_second(ref_fn, inputs)
    # float64, both exact formulas of the same function: a few ulp of the largest entry (eps is float32 values,
    # exact in float64; the reference differentiates its own expression, the fused path a closed form)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * (1 + b.abs().max().item()))
    for a, b in zip(second, ref_second):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * (1 + b.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_first_order_gradients_do_not_depend_on_create_graph(case, dtype):
    """The differentiable path gives the fused backward's first-order gradients, up to rounding."""
    fn, _, inputs = CASES[case]
    inputs = tuple(t.to(dtype) for t in inputs)
    fused, _ = _first_and_second(fn, inputs, create_graph=False)
    differentiable, _ = _first_and_second(fn, inputs)
    for a, b in zip(differentiable, fused):
        # an entry sums at most 2 samples x 3 rows x 5 directions of a few rounded products each
        assert_grad_close(a, b, dtype, n_summed=30)


# ---- the examples --------------------------------------------------------------------------------------

def test_gradient_penalty_through_gaussian_nll_reaches_the_mean():
    x, m = f64(3, 4, seed=1), f64(3, 4, seed=2).requires_grad_()
    g, = torch.autograd.grad(fastvae.gaussian_nll(x, m), m, create_graph=True)
    (g ** 2).sum().backward()
    # mean over B = 3 rows: g = (m - x) / 3, so d/dm sum g^2 = 2 (m - x) / 9
    torch.testing.assert_close(m.grad, 2 * (m.detach() - x) / 9, rtol=1e-14, atol=0)


def test_bernoulli_nll_second_derivative_in_x():
    logits, x = f64(3, 4, seed=1).requires_grad_(), torch.rand(3, 4, dtype=torch.float64).requires_grad_()
    g, = torch.autograd.grad(fastvae.bernoulli_nll(x, logits, reduction="sum"), logits, create_graph=True)
    gx, = torch.autograd.grad(g.sum(), x)  # d/dx sum(sigmoid(l) - x) = -1
    torch.testing.assert_close(gx, -torch.ones_like(x), rtol=0, atol=0)


def test_third_derivative_of_reparameterize():
    """The differentiable backward calls the fused forward op, whose backward is differentiable again."""
    mu, lv = f64(5, seed=1), f64(5, seed=2).requires_grad_()
    z = fastvae.reparameterize(mu, lv, generator=gen(3))
    d1, = torch.autograd.grad(z.sum(), lv, create_graph=True)
    d2, = torch.autograd.grad(d1.sum(), lv, create_graph=True)
    d3, = torch.autograd.grad(d2.sum(), lv)
    sd_eps = torch.exp(0.5 * lv.detach()) * kernel_eps(3, (5,))  # every derivative of sd eps in lv: a factor 1/2
    torch.testing.assert_close(d3, sd_eps / 8, rtol=1e-14, atol=0)


# ---- refusals: an error naming the op when the gradient is differentiated, never at first order ------------------

MMD_CALLS = {
    "mmd y": lambda x, y: fastvae.mmd(x, y),
    "mmd prior imq": lambda x, y: fastvae.mmd(x, generator=gen(1)),
    "mmd prior rbf": lambda x, y: fastvae.mmd(x, kernel="rbf"),
    "energy_distance": lambda x, y: fastvae.energy_distance(x, y),
    "MMDLoss": lambda x, y: fastvae.MMDLoss(kernel="laplacian", bandwidth=[1.0, 2.0])(x, y),
}


@pytest.mark.parametrize("call", list(MMD_CALLS))
def test_mmd_double_backward_is_refused_naming_the_op(call):
    x, y = f64(6, 3, seed=1).requires_grad_(), f64(5, 3, seed=2).requires_grad_()
    gx, = torch.autograd.grad(MMD_CALLS[call](x, y), x, create_graph=True)  # first order still works
    torch.testing.assert_close(gx, torch.autograd.grad(MMD_CALLS[call](x, y), x)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"double backward through fastvae\.mmd \(energy_distance, MMDLoss\) "
                                           r"is not supported"):
        (gx ** 2).sum().backward()


def _seed():
    return torch.tensor([key_of(1)])


# every fused backward op, called directly with inputs that require grad: (name, public function, args)
BACKWARD_OPS = [
    ("reparameterize_backward", "reparameterize", lambda: (f64(3, 4), f64(3, 4, seed=1), _seed(), None)),
    ("reparameterize_kl_backward", "reparameterize_kl",
     lambda: (f64(3, 4), f64(3), f64(3, 4, seed=1), f64(3, 4, seed=2), _seed())),
    ("reparameterize_tril_backward", "reparameterize_tril", lambda: (f64(3, 2), f64(3), _tril(3, 2, 2), _seed(), None)),
    ("gaussian_nll_backward", "gaussian_nll", lambda: (f64(3), f64(3, 4), f64(3, 4, seed=1), f64(4), True, True)),
    ("bernoulli_nll_backward", "bernoulli_nll", lambda: (f64(3), f64(3, 4), f64(3, 4, seed=1).sigmoid())),
    ("kl_normal_backward", "kl_normal",
     lambda: (f64(3), f64(3, 4), f64(3, 4, seed=1), None, f64(4), [True, True, False, True])),
    ("mmd_backward", "mmd", lambda: (f64(1), f64(1, 5, 3), f64(1, 4, 3, seed=1), None, "imq", [1.0], True, True)),
    ("sliced_wasserstein_projected_backward", "sliced_wasserstein",
     lambda: (f64(1), f64(1, 2, 4), None, torch.arange(4, dtype=torch.int32).expand(1, 2, 4),
              torch.empty(0, dtype=torch.int32), 2.0, False)),
]


@pytest.mark.parametrize("case", BACKWARD_OPS, ids=lambda c: c[0])
def test_differentiating_a_fused_backward_op_raises(case):
    name, public, make = case
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in make()]
    out = getattr(ops, name)(*args)  # the call itself works
    outs = out if isinstance(out, tuple) else (out,)
    with pytest.raises(RuntimeError, match=rf"torch\.ops\.fastvae\.{name} .*has no derivative") as info:
        sum(o.sum() for o in outs if o.requires_grad).backward()
    assert f"fastvae.{public}" in str(info.value)
