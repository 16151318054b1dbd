"""CUDA tests of the Gaussian ops (marked `cuda`, skipped without a GPU): CUDA against the CPU kernels (the same
eps for the same key: a CPU generator with CUDA tensors draws the CPU key), float16/bfloat16 inputs computed in
float32, CUDA graph capture and replay, torch.compile(mode="reduce-overhead"), and an elementwise op over more
than 2^31 elements."""
import math

import pytest
import torch

import fastvae
from fastvae import reference as ref

from helpers import gen, kernel_eps, key_of

pytestmark = pytest.mark.cuda
DEV = "cuda"
F32_EPS = torch.finfo(torch.float32).eps


def rand(shape, seed, scale=1.0, dtype=torch.float32):
    return (torch.randn(shape, generator=gen(seed), dtype=torch.float64) * scale).to(dtype)


def both(*ts):
    """The CPU tensors and their CUDA copies."""
    return ts, tuple(None if t is None else t.to(DEV) for t in ts)


def close(gpu, cpu, rtol=2e-5, atol=2e-5, what=""):
    assert gpu.device.type == "cuda", what
    torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=rtol, atol=atol, msg=what)


# ---- CUDA against the CPU kernels ----------------------------------------------------------------------------

# --use_fast_math CUDA transcendentals and FMA contraction differ from the CPU polynomials by a few float32 ulp;
# sums over D elements in another order differ by ~sqrt(D) ulp of the sum's magnitude
@pytest.mark.parametrize("shape,k", [((5, 37), None), ((3, 8193 + 11), 2), ((2, 3, 17, 5), 4), ((), 3)])
def test_reparameterize_same_eps_as_cpu(shape, k):
    mu, lv = rand(shape, 1), rand(shape, 2)
    (mc, lc), (mg, lg) = both(mu, lv)
    z_cpu = fastvae.reparameterize(mc, lc, n_samples=k, generator=gen(7))
    z_gpu = fastvae.reparameterize(mg, lg, n_samples=k, generator=gen(7))  # CPU generator: the same key
    assert z_gpu.device.type == "cuda" and z_gpu.shape == z_cpu.shape
    close(z_gpu, z_cpu, what="z")
    eps = kernel_eps(7, z_cpu.shape)
    close(z_gpu, ref.reparameterize(mu.double(), lv.double(), n_samples=k, eps=eps), what="z vs reference")


def test_reparameterize_kl_and_tril_same_eps_as_cpu():
    mu, lv = rand((6, 9000), 1), rand((6, 9000), 2, 0.5)
    (mc, lc), (mg, lg) = both(mu, lv)
    zc, klc = fastvae.reparameterize_kl(mc, lc, generator=gen(3))
    zg, klg = fastvae.reparameterize_kl(mg, lg, generator=gen(3))
    close(zg, zc, what="z")
    close(klg, klc, rtol=1e-5, atol=1e-3, what="kl")
    assert torch.equal(fastvae.reparameterize(mg, lg, generator=gen(3)), zg)
    L = torch.tril(rand((6, 5, 5), 4, 0.3)) + torch.eye(5)
    (m5, Lc), (m5g, Lg) = both(mu[:, :5].contiguous(), L)
    zc, qc = fastvae.reparameterize_tril(m5, Lc, n_samples=3, generator=gen(5))
    zg, qg = fastvae.reparameterize_tril(m5g, Lg, n_samples=3, generator=gen(5))
    close(zg, zc, what="tril z")
    close(qg, qc, rtol=1e-5, atol=1e-4, what="log_q")


def test_cuda_default_generator_reproducible():
    mu, lv = torch.zeros(4, 1000, device=DEV), torch.zeros(4, 1000, device=DEV)
    torch.manual_seed(11)
    a, b = fastvae.reparameterize(mu, lv), fastvae.reparameterize(mu, lv)
    torch.manual_seed(11)
    assert torch.equal(a, fastvae.reparameterize(mu, lv)) and not torch.equal(a, b)
    g1, g2 = torch.Generator(device=DEV).manual_seed(3), torch.Generator(device=DEV).manual_seed(3)
    assert torch.equal(fastvae.reparameterize(mu, lv, generator=g1), fastvae.reparameterize(mu, lv, generator=g2))


