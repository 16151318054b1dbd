"""Finite math gives finite numbers: inputs at the edges of the float range (tiny and huge variances, extreme
bandwidths, huge values) give the correctly rounded value wherever it is representable (inf only where the true
value overflows), never NaN, forward and backward.

The expected values are closed forms evaluated in mpmath (60 digits) at the exact binary values of the inputs, or
limits, never fastvae.reference, which had the same NaNs (it is checked against the same closed forms here)."""
import math

import mpmath
import pytest
import torch

import fastvae
from helpers import gen, kernel_eps
from fastvae import reference as ref

mp = mpmath.mp
mp.dps = 60
DTYPES = (torch.float32, torch.float64)
LOG_2PI = mp.log(2 * mp.pi)
# A value made of a few rounded products and one exp of ~1 ulp (the kernels' float32 exp is Cephes', ~1-2 ulp;
# splitting e^x into (e^(x/4))^4 multiplies its error by 4): 16 ulp of the sum of the magnitudes of its terms.
ULPS = 16


def mpf(t):
    """The exact value of a 0-dim (or one-element) tensor."""
    return mp.mpf(float(t.detach()))


def assert_close(actual, exact, scale, dtype, what):
    """actual (a float) is within ULPS ulp of `scale` (an mpf: the sum of the magnitudes of the terms) of exact; an
    exact value past the dtype's range must come out as inf of its sign."""
    big = mp.mpf(torch.finfo(dtype).max)
    if abs(exact) > big * (1 + mp.mpf(2) ** -20):
        assert actual == math.copysign(math.inf, float(exact)), f"{what}: got {actual}, exact {exact} overflows"
        return
    assert math.isfinite(actual), f"{what}: got {actual}, exact {mpmath.nstr(exact, 17)}"
    tol = ULPS * mp.mpf(torch.finfo(dtype).eps) * scale + mp.mpf(torch.finfo(dtype).smallest_normal) * 4
    assert abs(mp.mpf(actual) - exact) <= tol, \
        f"{what}: got {actual!r}, exact {mpmath.nstr(exact, 17)}, off by {mpmath.nstr(abs(actual - exact) / tol, 3)}" \
        " tol"


# ---- gaussian_nll ------------------------------------------------------------------------------------------------

TINY_LOGVARS = {torch.float32: [-80.0, -88.8, -100.0, -354.0, -400.0, -1e4, -3e38],
                torch.float64: [-700.0, -710.0, -1000.0, -2830.0, -3000.0, -1e300]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["fastvae", "reference"])
def test_gaussian_nll_at_the_mean_with_a_tiny_variance(dtype, impl):
    """x == mean: (x - mean)^2 e^-lv is 0 for any lv (0 * inf = NaN made one matching pixel NaN the whole sample)."""
    f = fastvae if impl == "fastvae" else ref
    lv = torch.tensor(TINY_LOGVARS[dtype], dtype=dtype).unsqueeze(1).expand(-1, 5).clone().requires_grad_()
    x = torch.randn(lv.shape, dtype=dtype, generator=gen(1))
    mean = x.clone().requires_grad_()
    out = f.gaussian_nll(x, mean, lv, reduction="none")
    for b, v in enumerate(TINY_LOGVARS[dtype]):
        exact = 5 * (mp.mpf(v) + LOG_2PI) / 2
        assert_close(out[b].item(), exact, abs(exact), dtype, f"{impl} gaussian_nll at lv = {v}")
    out.sum().backward()
    assert torch.equal(mean.grad, torch.zeros_like(mean))  # (mean - x) e^-lv = 0
    assert torch.equal(lv.grad, torch.full_like(lv, 0.5))  # (1 - 0) / 2


# (x - mean, lv): a tiny residual with a tiny variance, whose scaled square is representable (or overflows)
TINY_RESIDUALS = {torch.float32: [(1e-30, -130.0), (1e-44, -200.0), (1e-20, -80.0), (2e-38, -250.0),
                                  (1e-42, -300.0), (1e-3, -200.0)],
                  torch.float64: [(1e-300, -1400.0), (1e-200, -900.0), (5e-324, -1480.0), (1e-10, -1600.0)]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["fastvae", "reference"])
