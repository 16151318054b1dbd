"""The forward with gradients of the drop-in ops (CPU; fastvae/ops/dropin.py, the C++ autograd node of
csrc/torch/dropin/autograd.cpp): when a gradient will be wanted, normal_nll, normal_kl and bce_with_logits compute
their gradients in the forward's pass and the backward scales them. Checked against the plain path (the forward op,
then the fused backward op), which the rest of the suite checks against float64 torch:
- the forward's values are bitwise those of the plain forward (grad mode does not change a loss), on every CPU build;
- the gradients agree to a few roundings (they differ only in where the incoming gradient is multiplied in);
- a stored inf or NaN gradient, a double backward and a retained graph take the recomputing backward: a zero
  incoming gradient at an infinite derivative still gives 0, as the plain path does;
- saved-tensor hooks see the stored gradients (offloading and the benchmark's memory count include them);
- the ops themselves: opcheck, and a clear error when differentiated."""
import pytest
import torch

from fastvae.ops import dropin as dr

from helpers import OPCHECK_UTILS, gen

# The two paths differ only in where the incoming gradient g and the factor are multiplied in: g * (factor * d)
# against (g * factor) * d, with d's own rounding the same: at most a few roundings apart, relative to each element.
RTOL = {torch.float32: 8 * 2.0**-24, torch.float64: 8 * 2.0**-53}


def _with_grad_taken(fn, depth=4):
    """Whether the autograd graph ending at fn (through reshapes and casts) holds the forward with gradients."""
    if fn is None or depth < 0:
        return False
    return "WithGrad" in fn.name() or any(_with_grad_taken(f, depth - 1) for f, _ in fn.next_functions)


def _plain(monkeypatch):
    monkeypatch.setattr(dr, "_WITH_GRAD", {})


def _r(*shape, dtype, seed, scale=1.0, pos=False):
    t = torch.randn(shape, generator=gen(seed), dtype=torch.float64) * scale
    return (t.exp() if pos else t).to(dtype)


def _cases(dtype):
    """name -> (the wrapper call on the operands, the operands (which need grad), their shapes)."""
    B, D = 6, 10
    y = torch.rand(B, D, generator=gen(3), dtype=torch.float64).to(dtype)
    return {
        "nll scale": (lambda x, m, s, **k: dr.normal_nll(x, m, s, "scale", const=0.9, **k),
                      [_r(B, D, dtype=dtype, seed=1), _r(B, D, dtype=dtype, seed=2),
                       _r(B, D, dtype=dtype, seed=4, scale=0.5, pos=True)], [False, True, True]),
        "nll var per-feature": (lambda x, m, v, **k: dr.normal_nll(x, m, v, "var", floor=1e-6, **k),
                                [_r(B, D, dtype=dtype, seed=1), _r(B, D, dtype=dtype, seed=2),
                                 _r(D, dtype=dtype, seed=4, scale=0.5, pos=True)], [False, True, True]),
        "nll logvar": (lambda x, m, lv, **k: dr.normal_nll(x, m, lv, "logvar", **k),
                       [_r(B, D, dtype=dtype, seed=1), _r(B, D, dtype=dtype, seed=2), _r(B, D, dtype=dtype, seed=4)],
                       [True, True, True]),
        "kl to a per-feature prior": (lambda a, b, c, d, **k: dr.normal_kl(a, b, c, d, **k),
                                      [_r(B, D, dtype=dtype, seed=1), _r(B, D, dtype=dtype, seed=2, pos=True),
                                       _r(D, dtype=dtype, seed=5), _r(D, dtype=dtype, seed=6, pos=True)],
                                      [True, True, False, False]),
        "kl both sides": (lambda a, b, c, d, **k: dr.normal_kl(a, b, c, d, **k),
                          [_r(B, D, dtype=dtype, seed=1), _r(B, D, dtype=dtype, seed=2, pos=True),
                           _r(B, D, dtype=dtype, seed=5), _r(B, D, dtype=dtype, seed=6, pos=True)], [True] * 4),
        "bce": (lambda l, t, **k: dr.bce_with_logits(l, t, **k), [_r(B, D, dtype=dtype, seed=1, scale=4.0), y],
                [True, False]),
        "bce weights": (lambda l, t, **k: dr.bce_with_logits(l, t, _r(D, dtype=dtype, seed=7, pos=True),
                                                             _r(D, dtype=dtype, seed=8, pos=True), **k),
                        [_r(B, D, dtype=dtype, seed=1, scale=4.0), y], [True, False]),
        "bce target grad": (lambda l, t, **k: dr.bce_with_logits(l, t, **k),
                            [_r(B, D, dtype=dtype, seed=1, scale=4.0), y], [True, True]),
    }