@pytest.mark.parametrize("k", [None, 3])
def test_likelihoods_and_kl_match_cpu(k):
    B, Fs = 5, (3, 41, 67)  # 8241 features: past one 8192 chunk, odd
    x = rand((B, *Fs), 1)
    mean = rand(((k,) if k else ()) + (B, *Fs), 2)
    for lv in (None, rand(mean.shape, 3), rand((), 4), rand(Fs, 5), rand((3, 1, 1), 6)):
        (xc, mc, lc), (xg, mg, lg) = both(x, mean, lv)
        for red in ("none", "sum", "mean"):
            close(fastvae.gaussian_nll(xg, mg, lg, reduction=red), fastvae.gaussian_nll(xc, mc, lc, reduction=red),
                  rtol=1e-5, atol=1e-3, what=f"gaussian_nll {red}")
        leaves_c = [t.clone().requires_grad_() for t in (xc, mc, lc) if t is not None]
        leaves_g = [t.clone().requires_grad_() for t in (xg, mg, lg) if t is not None]
        w = rand(((k,) if k else ()) + (B,), 7)
        (fastvae.gaussian_nll(*leaves_c, reduction="none") * w).sum().backward()
        (fastvae.gaussian_nll(*leaves_g, reduction="none") * w.to(DEV)).sum().backward()
        for a, b in zip(leaves_g, leaves_c):
            # a per-feature gradient sums mean.numel() / numel terms of size ~1 that may cancel
            scale = max(b.grad.abs().max().item(), mean.numel() / b.grad.numel())
            close(a.grad, b.grad, rtol=1e-5, atol=1e-5 * scale, what="gaussian_nll grad")
    xb = torch.rand((B, *Fs), generator=gen(8))
    logits = rand(mean.shape, 9, 4.0)
    (xc, lc), (xg, lg) = both(xb, logits)
    close(fastvae.bernoulli_nll(xg, lg, reduction="none"), fastvae.bernoulli_nll(xc, lc, reduction="none"),
          rtol=1e-5, atol=1e-3)
    lgr, lcr = lg.clone().requires_grad_(), lc.clone().requires_grad_()
    fastvae.bernoulli_nll(xg, lgr).backward()
    fastvae.bernoulli_nll(xc, lcr).backward()
    close(lgr.grad, lcr.grad, rtol=1e-5, atol=1e-9)
    mu, lv2 = rand((B, *Fs), 10), rand((B, *Fs), 11)
    for mp, lp in ((None, None), (rand(Fs, 12), rand((B, *Fs), 13)), (rand((), 14), rand((3, 1, 1), 15))):
        (a, b, c, d), (ag, bg, cg, dg) = both(mu, lv2, mp, lp)
        close(fastvae.kl_normal(ag, bg, cg, dg, reduction="none"), fastvae.kl_normal(a, b, c, d, reduction="none"),
              rtol=1e-5, atol=1e-3)
        lc_ = [t.clone().requires_grad_() for t in (a, b, c, d) if t is not None]
        lg_ = [t.clone().requires_grad_() for t in (ag, bg, cg, dg) if t is not None]
        fill = lambda l: l + [None] * (4 - len(l))  # noqa: E731
        if mp is None:
            fastvae.kl_normal(*lc_).backward()
            fastvae.kl_normal(*lg_).backward()
        else:
            fastvae.kl_normal(*fill(lc_)).backward()
            fastvae.kl_normal(*fill(lg_)).backward()
        for u, v in zip(lg_, lc_):
            scale = max(v.grad.abs().max().item(), mu.numel() / v.grad.numel())
            close(u.grad, v.grad, rtol=1e-5, atol=1e-5 * scale, what="kl grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    x, mean, lv = (rand((4, 3000), s, dtype=dtype).to(DEV) for s in (1, 2, 3))
    for fn, args in ((fastvae.gaussian_nll, (x, mean, lv)), (fastvae.bernoulli_nll, (mean, torch.sigmoid(x))),
                     (fastvae.kl_normal, (mean, lv)), (fastvae.kl_normal, (mean, lv, x, lv[0]))):
        out = fn(*args, reduction="none")
        assert out.dtype == torch.float32
        # the same as float32 arithmetic on the (exactly upcast) inputs
        close(out, fn(*[a.float() for a in args], reduction="none").cpu(), rtol=1e-5, atol=1e-3)
        leaves = [a.clone().requires_grad_() for a in args]
        fn(*leaves).backward()
        assert all(a.grad.dtype == dtype and a.grad.isfinite().all() for a in leaves)
    z = fastvae.reparameterize(mean, lv, generator=gen(1))
    assert z.dtype == dtype
    z32 = fastvae.reparameterize(mean.float(), lv.float(), generator=gen(1))
    # one rounding to the 16-bit type
    torch.testing.assert_close(z.float(), z32, rtol=2 * torch.finfo(dtype).eps, atol=1e-3)
    z, kl = fastvae.reparameterize_kl(mean, lv, generator=gen(1))
    assert z.dtype == dtype and kl.dtype == torch.float32


def test_non_contiguous_cuda():
    x = rand((40, 6), 1).to(DEV).T
    mean = rand((6, 80), 2).to(DEV)[:, ::2]
    assert not x.is_contiguous() and not mean.is_contiguous()
    torch.testing.assert_close(fastvae.gaussian_nll(x, mean, reduction="none"),
                               fastvae.gaussian_nll(x.contiguous(), mean.contiguous(), reduction="none"))
    assert torch.equal(fastvae.reparameterize(mean, x, generator=gen(1)),
                       fastvae.reparameterize(mean.contiguous(), x.contiguous(), generator=gen(1)))


def test_mixed_devices_name_the_argument():
    with pytest.raises(ValueError, match="logvar"):
        fastvae.reparameterize(torch.zeros(3, device=DEV), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\bx\b"):
        fastvae.gaussian_nll(torch.zeros(2, 3), torch.zeros(2, 3, device=DEV))
    with pytest.raises(ValueError, match="mu_prior"):
        fastvae.kl_normal(torch.zeros(2, 3, device=DEV), torch.zeros(2, 3, device=DEV), torch.zeros(3))


# ---- CUDA graphs and torch.compile ---------------------------------------------------------------------------

def _vae_loss(x, mu, lv, w):
    z, kl = fastvae.reparameterize_kl(mu, lv)
    return fastvae.gaussian_nll(x, z @ w) + kl.mean()


def test_cuda_graph_capture_and_replay():
    x = rand((16, 32), 1).to(DEV)
    mu, lv, w = rand((16, 8), 2).to(DEV), rand((16, 8), 3, 0.3).to(DEV), rand((8, 32), 4).to(DEV)
    mu.requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as CUDA graphs require
        for _ in range(2):
            _vae_loss(x, mu, lv, w).backward()
    torch.cuda.current_stream().wait_stream(s)
    mu.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = _vae_loss(x, mu, lv, w)
        loss.backward()
        z_static = fastvae.reparameterize(mu.detach(), lv)
    outs = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        outs.append((loss.item(), z_static.clone(), mu.grad.clone()))
    # every replay draws fresh noise (the seed is drawn by a captured kernel)
    assert not torch.equal(outs[0][1], outs[1][1]) and not torch.equal(outs[1][1], outs[2][1])
    for _, z, _g in outs:
        assert z.isfinite().all()
        e = ((z - mu.detach()) / torch.exp(0.5 * lv)).flatten()
        assert abs(e.mean().item()) < 0.5 and 0.5 < e.std().item() < 1.5
    # a deterministic loss replays to the eager value
    g2 = torch.cuda.CUDAGraph()
    xb = torch.rand(16, 32, device=DEV)
    with torch.cuda.stream(s):
        fastvae.bernoulli_nll(xb, x)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g2):
        out = fastvae.bernoulli_nll(xb, x, reduction="none") + fastvae.kl_normal(mu.detach(), lv, reduction="none")
    g2.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fastvae.bernoulli_nll(xb, x, reduction="none") +
                               fastvae.kl_normal(mu.detach(), lv, reduction="none"))


