"""The drop-in ops (fastvae.dropin_ops: normal_nll, normal_kl, bce_with_logits, normal_rsample) against float64
torch (Normal.log_prob, kl_divergence, F.gaussian_nll_loss, F.binary_cross_entropy_with_logits, autograd of the
same), over the operand layouts (scalar, per-feature, full, materialised), row sums (element-wise, per row, all),
dtypes, extremes, NaN, gradcheck, opcheck and every CPU instruction-set build; rsample against reparameterize's
stream."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import fastvae
from fastvae.ops import dropin as dr

from helpers import EPS, OPCHECK_UTILS, assert_within, gen, kernel_eps

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
EPS16 = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # half an ulp: the rounding of a result to 16 bits


# ---- float64 torch references and the magnitudes their rounding errors scale with ----------------------------------

def ref_nll(x, m, s, param, floor=0.0, const=0.0):
    """-log N + const - 0.5 log 2 pi, torch's way, and the sum of its terms' magnitudes."""
    if param == "scale":
        v = -Normal(m, s, validate_args=False).log_prob(x) + const - HALF_LOG_2PI
        mag = 0.5 * ((x - m) / s) ** 2 + s.log().abs()
    elif param == "var":  # (torch refuses some broadcasts of var)
        x, m, s = torch.broadcast_tensors(x, m, s)
        v = F.gaussian_nll_loss(m, x, s, eps=floor, reduction="none") + const
        vf = s.clamp(min=floor)
        mag = 0.5 * ((x - m) ** 2 / vf + vf.log().abs())
    else:
        v = 0.5 * ((x - m) ** 2 * torch.exp(-s) + s) + const
        mag = 0.5 * ((x - m) ** 2 * torch.exp(-s) + s.abs())
    return v, mag + abs(const)


def ref_kl(lp, sp, lq, sq):
    r, u = sp / sq, (lp - lq) / sq
    return kl_divergence(Normal(lp, sp, validate_args=False), Normal(lq, sq, validate_args=False)), \
        0.5 * (r * r + 1 + 2 * r.abs().log().abs() + u * u)


def ref_bce(l, y, w=None, pw=None):
    l, y = torch.broadcast_tensors(l, y)  # (torch takes one shape for both)
    v = F.binary_cross_entropy_with_logits(l, y, w, reduction="none", pos_weight=pw)
    A = 1 + (0 if pw is None else (pw - 1) * y)
    mag = (1 if w is None else w.abs()) * ((A.abs() if pw is not None else 1) * (l.abs() + 1) + (1 - y).abs() * l.abs())
    return v, mag


def ref_bce_formula(l, y, w, pw):
    """The same term in differentiable torch ops (torch's own op has no derivative for weight or pos_weight)."""
    return w * ((1 + (pw - 1) * y) * F.softplus(-l) + (1 - y) * l), None


OPS = {  # name: (wrapper, reference, operand generators given (shape, generator))
    "nll_scale": (lambda x, m, s, **k: dr.normal_nll(x, m, s, "scale", const=0.3, **k),
                  lambda x, m, s: ref_nll(x, m, s, "scale", const=0.3)),
    "nll_var": (lambda x, m, s, **k: dr.normal_nll(x, m, s, "var", floor=0.05, **k),
                lambda x, m, s: ref_nll(x, m, s, "var", floor=0.05)),
    "nll_logvar": (lambda x, m, s, **k: dr.normal_nll(x, m, s, "logvar", const=-1.0, **k),
                   lambda x, m, s: ref_nll(x, m, s, "logvar", const=-1.0)),
    "kl": (dr.normal_kl, ref_kl),
    "bce": (dr.bce_with_logits, ref_bce),
}
POSITIVE = {"nll_scale": (2,), "nll_var": (2,), "kl": (1, 3), "bce": ()}  # operands that must be > 0


def operand(op, k, shape, g):
    if op == "bce" and k == 1:
        return torch.rand(shape, dtype=torch.float64, generator=g)  # a target in [0, 1]
    if op == "bce" and k >= 2:
        return 0.2 + 2 * torch.rand(shape, dtype=torch.float64, generator=g)  # weights
    if k in POSITIVE.get(op, ()):
        return torch.exp(torch.randn(shape, dtype=torch.float64, generator=g) * (0.7 if op != "nll_var" else 1.5))
    return torch.randn(shape, dtype=torch.float64, generator=g) * 2


# Layouts of the secondary operands against the broadcast shape (B, C, D), the first operand's: the op reads them
# periodically, or (B, C, 1) and (B, 1, D) are materialised by the wrapper
LAYOUTS = {"full": lambda B, C, D: (B, C, D), "scalar": lambda B, C, D: (), "feature": lambda B, C, D: (D,),
           "lead1": lambda B, C, D: (1, C, D), "mat_col": lambda B, C, D: (B, C, 1),
           "mat_mid": lambda B, C, D: (B, 1, D)}


def case(op, layout, dtype, B=3, C=5, D=37, seed=0):
    g = gen(seed)
    shapes = [(B, C, D)] + [LAYOUTS[layout](B, C, D)] * ((4 if op in ("kl", "bce") else 3) - 1)
    return [operand(op, k, s, g).to(dtype) for k, s in enumerate(shapes)]


def tol_of(dtype, mag, n_summed=1):
    """Rounding of a term (a few ulp of its magnitude) and of a sum (blocked: grows like sqrt of the count)."""
    base = torch.float32 if dtype in EPS16 else dtype
    return (8 + 2 * math.sqrt(n_summed)) * EPS[base] * mag


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_values_against_torch(op, layout, dtype):
    fn, ref = OPS[op]
    xs = case(op, layout, dtype)
    want, mag = ref(*[t.double() for t in xs])
    for event_dims, red in ((0, lambda t: t), (1, lambda t: t.sum(-1)), (2, lambda t: t.sum((-2, -1))),
                            (None, lambda t: t.sum())):
        got = fn(*xs, event_dims=event_dims)
        n = mag.numel() // red(mag).numel()
        assert got.dtype == dtype and got.shape == red(want).shape, (got.dtype, got.shape)
        expected = red(want).to(dtype) if dtype in EPS16 else red(want)  # 16-bit: rounded, inf past its range
        tol = tol_of(dtype, red(mag), n) + (2 * EPS16[dtype] * red(want).abs() if dtype in EPS16 else 0)
        assert_within(got, expected, tol, f"{op} {layout} {dtype} event_dims={event_dims}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["full", "scalar", "feature", "mat_col"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_against_torch(op, layout, dtype):
    fn, ref = OPS[op]
    xs = [t.requires_grad_() for t in case(op, layout, dtype, seed=1)]
    x64 = [t.detach().double().requires_grad_() for t in xs]
    for event_dims in (0, 1, None):
        w = torch.rand(fn(*xs, event_dims=event_dims).shape, dtype=torch.float64, generator=gen(2)) - 0.3
        got = torch.autograd.grad((fn(*xs, factor=0.7, event_dims=event_dims) * w.to(dtype)).sum(), xs)
        v, _ = (ref_bce_formula if op == "bce" else ref)(*x64)
        v = v.sum(-1) if event_dims == 1 else v.sum() if event_dims is None else v
        want = torch.autograd.grad((0.7 * v * w).sum(), x64)
        for k, (a, b) in enumerate(zip(got, want)):
            n = b.numel() and xs[0].numel() // xs[k].numel()  # elements folded into one entry of a periodic operand
            tol = (16 + 4 * math.sqrt(n)) * EPS[dtype] * max(b.abs().max().item(), 1e-30)
            assert_within(a, b, tol, f"{op} {layout} d/d operand {k} event_dims={event_dims}")


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op):
    fn, _ = OPS[op]
    xs = case(op, "feature", torch.float64, B=2, C=3, D=4, seed=3)
    xs[-1] = xs[-1][:1].clone()  # (1, C, D) against (B, C, D): one more period
    for event_dims in (0, 1, None):
        args = [t.clone().requires_grad_() for t in xs]
        assert torch.autograd.gradcheck(lambda *a: fn(*a, factor=1.3, event_dims=event_dims), args)
        assert torch.autograd.gradgradcheck(lambda *a: fn(*a, factor=1.3, event_dims=event_dims), args)


def test_expanded_views_are_read_periodically():
    """torch.distributions broadcasts its parameters to expanded views (stride 0): the wrapper reads their trailing
    block instead of materialising them, and their gradients still reach the unexpanded tensors."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen(17))
    m = torch.randn(5, dtype=torch.float64, generator=gen(18)).requires_grad_()
    s = torch.tensor(1.7, dtype=torch.float64).requires_grad_()
    me, se = torch.broadcast_tensors(m, s)
    me, se = me.expand(4, 3, 5), se.expand(4, 3, 5)
    assert dr._periodic(se, x.shape, torch.float64).numel() == 1
    assert dr._periodic(me, x.shape, torch.float64).numel() == 5
    got = dr.normal_nll(x, me, se, "scale", event_dims=1)
    gm, gs = torch.autograd.grad(got.sum(), (m, s))
    want = -Normal(me, se).log_prob(x).sum(-1) - 5 * HALF_LOG_2PI
    wm, ws = torch.autograd.grad(want.sum(), (m, s))
    assert_within(got, want, 1e-13, "values")
    assert_within(gm, wm, 1e-13, "grad loc")
    assert_within(gs, ws, 1e-12, "grad scale")


def test_bce_weight_gradients():
    l, y, w, pw = [t.requires_grad_() for t in case("bce", "feature", torch.float64, B=2, C=3, D=4, seed=4)]
    assert torch.autograd.gradcheck(lambda *a: dr.bce_with_logits(*a, event_dims=1), (l, y, w, pw))
    assert torch.autograd.gradcheck(lambda *a: dr.bce_with_logits(*a), (l, y, None, pw))


def test_no_gradient_of_the_fused_backward():
    x, m, s = case("nll_scale", "full", torch.float64, seed=5)
    m.requires_grad_()
    (gm,) = torch.autograd.grad(dr.normal_nll(x, m, s, "scale").sum(), m, create_graph=True)  # differentiable form
    assert gm.requires_grad
    out = torch.ops.fastvae.dropin_normal_nll_backward(torch.ones(x.numel(), dtype=x.dtype), x, m, s, 0, 0.0, 0.0,
                                                       1.0, 1, [False, True, False])[1]
    assert_within(out.view(gm.shape), gm.detach(), 1e-13 * gm.abs().max().item(), "fused == differentiable form")


# ---- row sums: any row length, deterministic for any thread count, every CPU build ---------------------------------

@pytest.mark.parametrize("N,row_len", [(7, 7), (300, 3), (4096, 256), (40000, 40000), (3 * 20011, 20011),
                                       (2 * 17 * 257, 257), (1000, 1)])
def test_row_lengths_and_threads(N, row_len):
    g = gen(6)
    x = torch.randn(N, generator=g)
    loc = torch.randn(257 if N % 257 == 0 else 1, generator=g)  # an in-place period not aligned to blocks
    s = torch.rand(N, generator=g) + 0.5
    args = (x, loc, s, 0, 0.0, 0.1, 0.5, row_len)
    outs = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outs.append(torch.ops.fastvae.dropin_normal_nll(*args))
        finally:
            torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
    x64, l64, s64 = x.double(), loc.double().repeat(N // loc.numel()), s.double()
    want, mag = ref_nll(x64, l64, s64, "scale", const=0.1)
    want, mag = 0.5 * want.view(-1, row_len).sum(1), 0.5 * mag.view(-1, row_len).sum(1)
    assert_within(outs[0], want, tol_of(torch.float32, mag, row_len), f"N={N} row_len={row_len}")
    g = torch.linspace(-1, 2, N // row_len)
    gx, gl, gs = torch.ops.fastvae.dropin_normal_nll_backward(g, *args, [True, True, True])
    ge = 0.5 * g.double().repeat_interleave(row_len)  # factor * the row's gradient, per element
    d = (x64 - l64) / s64
    mag = ge.abs() * (1 + d * d) / s64
    wants = ((gx, ge * d / s64, "d/dx"), (gl, -ge * d / s64, "d/dloc"), (gs, ge * (1 - d * d) / s64, "d/ds"))
    for got, want, what in wants:
        assert_within(got, want, 8 * EPS[torch.float32] * mag, what)


@pytest.mark.parametrize("op", OPS)
def test_every_isa_build(isa_runner, op):
    fn, ref = OPS[op]
    xs = [t.requires_grad_() for t in case(op, "feature", torch.float32, B=4, C=3, D=301, seed=7)]
    res = isa_runner(lambda: (fn(*xs, event_dims=1), torch.autograd.grad(fn(*xs).sum(), xs)))
    x64 = [t.detach().double().requires_grad_() for t in xs]
    want, mag = ref(*[t.detach() for t in x64])
    want_g = torch.autograd.grad((ref_bce_formula(*x64) if op == "bce" else ref(*x64))[0].sum(), x64)
    for isa, (v, grads) in res.items():
        assert_within(v, want.sum(-1), tol_of(torch.float32, mag.sum(-1), 301), f"{op} {isa}")
        for k, (a, b) in enumerate(zip(grads, want_g)):
            tol = (16 + 4 * math.sqrt(xs[0].numel() // xs[k].numel())) * EPS[torch.float32] * b.abs().max().item()
            assert_within(a, b, tol, f"{op} {isa} d/d operand {k}")


def test_compile_fullgraph():
    x = torch.randn(4, 6, generator=gen(19))
    m = torch.randn(6, generator=gen(20)).requires_grad_()
    s = (torch.rand(4, 6, generator=gen(21)) + 0.5).requires_grad_()

    def f(x, m, s):
        return (dr.normal_nll(x, m, s, "scale", event_dims=1, factor=0.5).sum()
                + dr.normal_kl(m, s, x, s, event_dims=None) + dr.bce_with_logits(x, s.detach(), None, m).mean())
    want, got = f(x, m, s), torch.compile(f, fullgraph=True)(x, m, s)
    assert torch.allclose(got, want)
    grads = zip(torch.autograd.grad(got, (m, s)), torch.autograd.grad(want, (m, s)))
    assert all(torch.allclose(a, b) for a, b in grads)


# ---- extremes and special values ------------------------------------------------------------------------------------

def test_normal_extremes_float64():
    x = torch.tensor([0.0, 1.0, -3.0, 1e10, 2.0, 0.5], dtype=torch.float64)
    m = torch.tensor([0.0, 1.0, 2.0, -1e10, 2.0, 0.5], dtype=torch.float64)
    for s in (1e-30, 1e30, 1e-300, 1e300):
        sc = torch.full_like(x, s)
        want = Normal(m, sc, validate_args=False).log_prob(x)
        if s in (1e-300, 1e300):  # torch's scale^2 under/overflows (0/0 = NaN at x == m); dividing first does not
            want = -0.5 * ((x - m) / sc) ** 2 - math.log(s) - HALF_LOG_2PI
        got = dr.normal_nll(x, m, sc, "scale", const=HALF_LOG_2PI, factor=-1.0)
        assert_within(got, want, 1e-14 * (want.abs() + 1), f"log_prob at scale {s}")
        kl = dr.normal_kl(x, sc, m, torch.full_like(x, 1.0))
        want = kl_divergence(Normal(x, sc), Normal(m, torch.ones_like(x)))
        if s in (1e-300, 1e300):  # torch's log(r^2) of an r^2 that underflows: inf (the true KL is finite)
            want = 0.5 * (s * s - 1 - 2 * math.log(s) + (x - m) ** 2)
        assert_within(kl, want, 1e-14 * (kl.abs() + 1), f"kl at scale {s}")
    # x == m: no 0 * inf; a negative scale: torch's NaN; var below the floor: the floor
    got = dr.normal_nll(torch.zeros(3), torch.zeros(3), torch.tensor([1e-38, -1.0, 0.0]), "scale")
    assert got[0].item() == pytest.approx(math.log(1e-38), rel=1e-6) and got[1].isnan() and got[2].isnan()
    got = dr.normal_nll(torch.ones(3), torch.zeros(3), torch.tensor([-1.0, 0.01, 1e-45]), "var", floor=0.1)
    assert torch.allclose(got, torch.full((3,), 0.5 * (10 + math.log(0.1))))
    assert dr.normal_nll(torch.ones(1), torch.zeros(1), -torch.ones(1), "var").isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_extreme_logits(dtype):
    l = torch.tensor([1e4, -1e4, 1e4, -1e4, 88.0, -104.0, 30.0, 0.0], dtype=dtype)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3, 0.7, 1.0, 0.5], dtype=dtype)
    pw = torch.tensor(2.5, dtype=dtype)
    for p in (None, pw):
        want = F.binary_cross_entropy_with_logits(l.double(), y.double(), pos_weight=None if p is None else p.double(),
                                                  reduction="none")
        assert_within(dr.bce_with_logits(l, y, None, p), want, 4 * EPS[dtype] * (want.abs() + 1), f"bce pw={p}")
    inf = torch.tensor([math.inf, -math.inf, math.inf, -math.inf], dtype=dtype)
    got = dr.bce_with_logits(inf, torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype))
    assert got.tolist() == [0.0, 0.0, math.inf, math.inf]  # the limits (torch: NaN for the first two)


@pytest.mark.parametrize("op", OPS)
def test_nan_in_nan_out(op):
    fn, _ = OPS[op]
    for k in range(4 if op in ("kl", "bce") else 3):
        xs = [t.requires_grad_() for t in case(op, "full", torch.float32, B=2, C=2, D=3, seed=8)]
        with torch.no_grad():
            xs[k][1, 0, 2] = math.nan
        out = fn(*xs)
        assert out[1, 0, 2].isnan() and out.isnan().sum() == 1, (op, k)
        grads = torch.autograd.grad(out.sum(), xs)
        # NaN in the gradients that depend on the NaN operand at that element (as torch's autograd), nowhere else
        x64 = [t.detach().double().requires_grad_() for t in xs]
        want = torch.autograd.grad((ref_bce_formula if op == "bce" else OPS[op][1])(*x64)[0].sum(), x64)
        assert any(w[1, 0, 2].isnan() for w in want)
        for j, (gj, wj) in enumerate(zip(grads, want)):
            assert torch.equal(gj.isnan(), wj.isnan()), (op, k, j)
        assert fn(*xs, event_dims=None).isnan()


def test_empty():
    for op, (fn, _) in OPS.items():
        xs = [t.requires_grad_() for t in case(op, "full", torch.float32, B=0, C=3, D=4)]
        out = fn(*xs, event_dims=1)
        assert out.shape == (0, 3)
        assert all(g.shape == x.shape for g, x in zip(torch.autograd.grad(out.sum(), xs), xs))
        assert fn(*case(op, "full", torch.float32, B=2, C=3, D=0), event_dims=1).eq(0).all()


# ---- rsample: reparameterize's stream -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rsample_is_reparameterize(dtype):
    loc = torch.randn(4, 1, 300, generator=gen(9), dtype=dtype)
    scale = torch.rand(3, 300, generator=gen(10), dtype=dtype) + 0.1
    for sample_shape, k in (((), None), ((2, 3), 6)):
        z = dr.normal_rsample(loc, scale, sample_shape, generator=gen(11))
        assert z.shape == (*sample_shape, 4, 3, 300) and z.dtype == dtype
        lb, sb = torch.broadcast_tensors(loc, scale)
        zr = fastvae.reparameterize(lb.float(), 2 * sb.float().log(), n_samples=k, generator=gen(11))
        eps = kernel_eps(11, (k or 1, *lb.shape))
        want = (lb.double() + sb.double() * eps).reshape(z.shape)
        ulp = EPS16.get(dtype, EPS[torch.float32] if dtype != torch.float64 else 1e-15)
        assert_within(z, want, 4 * ulp * (want.abs() + 1), "z = loc + scale eps")
        ulp32 = max(ulp, EPS[torch.float32])  # reparameterize ran in float32 here (2 log scale rounded too)
        assert_within(z.float(), zr.reshape(z.shape), 8 * ulp32 * (want.abs() + 1), "z = reparameterize's z")


@pytest.mark.parametrize("k", [None, 3])
def test_rsample_gradients(k):
    loc = torch.randn(5, 70, dtype=torch.float64, generator=gen(12)).requires_grad_()
    scale = (torch.rand(70, dtype=torch.float64, generator=gen(13)) + 0.5).requires_grad_()
    z = dr.normal_rsample(loc, scale, (k,) if k else (), generator=gen(14))
    w = torch.randn(z.shape, dtype=torch.float64, generator=gen(15))
    gl, gs = torch.autograd.grad((z * w).sum(), (loc, scale))
    eps = kernel_eps(14, z.shape)
    assert_within(gl, w.sum(0) if k else w, 1e-14, "grad loc")
    want = (w * eps).reshape(-1, 70).sum(0)
    assert_within(gs, want, 1e-13 * (w * eps).abs().reshape(-1, 70).sum(0), "grad scale")
    g = lambda l, s: dr.normal_rsample(l, s, (k,) if k else (), generator=gen(14))  # noqa: E731
    assert torch.autograd.gradcheck(g, (loc[:2, :3].detach().requires_grad_(), scale[:3].detach().requires_grad_()))
    assert torch.autograd.gradgradcheck(g, (loc[:2, :3].detach().requires_grad_(),
                                            scale[:3].detach().requires_grad_()))


# ---- opcheck and bad input ------------------------------------------------------------------------------------------

def opcheck_cases():
    g = gen(16)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    p = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g) + 0.5  # noqa: E731
    seed = torch.tensor([123], dtype=torch.int64)
    m3, m4, m2 = [True, True, True], [True, True, True, True], [True, True]
    return [
        ("dropin_normal_nll", (r(2, 6), r(6), p(2, 6), 0, 0.0, 0.1, -1.0, 6), True),
        ("dropin_normal_nll", (r(2, 6), r(1), p(2, 6), 1, 0.2, 0.0, 1.0, 1), True),
        ("dropin_normal_nll_backward", (r(4), r(2, 6), r(6), r(2, 6), 2, 0.0, 0.0, 1.0, 3, m3), False),
        ("dropin_normal_kl", (r(2, 6), p(6), r(2, 6), p(1), 0.5, 12), True),
        ("dropin_normal_kl_backward", (r(2), r(2, 6), p(6), r(2, 6), p(1), 0.5, 6, m4), False),
        ("dropin_bce_with_logits", (r(2, 6), p(2, 6) - 0.5, p(6), p(3), 1.0, 2), True),
        ("dropin_bce_with_logits", (r(2, 6), p(2, 6) - 0.5, None, None, 1.0, 1), True),
        ("dropin_bce_with_logits_backward", (r(6), r(2, 6), p(2, 6), None, p(6), 1.0, 2, m2), False),
        ("dropin_normal_rsample", (r(2, 6), p(2, 6), seed, None), True),
        ("dropin_normal_rsample", (r(2, 6), p(2, 6), seed, 3), True),
        ("dropin_normal_rsample_backward", (r(3, 2, 6), p(2, 6), seed, 3, m2), False),
    ]


@pytest.mark.parametrize("name,args,grad", opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args, grad):
    args = tuple(a.requires_grad_() if grad and isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    torch.library.opcheck(getattr(torch.ops.fastvae, name).default, args, test_utils=OPCHECK_UTILS)


def test_bad_input_names_the_argument():
    x, m, s = torch.randn(4, 6), torch.randn(5), torch.rand(4, 6)
    with pytest.raises(ValueError, match="dropin_normal_nll: loc has 5 elements"):
        torch.ops.fastvae.dropin_normal_nll(x, m, s, 0, 0.0, 0.0, 1.0, 1)
    with pytest.raises(ValueError, match="row_len must be >= 1 and divide the 24"):
        torch.ops.fastvae.dropin_normal_nll(x, m[:3], s, 0, 0.0, 0.0, 1.0, 5)
    with pytest.raises(ValueError, match="param must be"):
        torch.ops.fastvae.dropin_normal_nll(x, m[:3], s, 3, 0.0, 0.0, 1.0, 1)
    with pytest.raises(TypeError, match="scale_q must have the dtype of loc_p"):
        torch.ops.fastvae.dropin_normal_kl(x, s, x, s.double(), 1.0, 1)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        torch.ops.fastvae.dropin_bce_with_logits(x.long(), x.long(), None, None, 1.0, 1)
    with pytest.raises(ValueError, match="pos_weight has 7 elements"):
        torch.ops.fastvae.dropin_bce_with_logits(x, s, None, torch.ones(7), 1.0, 1)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.fastvae.dropin_normal_kl_backward(torch.ones(3), x, s, x, s, 1.0, 1, [True] * 4)
    with pytest.raises(ValueError, match="scale must have shape"):
        torch.ops.fastvae.dropin_normal_rsample(x, s[:2], torch.tensor([1]), None)
    with pytest.raises(ValueError, match="param must be one of"):
        dr.normal_nll(x, m[:3], s, "std")
    with pytest.raises(ValueError, match="event_dims must be None or an int in"):
        dr.normal_kl(x, s, x, s, event_dims=3)


@pytest.mark.parametrize("sample_shape", [(), (3,)], ids=["no samples", "3 samples"])
def test_rsample_gradcheck_and_gradgradcheck(sample_shape):
    # the rsample node (C++, csrc/torch/dropin/autograd.cpp): its first-order backward is the fused backward op, a
    # create_graph=True backward the differentiable form; both against finite differences, the draws fixed by the
    # generator given each call
    m = torch.randn(2, 3, generator=gen(8), dtype=torch.float64, requires_grad=True)
    s = (torch.rand(2, 3, generator=gen(9), dtype=torch.float64) + 0.5).requires_grad_()

    def f(m, s):
        return dr.normal_rsample(m, s, sample_shape, generator=torch.Generator().manual_seed(3)) ** 2
    assert "Rsample" in f(m, s).grad_fn.next_functions[0][0].name()  # (the path under test was taken)
    assert torch.autograd.gradcheck(f, (m, s))
    assert torch.autograd.gradgradcheck(f, (m, s))