def test_gaussian_nll_tiny_residual_and_variance(dtype, impl):
    f = fastvae if impl == "fastvae" else ref
    r = torch.tensor([c[0] for c in TINY_RESIDUALS[dtype]], dtype=dtype).unsqueeze(1)
    lv = torch.tensor([c[1] for c in TINY_RESIDUALS[dtype]], dtype=dtype).unsqueeze(1).requires_grad_()
    mean = torch.zeros_like(r).requires_grad_()
    out = f.gaussian_nll(r, mean, lv, reduction="none")
    out.sum().backward()
    for b in range(len(r)):
        rr, v = mpf(r[b]), mpf(lv[b])
        q = rr * rr * mp.exp(-v)
        exact = (q + v + LOG_2PI) / 2
        what = f"{impl} gaussian_nll(r = {float(rr):.3g}, lv = {float(v)})"
        assert_close(out[b].item(), exact, (q + abs(v) + LOG_2PI) / 2, dtype, what)
        if impl == "reference":
            # autograd through (r q) q forms intermediate products (2 s q) that may overflow where the result does
            # not: the reference's gradients may be inf there, never NaN
            assert not mean.grad.isnan().any() and not lv.grad.isnan().any()
            continue
        assert_close(mean.grad[b, 0].item(), -rr * mp.exp(-v), rr * mp.exp(-v), dtype, what + " d/dmean")
        assert_close(lv.grad[b, 0].item(), (1 - q) / 2, (1 + q) / 2, dtype, what + " d/dlogvar")


def test_gaussian_nll_zero_gradient_times_overflowing_derivative():
    """A sample whose loss gets no gradient contributes 0, even where its derivative itself overflows."""
    lv = torch.full((2, 3), -300.0, requires_grad=True)
    mean = torch.full((2, 3), 1.0, requires_grad=True)
    out = fastvae.gaussian_nll(torch.zeros(2, 3), mean, lv, reduction="none")
    (out * torch.tensor([0.0, 1.0])).sum().backward()
    assert torch.equal(mean.grad[0], torch.zeros(3)) and torch.equal(lv.grad[0], torch.zeros(3))
    assert (mean.grad[1] == math.inf).all() and (lv.grad[1] == -math.inf).all()  # e^300: past float32


# ---- kl_normal -----------------------------------------------------------------------------------------------

def _kl_exact(mu, lv, mp_, lp):
    d = lv - lp
    s2 = (mu - mp_) ** 2 * mp.exp(-lp)
    value = (mp.exp(d) - 1 - d + s2) / 2
    scale = (mp.exp(d) + 1 + abs(d) + s2) / 2
    g_mu = (mu - mp_) * mp.exp(-lp)
    grads = (g_mu, (mp.exp(d) - 1) / 2, -g_mu, (1 - mp.exp(d) - s2) / 2)
    grad_scales = (abs(g_mu), (mp.exp(d) + 1) / 2, abs(g_mu), (1 + mp.exp(d) + s2) / 2)  # the terms' magnitudes
    return value, scale, grads, grad_scales


# (mu - mu_prior, logvar, logvar_prior)
TWO_TINY_VARIANCES = {torch.float32: [(0.0, -100.0, -99.0), (0.0, -300.0, -299.5), (0.0, -1e4, -9999.0),
                                      (1e-30, -100.0, -99.0), (1e-44, -150.0, -151.0), (0.0, 1e-4 - 99.0, -99.0)],
                      torch.float64: [(0.0, -800.0, -799.0), (0.0, -1e5, -99999.0), (1e-300, -1000.0, -1001.0),
                                      (0.0, -2000.0 + 1e-9, -2000.0)]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["fastvae", "reference"])
