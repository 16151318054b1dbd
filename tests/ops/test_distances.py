"""mmd / energy_distance / sliced_wasserstein against fastvae.reference (float64), POT and geomloss.

Tolerances:
- float64 against the float64 reference: the kernels sum the same terms in another order (tiles, dot-product
  form of |x - y|^2 on centred data), so rounding differs by a few hundred ulp at most: rtol = atol = 1e-10.
- float32 against the float64 reference: |x - y|^2 from dot products carries an absolute error of about
  eps32 * (|x|^2 + |y|^2) ~ 6e-8 * 2 d per pair; a kernel value moves by less than that times its slope, and the
  blocked sums add no more than a few eps32 relative. Relative to the size of the three MMD terms (the value
  itself cancels), 2e-5 covers d <= 65 with margin (observed <= 3e-6).
"""
import math

import pytest
import torch

import fastvae
from fastvae.ops.reference import distances as ref

KERNELS = ["rbf", "imq", "laplacian", "energy"]
ESTIMATORS = ["unbiased", "biased"]


def _points(shape, dtype=torch.float64, seed=0, scale=0.8, shift=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).mul(scale).add(shift).to(dtype)


def _seed_of(generator_seed):
    """The key fastvae draws from torch.Generator().manual_seed(generator_seed) (see functional._draw_seed)."""
    g = torch.Generator().manual_seed(generator_seed)
    return int(torch.randint(0, 2**62, (1,), generator=g, dtype=torch.int64))


def _philox_prior(shape, generator_seed):
    """The prior samples the op draws: eps[j] of the Philox stream, j the flat index into x's shape."""
    n = math.prod(shape)
    return fastvae._C.normals_cpu(0, n, _seed_of(generator_seed)).double().reshape(shape)


def _term_scale(x, y, kernel, bw):
    """The size of the terms MMD^2 is made of (the biased x-y term): the scale for absolute tolerances."""
    yy = ref._sq_dists(x.double(), y.double())
    return float(ref._pair_kernel(yy, kernel, bw, x.shape[-1]).abs().mean())


# ---------------------------------------------------------------------------------------------------------------
# MMD: values and gradients against the reference


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", [((5, 3), (7, 3)), ((70, 17), (130, 17)), ((2, 66, 20), (2, 65, 20))],
                         ids=["tiny", "tiles", "batched"])
def test_mmd_float64_matches_reference(kernel, estimator, shape):
    bw = [0.5, 1.0, 3.0] if kernel != "energy" else 1.0
    x = _points(shape[0], seed=1).requires_grad_()
    y = _points(shape[1], seed=2, shift=-0.2).requires_grad_()
    got = fastvae.mmd(x, y, kernel=kernel, bandwidth=bw, estimator=estimator)
    gx, gy = torch.autograd.grad(got.sum(), (x, y))
    want = ref.mmd(x, y, kernel=kernel, bandwidth=bw, estimator=estimator)
    wx, wy = torch.autograd.grad(want.sum(), (x, y))
    assert got.shape == want.shape == (shape[0][:-2])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gy, wy, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mmd_float32_close_to_float64_reference(kernel, estimator):
    bw = [0.2, 1.0, 5.0]
    x64, y64 = _points((150, 65), seed=3), _points((129, 65), seed=4, shift=-0.5)
    x = x64.float().requires_grad_()
    y = y64.float().requires_grad_()
    got = fastvae.mmd(x, y, kernel=kernel, bandwidth=bw, estimator=estimator)
    gx, gy = torch.autograd.grad(got, (x, y))
    x64.requires_grad_()
    y64.requires_grad_()
    want = ref.mmd(x64, y64, kernel=kernel, bandwidth=bw, estimator=estimator)
    wx, wy = torch.autograd.grad(want, (x64, y64))
    assert got.dtype == torch.float32
    scale = _term_scale(x64.detach(), y64.detach(), kernel, bw)
    assert abs(float(got.detach()) - float(want.detach())) <= 2e-5 * scale
    for g, w in ((gx, wx), (gy, wy)):
        assert float((g.double() - w).abs().max()) <= 2e-5 * float(w.abs().max())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mmd_prior_matches_reference(kernel, estimator):
    """y None: rbf in closed form (the reference's formula), the others with the op's own Philox prior samples."""
    bw = [0.7, 2.0]
    x = _points((2, 40, 6), seed=5).requires_grad_()
    got = fastvae.mmd(x, None, kernel=kernel, bandwidth=bw, estimator=estimator,
                      generator=torch.Generator().manual_seed(11))
    prior = None if kernel == "rbf" else _philox_prior(x.shape, 11)
    want = ref.mmd(x, None, kernel=kernel, bandwidth=bw, estimator=estimator, prior_samples=prior)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    gx, = torch.autograd.grad(got.sum(), x)
    wx, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("with_y", [True, False], ids=["y", "prior"])
