"""The discretized-logistic likelihoods (fastvae.discretized_logistic_nll, discretized_logistic_mixture_nll) on the
CPU: normalisation over every level, extreme inputs against mpmath, the float64 reference, gradients (gradcheck and
against the reference), opcheck, torch.compile, autocast, meta tensors, shapes by hypothesis, bad input, every CPU
build, thread counts and what is saved for backward."""
import math

import mpmath
import pytest
import torch
from hypothesis import given, strategies as st

import fastvae
from fastvae import reference
from helpers import OPCHECK_UTILS, assert_within, gen

NLL = fastvae.discretized_logistic_nll
MIX = fastvae.discretized_logistic_mixture_nll


def grid(n_bits, dtype=torch.float64):
    levels = 2**n_bits - 1
    return (2 * torch.arange(levels + 1, dtype=torch.float64) / levels - 1).to(dtype)


def data(shape, n_bits=8, seed=0, dtype=torch.float64):
    g = gen(seed)
    k = torch.randint(0, 2**n_bits, shape, generator=g)
    x = (2 * k.to(torch.float64) / (2**n_bits - 1) - 1).to(dtype)
    # a few pixels at the edge levels, whose bins take the tails
    x.view(-1)[::7] = -1.0
    x.view(-1)[3::11] = 1.0
    return x


def params(shape, K, seed=1, dtype=torch.float64, spread=1.0):
    g = gen(seed)
    lg = torch.randn(*shape, K, generator=g, dtype=torch.float64) * 2
    m = torch.randn(*shape, K, generator=g, dtype=torch.float64) * spread
    ls = torch.randn(*shape, K, generator=g, dtype=torch.float64) * 1.5 - 2
    return lg.to(dtype), m.to(dtype), ls.to(dtype)


# ---- normalisation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bits", [1, 2, 5, 8, 12])
def test_masses_sum_to_one_over_every_level(n_bits):
    """sum over the 2^n_bits levels of P(x) = 1 to float64 precision, for scales from far below a bin to far above
    the whole range and means inside, at the edges of and far outside [-1, 1]."""
    levels = grid(n_bits)
    ms = torch.tensor([-30.0, -1.0, -0.999, -0.3, 0.0, 1e-3, 0.77, 1.0, 2.5, 1e4], dtype=torch.float64)
    lss = torch.tensor([-80.0, -12.0, -6.0, -2.0, 0.0, 3.0, 40.0, 300.0], dtype=torch.float64)
    m, ls = torch.meshgrid(ms, lss, indexing="ij")
    P = m.numel()
    x = levels.repeat_interleave(P).reshape(-1, 1)  # (levels * P, 1): one pixel per sample
    mm = m.reshape(1, P).expand(levels.numel(), P).reshape(-1, 1)
    ll = ls.reshape(1, P).expand(levels.numel(), P).reshape(-1, 1)
    logp = -NLL(x, mm, ll, n_bits=n_bits, reduction="none").reshape(levels.numel(), P)
    total = logp.exp().sum(0)
    assert_within(total, torch.ones_like(total), 64 * torch.finfo(torch.float64).eps, f"n_bits={n_bits}")


@pytest.mark.parametrize("n_bits", [3, 8])
def test_mixture_masses_sum_to_one(n_bits):
    levels = grid(n_bits)
    lg, m, ls = params((1, 1), 5, seed=3)
    L = levels.numel()
    x = levels.reshape(L, 1)
    out = -MIX(x, lg.expand(L, 1, 5), m.expand(L, 1, 5), ls.expand(L, 1, 5), n_bits=n_bits, reduction="none")
    assert abs(out.exp().sum().item() - 1) < 32 * torch.finfo(torch.float64).eps


# ---- extreme values against mpmath ------------------------------------------------------------------------------