def test_compile_reduce_overhead():
    torch._dynamo.reset()
    x = rand((16, 32), 1).to(DEV)
    mu, lv, w = rand((16, 8), 2).to(DEV).requires_grad_(), rand((16, 8), 3, 0.3).to(DEV), rand((8, 32), 4).to(DEV)
    compiled = torch.compile(_vae_loss, mode="reduce-overhead", fullgraph=True)
    vals = []
    for _ in range(5):  # the first calls record, the later ones replay CUDA graphs
        out = compiled(x, mu, lv, w)
        out.backward()
        vals.append(out.item())
        assert mu.grad.isfinite().all()
        mu.grad = None
    assert all(math.isfinite(v) for v in vals)
    assert len(set(vals[2:])) == 3, f"replays must draw fresh noise: {vals}"
    # the same distribution as eager: compare with the eager mean over draws, loosely
    eager = torch.tensor([_vae_loss(x, mu, lv, w).item() for _ in range(20)])
    assert abs(sum(vals) / len(vals) - eager.mean().item()) < 6 * eager.std().item() + 1e-3

    def det(x_, m_, l_):
        return fastvae.gaussian_nll(x_, m_, l_[0]) + fastvae.kl_normal(m_, l_)
    torch._dynamo.reset()
    cdet = torch.compile(det, mode="reduce-overhead", fullgraph=True)
    m32 = rand((16, 32), 5).to(DEV)
    l32 = rand((16, 32), 6, 0.2).to(DEV)
    for _ in range(3):
        r = cdet(x, m32, l32)
    torch.testing.assert_close(r, det(x, m32, l32))