def test_kl_normal_between_two_tiny_variances(dtype, impl):
    """KL(N(mu, e^-100) || N(mp, e^-99)) is 0.18 per coordinate; e^lv * e^-lp or (mu - mp)^2 e^-lp with mu == mp
    gave NaN."""
    f = fastvae if impl == "fastvae" else ref
    cases = TWO_TINY_VARIANCES[dtype]
    col = lambda i: torch.tensor([c[i] for c in cases], dtype=dtype).unsqueeze(1)  # noqa: E731
    mp_ = torch.full((len(cases), 1), 0.5, dtype=dtype, requires_grad=True)
    mu = (mp_.detach() + col(0)).requires_grad_()
    lv, lp = col(1).requires_grad_(), col(2).requires_grad_()
    out = f.kl_normal(mu, lv, mp_, lp, reduction="none")
    out.sum().backward()
    for b in range(len(cases)):
        value, scale, grads, grad_scales = _kl_exact(mpf(mu[b]), mpf(lv[b]), mpf(mp_[b]), mpf(lp[b]))
        what = f"{impl} kl_normal case {cases[b]}"
        # the kernels compute e^d - 1 - d without cancellation (the value is the scale of their error); the
        # reference as expm1(d) - d (a few ulp of its terms)
        assert_close(out[b].item(), value, abs(value) if impl == "fastvae" else scale, dtype, what)
        for name, t, g, gs in zip(("mu", "logvar", "mu_prior", "logvar_prior"), (mu, lv, mp_, lp), grads, grad_scales):
            assert_close(t.grad[b, 0].item(), g, abs(g) if impl == "fastvae" else gs, dtype, f"{what} d/d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_normal_of_close_variances_keeps_its_digits(dtype):
    """lv = lp + d, d small: e^d - 1 - d ~ d^2 / 2 is computed to a few ulp of itself (exp(d) - 1 - d loses them all
    in float32: 1e-4 of cancellation)."""
    lp = torch.tensor([0.5, -3.0, 7.0, 0.0, 0.25], dtype=dtype).unsqueeze(1)
    lv = (lp + torch.tensor([1e-4, -3e-5, 0.3, -0.9, 1e-7], dtype=dtype).unsqueeze(1)).requires_grad_()
    mu = torch.zeros_like(lp)
    out = fastvae.kl_normal(mu, lv, mu, lp, reduction="none")
    out.sum().backward()
    std = fastvae.kl_normal(mu[3:], (lv - lp)[3:].detach(), reduction="none")  # the standard prior: lp = 0
    for b in range(len(lp)):
        value, _, grads, _ = _kl_exact(0, mpf(lv[b]), 0, mpf(lp[b]))
        what = f"kl_normal lv - lp = {float(lv[b].detach() - lp[b]):.3g}"
        assert_close(out[b].item(), value, abs(value), dtype, what)
        assert_close(lv.grad[b, 0].item(), grads[1], abs(grads[1]), dtype, "d/dlogvar")
    for b in range(2):
        value, _, _, _ = _kl_exact(0, mpf((lv - lp)[3 + b]), 0, 0)
        assert_close(std[b].item(), value, abs(value), dtype, "standard kl_normal")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_head_kl_of_a_variance_near_one_keeps_its_digits(dtype):
    """reparameterize_kl's KL shares the exp of z, e^lv = (e^(lv/4))^4, and is as accurate as kl_normal's: the
    series of e^lv - 1 - lv near lv = 0, where (e^lv - 1) - lv cancels; its gradient likewise."""
    lv = torch.tensor([[1e-4, -3e-5, 0.3, -0.9, 1e-7, 2.0]], dtype=dtype).requires_grad_()
    mu = torch.zeros_like(lv, requires_grad=True)
    z, kl = fastvae.reparameterize_kl(mu, lv, generator=gen(9))
    kl.sum().backward()
    terms = [(mp.exp(mpf(v)) - 1 - mpf(v)) / 2 for v in lv[0].detach()]
    assert_close(kl.item(), sum(terms), sum(terms), dtype, "reparameterize_kl kl")
    for j, v in enumerate(lv[0].detach()):
        g = (mp.exp(mpf(v)) - 1) / 2
        assert_close(lv.grad[0, j].item(), g, abs(g), dtype, f"reparameterize_kl d kl / d logvar at {float(v):.3g}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_kl_with_extreme_logvar(dtype):
    lvs = [-100.0, -1e4, -3e38] if dtype == torch.float32 else [-800.0, -1e300]
    lv = torch.tensor(lvs, dtype=dtype).unsqueeze(1).requires_grad_()
    mu = torch.full_like(lv, 0.25).requires_grad_()
    out = fastvae.kl_normal(mu, lv, reduction="none")
    out.sum().backward()
    for b, v in enumerate(lvs):
        exact = (mp.mpf(0.25) ** 2 + mp.exp(v) - 1 - v) / 2
        assert_close(out[b].item(), exact, abs(exact), dtype, f"kl std lv = {v}")
        assert_close(lv.grad[b, 0].item(), (mp.exp(v) - 1) / 2, mp.mpf(0.5), dtype, "d/dlogvar")
    assert torch.equal(mu.grad, torch.full_like(mu, 0.25))


# ---- reparameterization --------------------------------------------------------------------------------------

def test_reparameterize_with_extreme_logvar():
    """z = mu + e^(lv/2) eps is finite wherever it is representable (e^(lv/2) alone may not be), and a zero
    upstream gradient gives zero gradients where the derivative overflows (0 * inf was NaN)."""
    lv_values = torch.tensor([180.0, 200.0, 240.0, 300.0, -300.0, 100.0, 0.0, -100.0])
    lv = lv_values.repeat(32).requires_grad_()
    mu = torch.zeros_like(lv, requires_grad=True)
    z = fastvae.reparameterize(mu, lv, generator=gen(5))
    eps = kernel_eps(5, lv.shape)
    w = torch.tensor([0.0, 1e-30, 1.0, 0.0]).repeat(64)  # upstream gradients: 0, tiny, 1
    (z * w).sum().backward()
    for j in range(len(lv)):
        v, e = mpf(lv[j]), mpf(eps[j])
        sd = mp.exp(v / 2)
        what = f"reparameterize lv = {float(v)}, eps = {float(e):.3g}"
        assert_close(z[j].item(), sd * e, abs(sd * e), torch.float32, what)
        gw = mpf(w[j])
        assert_close(lv.grad[j].item(), gw * sd * e / 2, abs(gw * sd * e / 2), torch.float32, what + " d/dlogvar")
    assert torch.equal(mu.grad, w)


def test_reparameterize_kl_gradient_with_a_huge_logvar_and_no_kl_gradient():
    """Only z reaches the loss (grad_kl is 0): gk (e^lv - 1) with e^100 past float32 was 0 * inf = NaN."""
    lv = torch.full((4, 8), 100.0, requires_grad=True)
    mu = torch.zeros(4, 8, requires_grad=True)
    z, _ = fastvae.reparameterize_kl(mu, lv, generator=gen(6))
    (z * 1e-30).sum().backward()
    eps = kernel_eps(6, (4, 8))
    for j in range(32):
        exact = mp.mpf(1e-30) * mp.exp(50) * mpf(eps.view(-1)[j]) / 2
        assert_close(lv.grad.view(-1)[j].item(), exact, abs(exact), torch.float32, "reparameterize_kl d/dlogvar")


def test_reparameterize_tril_with_tiny_diagonal():
    L = torch.diag(torch.tensor([1e-30, 1e-38, 3e-39])).unsqueeze(0).requires_grad_()
    mu = torch.zeros(1, 3, requires_grad=True)
    z, log_q = fastvae.reparameterize_tril(mu, L, generator=gen(7))
    log_q.sum().backward()
    eps = kernel_eps(7, (1, 3))
    diag = [mpf(L[0, i, i]) for i in range(3)]
    exact = -sum(mpf(e) ** 2 for e in eps[0]) / 2 - sum(mp.log(d) for d in diag) - 3 * LOG_2PI / 2
    assert_close(log_q.item(), exact, sum(abs(mp.log(d)) for d in diag) + 5, torch.float32, "tril log_q")
    for i in range(3):
        assert_close(L.grad[0, i, i].item(), -1 / diag[i], 1 / diag[i], torch.float32, "tril d log_q / d L_ii")
        assert_close(z[0, i].item(), diag[i] * mpf(eps[0, i]), abs(diag[i] * mpf(eps[0, i])), torch.float32, "tril z")


# ---- Bernoulli -------------------------------------------------------------------------------------------------

def test_bernoulli_nll_with_huge_logits():
    logits = torch.tensor([[3e38, -3e38, 1e30, -1e30, 1e20, 88.0, -104.0]], requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 1.0]])
    for j in range(logits.shape[1]):
        lj = logits[:, j:j + 1].detach().clone().requires_grad_()
        out = fastvae.bernoulli_nll(x[:, j:j + 1], lj, reduction="sum")
        out.backward()
        l_, x_ = mpf(lj), mpf(x[0, j])
        exact = mp.log1p(mp.exp(-abs(l_))) + (1 - x_ if l_ > 0 else x_) * abs(l_)  # softplus(l) - x l
        assert_close(out.item(), exact, abs(exact), torch.float32, f"bernoulli_nll l = {float(l_)}, x = {float(x_)}")
        sig = 1 / (1 + mp.exp(-l_))
        assert_close(lj.grad.item(), sig - x_, 1, torch.float32, "bernoulli_nll d/dlogits")