def _run(case, dtype, event_dims, factor=0.7):
    f, operands, needs = case
    ops = [t.clone().requires_grad_(n) for t, n in zip(operands, needs)]
    out = f(*ops, factor=factor, event_dims=event_dims)
    g = _r(*out.shape, dtype=out.dtype, seed=9)
    grads = torch.autograd.grad(out, [t for t in ops if t.requires_grad], g)
    return out.detach(), grads, out.grad_fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("event_dims", [0, 1, None])
@pytest.mark.parametrize("name", list(_cases(torch.float32)))
def test_values_bitwise_and_gradients_close_to_the_plain_path(name, event_dims, dtype, monkeypatch, each_isa):
    case = _cases(dtype)[name]
    out, grads, fn = _run(case, dtype, event_dims)
    assert _with_grad_taken(fn)  # (the path under test was taken)
    with torch.no_grad():
        plain_out = case[0](*case[1], factor=0.7, event_dims=event_dims)
    assert torch.equal(out, plain_out), "the forward's values depend on grad mode"
    _plain(monkeypatch)
    out2, grads2, fn2 = _run(case, dtype, event_dims)
    assert not _with_grad_taken(fn2)
    assert torch.equal(out, out2)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * float(b.abs().max()))


def test_sixteen_bit_inputs_take_float32_and_match_the_plain_path(monkeypatch):
    l = _r(4, 8, dtype=torch.bfloat16, seed=1, scale=3.0).requires_grad_()
    y = torch.rand(4, 8, generator=gen(2)).to(torch.bfloat16)
    out = dr.bce_with_logits(l, y, event_dims=1)
    (g1,) = torch.autograd.grad(out.sum(), l)
    _plain(monkeypatch)
    (g2,) = torch.autograd.grad(dr.bce_with_logits(l, y, event_dims=1).sum(), l)
    assert g1.dtype == torch.bfloat16 and torch.equal(g1, g2)  # float32 a few roundings apart, then one to 16 bits


def test_a_zero_incoming_gradient_at_an_infinite_derivative_gives_what_the_plain_path_gives(monkeypatch):
    # x - m = 1e30 over s = 1e-10 overflows ((x - m) / s = inf): d/ds is -inf for a unit incoming gradient, 0 for a
    # zero one (the gradient helpers fold g in first; dropin_math.h)
    x = torch.tensor([1e30, 0.5, 2.0])
    m = torch.zeros(3, requires_grad=True)
    s = torch.tensor([1e-10, 1.0, 3.0], requires_grad=True)
    g = torch.tensor([0.0, 1.0, 2.0])
    out = dr.normal_nll(x, m, s, "scale")
    got = torch.autograd.grad(out, (m, s), g)
    _plain(monkeypatch)
    want = torch.autograd.grad(dr.normal_nll(x, m, s, "scale"), (m, s), g)
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    assert got[1][0] == 0 and got[1][1:].isfinite().all()


def test_a_retained_graph_gives_the_same_gradients_twice():
    # the first backward scales the stored gradients in place (they become its result); the second recomputes
    l = _r(5, 7, dtype=torch.float32, seed=1, scale=3.0).requires_grad_()
    y = torch.rand(5, 7, generator=gen(2))
    out = dr.bce_with_logits(l, y, event_dims=1, factor=1 / 35)
    g = _r(5, dtype=torch.float32, seed=3)
    (a,) = torch.autograd.grad(out, l, g, retain_graph=True)
    (b,) = torch.autograd.grad(out, l, g, retain_graph=True)
    torch.testing.assert_close(a, b, rtol=RTOL[torch.float32], atol=0)
    out.backward(g, retain_graph=True)  # into .grad (which may take the stored memory itself), then again
    out.backward(g)
    torch.testing.assert_close(l.grad, 2 * a, rtol=RTOL[torch.float32], atol=0)


