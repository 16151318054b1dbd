"""The fixed cost of a discretized-logistic call (issue 25): the op's reduction argument, its check of x on the grid
(validate_x: the kernel's check, refusing with the public functions' message), means and log_scales of x's shape
without a trailing component dim, and the public functions' fast path (the op called as it is) against their
checked path."""
import math

import pytest
import torch

import fastvae
from fastvae.bench import overhead
from fastvae.ops import logistic as L
from helpers import OPCHECK_UTILS, f64, gen

op = torch.ops.fastvae.discretized_logistic_nll
op_bwd = torch.ops.fastvae.discretized_logistic_nll_backward
NLL = fastvae.discretized_logistic_nll
MIX = fastvae.discretized_logistic_mixture_nll
NONE, SUM, MEAN = 0, 1, 2


def data(shape, n_bits=8, seed=0, dtype=torch.float64):
    k = torch.randint(0, 2**n_bits, shape, generator=gen(seed))
    return (2 * k.to(torch.float64) / (2**n_bits - 1) - 1).to(dtype)


def _calls():
    """(name, op call taking a reduction, the tensors needing grad): one logistic with and without the trailing
    component dim, a mixture, a sampled mixture (k = 2: a mean over k B values)."""
    x = data((3, 2, 4))
    m, ls = f64(3, 2, 4, seed=1).requires_grad_(), (0.5 * f64(3, 2, 4, seed=2) - 1).requires_grad_()
    lg, mm, lls = (f64(2, 3, 2, 4, 5, seed=s) for s in (3, 4, 5))
    lls = 0.5 * lls - 1
    lg, mm, lls = (t.requires_grad_() for t in (lg, mm, lls))
    return [
        ("single", lambda r: op(x, None, m, ls, 8, r), [m, ls]),
        ("single (..., 1)", lambda r: op(x, None, m.unsqueeze(-1), ls.unsqueeze(-1), 8, r), [m, ls]),
        ("mixture", lambda r: op(x, lg[0], mm[0], lls[0], 8, r, True), [lg, mm, lls]),
        ("sampled mixture", lambda r: op(x, lg, mm, lls, 5, r), [lg, mm, lls]),
    ]


@pytest.mark.parametrize("case", _calls(), ids=lambda c: c[0])
@pytest.mark.parametrize("reduction", [SUM, MEAN])
def test_the_op_reduces_as_the_per_sample_values_sum_and_average(case, reduction):
    _, call, inputs = case
    per_sample = call(NONE)
    want = per_sample.sum() if reduction == SUM else per_sample.mean()
    got = call(reduction)
    assert got.shape == () and got.dtype == per_sample.dtype
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    g_want = torch.autograd.grad(want, inputs, allow_unused=True)
    g_got = torch.autograd.grad(call(reduction), inputs, allow_unused=True)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert torch.autograd.gradcheck(lambda *a: call(reduction), inputs)


def test_means_of_x_shape_are_one_logistic_per_pixel():
    x = data((2, 3, 5))
    m, ls = f64(2, 3, 5, seed=1), 0.5 * f64(2, 3, 5, seed=2) - 1
    torch.testing.assert_close(op(x, None, m, ls, 8), op(x, None, m[..., None], ls[..., None], 8), rtol=0, atol=0)
    g = f64(2, seed=3)
    for a, b in zip(op_bwd(g, x, None, m, ls, 8), op_bwd(g, x, None, m[..., None], ls[..., None], 8)):
        assert a.shape[:3] == b.shape[:3]
        torch.testing.assert_close(a, b.reshape(a.shape), rtol=0, atol=0)
    # with logit_probs the trailing component dim is required; a mean of another shape is refused
    with pytest.raises(ValueError, match="means must have shape"):
        op(x, m, m, ls, 8)
    with pytest.raises(ValueError, match="means must have shape"):
        op(x, None, m[:, :2], ls[:, :2], 8)
    with pytest.raises(ValueError, match="log_scales must have shape"):
        op(x, None, m, ls[..., None], 8)