def exact_logp(x, m, ls, n_bits):
    """log P with 60 significant digits: mpmath's sigmoid difference, the edge bins with the tails."""
    with mpmath.workdps(60):
        levels = 2**n_bits - 1
        k = round((float(x) + 1) * levels / 2)
        c, h = mpmath.mpf(2 * k - levels) / levels, mpmath.mpf(1) / levels
        s = mpmath.exp(mpmath.mpf(float(ls)))
        mm = mpmath.mpf(float(m))

        def sig(z):
            return 1 / (1 + mpmath.exp(-z))

        hi = mpmath.mpf(1) if k == levels else sig((c + h - mm) / s)
        lo = mpmath.mpf(0) if k == 0 else sig((c - h - mm) / s)
        if hi - lo > mpmath.mpf("1e-40"):
            return float(mpmath.log(hi - lo))
    with mpmath.workdps(400):  # a mass far below 1e-40: enough digits for the difference
        c, h = mpmath.mpf(2 * k - levels) / levels, mpmath.mpf(1) / levels
        s = mpmath.exp(mpmath.mpf(float(ls)))
        mm = mpmath.mpf(float(m))
        hi = mpmath.mpf(1) if k == levels else sig((c + h - mm) / s)
        lo = mpmath.mpf(0) if k == 0 else sig((c - h - mm) / s)
        return float(mpmath.log(hi - lo))


EXTREME_X = [-1.0, -1.0 + 2 / 255, -0.2 + 0.2 / 255, 2 * 128 / 255 - 1, 1.0 - 2 / 255, 1.0]
EXTREME_M = [-100.0, -1.0, -0.3, 2 * 128 / 255 - 1 + 1 / 255, 0.9, 3.0, 100.0]
EXTREME_LS = [-80.0, -9.0, -5.0, 0.0, 4.0, 20.0, 80.0]


def extreme_cases():
    xs, ms, lss = torch.meshgrid(torch.tensor(EXTREME_X, dtype=torch.float64),
                                 torch.tensor(EXTREME_M, dtype=torch.float64),
                                 torch.tensor(EXTREME_LS, dtype=torch.float64), indexing="ij")
    return xs.reshape(-1, 1), ms.reshape(-1, 1), lss.reshape(-1, 1)


