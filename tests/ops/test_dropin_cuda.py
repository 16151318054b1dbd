"""The drop-ins on CUDA tensors (marked `cuda`: skipped without a GPU): fastvae.distributions, fastvae.nn.functional
and fastvae.patch() give torch's own CUDA values and gradients, through fastvae's CUDA kernels (the profiler shows a
fastvae op: not torch's code as a fallback), in float32, float64 and 16-bit, at sizes that span several CUDA blocks
with ragged ends; CUDA sampling is reproducible under torch.manual_seed and standard normal.

Tolerances as tests/ops/test_dropin.py (the same formulas as torch's, rounded in another order): float64 1e-12,
float32 1e-5 (a few ulps per element, accumulated over <= 1024 elements), 16-bit one rounding of the float32 result.
The gradient of a broadcast operand sums up to 37 rows' terms of both signs, in another order than torch's: its
rounding is relative to the terms (|term| <= ~3), not to the sum, so float32 gradients get 1e-4."""
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from scipy import stats

import fastvae
import fastvae.distributions as D
import fastvae.nn.functional as FF

pytestmark = pytest.mark.cuda
DEV = "cuda"
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}
SHAPE = (37, 1031)  # rows x features: several blocks per row, odd sizes (no vector-aligned tail)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def pos(*shape, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.2).to(dtype).to(DEV)


GRAD_TOL = {**TOL, torch.float32: dict(rtol=1e-4, atol=1e-4)}


def value_and_grads(fn, leaves, no_grad=()):
    leaves = [t.detach().clone().requires_grad_(i not in no_grad) for i, t in enumerate(leaves)]
    out = fn(*leaves)
    w = torch.linspace(-1, 2, out.numel(), dtype=out.dtype, device=DEV).reshape(out.shape)
    grads = torch.autograd.grad((out * w).sum(), [t for t in leaves if t.requires_grad], allow_unused=True)
    return out, grads


