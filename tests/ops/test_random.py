"""The random ops (reparameterize, reparameterize_kl, reparameterize_tril) and their noise stream: Philox
known answers, the normal transform, values and gradients against fastvae.reference at the kernels' own eps,
torch.distributions.MultivariateNormal, gradcheck, opcheck, the distribution of the noise (moments,
Kolmogorov-Smirnov), reproducibility, n_samples, and that eps is never saved for backward."""
import math

import numpy as np
import pytest
import torch
import torch.distributions as D
from hypothesis import given, strategies as st
from scipy import stats

import fastvae
from fastvae import reference as ref

from helpers import (EPS, OPCHECK_UTILS, assert_grad_close, assert_within, f64, gen, grad_tol, kernel_eps, key_of,
                      supported_isas, sum_tol)

DTYPES = [torch.float32, torch.float64]
C = fastvae._C


# ---- Philox and the normal transform -------------------------------------------------------------------------

@pytest.mark.parametrize("ctr,key,expected", [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff] * 4, [0xffffffff] * 2, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
])
def test_philox_known_answers(ctr, key, expected):
    """Random123's known-answer vectors of Philox4x32-10."""
    assert C.philox_kat(ctr, key) == expected


def _philox_np(counter, key):
    """Philox4x32-10 in numpy (counter = (lo, hi, 0, 0)), an independent implementation."""
    M0, M1, W0, W1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), 0x9E3779B9, 0xBB67AE85
    zero = np.zeros_like(counter)
    c = np.stack([counter & 0xFFFFFFFF, counter >> 32, zero, zero]).astype(np.uint64)
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = np.stack([(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & np.uint64(0xFFFFFFFF),
                      (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & np.uint64(0xFFFFFFFF)])
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c


def _normals_np(start, n, key):
    """eps[start:start+n] by the documented recipe, in float64: lane j % 4 of Box-Muller of philox(j // 4)."""
    j = np.arange(start, start + n, dtype=np.uint64)
    groups = np.unique(j >> np.uint64(2))
    w = _philox_np(groups, key)
    u = lambda x: (x >> np.uint64(1)).astype(np.float64) * 2.0**-31 + 2.0**-32  # noqa: E731
    out = np.empty((len(groups), 4))
    for pair in (0, 1):
        r = np.sqrt(-2 * np.log(u(w[2 * pair])))
        th = np.pi * (2 * u(w[2 * pair + 1]) - 1)
        out[:, 2 * pair], out[:, 2 * pair + 1] = r * np.cos(th), r * np.sin(th)
    return out.reshape(-1)[(j - (groups[0] << np.uint64(2))).astype(np.int64)]


@pytest.mark.parametrize("start,n,key", [(0, 1000, 0), (3, 517, 12345), (2**33 + 1, 300, 2**61 + 7),
                                         (4 * (2**32 - 2) + 1, 40, 99)])  # the counter's high word flips
def test_normals_follow_the_documented_recipe(start, n, key):
    got = C.normals_cpu(start, n, key).double().numpy()
    expected = _normals_np(start, n, key)
    # float32 Box-Muller with ~2-ulp polynomials: |eps| <= 6.7, so an absolute bound of a few float32 ulps of 8
    np.testing.assert_allclose(got, expected, rtol=0, atol=8 * 8 * EPS[torch.float32])


def test_normals_any_offset_gives_the_same_stream(isa_runner):
    key = key_of(0)
    full = C.normals_cpu(0, 20000, key)
    for start, n in ((1, 255), (3, 4097), (255, 258), (8191, 3000), (19999, 1)):
        assert torch.equal(C.normals_cpu(start, n, key), full[start:start + n])


def test_normals_every_cpu_build(isa_runner):
    res = isa_runner(lambda: C.normals_cpu(7, 100003, key_of(1)))
    fma = [isa for isa in res if isa != "baseline"]
    for isa in fma:  # builds with FMA share every rounding: bit-identical
        assert torch.equal(res[isa], res[fma[0]]), isa
    # baseline x86-64 has no FMA (vmath.h: fv_fma is a*b+c there), so its normals may differ in the last bit;
    # a few float32 ulps of |eps| <= 8
    for isa in res:
        assert (res[isa] - res["baseline"]).abs().max().item() <= 4 * 8 * EPS[torch.float32], isa


def test_normals_distribution():
    """The raw stream: moments and a Kolmogorov-Smirnov test (fixed key: deterministic, so not flaky)."""
    e = C.normals_cpu(0, 400000, key_of(2)).double().numpy()
    n = len(e)
    assert abs(e.mean()) < 5 / math.sqrt(n)
    assert abs(e.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(e)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(e)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(e, "norm").pvalue > 1e-3
    for lag in (1, 2, 4):  # the four lanes of a counter, and neighbouring counters, are uncorrelated
        assert abs(np.corrcoef(e[:-lag], e[lag:])[0, 1]) < 5 / math.sqrt(n)
    assert np.isfinite(e).all() and np.abs(e).max() < 7


# ---- reparameterize vs the reference at the kernels' eps ----------------------------------------------------

@st.composite
def latent_cases(draw):
    kind = draw(st.sampled_from(["small", "edge", "long", "image", "scalar"]))
    if kind == "small":
        shape = (draw(st.integers(1, 9)), draw(st.integers(1, 40)))
    elif kind == "edge":
        shape = (draw(st.integers(1, 3)), draw(st.sampled_from([255, 256, 257, 8191, 8192, 8193, 16385])))
    elif kind == "long":
        shape = (draw(st.integers(1, 2)), draw(st.integers(8194, 20011)))
    elif kind == "image":
        shape = tuple(draw(st.integers(1, 6)) for _ in range(draw(st.integers(1, 4))))
    else:
        shape = ()
    k = draw(st.sampled_from([None, None, 1, 2, 5]))
    return shape, k, draw(st.integers(0, 2**31 - 1))


def _inputs(shape, seed, dtype, lv_range=4.0):
    g = torch.Generator().manual_seed(seed + 1)
    mu = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    lv = torch.empty(shape, dtype=torch.float64).uniform_(-lv_range, lv_range, generator=g).to(dtype)
    return mu, lv


def _z_tol(mu, lv, eps, dtype):
    # z = mu + exp(lv/2) eps: a few ulps of |mu| + |sd eps| (exp within ~2 ulp, eps itself exact)
    return 8 * EPS[dtype] * (mu.double().abs() + torch.exp(0.5 * lv.double()) * eps.abs())


@given(case=latent_cases(), dtype=st.sampled_from(DTYPES))
def test_reparameterize_matches_reference(case, dtype):
    shape, k, seed = case
    mu, lv = _inputs(shape, seed, dtype)
    z = fastvae.reparameterize(mu, lv, n_samples=k, generator=gen(seed))
    out_shape = ((k,) if k else ()) + tuple(shape)
    assert z.shape == out_shape and z.dtype == dtype
    eps = kernel_eps(seed, out_shape)
    expected = ref.reparameterize(mu.double(), lv.double(), n_samples=k, eps=eps)
    assert_within(z, expected, _z_tol(mu, lv, eps, dtype), "z")


@given(case=latent_cases(), dtype=st.sampled_from(DTYPES))
def test_reparameterize_gradients(case, dtype):
    shape, k, seed = case
    mu, lv = _inputs(shape, seed, dtype)
    out_shape = ((k,) if k else ()) + tuple(shape)
    w = (torch.randn(out_shape, generator=gen(seed + 2), dtype=torch.float64) + 0.5).to(dtype)  # not all ones
    mu_, lv_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    (fastvae.reparameterize(mu_, lv_, n_samples=k, generator=gen(seed)) * w).sum().backward()
    mr, lr = mu.double().requires_grad_(), lv.double().requires_grad_()
    eps = kernel_eps(seed, out_shape)
    (ref.reparameterize(mr, lr, n_samples=k, eps=eps) * w.double()).sum().backward()
    # error scales: sums over the k samples of |w| and of |w| sd |eps| / 2 (the terms may cancel)
    aw = w.double().abs()
    mag_mu = aw.sum_to_size(mu.shape)
    mag_lv = (0.5 * aw * torch.exp(0.5 * lv.double()) * eps.abs()).sum_to_size(lv.shape)
    assert_within(mu_.grad, mr.grad, grad_tol(dtype, k or 1, mag_mu), "dmu")
    assert_within(lv_.grad, lr.grad, grad_tol(dtype, k or 1, mag_lv), "dlogvar")


@given(case=latent_cases(), dtype=st.sampled_from(DTYPES), data=st.data())
def test_reparameterize_kl_matches_reference(case, dtype, data):
    shape, _, seed = case
    if len(shape) == 0:
        shape = (3,)
    mu, lv = _inputs(shape, seed, dtype)
    mu_, lv_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    z, kl = fastvae.reparameterize_kl(mu_, lv_, generator=gen(seed))
    assert z.shape == mu.shape and z.dtype == dtype and kl.shape == (shape[0],)
    eps = kernel_eps(seed, tuple(shape))
    mr, lr = mu.double().requires_grad_(), lv.double().requires_grad_()
    ze, kle = ref.reparameterize_kl(mr, lr, eps=eps)
    assert_within(z, ze, _z_tol(mu, lv, eps, dtype), "z")
    Dn = mu[0].numel()
    scale = (0.5 * (mu.double() ** 2 + torch.exp(lv.double()) + 1 + lv.double().abs())).reshape(shape[0], -1).sum(1)
    assert_within(kl, kle, sum_tol(dtype, Dn, scale), "kl")
    # gradients with grad outputs that are not all ones; sometimes only one of the two outputs is used
    use = data.draw(st.sampled_from(["both", "z", "kl"]), label="outputs used")
    wz = (torch.randn(mu.shape, generator=gen(seed + 3), dtype=torch.float64) + 0.5).to(dtype).double()
    wk = (torch.randn(kl.shape, generator=gen(seed + 4), dtype=torch.float64) - 0.5).to(kl.dtype).double()
    loss = lambda z_, kl_: ((z_ * wz.to(z_.dtype)).sum() if use != "kl" else 0) + \
        ((kl_ * wk.to(kl_.dtype)).sum() if use != "z" else 0)  # noqa: E731
    loss(z, kl).backward()
    loss(ze, kle).backward()
    # error scales of dmu = wz + wk mu and dlv = (wz sd eps + wk (sd^2 - 1)) / 2, term by term
    awk = wk.abs().reshape(-1, *([1] * (mu.dim() - 1)))
    sd = torch.exp(0.5 * lv.double())
    mag_mu = wz.abs() + awk * mu.double().abs()
    mag_lv = 0.5 * (wz.abs() * sd * eps.abs() + awk * (sd * sd + 1))
    assert_within(mu_.grad, mr.grad, grad_tol(dtype, 1, mag_mu), "dmu")
    assert_within(lv_.grad, lr.grad, grad_tol(dtype, 1, mag_lv), "dlogvar")


def test_reparameterize_kl_draws_the_reparameterize_z():
    mu, lv = _inputs((5, 8200), 0, torch.float32)
    z1 = fastvae.reparameterize(mu, lv, generator=gen(42))
    z2, kl = fastvae.reparameterize_kl(mu, lv, generator=gen(42))
    z3 = fastvae.reparameterize(mu, lv, n_samples=1, generator=gen(42))
    assert torch.equal(z1, z2) and torch.equal(z1, z3[0])
    torch.testing.assert_close(kl, fastvae.kl_normal(mu, lv, reduction="none"), rtol=1e-6, atol=1e-4)


# ---- reparameterize_tril -------------------------------------------------------------------------------------

def _tril(R, d, g, dtype, batch=(), positive=False):
    A = torch.randn((*batch, R, d, d), generator=g, dtype=torch.float64) * 0.5
    L = torch.tril(A, -1)
    diag = torch.exp(torch.randn((*batch, R, d), generator=g, dtype=torch.float64) * 0.3)
    if not positive:
        diag = diag * torch.where(torch.rand((*batch, R, d), generator=g) < 0.3, -1.0, 1.0).double()
    return (L + torch.diag_embed(diag)).to(dtype)


@given(R=st.integers(1, 7), d=st.sampled_from([1, 2, 3, 5, 16, 33, 257, 300]), k=st.sampled_from([None, 1, 3]),
       batch=st.sampled_from([(), (2,)]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_reparameterize_tril_matches_reference(R, d, k, batch, dtype, seed):
    if d > 64:
        R, k = min(R, 2), (None if k is None else 2)
    g = gen(seed + 1)
    mu = torch.randn((*batch, R, d), generator=g, dtype=torch.float64).to(dtype)
    L = _tril(R, d, g, dtype, batch)
    mu_, L_ = mu.clone().requires_grad_(), L.clone().requires_grad_()
    z, log_q = fastvae.reparameterize_tril(mu_, L_, n_samples=k, generator=gen(seed))
    lead = (k,) if k else ()
    assert z.shape == (*lead, *batch, R, d) and log_q.shape == (*lead, *batch, R) and z.dtype == dtype
    eps = kernel_eps(seed, (*lead, *batch, R, d))
    mr, Lr = mu.double().requires_grad_(), L.double().requires_grad_()
    ze, lqe = ref.reparameterize_tril(mr, Lr, n_samples=k, eps=eps)
    zscale = mu.double().abs() + (L.double().abs() @ eps.abs().unsqueeze(-1)).squeeze(-1)
    assert_within(z, ze, sum_tol(dtype, d, zscale), "z")
    qscale = 0.5 * (eps ** 2).sum(-1) + L.double().diagonal(dim1=-2, dim2=-1).abs().log().abs().sum(-1) + d
    assert_within(log_q, lqe, sum_tol(dtype, d, qscale), "log_q")
    wz = (torch.randn(z.shape, generator=gen(seed + 2), dtype=torch.float64) + 0.5).to(dtype).double()
    wq = (torch.randn(log_q.shape, generator=gen(seed + 3), dtype=torch.float64) - 0.5).to(log_q.dtype).double()
    ((z * wz.to(dtype)).sum() + (log_q * wq.to(log_q.dtype)).sum()).backward()
    ((ze * wz).sum() + (lqe * wq).sum()).backward()
    # error scales: dmu = sum_s wz; dL_ij = sum_s wz_i eps_j - [i = j] sum_s wq / L_ii, term by term
    mag_mu = wz.abs().sum_to_size(mu.shape)
    mag_L = (wz.abs().unsqueeze(-1) * eps.abs().unsqueeze(-2)).sum_to_size(L.shape) + torch.diag_embed(
        wq.abs().sum_to_size(L.shape[:-2]).unsqueeze(-1) / L.double().diagonal(dim1=-2, dim2=-1).abs())
    assert_within(mu_.grad, mr.grad, grad_tol(dtype, k or 1, mag_mu), "dmu")
    # the kernel reads only the lower triangle (z = mu + tril(L) eps): the entries above the diagonal get no gradient
    assert torch.equal(torch.triu(L_.grad, 1), torch.zeros_like(L_.grad))
    assert_within(torch.tril(L_.grad), torch.tril(Lr.grad), grad_tol(dtype, 2 * (k or 1), mag_L), "dscale_tril")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparameterize_tril_log_q_is_the_mvn_log_prob(dtype):
    g = gen(5)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64).to(dtype)
    L = _tril(4, 6, g, dtype, positive=True)
    z, log_q = fastvae.reparameterize_tril(mu, L, n_samples=3, generator=gen(6))
    expected = D.MultivariateNormal(mu.double(), scale_tril=L.double()).log_prob(z.double())
    torch.testing.assert_close(log_q.double(), expected, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-4 if dtype == torch.float32 else 1e-10)


def test_reparameterize_tril_sample_covariance():
    g = gen(7)
    d = 3
    L = _tril(1, d, g, torch.float64)[0]
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    z, _ = fastvae.reparameterize_tril(mu, L, n_samples=40000, generator=gen(8))
    zc = z - mu
    cov = zc.T @ zc / z.shape[0]
    torch.testing.assert_close(z.mean(0), mu, rtol=0, atol=0.03)
    torch.testing.assert_close(cov, L @ L.T, rtol=0, atol=0.05 * (L @ L.T).abs().max().item())


# ---- gradcheck and opcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 3])
def test_reparameterize_gradcheck(k):
    mu, lv = _inputs((3, 5), 9, torch.float64)
    assert torch.autograd.gradcheck(lambda m, l: fastvae.reparameterize(m, l, n_samples=k, generator=gen(9)),
                                    (mu.requires_grad_(), lv.requires_grad_()))


def test_reparameterize_kl_gradcheck():
    mu, lv = _inputs((3, 5), 10, torch.float64)
    assert torch.autograd.gradcheck(lambda m, l: fastvae.reparameterize_kl(m, l, generator=gen(10)),
                                    (mu.requires_grad_(), lv.requires_grad_()))


@pytest.mark.parametrize("k", [None, 2])
def test_reparameterize_tril_gradcheck(k):
    g = gen(11)
    mu = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    L = _tril(2, 4, g, torch.float64).requires_grad_()
    # validate_args=False: gradcheck perturbs the zeros above the diagonal (the kernel ignores them)
    assert torch.autograd.gradcheck(
        lambda m, l: fastvae.reparameterize_tril(m, l, n_samples=k, generator=gen(11), validate_args=False), (mu, L))


def _seed(s=123):
    return torch.tensor([key_of(s)], dtype=torch.int64)


# (op name, a function making its arguments): every op, forward and backward; also run on CUDA
OPCHECK_CASES = [
    ("reparameterize", lambda: (f64(3, 5).requires_grad_(), f64(3, 5, seed=1).requires_grad_(), _seed(), None)),
    ("reparameterize", lambda: (f64(3, 5).requires_grad_(), f64(3, 5, seed=1).requires_grad_(), _seed(), 4)),
    ("reparameterize_backward", lambda: (f64(3, 5), f64(3, 5, seed=1), _seed(), None)),
    ("reparameterize_backward", lambda: (f64(2, 3, 5), f64(3, 5, seed=1), _seed(), 2)),
    ("reparameterize_kl", lambda: (f64(3, 5).requires_grad_(), f64(3, 5, seed=1).requires_grad_(), _seed())),
    ("reparameterize_kl_backward", lambda: (f64(3, 5), f64(3), f64(3, 5, seed=1), f64(3, 5, seed=2), _seed())),
    ("reparameterize_tril", lambda: (f64(3, 4).requires_grad_(), _tril(3, 4, gen(1), torch.float64).requires_grad_(),
                                     _seed(), None)),
    ("reparameterize_tril", lambda: (f64(3, 4).requires_grad_(), _tril(3, 4, gen(1), torch.float64).requires_grad_(),
                                     _seed(), 2)),
    ("reparameterize_tril_backward", lambda: (f64(2, 3, 4), f64(2, 3), _tril(3, 4, gen(1), torch.float64),
                                              _seed(), 2)),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: c[0])
def test_opcheck(case):
    name, make = case
    torch.library.opcheck(getattr(torch.ops.fastvae, name).default, make(), test_utils=OPCHECK_UTILS)


# ---- the distribution of z -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 8])
def test_reparameterize_moments_and_ks(k):
    g = gen(12)
    mu = torch.randn(64, 1000, generator=g) * 3
    lv = torch.empty(64, 1000).uniform_(-6, 6, generator=g)
    z = fastvae.reparameterize(mu, lv, n_samples=k, generator=gen(13))
    e = ((z.double() - mu.double()) / torch.exp(0.5 * lv.double())).reshape(-1).numpy()
    n = e.size
    assert abs(e.mean()) < 5 / math.sqrt(n)
    assert abs(e.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(e)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(e)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(e, "norm").pvalue > 1e-3
    # per-coordinate: one column over the batch, and the k samples of one element are distinct draws
    assert stats.kstest(e.reshape(-1, 1000)[:, 17], "norm").pvalue > 1e-4
    if k:
        ek = e.reshape(k, -1)
        assert abs(np.corrcoef(ek[0], ek[1])[0, 1]) < 5 / math.sqrt(ek.shape[1])


def test_reparameterize_kl_moments_and_ks():
    mu = torch.zeros(100, 3000) + 1.5
    lv = torch.full((100, 3000), -1.0)
    z, _ = fastvae.reparameterize_kl(mu, lv, generator=gen(14))
    e = ((z.double() - 1.5) / math.exp(-0.5)).reshape(-1).numpy()
    assert stats.kstest(e, "norm").pvalue > 1e-3


# ---- reproducibility -----------------------------------------------------------------------------------------

def test_reproducible_with_manual_seed():
    mu, lv = _inputs((4, 300), 15, torch.float32)
    torch.manual_seed(1234)
    a = fastvae.reparameterize(mu, lv)
    b = fastvae.reparameterize(mu, lv)
    torch.manual_seed(1234)
    assert torch.equal(a, fastvae.reparameterize(mu, lv))
    assert torch.equal(b, fastvae.reparameterize(mu, lv))  # the default generator advances
    assert not torch.equal(a, b)
    torch.manual_seed(1234)
    assert torch.equal(a, fastvae.reparameterize_kl(mu, lv)[0])
    torch.manual_seed(1235)
    assert not torch.equal(a, fastvae.reparameterize(mu, lv))


def test_reproducible_with_generator():
    mu, lv = _inputs((4, 300), 16, torch.float32)
    g1, g2 = gen(7), gen(7)
    a1, a2 = fastvae.reparameterize(mu, lv, generator=g1), fastvae.reparameterize(mu, lv, generator=g1)
    assert torch.equal(a1, fastvae.reparameterize(mu, lv, generator=g2))
    assert torch.equal(a2, fastvae.reparameterize(mu, lv, generator=g2))
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, fastvae.reparameterize(mu, lv, generator=gen(8)))
    # an explicit generator leaves the default one alone
    torch.manual_seed(0)
    s = torch.get_rng_state()
    fastvae.reparameterize(mu, lv, generator=gen(9))
    assert torch.equal(s, torch.get_rng_state())
    t1, q1 = fastvae.reparameterize_tril(mu[:, :5], torch.eye(5).expand(4, 5, 5), generator=gen(3))
    t2, q2 = fastvae.reparameterize_tril(mu[:, :5], torch.eye(5).expand(4, 5, 5), generator=gen(3))
    assert torch.equal(t1, t2) and torch.equal(q1, q2)


def test_different_seeds_differ_everywhere():
    mu, lv = torch.zeros(2, 5000), torch.zeros(2, 5000)
    a = fastvae.reparameterize(mu, lv, generator=gen(1))
    b = fastvae.reparameterize(mu, lv, generator=gen(2))
    assert (a != b).float().mean() > 0.999


def test_n_samples_shapes_and_distinct_samples():
    mu, lv = _inputs((3, 4, 5), 17, torch.float32)
    for k in (1, 2, 7):
        z = fastvae.reparameterize(mu, lv, n_samples=k, generator=gen(1))
        assert z.shape == (k, 3, 4, 5)
        if k > 1:
            assert not torch.equal(z[0], z[1])
    z = fastvae.reparameterize(mu[0, 0, 0], lv[0, 0, 0], n_samples=4, generator=gen(1))  # 0-dim mu
    assert z.shape == (4,)
    assert fastvae.reparameterize(mu[0, 0, 0], lv[0, 0, 0], generator=gen(1)).shape == ()
    z, q = fastvae.reparameterize_tril(mu[0], torch.eye(5).expand(4, 5, 5), n_samples=6, generator=gen(1))
    assert z.shape == (6, 4, 5) and q.shape == (6, 4)
    z, q = fastvae.reparameterize_tril(mu[0, 0], torch.eye(5), generator=gen(1))
    assert z.shape == (5,) and q.shape == ()


# ---- eps is not saved for backward ---------------------------------------------------------------------------

def _saved_during(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("k", [None, 4])
def test_reparameterize_saves_no_eps(k):
    mu = torch.randn(8, 64, requires_grad=True)
    lv = torch.randn(8, 64, requires_grad=True)
    z, saved = _saved_during(lambda: fastvae.reparameterize(mu, lv, n_samples=k, generator=gen(1)))
    assert saved, "the hooks saw nothing: the test would prove nothing"
    # only the inputs (or tensors sharing their storage) and the one-element seed; nothing of z's size
    for t in saved:
        assert t.numel() <= mu.numel(), t.shape
        assert t.numel() == 1 or t.untyped_storage().data_ptr() in (mu.untyped_storage().data_ptr(),
                                                                     lv.untyped_storage().data_ptr()), t.shape
    assert sum(t.numel() for t in saved) <= 2 * mu.numel() + 1
    z.sum().backward()


def test_reparameterize_kl_and_tril_save_no_eps():
    mu = torch.randn(8, 64, requires_grad=True)
    lv = torch.randn(8, 64, requires_grad=True)
    (z, kl), saved = _saved_during(lambda: fastvae.reparameterize_kl(mu, lv, generator=gen(1)))
    assert saved
    ptrs = {mu.untyped_storage().data_ptr(), lv.untyped_storage().data_ptr()}
    assert all(t.numel() == 1 or t.untyped_storage().data_ptr() in ptrs for t in saved), [t.shape for t in saved]
    L = torch.eye(6).repeat(8, 1, 1).requires_grad_()
    m6 = torch.randn(8, 6, requires_grad=True)
    (z, q), saved = _saved_during(lambda: fastvae.reparameterize_tril(m6, L, n_samples=5, generator=gen(1)))
    assert all(t.numel() == 1 or t.untyped_storage().data_ptr() == L.untyped_storage().data_ptr() for t in saved), \
        [t.shape for t in saved]


# ---- special values, precision, layouts, CPU builds ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_reparameterize_extreme_logvar(dtype):
    mu = torch.randn(3, 100, dtype=dtype)
    for v in (-80.0, 80.0):
        lv = torch.full((3, 100), v, dtype=dtype, requires_grad=True)
        z = fastvae.reparameterize(mu, lv, generator=gen(1))
        eps = kernel_eps(1, (3, 100))
        assert z.isfinite().all()
        torch.testing.assert_close(z.double(), ref.reparameterize(mu.double(), lv.double(), eps=eps),
                                   rtol=1e-5, atol=1e-5)
        z.sum().backward()
        assert lv.grad.isfinite().all()
        z, kl = fastvae.reparameterize_kl(mu, lv, generator=gen(1))
        assert z.isfinite().all() and kl.isfinite().all()


def test_reparameterize_nan_inf_like_torch():
    vals = [0.0, 1.0, math.inf, -math.inf, math.nan]
    import itertools
    m, l = (torch.tensor(c).reshape(1, -1) for c in zip(*itertools.product(vals, repeat=2)))
    z = fastvae.reparameterize(m, l, generator=gen(3))
    e = ref.reparameterize(m, l, eps=kernel_eps(3, tuple(m.shape), torch.float32))
    assert torch.equal(z.isnan(), e.isnan()), (z, e)
    assert torch.equal(z[e.isinf()], e[e.isinf()])
    z, kl = fastvae.reparameterize_kl(m.T.contiguous(), l.T.contiguous(), generator=gen(3))
    assert torch.equal(kl.isnan(), fastvae.reference.kl_normal(m.T, l.T, reduction="none").isnan())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs(dtype):
    mu, lv = _inputs((4, 50), 18, dtype)
    z = fastvae.reparameterize(mu, lv, generator=gen(1))
    assert z.dtype == dtype
    assert torch.equal(z, fastvae.reparameterize(mu.float(), lv.float(), generator=gen(1)).to(dtype))
    z, kl = fastvae.reparameterize_kl(mu, lv, generator=gen(1))
    assert z.dtype == dtype and kl.dtype == torch.float32
    m_, l_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    fastvae.reparameterize(m_, l_, n_samples=2, generator=gen(1)).sum().backward()
    assert m_.grad.dtype == dtype and l_.grad.dtype == dtype
    z, q = fastvae.reparameterize_tril(mu[:, :3], torch.eye(3, dtype=dtype).expand(4, 3, 3), generator=gen(1))
    assert z.dtype == dtype


def test_non_contiguous_inputs():
    mu = torch.randn(50, 4).T  # (4, 50)
    lv = torch.randn(4, 100)[:, ::2]
    z = fastvae.reparameterize(mu, lv, n_samples=2, generator=gen(1))
    assert torch.equal(z, fastvae.reparameterize(mu.contiguous(), lv.contiguous(), n_samples=2, generator=gen(1)))
    m_, l_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    fastvae.reparameterize_kl(m_, l_, generator=gen(1))[0].sum().backward()
    m2, l2 = mu.contiguous().requires_grad_(), lv.contiguous().requires_grad_()
    fastvae.reparameterize_kl(m2, l2, generator=gen(1))[0].sum().backward()
    assert torch.equal(m_.grad, m2.grad) and torch.equal(l_.grad, l2.grad)
    L = torch.eye(4).expand(3, 4, 4).transpose(-1, -2)
    z1, q1 = fastvae.reparameterize_tril(torch.zeros(3, 4), L, generator=gen(1))
    z2, q2 = fastvae.reparameterize_tril(torch.zeros(3, 4), L.contiguous(), generator=gen(1))
    assert torch.equal(z1, z2) and torch.equal(q1, q2)


def test_random_ops_every_cpu_build(isa_runner):
    mu, lv = _inputs((3, 8193 + 5), 19, torch.float32)
    L = _tril(3, 7, gen(1), torch.float32)

    def run():
        m_, l_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z = fastvae.reparameterize(m_, l_, n_samples=2, generator=gen(2))
        z2, kl = fastvae.reparameterize_kl(m_, l_, generator=gen(3))
        Lg = L.clone().requires_grad_()
        zt, q = fastvae.reparameterize_tril(m_[:, :7], Lg, n_samples=2, generator=gen(4))
        (z.sum() + (z2 * 0.5).sum() + kl.sum() + zt.sum() + q.sum()).backward()
        return [z, z2, kl, zt, q, m_.grad, l_.grad, Lg.grad]

    res = isa_runner(run)
    base = res[supported_isas()[-1]]
    for isa, outs in res.items():
        for i, (a, b) in enumerate(zip(outs, base)):
            # eps may differ by an ulp on the baseline build (no FMA): compare as float32 values of that scale
            assert_grad_close(a, b, torch.float32, n_summed=8200 if i == 2 else 2, what=f"{isa} output {i}")


@pytest.mark.parametrize("shape", [(3, 255), (2, 8193), (1, 2 * 8192 + 3), (5, 3, 7, 11)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_cpu_build_matches_reference(each_isa, shape, dtype):
    """Every op, forward and backward, under each instruction-set build, against the float64 reference."""
    mu, lv = _inputs(shape, 20, dtype)
    x = torch.randn(shape, generator=gen(21), dtype=torch.float64).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (mu, lv, x)]
    rleaves = [t.double().requires_grad_() for t in (mu, lv, x)]
    m, l, xx = leaves
    mr, lr, xr = rleaves
    eps_k = kernel_eps(22, (2, *shape))
    outs = [fastvae.reparameterize(m, l, n_samples=2, generator=gen(22)),
            *fastvae.reparameterize_kl(m, l, generator=gen(22)),
            fastvae.gaussian_nll(xx, m, l, reduction="none"),
            fastvae.gaussian_nll(xx, m, l[0], reduction="none"),
            fastvae.bernoulli_nll(torch.sigmoid(xx), m, reduction="none"),
            fastvae.kl_normal(m, l, xx, l[0], reduction="none")]
    routs = [ref.reparameterize(mr, lr, n_samples=2, eps=eps_k),
             *ref.reparameterize_kl(mr, lr, eps=eps_k[0]),
             ref.gaussian_nll(xr, mr, lr, reduction="none"),
             ref.gaussian_nll(xr, mr, lr[0], reduction="none"),
             ref.bernoulli_nll(torch.sigmoid(xr), mr, reduction="none"),
             ref.kl_normal(mr, lr, xr, lr[0], reduction="none")]
    n = mu[0].numel()
    for i, (a, b) in enumerate(zip(outs, routs)):
        # values of magnitude up to ~|b|: per element or a sum over n elements
        assert_grad_close(a, b, dtype, n_summed=1 if i < 2 else n, what=f"{each_isa} output {i}")
    sum(((o.double() * (0.5 + 0.1 * j)).sum() for j, o in enumerate(outs))).backward()
    sum(((o * (0.5 + 0.1 * j)).sum() for j, o in enumerate(routs))).backward()
    for a, b, name in zip(leaves, rleaves, ("mu", "logvar", "x")):
        assert_grad_close(a.grad, b.grad, dtype, n_summed=shape[0] * 4, what=f"{each_isa} d{name}")


def test_exp_accuracy_over_the_float_range(isa_runner):
    """z = exp(lv / 2) eps with mu = 0 exposes the kernels' float32 exp (vmath.h): within a few ulp wherever
    exp(lv / 2) is a normal float32, gradual underflow below, inf where exp(lv / 2) itself overflows float32."""
    lv = torch.cat([torch.linspace(-215, 180, 200003), torch.tensor([-math.inf, math.inf, math.nan, 0.0, -0.0])])
    eps = kernel_eps(1, lv.shape)
    sd = torch.exp(0.5 * lv.double())
    exact = sd * eps
    normal = (sd.float().abs() >= torch.finfo(torch.float32).tiny) & sd.float().isfinite() & \
        (exact.float().abs() >= torch.finfo(torch.float32).tiny) & exact.float().isfinite()
    for isa, z in isa_runner(lambda: fastvae.reparameterize(torch.zeros_like(lv), lv, generator=gen(1))).items():
        rel = ((z.double() - exact).abs() / exact.abs())[normal]
        assert rel.max() <= 4 * EPS[torch.float32], (isa, rel.max().item() / EPS[torch.float32])
        tiny = exact.abs() < torch.finfo(torch.float32).tiny  # gradual underflow: a few subnormal steps
        assert (z.double() - exact)[tiny].abs().max() <= 4 * 2.0**-149, isa
        # the product past FLT_MAX: inf (exp(lv / 2) alone past it is not: z is finite where exp(lv / 2) eps is)
        over = exact.float().isinf()
        assert z[over].isinf().all(), isa
        assert torch.equal(z.isnan(), exact.isnan()), isa


def test_force_cpu_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="isa must be one of"):
        C.force_cpu_isa("sse9")
    order = ["baseline", "avx2", "avx512"]
    for isa in order[len(supported_isas()):]:
        with pytest.raises(ValueError, match="does not support"):
            C.force_cpu_isa(isa)
    assert C.cpu_isa() == C.build_info()["cpu_isa"]  # still auto


def test_saved_memory_no_more_than_eager():
    """The VAE head + likelihood saves no more for backward than the same computation in eager PyTorch."""
    def saved_bytes(fn):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(storages.values())

    mu = torch.randn(256, 128, requires_grad=True)
    lv = torch.randn(256, 128, requires_grad=True)
    x = torch.randn(256, 128)
    lvx = torch.zeros((), requires_grad=True)

    def fused():
        z, kl = fastvae.reparameterize_kl(mu, lv)
        return fastvae.gaussian_nll(x, z, lvx) + kl.mean()

    def eager():
        z, kl = ref.reparameterize_kl(mu, lv)
        return ref.gaussian_nll(x, z, lvx) + kl.mean()
    assert 0 < saved_bytes(fused) <= saved_bytes(eager)