# ---- distances --------------------------------------------------------------------------------------------------

TINY_BANDWIDTHS = [1e-20, 1e-30, 1e-200, 5e-324]
HUGE_BANDWIDTHS = [1e19, 1e30, 1e200, 1.7e308]


def _mmd_points():
    g = gen(11)
    return torch.randn(2, 20, 3, generator=g), torch.randn(2, 16, 3, generator=g)


@pytest.mark.parametrize("kernel", ["rbf", "imq", "laplacian"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("prior", [False, True])
def test_mmd_with_extreme_bandwidths_gives_the_limits(kernel, estimator, prior):
    """h -> 0: k(u > 0) = 0 and k(0) = 1; h -> inf: k = 1. The MMD is then 0, or 1/N + 1/M (1/N against the rbf
    prior's closed form: E k(y, y') -> 0) for the biased estimator at h -> 0; the gradients vanish. Float32: the
    kernel parameters 1/(2h^2), 1/C overflowed (NaN), C = 2 d h^2 too (inf/inf)."""
    x, y = _mmd_points()
    x.requires_grad_()
    y = None if prior else y.requires_grad_()
    N, M = 20, 20 if prior else 16
    for h in TINY_BANDWIDTHS + HUGE_BANDWIDTHS:
        out = fastvae.mmd(x, y, kernel=kernel, bandwidth=[h, 1e-3 * h if h > 1 else h], estimator=estimator,
                          generator=gen(2))
        tiny = h < 1
        if tiny and estimator == "biased":
            limit = 2 / N + (0 if prior and kernel == "rbf" else 2 / M)  # two bandwidths, each k(0) = 1
        else:
            limit = 0.0
        tol = 64 * torch.finfo(torch.float32).eps * 4 * 2  # rounding of sums of terms of magnitude <= 1 (x4, x2 bw)
        assert out.isfinite().all() and torch.allclose(out, torch.full_like(out, limit), rtol=0, atol=tol), \
            (kernel, estimator, prior, h, out)
        grads = torch.autograd.grad(out.sum(), [x] if prior else [x, y])
        for g in grads:
            assert g.isfinite().all() and g.abs().max() <= 1e-6, (kernel, h, g.abs().max())


def test_energy_distance_of_duplicate_points():
    """sqrt at 0: coincident points (and x == y) give finite gradients, those of the exact formula in float64."""
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 2.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    out = fastvae.energy_distance(x, y)
    gx, gy = torch.autograd.grad(out, [x, y])

    def exact(a, b):  # mean distances over i != j and i, j, from differences (no dot products)
        def mean_dist(p, q, same):
            d = (p[:, None] - q[None]).pow(2).sum(-1)
            r = torch.where(d > 0, d.clamp_min(1e-300).sqrt(), torch.zeros_like(d))
            n = p.shape[0]
            return r.sum() / (n * (n - 1) if same else n * q.shape[0])
        return 2 * mean_dist(a, b, False) - mean_dist(a, a, True) - mean_dist(b, b, True)

    ex, ey = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    e = exact(ex, ey)
    egx, egy = torch.autograd.grad(e, [ex, ey])
    torch.testing.assert_close(out, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, egx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gy, egy, rtol=1e-10, atol=1e-12)


def test_sliced_wasserstein_with_huge_values():
    """Float32 projections of 2e19: each squared difference overflows float32, their mean over N does not."""
    x = torch.tensor([[2e19], [-2e19], [1.5e19], [-1.8e19]], requires_grad=True)
    out = fastvae.sliced_wasserstein(x, projections=torch.ones(1, 1))
    out.backward()
    xs = sorted(range(4), key=lambda i: float(x[i, 0].detach()))
    q = [mp.sqrt(2) * mpmath.erfinv(2 * (mp.mpf(i) + 0.5) / 4 - 1) for i in range(4)]
    exact = sum((mpf(x[xs[i], 0]) - q[i]) ** 2 for i in range(4)) / 4
    assert_close(out.item(), exact, exact, torch.float32, "sliced_wasserstein of 2e19")
    for rank, i in enumerate(xs):
        g = 2 * (mpf(x[i, 0]) - q[rank]) / 4
        assert_close(x.grad[i, 0].item(), g, abs(g), torch.float32, "sliced_wasserstein d/dx")


# ---- the VAE -----------------------------------------------------------------------------------------------------

def _vae_with_posterior_logvar(logvar):
    torch.manual_seed(0)
    model = fastvae.VAE(8, 2, hidden_dims=(4,), divergence="mmd")
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # q(z|x) = N((0.3, -0.2), e^logvar I) for every x
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.3, -0.2, logvar, logvar]))
    return model