@pytest.fixture(scope="module")
def exact_extremes():
    x, m, ls = extreme_cases()
    return torch.tensor([exact_logp(a, b, c, 8) for a, b, c in zip(x.flatten(), m.flatten(), ls.flatten())],
                        dtype=torch.float64).reshape(-1, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extremes_match_mpmath(dtype, exact_extremes):
    """Scales from e^-80 to e^80 and means 100 away: finite, and close to the exact log mass at the same (rounded)
    inputs. float64: 1e-13 relative or 1e-15 absolute. float32: 16 ulp of |log P| + 1 (2-ulp exp/log polynomials
    over a few terms), plus the rounding of the bin centre to float32 (at most half an ulp of max(1, |m|)), which
    moves log P as a perturbation of the mean would: |d log P / dm| times that ulp."""
    x, m, ls = (t.to(dtype) for t in extreme_cases())
    x64, m64, ls64 = (t.to(torch.float64) for t in (x, m, ls))
    got = -NLL(x, m, ls, reduction="none").reshape(-1, 1)
    assert torch.isfinite(got).all()
    want = exact_extremes if dtype == torch.float64 else torch.tensor(
        [exact_logp(a, b, c, 8) for a, b, c in zip(x64.flatten(), m64.flatten(), ls64.flatten())],
        dtype=torch.float64).reshape(-1, 1)
    eps = torch.finfo(dtype).eps
    if dtype == torch.float64:
        tol = 1e-13 * want.abs() + 1e-15
    else:
        mm = m64.clone().requires_grad_(True)
        reference.discretized_logistic_nll(x64, mm, ls64, reduction="sum").backward()
        tol = 16 * eps * (want.abs() + 1) + mm.grad.abs() * eps * m64.abs().clamp_min(1)
    assert_within(got, want, tol, str(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_gradients_finite(dtype):
    """|log_scale| up to 80 (float32) and far means: every gradient finite (no 0 * inf, no inf - inf)."""
    x, m, ls = (t.to(dtype) for t in extreme_cases())
    m.requires_grad_(True)
    ls.requires_grad_(True)
    NLL(x, m, ls, reduction="sum").backward()
    assert torch.isfinite(m.grad).all() and torch.isfinite(ls.grad).all()
    lg = torch.zeros(x.shape[0], 1, 3, dtype=dtype, requires_grad=True)
    mm = torch.cat([m.detach(), -m.detach(), m.detach() * 0.5], -1).unsqueeze(1).requires_grad_(True)
    ll = torch.cat([ls.detach(), ls.detach().flip(0), -ls.detach()], -1).unsqueeze(1).requires_grad_(True)
    out = MIX(x, lg, mm, ll, reduction="none")
    assert torch.isfinite(out).all()
    out.sum().backward()
    for t in (lg, mm, ll):
        assert torch.isfinite(t.grad).all()


def test_huge_scale_is_the_midpoint_density_limit():
    """log_scale = 700 in float64 (d = 2h e^-700 underflows nowhere it matters): log P of an interior bin is
    log(2h) - log_scale - log 4, exactly the limit, not log(0)."""
    x = torch.tensor([[0.2 + 0.2 / 255 - 0.2 / 255]], dtype=torch.float64)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1
    for ls in (700.0, 800.0, 1e5):
        got = -NLL(x, torch.zeros_like(x), torch.full_like(x, ls), reduction="none")
        assert got.item() == pytest.approx(math.log(2 / 255) - ls - math.log(4), rel=1e-15)


def test_tiny_scale_mean_inside_the_bin_has_mass_one():
    x = torch.tensor([[2 * 77 / 255 - 1]], dtype=torch.float32)
    for ls in (-30.0, -80.0, -200.0, -1e30):
        out = NLL(x, x + 0.001, torch.full_like(x, ls), reduction="none")
        assert out.item() == 0.0


# ---- against the reference -------------------------------------------------------------------------------------

def tol_for(dtype, ref_terms, D):
    eps = torch.finfo(dtype).eps
    return (16 + 4 * math.sqrt(D)) * eps * ref_terms


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("K,lead", [(1, False), (10, False), (3, True)])
def test_matches_reference_values_and_gradients(dtype, K, lead):
    """Values and gradients of float32/float64 inputs against the float64 reference at the same inputs.
    Tolerance: each pixel's -log P is within ~16 ulp of its size (exp/log polynomials, the log-sum-exp), the sum over
    D pixels adds sqrt(D) roundings (scale: the sum of |per-pixel loss|); gradients elementwise relative to their
    largest entry."""
    x = data((4, 3, 5, 7), seed=K).to(dtype)
    shape = ((2,) if lead else ()) + tuple(x.shape)
    lg, m, ls = params(shape, K, seed=K + 1, dtype=dtype)
    if K == 1:
        m, ls = m[..., 0], ls[..., 0]
    args = [t.clone().requires_grad_(True) for t in ((m, ls) if K == 1 else (lg, m, ls))]
    ref_args = [t.detach().to(torch.float64).requires_grad_(True) for t in args]
    fn, rf = (NLL, reference.discretized_logistic_nll) if K == 1 else (MIX, reference.discretized_logistic_mixture_nll)
    out = fn(x, *args, reduction="none")
    want = rf(x.to(torch.float64), *ref_args, reduction="none")
    assert out.shape == want.shape == (shape[0],) + ((shape[1],) if lead else ())
    D = x[0].numel()
    assert_within(out, want, tol_for(dtype, want.abs() + D, D), "values")
    g = torch.linspace(0.5, 2, out.numel(), dtype=torch.float64).reshape(out.shape)
    out.backward(g.to(out.dtype))
    want.backward(g)
    for a, r, name in zip(args, ref_args, ("logit_probs", "means", "log_scales")[3 - len(args):]):
        scale = r.grad.abs().max().item()
        assert_within(a.grad, r.grad, 64 * torch.finfo(dtype).eps * scale, name)


@pytest.mark.parametrize("k", [None, 2])
def test_gradcheck(k):
    x = data((2, 3, 4), n_bits=5, seed=4)
    shape = ((k,) if k else ()) + tuple(x.shape)
    lg, m, ls = params(shape, 3, seed=5, spread=0.5)
    ls = ls + 1.0  # scales of a few bins: every term's derivative matters
    ins = [t.clone().requires_grad_(True) for t in (lg, m, ls)]
    assert torch.autograd.gradcheck(lambda a, b, c: MIX(x, a, b, c, n_bits=5, reduction="none"), ins)
    single = [ins[1][..., 0].detach().requires_grad_(True), ins[2][..., 0].detach().requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda b, c: NLL(x, b, c, n_bits=5, reduction="none"), single)


def test_x_gets_a_zero_gradient_and_per_feature_scale_sums():
    x = data((3, 8), seed=6).requires_grad_(True)
    m = torch.zeros(3, 8, dtype=torch.float64, requires_grad=True)
    ls = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)  # one learned scale
    NLL(x, m, ls).backward()
    assert (x.grad == 0).all()
    ls_ref = ls.detach().requires_grad_(True)
    reference.discretized_logistic_nll(x.detach(), m.detach(), ls_ref.expand(3, 8)).backward()
    assert ls.grad.item() == pytest.approx(ls_ref.grad.item(), rel=1e-12)


def test_double_backward_is_refused():
    x = data((2, 4), seed=7)
    m = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    ls = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    (gm,) = torch.autograd.grad(NLL(x, m, ls), m, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through fastvae.discretized_logistic_nll"):
        gm.sum().backward()


# ---- the op contract: opcheck, compile, autocast, meta ------------------------------------------------------------

def _op_args(k=None, K=4, with_logits=True, dtype=torch.float32):
    x = data((2, 3, 5), seed=8, dtype=dtype)
    shape = ((k,) if k else ()) + tuple(x.shape)
    lg, m, ls = params(shape, K, seed=9, dtype=dtype)
    return x, (lg.requires_grad_(True) if with_logits else None), m.requires_grad_(True), ls.requires_grad_(True)


@pytest.mark.parametrize("case", ["mixture", "sampled", "single", "float64"])
def test_opcheck(case):
    if case == "single":
        x, _, m, ls = _op_args(K=1, with_logits=False)
        args = (x, None, m, ls, 8)
    else:
        x, lg, m, ls = _op_args(k=3 if case == "sampled" else None,
                                dtype=torch.float64 if case == "float64" else torch.float32)
        args = (x, lg, m, ls, 8)
    torch.library.opcheck(torch.ops.fastvae.discretized_logistic_nll.default, args, test_utils=OPCHECK_UTILS)
    out = torch.ops.fastvae.discretized_logistic_nll(*[a.detach() if torch.is_tensor(a) else a for a in args])
    bargs = (torch.ones_like(out), *[a.detach() if torch.is_tensor(a) else a for a in args])
    torch.library.opcheck(torch.ops.fastvae.discretized_logistic_nll_backward.default, bargs,
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph():
    x, lg, m, ls = _op_args()

    def loss(x, lg, m, ls):
        return MIX(x, lg, m, ls) + NLL(x, m[..., 0], ls[..., 0], reduction="sum")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(x, lg, m, ls)
    want = loss(x, lg, m, ls)
    assert torch.allclose(got, want, rtol=1e-6)
    (ga,) = torch.autograd.grad(got, m)
    (gb,) = torch.autograd.grad(want, m)
    assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-7)


def test_cpu_autocast_bfloat16_decoder():
    """Under CPU autocast the decoder's Linear gives bfloat16 parameters: computed in float32, a float32 loss equal
    to the loss of those bfloat16 values upcast."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3 * 4 * 3)
    h = torch.randn(2, 6)
    x = data((2, 4), seed=10, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = lin(h).reshape(2, 4, 9)
        lg, m, ls = p[..., :3], p[..., 3:6], p[..., 6:]
        assert m.dtype == torch.bfloat16
        out = MIX(x, lg, m, ls)
    assert out.dtype == torch.float32
    want = MIX(x, lg.float(), m.float(), ls.float())
    assert torch.equal(out, want)
    out.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_meta_tensors():
    x = torch.empty(5, 3, 2, device="meta")
    p = torch.empty(4, 5, 3, 2, 7, device="meta")
    assert MIX(x, p, p, p, reduction="none").shape == (4, 5)
    assert NLL(x, p[..., 0], p[..., 0]).shape == ()
    gl, gm, gs = torch.ops.fastvae.discretized_logistic_nll_backward(torch.empty(4, 5, device="meta"), x, p, p, p, 8)
    assert gl.shape == gm.shape == gs.shape == p.shape


# ---- shapes (hypothesis) ---------------------------------------------------------------------------------------

@given(B=st.integers(1, 3), F=st.lists(st.integers(1, 9), min_size=0, max_size=3), K=st.integers(1, 12),
       k=st.sampled_from([None, 1, 2]), n_bits=st.integers(1, 9), seed=st.integers(0, 100))
def test_shapes_match_reference(B, F, K, k, n_bits, seed):
    x = data((B, *F), n_bits=n_bits, seed=seed, dtype=torch.float32)
    shape = ((k,) if k else ()) + tuple(x.shape)
    lg, m, ls = params(shape, K, seed=seed + 1, dtype=torch.float32)
    out = MIX(x, lg, m, ls, n_bits=n_bits, reduction="none")
    want = reference.discretized_logistic_mixture_nll(x.double(), lg.double(), m.double(), ls.double(),
                                                      n_bits=n_bits, reduction="none")
    D = max(1, x[0].numel())
    assert_within(out, want, tol_for(torch.float32, want.abs() + D, D), f"B={B} F={F} K={K} k={k}")


# ---- bad input ------------------------------------------------------------------------------------------------

def test_bad_input_is_named():
    x, lg, m, ls = (t.detach() if t is not None else t for t in _op_args())
    with pytest.raises(ValueError, match="means must have shape"):
        MIX(x[:1], lg, m, ls)  # a batch that would broadcast
    with pytest.raises(ValueError, match="means must have shape"):
        MIX(x, lg[..., 0], m[..., 0], ls[..., 0])  # no mixture dim
    with pytest.raises(ValueError, match="log_scales must have the shape of means"):
        MIX(x, lg, m, ls[..., :2])
    with pytest.raises(ValueError, match="logit_probs must have the shape of means"):
        MIX(x, lg[:1], m, ls)
    with pytest.raises(ValueError, match="mean must have shape"):
        NLL(x, m, ls[..., 0])
    with pytest.raises(ValueError, match="log_scale must have shape"):
        NLL(x, m[..., 0], ls[:1, :1, 0])
    with pytest.raises(ValueError, match=r"n_bits must be an int in \[1, 16\]"):
        MIX(x, lg, m, ls, n_bits=17)
    with pytest.raises(ValueError, match="n_bits must be a positive int"):
        MIX(x, lg, m, ls, n_bits=0)
    with pytest.raises(TypeError, match="n_bits must be a positive int"):
        MIX(x, lg, m, ls, n_bits=8.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        MIX(x, lg, m, ls, reduction="avg")
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\] on the grid"):
        MIX(x * 1.5, lg, m, ls)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\] on the grid of 2\*\*n_bits = 256"):
        MIX(x + 0.5 / 255, lg, m, ls)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        MIX(torch.full_like(x, float("nan")), lg, m, ls)
    # unchecked (validate_args=False): snapped to the nearest level, clamped to [-1, 1]
    assert torch.equal(MIX(x + 0.2 / 255, lg, m, ls, validate_args=False), MIX(x, lg, m, ls))
    assert torch.equal(MIX(torch.full_like(x, 3.0), lg, m, ls, validate_args=False),
                       MIX(torch.ones_like(x), lg, m, ls))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        MIX(x.to(torch.int64), lg, m, ls)
    with pytest.raises(ValueError, match="x must be on the device of means"):
        MIX(x.to("meta"), lg, m, ls)
    with pytest.raises(ValueError, match="x has an empty batch"):
        MIX(x[:0], lg[:0], m[:0], ls[:0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_bits", [8, 5])
def test_grid_check_judges_a_16bit_x_by_its_value(dtype, n_bits):
    """Issue 20, class 2: every 16-bit value in [-1, 1] is accepted exactly when it lies within a quarter bin of a
    level (judged in float64), as the same value in float32 is. The check ran in 16-bit arithmetic, where
    (x + 1) (L - 1) / 2 rounds to a few bits: bfloat16 values half a bin off the grid passed."""
    levels = 2**n_bits - 1
    bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
    v = bits.view(dtype)
    v = v[(v.float() >= -1) & (v.float() <= 1)].unique()
    t = (v.double() + 1) * (levels / 2)
    off = (t - t.round()).abs()
    # clearly on or clearly off (|off - 1/4| > 1e-3): the float32 arithmetic of the kernels' snapping decides alike
    on, bad = v[off <= 0.249], v[off >= 0.251]
    assert bad.numel() > 10, "the sweep must hold values off the grid"
    lg, m, ls = params((1,), 2, dtype=torch.float32)
    MIX(on.reshape(1, -1).to(dtype), *(p.expand(on.numel(), 2).reshape(1, -1, 2).to(dtype) for p in (lg, m, ls)),
        n_bits=n_bits)  # every on-grid value passes
    accepted = []
    for value in bad[torch.linspace(0, bad.numel() - 1, 64).long()].tolist():  # 64 spread over [-1, 1]
        for dt in (dtype, torch.float32):
            x = torch.tensor([[value]], dtype=dt)
            try:
                NLL(x, torch.zeros_like(x), torch.zeros_like(x), n_bits=n_bits)
                accepted.append((value, dt))
            except ValueError as e:
                assert "on the grid" in str(e)
    assert not accepted, f"{len(accepted)} values off the grid accepted, e.g. {accepted[:4]}"


def test_direct_op_calls_are_checked():
    x, lg, m, ls = (t.detach() for t in _op_args())
    op = torch.ops.fastvae.discretized_logistic_nll
    with pytest.raises(ValueError, match="without logit_probs means must have K = 1"):
        op(x, None, m, ls, 8)
    with pytest.raises(ValueError, match=r"n_bits must be in \[1, 16\]"):
        op(x, lg, m, ls, 0)
    with pytest.raises(TypeError, match="x must have the dtype of means"):
        op(x.double(), lg, m, ls, 8)
    with pytest.raises(ValueError, match="log_scales must have shape"):
        op(x, lg, m, ls[..., :1], 8)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.fastvae.discretized_logistic_nll_backward(torch.ones(3), x, lg, m, ls, 8)
    with pytest.raises(TypeError, match="the CPU kernels take float32 or float64"):
        op(x.half(), lg.half(), m.half(), ls.half(), 8)


# ---- builds, threads, memory ------------------------------------------------------------------------------------

def test_every_cpu_build_agrees(isa_runner):
    """AVX-512, AVX2 and baseline give the same losses and gradients up to the FMA contraction (a few ulp)."""
    x, lg, m, ls = _op_args(K=5)

    def run():
        a = [t.detach().clone().requires_grad_(True) for t in (lg, m, ls)]
        out = MIX(x, *a, reduction="none")
        out.sum().backward()
        return [out.detach()] + [t.grad for t in a]

    res = isa_runner(run)
    base = res["baseline"]
    for isa, r in res.items():
        for got, want in zip(r, base):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), isa


def test_deterministic_across_thread_counts():
    x = data((3, 3, 64, 64), seed=11, dtype=torch.float32)  # rows longer than a task: several chunks per row
    lg, m, ls = params(tuple(x.shape), 4, seed=12, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            a = [t.clone().requires_grad_(True) for t in (lg, m, ls)]
            out = MIX(x, *a, reduction="none")
            out.sum().backward()
            outs.append([out.detach()] + [t.grad for t in a])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_saved_for_backward_are_the_inputs_and_on_the_cpu_the_forward_gradients(monkeypatch):
    """The mixture keeps no intermediate of its own: the backward recomputes from the inputs, except that on the CPU,
    with gradients wanted, the forward with gradients keeps the three gradients (each of means' shape) it computed."""
    from fastvae.ops import logistic as L
    x, lg, m, ls = _op_args(K=6)
    inputs = {t.data_ptr() for t in (x, lg, m, ls)}

    def saved_by(call):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            call()
        return [t for t in saved if t.numel() and t.data_ptr() not in inputs]

    others = saved_by(lambda: MIX(x, lg, m, ls))
    assert len(others) == 3 and all(t.shape == m.shape for t in others)
    monkeypatch.setattr(L, "_with_grad", lambda x, lg, m, ls, n_bits, r, v: L._nll(x, lg, m, ls, n_bits, r, v))
    assert saved_by(lambda: MIX(x, lg, m, ls)) == []