# ---- more than 2^31 elements ---------------------------------------------------------------------------------

def test_reparameterize_over_2_31_elements():
    n = 2**31 + 4099
    need = 3 * n * 2 + (1 << 30)  # mu, logvar, z in float16, and slack
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    mu = torch.zeros(n, dtype=torch.float16, device=DEV)
    lv = torch.zeros(n, dtype=torch.float16, device=DEV)
    z = fastvae.reparameterize(mu, lv, generator=gen(21))  # z = eps: the stream itself
    key = key_of(21)
    for start in (0, 2**31 - 3, n - 1000):  # the head, across the 2^31 boundary, the tail
        count = min(1000, n - start)
        expected = fastvae._C.normals_cpu(start, count, key)
        torch.testing.assert_close(z[start:start + count].float().cpu(), expected.half().float(),
                                   rtol=2e-3, atol=2e-3)
    del z
    x = torch.zeros(2, n // 2, dtype=torch.float16, device=DEV)
    out = fastvae.gaussian_nll(x, x[:, :], reduction="none")  # sum over > 2^30 elements per row
    expected = 0.5 * math.log(2 * math.pi) * (n // 2)
    torch.testing.assert_close(out.double().cpu(), torch.full((2,), expected, dtype=torch.float64), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_network(dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16).to(DEV)
    x, target = torch.randn(4, 8, device=DEV), torch.randn(4, 8, device=DEV)
    with torch.autocast("cuda", dtype=dtype):
        h = lin(x)
        assert h.dtype == dtype
        mu, lv = h[:, :8], h[:, 8:]
        z, kl = fastvae.reparameterize_kl(mu, lv)
        loss = fastvae.gaussian_nll(target, z) + kl.mean() + fastvae.bernoulli_nll(torch.sigmoid(x.repeat(1, 2)), h)
    assert kl.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad.isfinite().all()


# ---- opcheck on CUDA tensors ---------------------------------------------------------------------------------

def _opcheck_cases():
    from test_gaussian_ops import OPCHECK_CASES as likelihood_cases
    from test_random import OPCHECK_CASES as random_cases
    return likelihood_cases + random_cases


def _to_cuda32(a):
    """The CPU float64 opcheck arguments as float32 CUDA tensors (CUDA kernels take float32/16-bit)."""
    if not isinstance(a, torch.Tensor):
        return a
    t = a.detach().to(DEV, torch.float32 if a.is_floating_point() else a.dtype)
    return t.requires_grad_(a.requires_grad)


@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: c[0])
def test_opcheck_cuda(case):
    name, make = case
    from conftest import OPCHECK_UTILS
    args = tuple(_to_cuda32(a) for a in make())
    torch.library.opcheck(getattr(torch.ops.fastvae, name).default, args, test_utils=OPCHECK_UTILS)