@pytest.mark.parametrize("name", ["nll scale", "kl both sides", "bce weights"])
def test_double_backward_is_the_plain_paths(name, monkeypatch):
    case = _cases(torch.float64)[name]

    def hvp():
        f, operands, needs = case
        ops = [t.clone().requires_grad_(n) for t, n in zip(operands, needs)]
        wanted = [t for t in ops if t.requires_grad]
        (first,) = torch.autograd.grad(f(*ops, event_dims=1).sum(), wanted[:1], create_graph=True)
        return torch.autograd.grad((first * first).sum(), wanted, allow_unused=True)

    got = hvp()
    _plain(monkeypatch)
    want = hvp()
    assert [a is None for a in got] == [b is None for b in want] and got[0] is not None
    for a, b in zip(got, want):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_saved_tensor_hooks_see_the_stored_gradients():
    l = _r(64, 32, dtype=torch.float32, seed=1).requires_grad_()
    y = torch.rand(64, 32, generator=gen(2))
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.shape) or t, lambda t: t):
        out = dr.bce_with_logits(l, y, event_dims=1)
    assert seen.count(torch.Size([64 * 32])) == 1  # d loss / d logits, held for the backward
    out.sum().backward()


def test_no_grad_and_inputs_without_grad_take_the_plain_forward():
    l, y = _r(3, 4, dtype=torch.float32, seed=1), torch.rand(3, 4, generator=gen(2))
    assert dr.bce_with_logits(l, y).grad_fn is None
    with torch.no_grad():
        assert dr.bce_with_logits(l.requires_grad_(), y).grad_fn is None
    w = torch.ones(4, requires_grad=True)  # a weight's gradient: the plain op (its formula has that case)
    assert not _with_grad_taken(dr.bce_with_logits(l, y, w).grad_fn)


def test_the_ops_refuse_to_be_differentiated_by_name():
    l = _r(2, 3, dtype=torch.float32, seed=1).requires_grad_()
    out, nonfinite, gl, gy = torch.ops.fastvae.dropin_bce_with_logits_with_grad(l, l.detach(), None, None, 1.0, 1,
                                                                                 [True, False])
    assert nonfinite.dtype == torch.int32 and int(nonfinite) == 0 and gy.numel() == 0
    with pytest.raises(RuntimeError, match="forward with gradients behind fastvae.dropin_ops.bce_with_logits"):
        out.sum().backward()


def _opcheck_cases():
    g = gen(16)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    p = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g) + 0.5  # noqa: E731
    return [
        ("dropin_normal_nll_with_grad", (r(2, 6), r(6), p(2, 6), 0, 0.0, 0.1, -1.0, 6, [False, True, True])),
        ("dropin_normal_nll_with_grad", (r(2, 6), r(1), p(2, 6), 1, 0.2, 0.0, 1.0, 1, [True, True, True])),
        ("dropin_normal_kl_with_grad", (r(2, 6), p(6), r(2, 6), p(1), 0.5, 12, [True, True, False, True])),
        ("dropin_bce_with_logits_with_grad", (r(2, 6), p(2, 6) - 0.5, p(6), p(3), 1.0, 2, [True, True])),
        ("dropin_bce_with_logits_with_grad", (r(2, 6), p(2, 6) - 0.5, None, None, 1.0, 1, [True, False])),
    ]


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.fastvae, name).default, args, test_utils=OPCHECK_UTILS)