def same_as_torch(fv_fn, torch_fn, leaves, dtype, no_grad=()):
    """fastvae's value and gradients equal torch's, and a fastvae CUDA op ran (leaves[i], i in no_grad: no grad)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, grads = value_and_grads(fv_fn, leaves, no_grad)
    assert any(e.name.startswith("fastvae::") for e in prof.events()), "no fastvae op ran: torch's code was taken"
    ref, ref_grads = value_and_grads(torch_fn, leaves, no_grad)
    assert out.device.type == "cuda" and out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, r, **GRAD_TOL[dtype])


FLOATS = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_normal_log_prob_entropy_and_independent(dtype):
    m, s, v = randn(*SHAPE, dtype=dtype), pos(SHAPE[1], dtype=dtype), randn(*SHAPE, dtype=dtype, seed=3)
    same_as_torch(lambda a, b, c: D.Normal(a, b).log_prob(c), lambda a, b, c: td.Normal(a, b).log_prob(c),
                  [m, s, v], dtype)
    same_as_torch(lambda a, b, c: D.Independent(D.Normal(a, b), 1).log_prob(c),
                  lambda a, b, c: td.Independent(td.Normal(a, b), 1).log_prob(c), [m, s, v], dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("independent", [False, True])
def test_kl_normal_normal(dtype, independent):
    lp, sp, lq, sq = randn(*SHAPE, dtype=dtype), pos(*SHAPE, dtype=dtype), randn(SHAPE[1], dtype=dtype, seed=2), \
        pos(SHAPE[1], dtype=dtype, seed=3)

    def kl(Dm):
        def f(a, b, c, d):
            p, q = Dm.Normal(a, b), Dm.Normal(c, d)
            if independent:
                p, q = Dm.Independent(p, 1), Dm.Independent(q, 1)
            return td.kl_divergence(p, q)
        return f
    same_as_torch(kl(D), kl(td), [lp, sp, lq, sq], dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_bernoulli_log_prob(dtype, param):
    logits = randn(*SHAPE, dtype=dtype, scale=4.0)
    x = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) < 0.4).to(dtype).to(DEV)
    if param == "logits":
        same_as_torch(lambda a, b: D.Independent(D.Bernoulli(logits=a), 1).log_prob(b),
                      lambda a, b: td.Independent(td.Bernoulli(logits=a), 1).log_prob(b), [logits, x], dtype)
    else:
        probs = torch.sigmoid(logits)
        ref = td.Bernoulli(probs=probs).log_prob(x)
        torch.testing.assert_close(D.Bernoulli(probs=probs).log_prob(x), ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sixteen_bit_is_torchs_float32_rounded(dtype):
    m, s, v = randn(*SHAPE, dtype=dtype), pos(*SHAPE, dtype=dtype), randn(*SHAPE, dtype=dtype, seed=3)
    out = D.Normal(m, s).log_prob(v)
    assert out.dtype == dtype
    torch.testing.assert_close(out, td.Normal(m.float(), s.float()).log_prob(v.float()).to(dtype), **TOL[dtype])
    logits, y = randn(*SHAPE, dtype=dtype, scale=3.0), pos(*SHAPE, dtype=dtype).clamp(max=1.0)
    bce = FF.binary_cross_entropy_with_logits(logits, y, reduction="none")
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits.float(), y.float(),
                                                                       reduction="none").to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nn_functional_losses(dtype, reduction):
    logits, y = randn(*SHAPE, dtype=dtype, scale=4.0), pos(*SHAPE, dtype=dtype).clamp(max=1.0)
    w, pw = pos(SHAPE[1], dtype=dtype, seed=6), pos(SHAPE[1], dtype=dtype, seed=7) * 3
    same_as_torch(lambda a, b, c, d: FF.binary_cross_entropy_with_logits(a, b, c, reduction=reduction, pos_weight=d),
                  lambda a, b, c, d: F.binary_cross_entropy_with_logits(a, b, c, reduction=reduction, pos_weight=d),
                  [logits, y, w, pw], dtype, no_grad=(2, 3))  # (torch: weights take no gradient)
    inp, tgt, var = randn(*SHAPE, dtype=dtype), randn(*SHAPE, dtype=dtype, seed=2), pos(SHAPE[0], 1, dtype=dtype)
    same_as_torch(lambda a, b, c: FF.gaussian_nll_loss(a, b, c, full=True, reduction=reduction),
                  lambda a, b, c: F.gaussian_nll_loss(a, b, c, full=True, reduction=reduction), [inp, tgt, var], dtype)


def test_patch_routes_unmodified_cuda_code_through_fastvae():
    mu, logvar, logits = randn(64, 16), randn(64, 16, seed=2, scale=0.3), randn(64, 784, seed=3, scale=3.0)
    x = (torch.rand(64, 784, generator=torch.Generator().manual_seed(4)) < 0.3).float().to(DEV)

    def loss(mu, logvar, logits):
        q = td.Normal(mu, torch.exp(0.5 * logvar))
        rec = td.Independent(td.Bernoulli(logits=logits), 1).log_prob(x)
        kl = td.kl_divergence(td.Independent(q, 1), td.Independent(td.Normal(torch.zeros_like(mu),
                                                                             torch.ones_like(mu)), 1))
        return (kl - rec).mean()
    ref, ref_grads = value_and_grads(loss, [mu, logvar, logits])
    with fastvae.patch():
        same_as_torch(loss, loss, [mu, logvar, logits], torch.float32)  # (torch_fn also patched: checks it ran)
        out, grads = value_and_grads(loss, [mu, logvar, logits])
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **GRAD_TOL[torch.float32])


def test_rsample_is_reproducible_normal_and_differentiable():
    m, s = randn(4096, 33), pos(4096, 33)
    torch.manual_seed(7)
    a = D.Normal(m, s).rsample((2,))
    torch.manual_seed(7)
    b = D.Normal(m, s).rsample((2,))
    c = D.Normal(m, s).rsample((2,))
    assert a.shape == (2, 4096, 33) and torch.equal(a, b) and not torch.equal(a, c)
    eps = ((a - m) / s).flatten().double().cpu().numpy()
    assert stats.kstest(eps, "norm").pvalue > 1e-4  # 270k draws: a wrong transform fails by far
    ml, sl = m.clone().requires_grad_(), s.clone().requires_grad_()
    torch.manual_seed(7)
    z = D.Normal(ml, sl).rsample((2,))
    gm, gs = torch.autograd.grad(z.sum(), [ml, sl])
    torch.testing.assert_close(gm, torch.full_like(m, 2.0))
    torch.testing.assert_close(gs, ((a - m) / s).sum(0), rtol=1e-5, atol=1e-5)


def test_multivariate_normal_rsample_and_log_prob():
    L = torch.linalg.cholesky(torch.eye(5, device=DEV) + 0.3 * (lambda a: a @ a.mT)(randn(8, 5, 5, seed=2)))
    m = randn(8, 5)
    torch.manual_seed(3)
    z = D.MultivariateNormal(m, scale_tril=L).rsample((1000,))
    assert z.shape == (1000, 8, 5) and z.device.type == "cuda"
    emp = torch.einsum("sbi,sbj->bij", z - m, z - m) / 1000
    cov = L @ L.mT
    var = cov.diagonal(dim1=-2, dim2=-1)
    sd = ((var[..., :, None] * var[..., None, :] + cov**2) / 1000).sqrt()  # of each empirical covariance entry
    assert ((emp - cov).abs() <= 6 * sd).all(), float(((emp - cov).abs() / sd).max())  # 6 sd: p ~ 2e-9 per entry
    v = randn(8, 5, seed=9)
    torch.testing.assert_close(D.MultivariateNormal(m, scale_tril=L).log_prob(v),
                               td.MultivariateNormal(m, scale_tril=L).log_prob(v), rtol=1e-5, atol=1e-5)