OPCHECKS = [
    ("forward, reduced, checked", op, lambda: (data((2, 3)), None, f64(2, 3, seed=1).requires_grad_(),
                                               f64(2, 3, seed=2).requires_grad_(), 8, MEAN, True)),
    ("forward, sampled mixture, sum", op, lambda: (data((2, 3)), f64(2, 2, 3, 4, seed=3).requires_grad_(),
                                                   f64(2, 2, 3, 4, seed=4).requires_grad_(),
                                                   f64(2, 2, 3, 4, seed=5).requires_grad_(), 8, SUM, False)),
    ("backward, reduced", op_bwd, lambda: (f64(), data((2, 3)), f64(2, 3, 4, seed=1), f64(2, 3, 4, seed=2),
                                           f64(2, 3, 4, seed=3), 8, MEAN)),
    ("backward, x's shape", op_bwd, lambda: (f64(2), data((2, 3)), None, f64(2, 3, seed=2), f64(2, 3, seed=3), 8)),
]


@pytest.mark.parametrize("case", OPCHECKS, ids=lambda c: c[0])
def test_opcheck(case):
    _, o, make = case
    utils = OPCHECK_UTILS if o is op else ("test_schema", "test_faketensor")
    torch.library.opcheck(o.default, make(), test_utils=utils)


def test_the_ops_refuse_an_unknown_reduction_and_a_reduced_backward_a_per_sample_gradient():
    x, m = data((2, 3)), f64(2, 3)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="fastvae.discretized_logistic_nll: reduction must be 0"):
            op(x, None, m, m, 8, bad)
        with pytest.raises(ValueError, match="fastvae.discretized_logistic_nll_backward: reduction must be 0"):
            op_bwd(f64(), x, None, m, m, 8, bad)
    with pytest.raises(ValueError, match=r"fastvae.discretized_logistic_nll_backward: grad must have shape \[\]"):
        op_bwd(f64(2), x, None, m, m, 8, SUM)


# ---- validate_x: the kernel's check of x ------------------------------------------------------------------------

def _python_message(x, n_bits):
    """The public check's refusal of x (None: accepted)."""
    try:
        L._check_grid(x, n_bits, "discretized_logistic_nll")
    except ValueError as e:
        return str(e)
    return None