def test_the_gradients_equal_the_backward_op_at_a_unit_incoming_gradient():
    l, y = _r(3, 8, dtype=torch.float64, seed=1, scale=5.0), torch.rand(3, 8, generator=gen(2), dtype=torch.float64)
    w, pw = _r(8, dtype=torch.float64, seed=3, pos=True), _r(1, dtype=torch.float64, seed=4, pos=True)
    out, _, gl, gy = torch.ops.fastvae.dropin_bce_with_logits_with_grad(l, y, w, pw, 0.25, 4, [True, True])
    want_l, want_y = torch.ops.fastvae.dropin_bce_with_logits_backward(torch.ones(6, dtype=torch.float64), l, y, w,
                                                                       pw, 0.25, 4, [True, True])
    assert torch.equal(out, torch.ops.fastvae.dropin_bce_with_logits(l, y, w, pw, 0.25, 4))
    torch.testing.assert_close(gl, want_l, rtol=1e-15, atol=0)
    torch.testing.assert_close(gy, want_y, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bce_without_weights_gives_the_values_of_unit_weights(dtype, each_isa):
    """No weight and no pos_weight take the kernels' two-operand path (the same formulas with the constant 1):
    element-wise values and gradients bitwise those of explicit unit weights, targets with gradient too, on every
    CPU build; inf and NaN logits and targets included (a NaN in is a NaN out on both paths)."""
    l = _r(7, 300, dtype=dtype, seed=1, scale=8.0)
    l[0, :4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0], dtype=dtype)
    y = torch.rand(7, 300, generator=gen(2), dtype=torch.float64).to(dtype)
    y[1, :3] = torch.tensor([float("nan"), 0.0, 1.0], dtype=dtype)
    ones = torch.ones(300, dtype=dtype)
    outs = []
    for w in (None, ones):
        lg, yg = l.clone().requires_grad_(), y.clone().requires_grad_()
        out = dr.bce_with_logits(lg, yg, w, w, factor=1.0, event_dims=0)
        outs.append((out.detach(), *torch.autograd.grad(out, [lg, yg], torch.ones_like(out))))
    for a, b in zip(*outs):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) and torch.equal(a.isnan(), b.isnan())


@pytest.mark.parametrize("name", ["kl both sides", "nll logvar", "bce target grad"])
def test_a_gradient_asked_for_some_operands_only_is_the_plain_paths(name, monkeypatch):
    # the C++ node scales only what the graph asks for (torch.autograd.grad of one operand of several needing grad);
    # its edges are the operands given (None for absent weights), in order
    case = _cases(torch.float64)[name]
    f, operands, needs = case
    ops = [t.clone().requires_grad_(n) for t, n in zip(operands, needs)]
    out = f(*ops, factor=0.3, event_dims=1)
    g = _r(*out.shape, dtype=out.dtype, seed=9)
    (got,) = torch.autograd.grad(out, [ops[1]], g)
    _plain(monkeypatch)
    (want,) = torch.autograd.grad(f(*ops, factor=0.3, event_dims=1), [ops[1]], g)
    torch.testing.assert_close(got, want, rtol=RTOL[torch.float64], atol=0)


def test_the_nodes_entry_point_refuses_bad_arguments_by_name():
    from fastvae.ops._registry import _C
    a = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"dropin_with_grad: kind must be 0 .* got 7"):
        _C.dropin_with_grad(7, a, a, a, None, [1.0], 3, [True, True, True])
    with pytest.raises(ValueError, match=r"dropin_normal_kl_with_grad takes 1 scalar arguments; got 2"):
        _C.dropin_with_grad(1, a, a, a, a, [1.0, 2.0], 3, [True] * 4)
    with pytest.raises(ValueError, match=r"output mask of fastvae::dropin_bce_with_logits_with_grad has 2 entries; "
                                         r"got 3"):
        _C.dropin_with_grad(2, a, a, None, None, [1.0], 3, [True] * 3)
    with pytest.raises(ValueError, match=r"dropin_normal_nll_with_grad takes 3 tensor operands; got a fourth"):
        _C.dropin_with_grad(0, a, a, a, a, [0, 0.0, 0.0, 1.0], 3, [True] * 3)
    with pytest.raises(ValueError, match=r"param of fastvae::dropin_normal_nll_with_grad must be an integer; got 0.5"):
        _C.dropin_with_grad(0, a, a, a, None, [0.5, 0.0, 0.0, 1.0], 3, [True] * 3)
    with pytest.raises(TypeError, match=r"with_grad: spread must have the dtype of x \(Float\); got Long"):  # the op's
        _C.dropin_with_grad(0, a, a, torch.ones(2, 3, dtype=torch.int64), None, [0, 0.0, 0.0, 1.0], 3, [True] * 3)