def test_vae_mmd_log_likelihood_with_a_tiny_posterior_variance():
    """VAE(divergence="mmd").log_likelihood with a posterior logvar of -95 was NaN (its loss was finite): log q(z|x)
    is -gaussian_nll(mu, z, logvar), and z = mu + e^-47.5 eps rounds to mu, so (z - mu)^2 e^95 was 0 * inf. z is mu
    in float32 at logvar -80 and -95 alike, so log q(z|x) = -d/2 (logvar + log 2 pi) is 0.5 d (95 - 80) = 15 higher
    at -95, and the estimate 15 lower."""
    x = torch.rand(3, 8, generator=gen(3))
    ll = {lv: _vae_with_posterior_logvar(lv).log_likelihood(x, n_samples=4, generator=gen(4)) for lv in (-80.0, -95.0)}
    loss = _vae_with_posterior_logvar(-95.0)(x, generator=gen(4)).loss
    assert loss.isfinite() and ll[-95.0].isfinite().all(), ll
    torch.testing.assert_close(ll[-95.0] - ll[-80.0], torch.full((3,), -15.0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("kernel", ["energy", "rbf", "imq", "laplacian"])
@pytest.mark.parametrize("scale", [1e20, 3e18, 1e-25, 1e-42])
def test_mmd_of_points_at_the_edges_of_the_float_range(kernel, scale):
    """Float32 points at 1e20 made |x - y|^2 overflow (the energy distance was inf - inf = NaN), points at 1e-25
    underflow it (the energy distance was 0): the kernels work on the points divided by a power of two. The value
    is that of float64 at the same float32 inputs; scaling the points and the bandwidth together changes nothing
    (energy: scales the distance)."""
    g = gen(13)
    x = (torch.randn(2, 24, 3, generator=g, dtype=torch.float64) * scale).float().requires_grad_()
    y = (torch.randn(2, 20, 3, generator=g, dtype=torch.float64) * scale + 0.5 * scale).float().requires_grad_()
    bw = [0.5 * scale, 2.0 * scale]
    out = fastvae.mmd(x, y, kernel=kernel, bandwidth=bw)
    gx, gy = torch.autograd.grad(out.sum(), [x, y])
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    exact = fastvae.mmd(x64, y64, kernel=kernel, bandwidth=bw)
    ex, ey = torch.autograd.grad(exact.sum(), [x64, y64])
    unit = scale if kernel == "energy" else 1.0  # the magnitude of one pair's kernel value
    quantum = 4 * 2.0**-149  # a denormal float32 result (energy at 1e-42) is rounded to multiples of 2^-149
    assert out.isfinite().all(), out
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=max(1e-5 * 4 * unit, quantum))
    big = torch.finfo(torch.float32).max
    for got, want in ((gx, ex), (gy, ey)):
        over = want.abs() > big  # (rbf at 1e-42: gradients ~1e40) inf of the right sign where float32 overflows
        assert torch.equal(got[over], want[over].sign() * math.inf)
        assert got[~over].isfinite().all()
        scale_g = want[~over].abs().max().item() if (~over).any() else 0.0
        # float32 gradients in the s_i a_i - G_i form carry its cancellation (more on the coarse grid of denormal
        # inputs at 1e-42): 1e-4 of the largest entry
        torch.testing.assert_close(got[~over].double(), want[~over], rtol=0, atol=max(1e-4 * scale_g, quantum))