OFF_GRID = [1.5, -1.0000001, 1.0 + 2**-52, math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-5, 1e-4, 0.001, 3.0,
            -2.5e-7, 1e16, 123456789.25, -1e300, 5e-324, 0.3 / 255 + 2 / 255 - 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", OFF_GRID)
def test_validate_x_refuses_with_the_public_message(dtype, value):
    """The op's message is the public functions' one, the value written as Python's repr (the C++ formatting of it
    against repr on values of every form: nan, inf, -0.0, positional, exponent, integers, subnormals)."""
    x = data((2, 3), dtype=dtype)
    x[0, 1] = torch.tensor(value, dtype=torch.float64).to(dtype)  # (in float32 1 + 2^-52 is 1: on the grid)
    m = torch.zeros(2, 3, dtype=dtype)
    want = _python_message(x, 8)
    if want is None:
        op(x, None, m, m, 8, 0, True)
    else:
        with pytest.raises(ValueError) as e:
            op(x, None, m, m, 8, 0, True)
        assert str(e.value).splitlines()[0] == want
    op(x, None, m, m, 8, 0, False)  # unchecked: snapped
    op(x, None, m, m, 8)  # validate_x defaults to False


@pytest.mark.parametrize("n_bits", [1, 5, 8, 16])
def test_validate_x_reports_the_first_value_refused_and_passes_the_grid(n_bits):
    levels = 2**n_bits - 1
    x = data((3, 4, 5), n_bits=n_bits, seed=n_bits)
    m = torch.zeros(2, 3, 4, 5, 1, dtype=torch.float64)  # sampled: k = 2
    op(x, None, m, m, n_bits, 0, True)  # every level passes
    off = 0.3 * 2 / levels  # 0.3 of a bin
    x.view(-1)[37] += off if x.view(-1)[37] < 0 else -off
    x.view(-1)[51] = 7.0
    with pytest.raises(ValueError) as e:
        op(x, None, m, m, n_bits, 0, True)
    assert str(e.value).splitlines()[0] == _python_message(x, n_bits)
    assert f"got {float(x.view(-1)[37])!r}" in str(e.value)
    with pytest.raises(ValueError, match="got 7.0"):
        op(x[2:], None, m[:, 2:], m[:, 2:], n_bits, 0, True)


def test_validate_x_judges_a_quarter_bin_as_the_public_check():
    """Values around a quarter bin from a level (clearly on, clearly off: 1e-3 of a bin apart from it) at every
    level of the 5-bit grid, float32 and float64: the op refuses exactly those the Python check refuses."""
    levels = 31
    k = torch.arange(levels + 1, dtype=torch.float64)
    for frac in (0.2, 0.249, 0.251, 0.3, 0.5):
        for sign in (1, -1):
            for dtype in (torch.float32, torch.float64):
                x = ((2 * (k + sign * frac) / levels - 1).to(dtype)).reshape(-1, 1)
                m = torch.zeros_like(x)
                for i in range(x.shape[0]):
                    xi = x[i:i + 1]
                    bad = abs(float(xi)) > 1 or frac > 0.25
                    try:
                        op(xi, None, m[i:i + 1], m[i:i + 1], 5, 0, True)
                        refused = False
                    except ValueError:
                        refused = True
                    assert refused == bad, (frac, sign, dtype, float(xi))


# ---- the public functions: fast path and checked path -------------------------------------------------------------

class _Sub(torch.Tensor):
    """A tensor subclass: the public functions take their checked path for it."""


def _public_calls():
    x, x5 = data((3, 2, 4)), data((3, 2, 4), n_bits=5)
    m, ls = f64(3, 2, 4, seed=1), 0.5 * f64(3, 2, 4, seed=2) - 1
    ms, lss = f64(2, 3, 2, 4, seed=3), 0.5 * f64(2, 3, 2, 4, seed=4) - 1
    lg, mm, lls = f64(3, 2, 4, 5, seed=5), f64(3, 2, 4, 5, seed=6), 0.5 * f64(3, 2, 4, 5, seed=7) - 1
    return [
        ("nll", lambda f: NLL(f(x), f(m), f(ls))),
        ("nll none", lambda f: NLL(f(x), f(m), f(ls), reduction="none")),
        ("nll sampled sum", lambda f: NLL(f(x), f(ms), f(lss), reduction="sum")),
        ("nll sampled none, 5 bits", lambda f: NLL(f(x5), f(ms), f(lss), reduction="none", n_bits=5)),
        ("nll 0-dim log_scale", lambda f: NLL(f(x), f(m), f(ls[0, 0, 0]), reduction="sum")),
        ("nll per-feature log_scale", lambda f: NLL(f(x), f(m), f(ls[0]))),
        ("nll sampled, (1, 4) log_scale", lambda f: NLL(f(x), f(ms), f(ls[0, :1]), reduction="none")),
        ("nll sampled, per-sample log_scale", lambda f: NLL(f(x), f(ms), f(lss[:, :, :1, :1]))),
        ("mixture", lambda f: MIX(f(x), f(lg), f(mm), f(lls))),
        ("mixture none", lambda f: MIX(f(x), f(lg), f(mm), f(lls), reduction="none")),
        ("mixture sampled", lambda f: MIX(f(x), *(f(t.expand(2, *t.shape)) for t in (lg, mm, lls)),
                                          reduction="sum")),
    ]


@pytest.mark.parametrize("case", _public_calls(), ids=lambda c: c[0])
def test_the_fast_path_equals_the_checked_path(case):
    _, call = case

    def run(wrap):
        leaves = []

        def f(t):
            t = t.detach().clone().requires_grad_(t.dtype.is_floating_point)
            leaves.append(t)
            return wrap(t)
        out = call(f)
        out.sum().backward()
        return out.as_subclass(torch.Tensor).detach(), [t.grad for t in leaves]

    fast, g_fast = run(lambda t: t)
    checked, g_checked = run(lambda t: t.as_subclass(_Sub))
    torch.testing.assert_close(fast, checked, rtol=0, atol=0)
    for a, b in zip(g_fast, g_checked):
        torch.testing.assert_close(a, b.as_subclass(torch.Tensor), rtol=0, atol=0)


def test_the_fast_path_takes_the_op_once_and_saves_what_its_backward_reads():
    """The fast paths on the CPU with gradients wanted (_with_grad, the forward with gradients) save the inputs and
    the gradients they computed, nothing else: two per pixel for the single logistic, three per pixel and component
    for the mixture."""
    x, m, ls = data((2, 3)), f64(2, 3, seed=1).requires_grad_(), f64(2, 3, seed=2).requires_grad_()
    lg = f64(2, 3, 4, seed=3).requires_grad_()
    mm, lsm = f64(2, 3, 4, seed=4).requires_grad_(), f64(2, 3, 4, seed=5).requires_grad_()
    for call, inputs, grad_fn, extra in (
            (lambda: NLL(x, m, ls), (x, m, ls), "CppNode<fastvae::(anonymous namespace)::LogisticWithGrad>", 2),
            (lambda: MIX(x, lg, mm, lsm), (x, lg, mm, lsm), "CppNode<fastvae::(anonymous namespace)::LogisticWithGrad>",
             3)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = call()
        ptrs = {t.data_ptr() for t in inputs}
        others = [t for t in saved if t.numel() and t.data_ptr() not in ptrs]
        assert len(others) == extra and all(t.shape == inputs[1].shape for t in others)
        assert grad_fn in loss.grad_fn.name()
        loss.backward()
        assert all(t.grad.shape == t.shape for t in inputs[1:])


def test_a_refused_fast_call_gives_the_public_message():
    x, m = data((2, 3)), torch.zeros(2, 3, dtype=torch.float64)
    xb = x.clone()
    xb[1, 2] = 0.0  # between two levels of the 8-bit grid
    for f, args in ((NLL, (m, m)), (MIX, (m[..., None], m[..., None], m[..., None]))):
        name = f.__name__
        want = (rf"^fastvae.{name}: x must lie in \[-1, 1\] on the grid of 2\*\*n_bits = 256 levels 2k / 255 - 1 "
                r"\(8-bit pixels v as 2 v / 255 - 1\); got 0.0$")
        with pytest.raises(ValueError, match=want):
            f(xb, *args)
        f(xb, *args, validate_args=False)
    with pytest.raises(ValueError, match=r"^mean must have shape \(\*x.shape\) or \(k, \*x.shape\)"):
        NLL(x, m[:, :2], m[:, :2])
    with pytest.raises(ValueError, match=r"^mean must have shape"):
        NLL(x, m[:, 0], m[:, 0])  # one dim fewer: not taken for x's shape with the component dim
    with pytest.raises(TypeError, match="n_bits must be a positive int"):
        NLL(x, m, m, n_bits=True)
    with pytest.raises(TypeError, match="validate_args must be"):
        NLL(x, m, m, validate_args=1)


@pytest.mark.parametrize("x_dtype,dtype", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                           (torch.bfloat16, torch.float64)])
def test_an_x_of_another_dtype_than_the_parameters_is_checked(x_dtype, dtype):
    """(the checked path: the op judges x in the compute dtype where that is the precision of x's own check, the
    Python check elsewhere: a float32 x of a float64 loss is judged in float32, as before)"""
    x = data((1, 3), n_bits=5, dtype=x_dtype)
    m = torch.zeros(1, 3, dtype=dtype)
    NLL(x, m, m, n_bits=5)
    x[0, 2] = 7.5 * 2 / 31 - 1  # half a bin off
    with pytest.raises(ValueError, match=r"^fastvae.discretized_logistic_nll: x must lie in \[-1, 1\] on the grid"):
        NLL(x, m, m, n_bits=5)


@pytest.mark.parametrize("mode", overhead.MODES)
def test_the_bench_rows_call_the_op_as_the_public_function(mode):
    cases = overhead._cases("cpu", torch.float32, grad=mode != "no_grad")
    for name in ("discretized_logistic_nll", "discretized_logistic_mixture_nll"):
        pub, o = cases[name]["fastvae"](), cases[name]["op"]()
        torch.testing.assert_close(pub, o, rtol=0, atol=0)