def test_mmd_gradcheck(kernel, estimator, with_y):
    x = _points((6, 3), seed=6).requires_grad_()
    y = _points((5, 3), seed=7).requires_grad_() if with_y else None

    def f(x, *ys):
        # a fresh generator per call: the same prior samples at every point gradcheck evaluates
        return fastvae.mmd(x, ys[0] if ys else None, kernel=kernel, bandwidth=[0.8, 1.7], estimator=estimator,
                           generator=torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(f, (x, y) if with_y else (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mmd_rbf_prior_closed_form_against_monte_carlo():
    """The closed-form prior terms against 10^6 prior samples (5 standard errors)."""
    g = torch.Generator().manual_seed(8)
    d, h = 4, 1.3
    x = _points((10, d), seed=9)
    exact = fastvae.mmd(x, None, kernel="rbf", bandwidth=h, estimator="unbiased")
    m = 10**6
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    y2 = torch.randn(m, d, generator=g, dtype=torch.float64)
    kyy = torch.exp(-((y - y2) ** 2).sum(-1) / (2 * h * h))  # k(y, y') of independent pairs
    kxy = torch.stack([torch.exp(-((y - xi) ** 2).sum(-1) / (2 * h * h)) for xi in x]).mean(0)  # mean_i k(x_i, y)
    xx = ref._mean_pairs(x, x, "rbf", [h], True, True)
    mc_terms = kyy - 2 * kxy
    mc = xx + mc_terms.mean()
    se = float(mc_terms.std()) / math.sqrt(m)
    assert abs(float(exact) - float(mc)) < 5 * se
    # the closed-form E k(y, y') on its own
    assert abs((h * h / (h * h + 2)) ** (d / 2) - float(kyy.mean())) < 5 * float(kyy.std()) / math.sqrt(m)


def test_energy_distance_is_mmd_with_energy_kernel():
    x, y = _points((30, 4), seed=10), _points((20, 4), seed=11)
    torch.testing.assert_close(fastvae.energy_distance(x, y, estimator="biased"),
                               fastvae.mmd(x, y, kernel="energy", estimator="biased"), rtol=0, atol=0)
    # energy distance = 2 E|x-y| - E|x-x'| - E|y-y'|
    want = 2 * ref._safe_sqrt(ref._sq_dists(x, y)).mean() - ref._safe_sqrt(ref._sq_dists(x, x)).mean() \
        - ref._safe_sqrt(ref._sq_dists(y, y)).mean()
    torch.testing.assert_close(fastvae.energy_distance(x, y, estimator="biased"), want, rtol=1e-10, atol=1e-12)


def test_energy_distance_against_geomloss():
    geomloss = pytest.importorskip("geomloss")
    x, y = _points((50, 5), seed=12), _points((60, 5), seed=13, shift=1.0)
    loss = geomloss.SamplesLoss("energy", backend="tensorized")
    # geomloss returns half the biased MMD^2 of the energy kernel, with |x - x| clamped to sqrt(1e-8) = 1e-4 on
    # the diagonals (its distances() floor): those N + M pairs add -1e-4 (1/N + 1/M) to its 2 * loss
    floor = 1e-4 * (1 / 50 + 1 / 60)
    torch.testing.assert_close(fastvae.energy_distance(x, y, estimator="biased"), 2 * loss(x, y) + floor, rtol=1e-9,
                               atol=1e-12)


def test_distance_gradient_at_coincident_points_is_zero_not_nan():
    x = _points((8, 3), seed=14)
    x = torch.cat([x, x[:3]]).requires_grad_()  # duplicated rows: |x_i - x_j| = 0 for i != j
    y = torch.cat([x.detach()[:2], _points((4, 3), seed=15)]).requires_grad_()  # and x_i = y_j
    for kernel in ("energy", "laplacian"):
        for est in ESTIMATORS:
            v = fastvae.mmd(x, y, kernel=kernel, estimator=est)
            gx, gy = torch.autograd.grad(v, (x, y))
            assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
            wx, wy = torch.autograd.grad(ref.mmd(x, y, kernel=kernel, estimator=est), (x, y))
            torch.testing.assert_close(gx, wx, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(gy, wy, rtol=1e-9, atol=1e-12)


def test_mmd_float32_identical_points_never_negative_distance():
    # far from the origin: |x|^2 + |y|^2 - 2 x.y cancels; distances must clamp at 0 (energy of x with itself = 0)
    x = (_points((200, 16), seed=16) * 1e-3 + 100.0).float()
    v = fastvae.energy_distance(x, x.clone(), estimator="biased")
    assert torch.isfinite(v) and abs(float(v)) < 1e-4


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_input_gives_nan_not_a_silent_number(kernel):
    x, y = _points((70, 3), torch.float32, seed=45), _points((70, 3), torch.float32, seed=46)
    x[5, 1] = float("nan")
    assert torch.isnan(fastvae.mmd(x, y, kernel=kernel))
    assert torch.isnan(fastvae.sliced_wasserstein(x, y, n_projections=4))


def test_mmd_float32_large_n_blocked_accumulation():
    x64, y64 = _points((3000, 8), seed=17), _points((3000, 8), seed=18, shift=0.0)
    got = fastvae.mmd(x64.float(), y64.float(), kernel="imq", bandwidth=[0.5, 1.0, 2.0])
    want = fastvae.mmd(x64, y64, kernel="imq", bandwidth=[0.5, 1.0, 2.0])
    # terms ~ 1 each: without blocked sums 9e6 float32 additions would lose ~1e-4
    assert abs(float(got) - float(want)) < 2e-6


def test_mmd_deterministic_across_threads_and_isa():
    x, y = _points((300, 20), torch.float32, seed=19), _points((200, 20), torch.float32, seed=20)
    xs = x.clone().requires_grad_()
    n = torch.get_num_threads()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            v = fastvae.mmd(xs, y, kernel="imq", bandwidth=[1.0, 2.0])
            g, = torch.autograd.grad(v, xs)
        finally:
            torch.set_num_threads(n)
        results.append((v, g))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    best = fastvae._C.build_info()["cpu_isa"]
    isas = {"avx512": ["avx512", "avx2", "baseline"], "avx2": ["avx2", "baseline"]}.get(best, ["baseline"])
    try:
        for isa in isas:
            fastvae._C.force_cpu_isa(isa)
            v = fastvae.mmd(xs, y, kernel="imq", bandwidth=[1.0, 2.0])
            g, = torch.autograd.grad(v, xs)
            torch.testing.assert_close(v, results[0][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g, results[0][1], rtol=1e-4, atol=1e-6)
    finally:
        fastvae._C.force_cpu_isa("auto")


def test_mmd_prior_reproducible_from_generator():
    x = _points((50, 4), torch.float32, seed=21)
    a = fastvae.mmd(x, kernel="imq", generator=torch.Generator().manual_seed(5))
    b = fastvae.mmd(x, kernel="imq", generator=torch.Generator().manual_seed(5))
    c = fastvae.mmd(x, kernel="imq", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mmd_float16_computes_in_float32():
    x, y = _points((20, 4), torch.float16, seed=22), _points((20, 4), torch.float16, seed=23)
    v = fastvae.mmd(x, y)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, fastvae.mmd(x.float(), y.float()))


# ---------------------------------------------------------------------------------------------------------------
# sliced-Wasserstein


def _directions(d, n, seed=0, dtype=torch.float64):
    t = _points((d, n), seed=seed, scale=1.0, shift=0.0)
    return (t / t.norm(dim=0, keepdim=True)).to(dtype)


@pytest.mark.parametrize("p", [1, 2, 3.5])
@pytest.mark.parametrize("with_y", [True, False], ids=["y", "prior"])
@pytest.mark.parametrize("shape", [(37, 5), (3, 100, 7)], ids=["2d", "batched"])
def test_sliced_wasserstein_matches_reference(p, with_y, shape):
    theta = _directions(shape[-1], 24, seed=1)
    x = _points(shape, seed=24).requires_grad_()
    y = _points(shape, seed=25, shift=-0.4).requires_grad_() if with_y else None
    got = fastvae.sliced_wasserstein(x, y, p=p, projections=theta)
    want = ref.sliced_wasserstein(x, y, p=p, projections=theta)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    inputs = (x, y) if with_y else (x,)
    g = torch.autograd.grad(got.sum(), inputs)
    w = torch.autograd.grad(want.sum(), inputs)
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_sliced_wasserstein_gradcheck_including_projections():
    x = _points((9, 3), seed=26).requires_grad_()
    y = _points((9, 3), seed=27).requires_grad_()
    theta = _directions(3, 4, seed=2).requires_grad_()
    for p in (1, 2, 3.0):
        assert torch.autograd.gradcheck(lambda a, b, t: fastvae.sliced_wasserstein(a, b, p=p, projections=t),
                                        (x, y, theta), eps=1e-7, atol=1e-6)
        assert torch.autograd.gradcheck(lambda a: fastvae.sliced_wasserstein(a, p=p, projections=theta.detach()),
                                        (x,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_against_pot(p):
    ot = pytest.importorskip("ot")
    x, y = _points((80, 6), seed=28), _points((80, 6), seed=29, shift=0.5)
    theta = _directions(6, 50, seed=3)
    pot = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.numpy(), p=p)  # (mean W_p^p)^(1/p)
    got = fastvae.sliced_wasserstein(x, y, p=p, projections=theta)
    assert abs(float(got) ** (1.0 / p) - float(pot)) < 1e-12


def test_sliced_wasserstein_prior_target_is_normal_quantile():
    # for N samples at the exact normal quantiles along every direction of a 1-D problem, SW to the prior is 0
    n = 101
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    x = q[torch.randperm(n, generator=torch.Generator().manual_seed(0))].unsqueeze(-1)
    assert float(fastvae.sliced_wasserstein(x, projections=torch.ones(1, 1, dtype=torch.float64))) < 1e-28


def test_sliced_wasserstein_random_projections_reproducible_and_float32():
    x = _points((200, 16), torch.float32, seed=30)
    a = fastvae.sliced_wasserstein(x, n_projections=64, generator=torch.Generator().manual_seed(1))
    b = fastvae.sliced_wasserstein(x, n_projections=64, generator=torch.Generator().manual_seed(1))
    c = fastvae.sliced_wasserstein(x, n_projections=64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    theta = torch.ops.fastvae.random_directions(torch.tensor([_seed_of(1)]), 16, 64)
    torch.testing.assert_close(theta.norm(dim=0), torch.ones(64), rtol=0, atol=1e-6)
    torch.testing.assert_close(a, fastvae.sliced_wasserstein(x, projections=theta))
    want = ref.sliced_wasserstein(x.double(), projections=theta.double())
    assert abs(float(a) - float(want)) < 1e-5 * float(want)  # float32 projections and sums


def test_modules_match_functions():
    x, y = _points((30, 4), seed=31), _points((30, 4), seed=32)
    m = fastvae.MMDLoss(kernel="laplacian", bandwidth=[1.0, 2.0], estimator="biased")
    assert torch.equal(m(x, y), fastvae.mmd(x, y, kernel="laplacian", bandwidth=[1.0, 2.0], estimator="biased"))
    theta = _directions(4, 8)
    s = fastvae.SlicedWassersteinLoss(p=1, projections=theta)
    assert torch.equal(s(x, y), fastvae.sliced_wasserstein(x, y, p=1, projections=theta))
    assert torch.equal(s(x), fastvae.sliced_wasserstein(x, p=1, projections=theta))


# ---------------------------------------------------------------------------------------------------------------
# op registration


def test_opcheck_distance_ops():
    ops = torch.ops.fastvae
    x, y = _points((2, 9, 3), seed=33).requires_grad_(), _points((2, 7, 3), seed=34).requires_grad_()
    seed = torch.tensor([1234])
    for args in [(x, y, None, "imq", [1.0, 2.0], True), (x, None, seed, "energy", [1.0], False),
                 (x, None, None, "rbf", [0.5], True)]:
        torch.library.opcheck(ops.mmd, args)
    px = _points((2, 4, 9), seed=35).requires_grad_()
    py = _points((2, 4, 9), seed=36).requires_grad_()
    for args in [(px, py, 2.0), (px, None, 1.0)]:
        torch.library.opcheck(ops.sliced_wasserstein_projected, args)
    torch.library.opcheck(ops.random_directions, (seed, 5, 3))


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_name_the_argument():
    x, y = _points((10, 3)), _points((12, 3))
    with pytest.raises(ValueError, match="y must have the dimension d = 3"):
        fastvae.mmd(x, _points((10, 4)))
    with pytest.raises(ValueError, match="x needs at least 2 samples"):
        fastvae.mmd(x[:1], y)
    with pytest.raises(ValueError, match="y needs at least 2 samples"):
        fastvae.mmd(x, y[:1])
    fastvae.mmd(x[:1], y[:1], estimator="biased")  # the biased estimator takes one sample
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        fastvae.mmd(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        fastvae.mmd(x, y, bandwidth=[1.0, -2.0])
    with pytest.raises(ValueError, match="kernel must be one of"):
        fastvae.mmd(x, y, kernel="gaussian")
    with pytest.raises(ValueError, match="estimator must be one of"):
        fastvae.mmd(x, y, estimator="v")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fastvae.mmd(torch.ones(4, 3, dtype=torch.int64), y)
    with pytest.raises(TypeError, match="y must be a floating-point tensor"):
        fastvae.sliced_wasserstein(x, torch.ones(10, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="y must have the batch size 2"):
        fastvae.mmd(_points((2, 5, 3)), _points((3, 5, 3)))
    with pytest.raises(ValueError, match=r"y must have the number of samples of x \(N = 10\)"):
        fastvae.sliced_wasserstein(x, y)
    with pytest.raises(ValueError, match="p must be a finite number >= 1"):
        fastvae.sliced_wasserstein(x, p=0.5)
    with pytest.raises(ValueError, match=r"projections must have shape \(d, L\) = \(3, L\)"):
        fastvae.sliced_wasserstein(x, projections=torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_projections must be a positive int"):
        fastvae.sliced_wasserstein(x, n_projections=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\) or \(B, N, d\)"):
        fastvae.mmd(torch.randn(5), y)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fastvae.mmd(x, kernel="imq", generator=3)
    # direct op calls are checked too
    with pytest.raises(ValueError, match="fastvae.mmd: bandwidth must be positive and finite; got 0"):
        torch.ops.fastvae.mmd(x.unsqueeze(0), y.unsqueeze(0), None, "imq", [0.0], True)
    with pytest.raises(ValueError, match="fastvae.mmd: bandwidth must be positive and finite; got inf"):
        torch.ops.fastvae.mmd(x.unsqueeze(0), y.unsqueeze(0), None, "imq", [math.inf], True)
    with pytest.raises(ValueError, match="fastvae.sliced_wasserstein_projected: p must be finite and >= 1; got 0.5"):
        torch.ops.fastvae.sliced_wasserstein_projected(x.unsqueeze(0), None, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# CUDA: the same ops against the CPU kernels (float64: same math, other summation order)

def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@cuda
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("with_y", [True, False], ids=["y", "prior"])
def test_cuda_mmd_matches_cpu(kernel, estimator, with_y):
    x = _points((2, 130, 70), seed=40).requires_grad_()
    y = _points((2, 97, 70), seed=41, shift=-0.3).requires_grad_() if with_y else None
    inputs = (x, y) if with_y else (x,)
    kw = dict(kernel=kernel, bandwidth=[0.5, 2.0], estimator=estimator)
    cpu = fastvae.mmd(x, y, generator=torch.Generator().manual_seed(4), **kw)
    gcpu = torch.autograd.grad(cpu.sum(), inputs)
    xc = x.detach().cuda().requires_grad_()
    yc = y.detach().cuda().requires_grad_() if with_y else None
    dev = fastvae.mmd(xc, yc, generator=torch.Generator().manual_seed(4), **kw)  # CPU generator: same prior
    gdev = torch.autograd.grad(dev.sum(), (xc, yc) if with_y else (xc,))
    # the prior samples are float32 Box-Muller on both devices; CUDA's libm may differ by an ulp or two
    tol = 1e-10 if with_y or kernel == "rbf" else 1e-5
    torch.testing.assert_close(dev.cpu(), cpu, rtol=tol, atol=tol)
    for a, b in zip(gdev, gcpu):
        torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol)
    # float32 on the device against the float64 result: the float32 tolerance of the CPU test above
    yf = None if yc is None else yc.detach().float()
    v = fastvae.mmd(xc.detach().float(), yf, generator=torch.Generator().manual_seed(4), **kw)
    scale = _term_scale(x.detach()[0], (y.detach() if with_y else x.detach())[0], kernel, [0.5, 2.0])
    assert float((v.cpu().double() - cpu.detach()).abs().max()) <= 2e-5 * scale + (0 if with_y else 1e-4)


@cuda
@pytest.mark.parametrize("p", [1, 2, 3.0])
@pytest.mark.parametrize("with_y", [True, False], ids=["y", "prior"])
@pytest.mark.parametrize("n", [100, 5000])
def test_cuda_sliced_wasserstein_matches_cpu(p, with_y, n):
    theta = _directions(8, 32, seed=5)
    x = _points((2, n, 8), seed=42).requires_grad_()
    y = _points((2, n, 8), seed=43).requires_grad_() if with_y else None
    cpu = fastvae.sliced_wasserstein(x, y, p=p, projections=theta)
    gcpu = torch.autograd.grad(cpu.sum(), x)[0]
    xc = x.detach().cuda().requires_grad_()
    dev = fastvae.sliced_wasserstein(xc, None if y is None else y.detach().cuda(), p=p, projections=theta.cuda())
    gdev = torch.autograd.grad(dev.sum(), xc)[0]
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gdev.cpu(), gcpu, rtol=1e-10, atol=1e-12)


@cuda
def test_cuda_random_projections_same_as_cpu():
    x = _points((300, 16), torch.float32, seed=44)
    a = fastvae.sliced_wasserstein(x, generator=torch.Generator().manual_seed(9))
    b = fastvae.sliced_wasserstein(x.cuda(), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# precision that does not decay with the number of bandwidths (or pairs)


@pytest.mark.parametrize("kernel,prior", [("rbf", False), ("rbf", True), ("imq", False), ("laplacian", False),
                                          ("energy", False)])
def test_mmd_error_does_not_grow_with_the_number_of_bandwidths(kernel, prior):
    """float32 mmd with the bandwidths repeated n times is n times the float64 mmd with them once, to a tolerance
    independent of n, forward and backward. (Float sums across bandwidths drifted: 1,000 copies were 0.3% off.)
    Value: the sums above one row of 64 kernel values are double, so the error per copy stays below the rounding
    of those row sums, eps times the magnitude of the three pair means (<= 1 per bandwidth: 4 x 3 bandwidths).
    Gradient: a pair's weight is summed over blocks of 8 bandwidths in float, the blocks in double, then over
    <= 64 columns in float: 24 eps of the largest entry (measured: <= 13)."""
    g = torch.Generator().manual_seed(21)
    x, y = torch.randn(64, 3, generator=g), torch.randn(48, 3, generator=g) + 0.3
    y = None if prior else y
    bw = [0.5, 1.0, 2.0]
    x64 = x.double().requires_grad_()
    y64 = None if prior else y.double().requires_grad_()
    exact = fastvae.mmd(x64, y64, kernel=kernel, bandwidth=bw)
    grads64 = torch.autograd.grad(exact, [x64] if prior else [x64, y64])
    eps = torch.finfo(torch.float32).eps
    copies = 1 if kernel == "energy" else len(bw)  # the energy kernel has no bandwidth: one term
    for n in (1, 30, 1000):
        x32 = x.clone().requires_grad_()
        y32 = None if prior else y.clone().requires_grad_()
        out = fastvae.mmd(x32, y32, kernel=kernel, bandwidth=bw * n)
        grads = torch.autograd.grad(out, [x32] if prior else [x32, y32])
        per_copy = n if kernel != "energy" else 1
        assert abs(out.item() / per_copy - exact.item()) <= 4 * copies * eps, (n, out.item() / per_copy, exact.item())
        for g32, g64 in zip(grads, grads64):
            err = (g32.double() / per_copy - g64).abs().max().item()
            assert err <= 24 * eps * g64.abs().max().item(), (n, err / (eps * g64.abs().max().item()))


@pytest.mark.parametrize("with_y", [False, True])
def test_distances_compute_in_float32_under_bf16_autocast(with_y):
    """A model under bf16 autocast (`--amp bf16`/`auto`) hands the distances bf16 codes: they compute in float32
    as without autocast. The sliced-Wasserstein projection is a matmul, which autocast would run in bf16 (the
    fused op then refused it: DDP training of swae failed under `--amp auto`)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g).bfloat16()
    y = torch.randn(64, 5, generator=g).bfloat16() if with_y else None
    for fn in (lambda a, b, s: fastvae.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(s)),
               lambda a, b, s: fastvae.mmd(a, b, generator=torch.Generator().manual_seed(s)),
               lambda a, b, s: fastvae.energy_distance(a, b, generator=torch.Generator().manual_seed(s))):
        plain = fn(x, y, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fn(x, y, 3)
        assert auto.dtype == plain.dtype == torch.float32
        assert torch.equal(auto, plain)


def _mp_mmd(x, y, kernel, h):
    """The unbiased MMD^2 of the float64 points x (N, d), y (M, d) and its gradient in x, in mpmath (40 digits):
    distances from the differences, exact for coincident points; the gradient of a coincident pair is 0."""
    import mpmath
    mpmath.mp.dps = 40
    X = [[mpmath.mpf(v) for v in row] for row in x.tolist()]
    Y = [[mpmath.mpf(v) for v in row] for row in y.tolist()]
    d = len(X[0])

    def k_and_dk(a, b):  # k(a, b) and dk/da
        diff = [ai - bi for ai, bi in zip(a, b)]
        u = mpmath.fsum(t * t for t in diff)
        r = mpmath.sqrt(u)
        if kernel == "energy":
            k, w = -r, (-1 / r if r else 0)  # dk/da = w (a - b)
        elif kernel == "laplacian":
            k = mpmath.exp(-r / h)
            w = -k / (h * r) if r else 0
        elif kernel == "rbf":
            k = mpmath.exp(-u / (2 * h * h))
            w = -k / (h * h)
        else:
            C = 2 * d * h * h
            k = C / (C + u)
            w = -2 * C / (C + u) ** 2
        return k, [w * t for t in diff]

    N, M = len(X), len(Y)
    sxx = syy = sxy = 0
    grad = [[0] * d for _ in range(N)]
    for i in range(N):
        for j in range(N):
            if i != j:
                k, g = k_and_dk(X[i], X[j])
                sxx += k
                grad[i] = [a + 2 * b / (N * (N - 1)) for a, b in zip(grad[i], g)]
        for j in range(M):
            k, g = k_and_dk(X[i], Y[j])
            sxy += k
            grad[i] = [a - 2 * b / (N * M) for a, b in zip(grad[i], g)]
    for i in range(M):
        for j in range(M):
            if i != j:
                syy += k_and_dk(Y[i], Y[j])[0]
    terms = [sxx / (N * (N - 1)), syy / (M * (M - 1)), -2 * sxy / (N * M)]
    value = mpmath.fsum(terms)
    return float(value), sum(abs(float(t)) for t in terms), torch.tensor([[float(v) for v in r] for r in grad],
                                                                           dtype=torch.float64)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("delta", [0.0, 1e-12, 1e-7])
def test_mmd_float64_coincident_and_near_points_against_mpmath(kernel, delta):
    """Issue 20, class 3: y = x (+ delta noise). |x - y|^2 = |x|^2 + |y|^2 - 2 x.y cancels to ~eps |x|^2 and its
    square root to ~1e-8 |x|: the energy MMD of a sample with itself was 2.6e-9 in float64. Pairs closer than the
    dot-product form resolves now take their distance from the differences: the value to float64 precision of
    the terms it cancels from, and (coincident points) the gradient too."""
    x = _points((13, 16), seed=71, scale=1.0, shift=2.0)
    y = x + delta * _points((13, 16), seed=72, scale=1.0, shift=0.0)
    want, magnitude, want_grad = _mp_mmd(x, y, kernel, 1.0)
    xr = x.clone().requires_grad_()
    got = fastvae.mmd(xr, y, kernel=kernel, bandwidth=1.0)
    eps = torch.finfo(torch.float64).eps
    # a few roundings of each of the 3 * 13^2 kernel values and of the sums: 16 eps of the terms' magnitude
    assert abs(float(got) - want) <= 16 * eps * magnitude, (float(got), want, magnitude)
    if delta == 0.0:
        (g,) = torch.autograd.grad(got, xr)
        torch.testing.assert_close(g, want_grad, rtol=0, atol=64 * eps * want_grad.abs().max().item())
