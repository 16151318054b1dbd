"""The CUDA launchers of csrc/cuda/{gaussian,distances}.cu executed on the CPU and checked against the CPU ops.

The two .cu files are compiled unchanged with g++ against the CUDA execution model (tests/cudasim, see its README),
linked with the driver tests/cudasim_kernels/fastvae_launchers.cpp, once per test run in a temporary directory
(with UBSan's alignment check). Each case runs the driver in a child process (an out-of-bounds access kills it
with the model's report) under the three thread/block orders (forward, reverse, seeded random), with every input,
output and workspace in a guarded buffer whose end lies against an inaccessible page, and compares its outputs
with torch.ops.fastvae on CPU tensors at the same seed. The CUDA kernels read the seed through a pointer; under
the model a host pointer works, so the driver hands them a guarded host int64.
"""
import math
import shutil

import pytest
import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)
from fastvae import reference
from helpers import (CUDA_INCLUDE, CXX, HALF_DTYPES, ORDERS, ROOT, SEED, build_driver, close, data, run, same_special,
                     seed_tensor)

pytestmark = [pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which(CXX) is None,
                                 reason="needs g++ and the CUDA toolkit headers"),
              pytest.mark.slow]  # the CUDA sources executed on the CPU: `make test` runs them, `make test-fast` not

DTYPES = {torch.float32: 0, torch.float64: 1}  # fastvae::DType; the distance launchers take these two
LAYOUT = {None: 0, "feature": 1, "full": 2}
KERNELS = {"rbf": 0, "imq": 1, "laplacian": 2, "energy": 3}


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver of the launchers of csrc/cuda/{gaussian,distances}_kernels.h and normals.h linked with their .cu
    files and the model."""
    return build_driver(tmp_path_factory.mktemp("cuda_on_cpu"),
                        [ROOT / "csrc" / "cuda" / n for n in ("gaussian.cu", "distances.cu", "normals.cu")],
                        ROOT / "tests" / "cudasim_kernels" / "fastvae_launchers.cpp", "fastvae_launchers")


# Tolerances. z = mu + exp(lv / 2) eps: the same Philox stream and Box-Muller formula, computed with libm under the
# model and with the CPU kernels' vectorised log/sin/cos: a few float32 ulps of eps (|eps| < 5), times
# exp(lv / 2) < e^2 for these inputs; rtol = atol = 2e-5 as tests/ops/test_gaussian_cuda.py allows a GPU (measured:
# 1.4e-6). float64 data draws the same float32 eps: the same bound.
# Row sums (kl, nll) of D float32 terms of magnitude O(1..10), added in another order than the CPU's (lanes and a
# shuffle tree, or block sums and double chunk partials, against the CPU's SIMD lanes): the error of either sum is
# at most ~log2(D) eps32 times the sum of |terms| <= 10 D, below 1e-6 D for these D; rtol 1e-5 on top (measured:
# <= 1% of the allowance). float64: the terms in float64, 1e-12 relative.
def tol(dtype, D=1):
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12 * D)
    return dict(rtol=1e-5, atol=1e-6 * D)


# (rows, D), D odd (not a multiple of 4): (4, 7) is 112 bytes, so its buffers start 16-byte aligned (they end at a
# page) and with offset=1 one element before an aligned address; (3, 5) is 60 bytes: 4 bytes past one.
ELEMENTWISE_SHAPES = [(4, 7), (3, 5)]


# ---- checks of the Gaussian launchers --------------------------------------------------------------------------------
# Each test builds the launcher's inputs in `dtype`, its expected outputs from the CPU op (16-bit data: the float32
# op on the exactly converted inputs, as the public functions compute them) and a tolerance per output, and
# check() runs it under the model. Output kinds and their tolerances (float32 / float64 data):
#  - "eps":  elementwise through eps (z, reparameterisation gradients): the model's libm Box-Muller against the
#            CPU's vectorised one, a few float32 ulps of eps, times factors < e^2 here: 2e-5, as in test_reparam_fwd
#            (float64 data draws the same float32 eps: the same bound);
#  - "elem": elementwise without eps, the same formulas (csrc/include/fastvae/gaussian_math.h) with libm against the
#            CPU's vector exp/log1p: a few ulps of values of magnitude <= ~50: rtol 1e-5, atol 1e-6 (float64: 1e-12);
#  - "sum":  a sum of D (or rows) such terms in another order: tol(dtype, D) above.
# 16-bit outputs: the model rounds to the 16-bit format a float32 value within those bounds of the CPU's, so the two
# are at most one 16-bit ulp apart.
ACC = {torch.float32: torch.float32, torch.float64: torch.float64, torch.float16: torch.float32,
       torch.bfloat16: torch.float32}
ALL_DTYPES = {**DTYPES, **HALF_DTYPES}


def kind_tol(kind, dtype, n=1):
    if kind == "sum":
        return tol(ACC[dtype], n)
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12) if kind == "elem" else dict(rtol=2e-5, atol=2e-5)
    return dict(rtol=1e-5, atol=1e-6) if kind == "elem" else dict(rtol=2e-5, atol=2e-5)


def check(driver, tmp_path, order, op, dtype, inputs, want, **params):
    """Runs `op` on `inputs` under `order` and compares every output with want: name -> (tensor of the output's
    dtype, kind, n); a 16-bit output is the CPU's float32 value rounded to it, compared to one ulp."""
    outputs = {name: (t.dtype, tuple(t.shape)) for name, (t, kind, n) in want.items()}
    got = run(driver, tmp_path, op, order, inputs, outputs, dtype=ALL_DTYPES[dtype], **params)
    for name, (t, kind, n) in want.items():
        if t.dtype in HALF_DTYPES:
            ulp = torch.finfo(t.dtype).eps
            close(got[name], t, rtol=ulp, atol=ulp, what=name)
        else:
            close(got[name], t, **kind_tol(kind, dtype, n), what=name)
    return got


def on_cpu(t):
    """An input as the CPU op takes it: 16-bit data converted (exactly) to float32; None stays None."""
    return t.to(ACC[t.dtype]) if t is not None else None


def sim_eps(driver, tmp_path, n):
    """eps[0 .. n) of SEED's stream as the model computes it (the normals launcher): the float64 references below
    use the kernels' own eps, so that they can be compared to float64 precision."""
    return run(driver, tmp_path / "eps", "normals", "forward", {}, {"eps": (torch.float32, (n,))},
               dtype=0, start=0, n=n, seed=SEED)["eps"].double()


# (rows, D, x_rows, offset): lanes per row, misaligned, x broadcast over k = 3 samples of mean (rows = k x_rows),
# chunked rows, and 70000 rows of 3 (the row kernels and the column reduction put rows on the grid's x axis or in
# a loop over 64 row groups, never on y or z: nothing there is capped at 65535; checked anyway, it is cheap)
LIK_CASES = [(4, 7, 4, 0), (4, 7, 4, 1), (6, 5, 2, 0), (2, 2 * 8192 + 13, 2, 0)]
BIG_ROWS = (70000, 3, 70000, 0)


def lik_shape(rows, D, x_rows):
    """mean's (or logits') shape: (k, x_rows, D) when broadcast over x, else x's."""
    return (rows // x_rows, x_rows, D) if rows != x_rows else (rows, D)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_reparam_fwd(driver, tmp_path, order, dtype, offset, shape, k):
    mu, lv = data(*shape, dtype=dtype, seed=1), data(*shape, dtype=dtype, seed=2)
    z = torch.ops.fastvae.reparameterize(on_cpu(mu), on_cpu(lv), seed_tensor(), k).reshape(k * shape[0], shape[1])
    check(driver, tmp_path, order, "reparam_fwd", dtype, {"mu": mu, "lv": lv}, {"z": (z.to(dtype), "eps", 1)},
          numel=mu.numel(), n_samples=k, seed=SEED, offset=offset)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0), (2, 2 * 8192 + 13, 0)])
def test_reparam_kl_fwd(driver, tmp_path, order, dtype, rows, D, offset):
    """D = 7, 5: lanes-per-row kernel; D = 16397: three 8192-element chunks per row, the last block adds them.
    16-bit data: 8-byte vector loads where aligned, float32 arithmetic, float32 per-row outputs."""
    mu, lv = data(rows, D, dtype=dtype, seed=3), data(rows, D, dtype=dtype, seed=4)
    z, kl = torch.ops.fastvae.reparameterize_kl(on_cpu(mu), on_cpu(lv), seed_tensor())
    check(driver, tmp_path, order, "reparam_kl_fwd", dtype, {"mu": mu, "lv": lv},
          {"z": (z.to(dtype), "eps", 1), "kl": (kl, "sum", D)}, rows=rows, D=D, seed=SEED, offset=offset)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lv_layout", [None, "feature", "full"])
@pytest.mark.parametrize("rows,D,x_rows,offset", LIK_CASES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gaussian_nll_fwd(driver, tmp_path, order, lv_layout, rows, D, x_rows, offset, dtype):
    x, mean = data(x_rows, D, dtype=dtype, seed=5), data(*lik_shape(rows, D, x_rows), dtype=dtype, seed=6)
    lv = {None: None, "feature": data(D, dtype=dtype, seed=7), "full": data(*mean.shape, dtype=dtype, seed=7)}
    lv = lv[lv_layout]
    out = torch.ops.fastvae.gaussian_nll(on_cpu(x), on_cpu(mean), on_cpu(lv)).reshape(-1)
    check(driver, tmp_path, order, "gaussian_nll_fwd", dtype,
          {"x": x, "mean": mean, **({"lv": lv} if lv is not None else {})}, {"out": (out, "sum", D)},
          rows=rows, D=D, x_rows=x_rows, lv_layout=LAYOUT[lv_layout], offset=offset)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mp_layout,lp_layout", [(None, None), ("feature", "full"), ("full", "feature")])
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0)])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_normal_fwd(driver, tmp_path, order, mp_layout, lp_layout, rows, D, offset, dtype):
    mu, lv = data(rows, D, dtype=dtype, seed=8), data(rows, D, dtype=dtype, seed=9)
    prior = {None: lambda s: None, "feature": lambda s: data(D, dtype=dtype, seed=s),
             "full": lambda s: data(rows, D, dtype=dtype, seed=s)}
    mp, lp = prior[mp_layout](10), prior[lp_layout](11)
    inputs = {"mu": mu, "lv": lv, **({"mp": mp} if mp is not None else {}), **({"lp": lp} if lp is not None else {})}
    out = torch.ops.fastvae.kl_normal(*map(on_cpu, (mu, lv, mp, lp)))
    check(driver, tmp_path, order, "kl_normal_fwd", dtype, inputs, {"out": (out, "sum", D)}, rows=rows, D=D,
          mp_layout=LAYOUT[mp_layout], lp_layout=LAYOUT[lp_layout], offset=offset)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_forward_imq_with_y(driver, tmp_path, order, dtype, unbiased):
    """N, M not multiples of the 64-row tile (partial tiles, the diagonal tiles of x x), d odd, two bandwidths."""
    B, N, M, d, bw = 2, 70, 37, 5, [0.5, 2.0]
    x, y = data(B, N, d, dtype=dtype, seed=12), data(B, M, d, dtype=dtype, seed=13) + 0.5
    got = run(driver, tmp_path, "mmd_forward", order, {"x": x, "y": y}, {"out": (dtype, (B,))},
              dtype=DTYPES[dtype], B=B, N=N, M=M, d=d, with_y=1, kernel=KERNELS["imq"],
              bandwidths=",".join(map(str, bw)), unbiased=int(unbiased))
    want = torch.ops.fastvae.mmd(x, y, None, "imq", bw, unbiased)
    # MMD^2 is a difference of means of O(1) kernel values over ~N^2 pairs summed in another order (tiles); the
    # sums are accumulated in double by both, so only the float32 kernel values' rounding (~1e-7 each) remains
    close(got["out"], want, rtol=1e-5 if dtype == torch.float32 else 1e-10,
          atol=1e-6 if dtype == torch.float32 else 1e-12, what="mmd")


def _tied_projections(seed, dtype, with_y, shape=(2, 3, 37)):
    """px (and py) (B, L, N) on a coarse grid of halves: many ties within each row."""
    g = torch.Generator().manual_seed(seed)
    px = (torch.randint(-3, 4, shape, generator=g) / 2).to(dtype)
    py = (torch.randint(-3, 4, shape, generator=g) / 2).to(dtype) if with_y else None
    return px, py


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_y,p", [(True, 2.0), (True, 1.0), (False, 2.0)])
def test_sw_forward_with_ties(driver, tmp_path, order, dtype, with_y, p):
    """Projections on a coarse grid (many ties, -0.0 and +0.0): the permutations must be the CPU's stable ones."""
    px, py = _tied_projections(14, dtype, with_y)
    B, L, N = px.shape
    px[0, 0, :4] = torch.tensor([0.0, -0.0, 0.0, -0.0], dtype=dtype)
    inputs = {"px": px, **({"py": py} if with_y else {})}
    outputs = {"out": (dtype, (B,)), "perm_x": (torch.int32, (B, L, N))}
    if with_y:
        outputs["perm_y"] = (torch.int32, (B, L, N))
    got = run(driver, tmp_path, "sw_forward", order, inputs, outputs,
              dtype=DTYPES[dtype], B=B, L=L, N=N, p=p, with_y=int(with_y))
    out, perm_x, perm_y = torch.ops.fastvae.sliced_wasserstein_projected(px, py, p)
    assert torch.equal(got["perm_x"], perm_x)
    if with_y:
        assert torch.equal(got["perm_y"], perm_y)
    # per-row sums of |xs - t|^p in double in both; the normal quantile targets come from the same formula
    close(got["out"], out, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12, what="sw")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mmd_backward_imq_with_y(driver, tmp_path, order, dtype):
    """The gradient tiles (float64: more dynamic shared memory than the default 48 KiB, raised by the launcher)."""
    B, N, M, d, bw = 2, 70, 37, 5, [0.5, 2.0]
    x, y = data(B, N, d, dtype=dtype, seed=17), data(B, M, d, dtype=dtype, seed=18) + 0.5
    g = torch.tensor([1.0, -2.0], dtype=dtype)
    got = run(driver, tmp_path, "mmd_backward", order, {"x": x, "y": y, "g": g},
              {"grad_x": (dtype, (B, N, d)), "grad_y": (dtype, (B, M, d))},
              dtype=DTYPES[dtype], B=B, N=N, M=M, d=d, with_y=1, kernel=KERNELS["imq"],
              bandwidths=",".join(map(str, bw)), unbiased=0)
    gx, gy = torch.ops.fastvae.mmd_backward(g, x, y, None, "imq", bw, False, True)
    # each gradient entry: a sum over ~100 partners of O(1) terms / N^2, float32 products added in another order
    # (tiles, double accumulators on both sides): ~1e-7 relative to the sum of magnitudes ~1e-2
    rtol, atol = (1e-5, 1e-7) if dtype == torch.float32 else (1e-10, 1e-14)
    close(got["grad_x"], gx, rtol=rtol, atol=atol, what="grad_x")
    close(got["grad_y"], gy, rtol=rtol, atol=atol, what="grad_y")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_y,p", [(True, 2.0), (True, 1.0), (False, 2.0)])
def test_sw_backward_with_ties(driver, tmp_path, order, dtype, with_y, p):
    """The CPU forward's permutations in, every gradient element written once (outputs start as NaN)."""
    px, py = _tied_projections(19, dtype, with_y)
    B, L, N = px.shape
    _, perm_x, perm_y = torch.ops.fastvae.sliced_wasserstein_projected(px, py, p)
    g = torch.tensor([0.5, -1.5], dtype=dtype)
    inputs = {"g": g, "px": px, "perm_x": perm_x, **({"py": py, "perm_y": perm_y} if with_y else {})}
    outputs = {"gpx": (dtype, (B, L, N)), **({"gpy": (dtype, (B, L, N))} if with_y else {})}
    got = run(driver, tmp_path, "sw_backward", order, inputs, outputs,
              dtype=DTYPES[dtype], B=B, L=L, N=N, p=p, with_y=int(with_y))
    gpx, gpy = torch.ops.fastvae.sliced_wasserstein_projected_backward(g, px, py, perm_x, perm_y, p, with_y)
    # one double expression per element on both sides, rounded once to T; but without py the CPU rounds the
    # normal quantile targets t (|t| < 3 for N = 37) to T first (csrc/cpu/distances.cpp:592), the CUDA kernel keeps
    # them in double: a difference up to eps(T) |t| in x - t, times |g| / (L N) |d/dd d^2| = 2 |g| / (L N)
    eps = torch.finfo(dtype).eps
    rtol, atol = 4 * eps, 2 * g.abs().max().item() / (L * N) * 3 * 2 * eps
    close(got["gpx"], gpx, rtol=rtol, atol=atol, what="gpx")
    if with_y:
        close(got["gpy"], gpy, rtol=rtol, atol=atol, what="gpy")


# ---- the other Gaussian launchers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("start,n", [(0, 1024), (3, 37), (2 ** 33 + 1, 5)])
def test_normals(driver, tmp_path, order, start, n):
    """eps[start .. start + n) against the CPU stream: starts not multiples of 4, a counter above 2^32."""
    got = run(driver, tmp_path, "normals", order, {}, {"eps": (torch.float32, (n,))}, dtype=0, start=start, n=n,
              seed=SEED)["eps"]
    # the same Philox bits, Box-Muller with libm (model) or the CPU's polynomial log / sincospi: a few float32
    # ulps of |eps| < 6
    close(got, torch.ops.fastvae._normals(seed_tensor(), start, n), rtol=1e-6, atol=2e-6, what="eps")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,offset", [((4, 7), 0), ((4, 7), 1), ((3, 5), 0)])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_reparam_bwd(driver, tmp_path, order, dtype, shape, offset, k):
    """n_samples None (no gradient of mu: null output), 1 and 3 (samples that straddle rows of 4)."""
    lv = data(*shape, dtype=dtype, seed=20)
    gz = data(*((k,) if k else ()), *shape, dtype=dtype, seed=21)
    gmu, glv = torch.ops.fastvae.reparameterize_backward(on_cpu(gz), on_cpu(lv), seed_tensor(), k)
    want = {"grad_lv": (glv.to(dtype), "eps", 1), **({"grad_mu": (gmu.to(dtype), "elem", 1)} if k else {})}
    got = check(driver, tmp_path, order, "reparam_bwd", dtype, {"gz": gz, "lv": lv}, want, numel=lv.numel(),
                n_samples=k or 1, seed=SEED, offset=offset, need_grad_mu=int(k is not None))
    if dtype == torch.float64 and order == "forward":  # the float64 reference at the kernels' own eps
        n = (k or 1) * lv.numel()
        mu, lv_ = torch.zeros_like(lv, requires_grad=True), lv.clone().requires_grad_()
        z = reference.reparameterize(mu, lv_, n_samples=k, eps=sim_eps(driver, tmp_path, n))
        ref = torch.autograd.grad(z, (mu, lv_), gz)
        close(got["grad_lv"], ref[1], rtol=1e-13, atol=1e-14, what="grad_lv vs reference")
        if k:
            close(got["grad_mu"], ref[0], rtol=1e-13, atol=1e-14, what="grad_mu vs reference")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0), (2, 2 * 8192 + 13, 0)])
def test_reparam_kl_bwd(driver, tmp_path, order, dtype, rows, D, offset):
    """Lanes per row (D = 7, 5) and the chunked rows (D = 16397: three chunks per row)."""
    gz, mu, lv = (data(rows, D, dtype=dtype, seed=s) for s in (22, 23, 24))
    gkl = data(rows, dtype=ACC[dtype], seed=25)
    gmu, glv = torch.ops.fastvae.reparameterize_kl_backward(*map(on_cpu, (gz, gkl, mu, lv)), seed_tensor())
    got = check(driver, tmp_path, order, "reparam_kl_bwd", dtype, {"gz": gz, "gkl": gkl, "mu": mu, "lv": lv},
                {"grad_mu": (gmu.to(dtype), "elem", 1), "grad_lv": (glv.to(dtype), "eps", 1)}, rows=rows, D=D,
                seed=SEED, offset=offset)
    if dtype == torch.float64 and order == "forward":
        mu_, lv_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z, kl = reference.reparameterize_kl(mu_, lv_, eps=sim_eps(driver, tmp_path, rows * D).reshape(rows, D))
        ref = torch.autograd.grad((z, kl), (mu_, lv_), (gz, gkl))
        close(got["grad_mu"], ref[0], rtol=1e-13, atol=1e-14, what="grad_mu vs reference")
        close(got["grad_lv"], ref[1], rtol=1e-13, atol=1e-14, what="grad_lv vs reference")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lv_layout", [None, "feature", "full"])
@pytest.mark.parametrize("rows,D,x_rows,offset", [*LIK_CASES, BIG_ROWS])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gaussian_nll_bwd(driver, tmp_path, order, lv_layout, rows, D, x_rows, offset, dtype):
    """Per-element gradients; with a per-feature logvar its gradient is the column reduction (cols_partial over
    64 row groups in the NaN-filled col_workspace, then cols_finish)."""
    params = dict(rows=rows, D=D, x_rows=x_rows, offset=offset)
    x, mean = data(x_rows, D, dtype=dtype, seed=26), data(*lik_shape(rows, D, x_rows), dtype=dtype, seed=27)
    lv = {None: None, "feature": data(D, dtype=dtype, seed=28), "full": data(*mean.shape, dtype=dtype, seed=28)}
    lv = lv[lv_layout]
    g = data(*mean.shape[:-1], dtype=ACC[dtype], seed=29)
    gm, gl = torch.ops.fastvae.gaussian_nll_backward(*map(on_cpu, (g, x, mean, lv)), True, True)
    want = {"grad_mean": (gm.to(dtype), "elem", 1)}
    if lv is not None:  # the per-feature gradient: a sum over the rows
        want["grad_lv"] = (gl.to(dtype), "sum" if lv_layout == "feature" else "elem", rows)
    got = check(driver, tmp_path, order, "gaussian_nll_bwd", dtype,
                {"g": g, "x": x, "mean": mean, **({"lv": lv} if lv is not None else {})}, want,
                lv_layout=LAYOUT[lv_layout], **params)
    if dtype == torch.float64 and order == "forward" and rows < 1000:
        mean_ = mean.clone().requires_grad_()
        lv_ = lv.clone().requires_grad_() if lv is not None else None
        out = reference.gaussian_nll(x, mean_, lv_, reduction="none")
        ref = torch.autograd.grad(out, [mean_, *([lv_] if lv is not None else [])], g)
        close(got["grad_mean"], ref[0], rtol=1e-12, atol=1e-13, what="grad_mean vs reference")
        if lv is not None:
            close(got["grad_lv"], ref[1], rtol=1e-12, atol=1e-13 * rows, what="grad_lv vs reference")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lv_layout", ["feature", "full"])
@pytest.mark.parametrize("need_mean,need_lv", [(False, True), (True, False)])
def test_gaussian_nll_bwd_one_gradient(driver, tmp_path, order, lv_layout, need_mean, need_lv):
    """Only one of the gradients asked for: the other output is null (the column path without grad_mean, the
    row path with a per-feature logvar and no gradient of it)."""
    rows, D = 5, 7
    x, mean, g = data(rows, D, seed=30), data(rows, D, seed=31), data(rows, seed=32)
    lv = data(D, seed=33) if lv_layout == "feature" else data(rows, D, seed=33)
    gm, gl = torch.ops.fastvae.gaussian_nll_backward(g, x, mean, lv, need_mean, need_lv)
    want = {**({"grad_mean": (gm, "elem", 1)} if need_mean else {}),
            **({"grad_lv": (gl, "sum" if lv_layout == "feature" else "elem", rows)} if need_lv else {})}
    check(driver, tmp_path, order, "gaussian_nll_bwd", torch.float32, {"g": g, "x": x, "mean": mean, "lv": lv},
          want, rows=rows, D=D, lv_layout=LAYOUT[lv_layout], need_grad_mean=int(need_mean),
          need_grad_lv=int(need_lv))


def bernoulli_inputs(rows, D, x_rows, dtype):
    """Logits of every size up to +-1e4 (softplus and sigmoid must not overflow: exp(1e4) is inf in every
    format) and x in {0, 1} and a probability."""
    shape = lik_shape(rows, D, x_rows)
    g = torch.Generator().manual_seed(34)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 4
    big = torch.tensor([1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 0.0], dtype=torch.float64)
    logits.view(-1)[: min(7, logits.numel())] = big[: min(7, logits.numel())]
    x = torch.randint(0, 2, (x_rows, D), generator=g).double()
    x.view(-1)[1::5] = 0.3
    if dtype == torch.float16:  # float16 tops out at 65504: the huge logits are 6e4
        logits = logits.clamp(-6e4, 6e4)
    return logits.to(dtype), x.to(dtype), data(*shape[:-1], dtype=ACC[dtype], seed=35)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("rows,D,x_rows,offset", [*LIK_CASES, BIG_ROWS])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_bernoulli_nll(driver, tmp_path, order, rows, D, x_rows, offset, dtype):
    """bernoulli_nll_fwd and _bwd: x broadcast over samples, huge logits, lanes per row and chunked rows."""
    params = dict(rows=rows, D=D, x_rows=x_rows, offset=offset)
    logits, x, g = bernoulli_inputs(rows, D, x_rows, dtype)
    out = torch.ops.fastvae.bernoulli_nll(on_cpu(logits), on_cpu(x))
    # the terms reach |l| = 1e4: the row sums' absolute tolerance scales with them
    got = check(driver, tmp_path, order, "bernoulli_nll_fwd", dtype, {"logits": logits, "x": x},
                {"out": (out, "sum", D * 1e4 / 10)}, **params)
    grad = torch.ops.fastvae.bernoulli_nll_backward(g, on_cpu(logits), on_cpu(x))
    check(driver, tmp_path / "bwd", order, "bernoulli_nll_bwd", dtype, {"g": g, "logits": logits, "x": x},
          {"grad": (grad.to(dtype), "elem", 1)}, **params)
    if dtype == torch.float64 and order == "forward" and rows < 1000:
        l_ = logits.clone().requires_grad_()
        ref = reference.bernoulli_nll(x, l_, reduction="none")
        close(got["out"], ref, rtol=1e-12, atol=1e-12 * D, what="nll vs reference")


PRIOR_LAYOUTS = [(None, None), ("feature", "full"), ("full", "feature"), ("feature", "feature"), ("full", "full"),
                 (None, "feature"), ("feature", None)]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mp_layout,lp_layout", PRIOR_LAYOUTS)
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0)])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kl_normal_bwd(driver, tmp_path, order, mp_layout, lp_layout, rows, D, offset, dtype):
    """Every prior layout: per-feature prior gradients go through the column reduction (two accumulators when
    both are per feature), per-element ones through the row kernel."""
    mu, lv = data(rows, D, dtype=dtype, seed=36), data(rows, D, dtype=dtype, seed=37)
    prior = {None: lambda s: None, "feature": lambda s: data(D, dtype=dtype, seed=s),
             "full": lambda s: data(rows, D, dtype=dtype, seed=s)}
    mp, lp = prior[mp_layout](38), prior[lp_layout](39)
    g = data(rows, dtype=ACC[dtype], seed=40)
    grads = torch.ops.fastvae.kl_normal_backward(*map(on_cpu, (g, mu, lv, mp, lp)), [True, True, True, True])
    layouts = {"grad_mp": mp_layout, "grad_lp": lp_layout}
    want = {name: (t.to(dtype), "sum" if layouts.get(name) == "feature" else "elem", rows)
            for name, t in zip(("grad_mu", "grad_lv", "grad_mp", "grad_lp"), grads) if t.numel()}
    inputs = {"g": g, "mu": mu, "lv": lv, **({"mp": mp} if mp is not None else {}),
              **({"lp": lp} if lp is not None else {})}
    got = check(driver, tmp_path, order, "kl_normal_bwd", dtype, inputs, want, rows=rows, D=D,
                mp_layout=LAYOUT[mp_layout], lp_layout=LAYOUT[lp_layout], offset=offset)
    if dtype == torch.float64 and order == "forward":
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (mu, lv, mp, lp)]
        out = reference.kl_normal(*leaves, reduction="none")
        ref = torch.autograd.grad(out, [t for t in leaves if t is not None], g)
        names = [n for n, t in zip(("grad_mu", "grad_lv", "grad_mp", "grad_lp"), leaves) if t is not None]
        for name, r in zip(names, ref):
            close(got[name], r, rtol=1e-12, atol=1e-13 * rows, what=f"{name} vs reference")


@pytest.mark.parametrize("order", ORDERS)
def test_kl_normal_bwd_many_rows(driver, tmp_path, order):
    """70000 rows of 3, both priors per feature: 64 row groups of 1094 rows each in the column reduction."""
    rows, D = 70000, 3
    mu, lv, mp, lp, g = data(rows, D, seed=46), data(rows, D, seed=47), data(D, seed=48), data(D, seed=49), \
        data(rows, seed=50)
    grads = torch.ops.fastvae.kl_normal_backward(g, mu, lv, mp, lp, [True] * 4)
    want = {n: (t, "sum" if n in ("grad_mp", "grad_lp") else "elem", rows)
            for n, t in zip(("grad_mu", "grad_lv", "grad_mp", "grad_lp"), grads)}
    check(driver, tmp_path, order, "kl_normal_bwd", torch.float32, {"g": g, "mu": mu, "lv": lv, "mp": mp, "lp": lp},
          want, rows=rows, D=D, mp_layout=LAYOUT["feature"], lp_layout=LAYOUT["feature"])


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mask", [(True, True, False, True), (False, False, True, False), (True, False, True, True)])
def test_kl_normal_bwd_some_gradients(driver, tmp_path, order, mask):
    """Per-feature priors with some gradients not asked for: one accumulator for mp or lp alone, none."""
    rows, D = 5, 6
    mu, lv, mp, lp = data(rows, D, seed=41), data(rows, D, seed=42), data(D, seed=43), data(D, seed=44)
    g = data(rows, seed=45)
    grads = torch.ops.fastvae.kl_normal_backward(g, mu, lv, mp, lp, list(mask))
    names = ("grad_mu", "grad_lv", "grad_mp", "grad_lp")
    want = {n: (t, "sum" if n in ("grad_mp", "grad_lp") else "elem", rows)
            for n, t, m in zip(names, grads, mask) if m}
    check(driver, tmp_path, order, "kl_normal_bwd", torch.float32, {"g": g, "mu": mu, "lv": lv, "mp": mp, "lp": lp},
          want, rows=rows, D=D, mp_layout=LAYOUT["feature"], lp_layout=LAYOUT["feature"],
          **{f"need_{n}": int(m) for n, m in zip(names, mask)})


def tril_inputs(R, d, dtype):
    """mu (R, d) and a lower-triangular L (R, d, d): diagonal in [0.5, 1.5] (either sign), the rest N(0, 1 / d)
    (so |z| stays O(1) for every d); the kernels never read above the diagonal, which holds NaN here."""
    g = torch.Generator().manual_seed(51)
    L = torch.randn(R, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    sign = torch.randint(0, 2, (R, d), generator=g) * 2 - 1
    diag = (torch.rand(R, d, generator=g, dtype=torch.float64) + 0.5) * sign
    L = L.tril(-1) + torch.diag_embed(diag) + torch.full((d, d), math.nan, dtype=torch.float64).triu(1)
    return data(R, d, dtype=dtype, seed=52), L.to(dtype)


def tril_tol(d):
    """z_i = mu_i + sum_{j<=i} L_ij eps_j and log_q = -|eps|^2 / 2 - sum log|L_ii| - const against the CPU: each
    eps differs by <= 2e-6 (test_normals), times sum_j |L_ij| <= 1.5 + sqrt(d) here; log_q adds d terms eps_j^2 whose
    differences are <= 2 |eps_j| 2e-6 <= 3e-5 each; the float32 sums of d terms add d eps32 of their magnitude."""
    return dict(rtol=1e-5, atol=4e-6 * (1.5 + math.sqrt(d))), dict(rtol=1e-5, atol=3e-5 * d)


# d = 1, 5, 300 (more than the 256 threads: each loops), R = 3 rows, k = None / 3 samples; d = 6144 is the largest
# the CUDA ops take (float32: 48 KiB of dynamic shared memory in tril_bwd, the default limit exactly; float64: 72 KiB,
# raised by the launcher), one row, one sample, one order (0.3 GB of L in float64 per run)
TRIL_CASES = [(3, 1, None), (3, 5, 3), (3, 300, None), (2, 300, 3)]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("R,d,k", TRIL_CASES)
def test_tril(driver, tmp_path, order, dtype, R, d, k):
    """tril_fwd and tril_bwd against the CPU op; float64 also against the float64 reference at the kernels' own
    eps, to 1e-13: a gradient rounded through float32 anywhere (known bug 2: grad_z kept as float in shared memory)
    is off by ~1e-8."""
    _check_tril(driver, tmp_path, order, dtype, R, d, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tril_largest_d(driver, tmp_path, dtype):
    """d = 6144, the largest the CUDA ops take: one row, one sample, one order (0.3 GB of L in float64)."""
    _check_tril(driver, tmp_path, "forward", dtype, 1, 6144, None)


def _check_tril(driver, tmp_path, order, dtype, R, d, k):
    n = k or 1
    mu, L = tril_inputs(R, d, dtype)
    acc = ACC[dtype]
    z, log_q = torch.ops.fastvae.reparameterize_tril(on_cpu(mu), on_cpu(L), seed_tensor(), k)
    tz, tq = tril_tol(d)
    ulp = torch.finfo(dtype).eps
    want_z = z.to(dtype).reshape(n * R, d)
    fwd = run(driver, tmp_path, "tril_fwd", order, {"mu": mu, "L": L},
              {"z": (dtype, (n * R, d)), "log_q": (acc, (n * R,))}, dtype=ALL_DTYPES[dtype], R=R, d=d, n_samples=n,
              seed=SEED)
    close(fwd["z"], want_z, **(tz if dtype not in HALF_DTYPES else dict(rtol=ulp, atol=ulp)), what="z")
    close(fwd["log_q"], log_q.reshape(-1), **tq, what="log_q")
    gz, glq = data(*z.shape, dtype=dtype, seed=53), data(*log_q.shape, dtype=acc, seed=54)
    gmu, gL = torch.ops.fastvae.reparameterize_tril_backward(on_cpu(gz), glq, on_cpu(L), seed_tensor(), k)
    bwd = run(driver, tmp_path / "bwd", "tril_bwd", order, {"gz": gz, "glogq": glq, "L": L},
              {"grad_mu": (acc, (R, d)), "grad_L": (acc, (R, d, d))}, dtype=ALL_DTYPES[dtype], R=R, d=d,
              n_samples=n, seed=SEED, timeout=300)
    # grad_mu = sum over samples of grad_z; grad_L_ij = sum_s grad_z_i eps_j (eps as in z), diagonal - sum glq / L_ii
    close(bwd["grad_mu"], gmu.to(acc), rtol=1e-6, atol=1e-6, what="grad_mu")
    close(bwd["grad_L"], gL.to(acc).tril(), rtol=2e-5, atol=2e-5 * n, what="grad_L")
    assert bwd["grad_L"].triu(1).eq(0).all(), "grad_L above the diagonal"
    if dtype == torch.float64 and order == "forward":
        eps = sim_eps(driver, tmp_path, n * R * d).reshape(*z.shape)
        mu_, L_ = mu.clone().requires_grad_(), L.nan_to_num().clone().requires_grad_()
        rz, rq = reference.reparameterize_tril(mu_, L_.tril(), n_samples=k, eps=eps)
        close(fwd["z"], rz.reshape(n * R, d), rtol=1e-13, atol=1e-14 * d, what="z vs reference")
        close(fwd["log_q"], rq.reshape(-1), rtol=1e-13, atol=1e-14 * d, what="log_q vs reference")
        rmu, rL = torch.autograd.grad((rz, rq), (mu_, L_), (gz, glq))
        close(bwd["grad_mu"], rmu, rtol=1e-13, atol=1e-14, what="grad_mu vs reference")
        close(bwd["grad_L"], rL, rtol=1e-13, atol=1e-14, what="grad_L vs reference")


# ---- MMD: every kernel, the prior, groups of bandwidths, the largest d, more than 65535 batches ----------------------

def _mmd(driver, tmp_path, order, kernel, dtype, x, y, bw, unbiased, g, reference_check=False, forward=True,
         backward=True, **run_kw):
    """mmd_forward and mmd_backward (or one of them) under the model against the CPU ops (y None: the rbf
    kernel's closed-form prior, the launchers' null y), and optionally against the float64 reference by autograd."""
    B, N, d = x.shape
    M = y.shape[1] if y is not None else N  # the binding's M without y
    launch_bw = [1.0] if kernel == "energy" else bw  # the binding's: the energy kernel takes one, ignored
    common = dict(dtype=DTYPES[dtype], B=B, N=N, M=M, d=d, with_y=int(y is not None), kernel=KERNELS[kernel],
                  bandwidths=",".join(map(repr, launch_bw)), unbiased=int(unbiased))
    inputs = {"x": x, **({"y": y} if y is not None else {})}
    f32 = dtype == torch.float32
    if forward:
        got = run(driver, tmp_path, "mmd_forward", order, inputs, {"out": (dtype, (B,))}, **common, **run_kw)
        out = torch.ops.fastvae.mmd(x, y, None, kernel, bw, unbiased)
        # as in test_mmd_forward_imq_with_y: double sums of float32 (float64) kernel values, in another order
        close(got["out"], out, rtol=1e-5 if f32 else 1e-10, atol=1e-6 if f32 else 1e-12, what="mmd")
    if not backward:
        return
    outputs = {"grad_x": (dtype, (B, N, d)), **({"grad_y": (dtype, y.shape)} if y is not None else {})}
    grads = run(driver, tmp_path / "bwd", "mmd_backward", order, {**inputs, "g": g}, outputs, **common, **run_kw)
    gx, gy = torch.ops.fastvae.mmd_backward(g, x, y, None, kernel, bw, unbiased, True)
    # as in test_mmd_backward_imq_with_y
    rtol, atol = (1e-5, 1e-7) if f32 else (1e-10, 1e-14)
    close(grads["grad_x"], gx, rtol=rtol, atol=atol, what="grad_x")
    if y is not None:
        close(grads["grad_y"], gy, rtol=rtol, atol=atol, what="grad_y")
    if reference_check:
        leaves = [x.clone().requires_grad_(), y.clone().requires_grad_() if y is not None else None]
        ref = reference.mmd(leaves[0], leaves[1], kernel=kernel, bandwidth=bw,
                            estimator="unbiased" if unbiased else "biased")
        close(got["out"], ref.detach(), rtol=1e-10, atol=1e-12, what="mmd vs reference")
        rg = torch.autograd.grad(ref, [t for t in leaves if t is not None], g)
        close(grads["grad_x"], rg[0], rtol=1e-9, atol=1e-13, what="grad_x vs reference")
        if y is not None:
            close(grads["grad_y"], rg[1], rtol=1e-9, atol=1e-13, what="grad_y vs reference")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,with_y", [("rbf", True), ("laplacian", True), ("energy", True), ("rbf", False)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_kernels(driver, tmp_path, order, dtype, kernel, with_y, unbiased):
    """rbf, laplacian and energy with y; the rbf prior in closed form (y None: no centring, no scaling). N, M not
    multiples of the 64-row tile, d odd, two bandwidths; float64 also against the reference."""
    B, N, M, d = 2, 70, 37, 5
    x = data(B, N, d, dtype=dtype, seed=55)
    y = data(B, M, d, dtype=dtype, seed=56) + 0.5 if with_y else None
    _mmd(driver, tmp_path, order, kernel, dtype, x, y, [0.5, 2.0], unbiased, torch.tensor([1.0, -2.0], dtype=dtype),
         reference_check=dtype == torch.float64 and order == "forward")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_y", [True, False])
def test_mmd_more_than_16_bandwidths(driver, tmp_path, order, dtype, with_y):
    """17 bandwidths: the launchers run a group of 16 and one of 1 and add the second to the first's output."""
    B, N, M, d = 2, 20, 11, 3
    x = data(B, N, d, dtype=dtype, seed=57)
    y = data(B, M, d, dtype=dtype, seed=58) if with_y else None
    bw = [0.25 * 1.3 ** i for i in range(17)]
    _mmd(driver, tmp_path, order, "rbf", dtype, x, y, bw, False, torch.tensor([0.5, 1.5], dtype=dtype),
         reference_check=dtype == torch.float64 and order == "forward")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 65, 129, 256])
def test_mmd_largest_d(driver, tmp_path, order, dtype, d):
    """d up to kMaxDim = 256: 1 to 4 column blocks of 64 in the gradient kernel (DC), d slices of 16 in the tiles;
    imq (its parameter depends on d)."""
    B, N, M = 1, 9, 5
    x = data(B, N, d, dtype=dtype, seed=59)
    y = data(B, M, d, dtype=dtype, seed=60) * 1.5
    _mmd(driver, tmp_path, order, "imq", dtype, x, y, [1.0], True, torch.tensor([2.0], dtype=dtype),
         reference_check=dtype == torch.float64 and order == "forward")


def test_mmd_more_than_65535_batches(driver, tmp_path):
    """B = 70000 batches of N = 8 points in d = 4 (known bug 3: mmd(x) of shape (70000, 8, 4) failed on CUDA, the
    batch was gridDim.y, capped at 65535, in column_mean, mmd_tiles and mmd_grad; the launchers now run groups of
    65535): the forward with y (N prior-like samples: column_mean, scale, the 3 tiles of each batch, finish) and the
    backward of the rbf prior (no y: mmd_grad alone, the cheapest launch of it), every batch against the CPU. One
    order, and only these two: 70000 blocks of 256 fibers per kernel, 1.5 to 3 minutes, half of this file's time."""
    B, N, d = 70000, 8, 4
    x, y, g = data(B, N, d, seed=61), data(B, N, d, seed=62), data(B, seed=63)
    _mmd(driver, tmp_path, "forward", "imq", torch.float32, x, y, [1.0], False, g, backward=False, timeout=500)
    _mmd(driver, tmp_path / "prior", "forward", "rbf", torch.float32, x, None, [1.0], False, g, forward=False,
         timeout=500)


def test_mmd_backward_float64_on_a_smaller_device(driver, tmp_path):
    """Known bug 7: float64 mmd_grad takes 74,752 B of dynamic shared memory, above the 64 KiB opt-in maximum of
    sm_75 (the build targets sm_80 and sm_90: 163 and 227 KiB). On a device whose maximum is too small the launcher
    returns cudaFuncSetAttribute's error (the binding raises it naming the op), leaves nothing pending and launches
    nothing; float32 (41,472 B) still runs there."""
    B, N, M, d = 1, 9, 5, 3
    x, y, g = data(B, N, d, dtype=torch.float64, seed=64), data(B, M, d, dtype=torch.float64, seed=65), \
        torch.ones(B, dtype=torch.float64)
    common = dict(B=B, N=N, M=M, d=d, with_y=1, kernel=KERNELS["rbf"], bandwidths="1.0", unbiased=0)
    sm75 = {"CUDASIM_SMEM_OPTIN_KB": "64"}
    msg = run(driver, tmp_path, "mmd_backward", "forward", {"x": x, "y": y, "g": g},
              {"grad_x": (torch.float64, x.shape)}, env=sm75, expect_error=True, dtype=1, **common)
    assert "invalid argument" in msg and "pending cudaSuccess" in msg and "MaxDynamicSharedMemorySize" in msg, msg
    _mmd(driver, tmp_path / "f32", "forward", "rbf", torch.float32, x.float(), y.float(), [1.0], False, g.float(),
         env=sm75)


# ---- scale without the memory: a window of a launch over more than 2^31 elements --------------------------------

def test_reparam_fwd_beyond_2_31_elements_and_2_32_counters(driver, tmp_path):
    """numel = 2^31 + 5 float32 elements and k = 9 samples: flat indices up to 1.9e10 (past 2^31, 2^32 and 2^34)
    and Philox counters j / 4 past 2^32, in sparse guarded buffers (77 GiB of z mapped, zeros, a few pages touched)
    of which only the first two blocks of the launch run (the driver's `block_window`). The grid is capped at
    2^19 blocks, so their grid-stride loops visit every round of 2^29 elements, up to the last 13 elements, which
    wrap across the end of mu (elements 2^31 .. 2^31 + 4 of it). lv = 0 and mu = (i % 4093) / 1024 at the elements
    read (the driver's `ramp`), so z = mu[j mod numel] + eps[j]: eps from the normals launcher at the same counters.
    A 32-bit flat index, element or Philox counter, or a wrong wrap reads or computes other values."""
    numel, k, threads, cap = 2 ** 31 + 5, 9, 256, 65536 * 8  # gaussian.cu's kThreads and grid_for's cap
    total = numel * k
    quads = -(-total // 4)  # threads of 4 elements each
    blocks = min(-(-quads // threads), cap)
    stride = blocks * threads * 4
    ranges = [(r * stride, min(2 * threads * 4, total - r * stride)) for r in range(-(-total // stride))]
    checked = [ranges[i] for i in (0, len(ranges) // 2, -3, -2, -1)]  # includes j = 2^32 .. and the tail
    assert checked[-1][0] + checked[-1][1] == total and any(a >= 2 ** 34 for a, _ in checked)
    js = torch.cat([torch.arange(a, a + n, dtype=torch.int64) for a, n in checked])
    i0 = js % numel
    mu = (i0 % 4093).float() / 1024
    ramp = ",".join(f"{int(i)}:1" for i in i0)  # every element read, one by one (a few thousand)
    got = run(driver, tmp_path, "reparam_fwd", "forward", {}, {"z": (torch.float32, (len(js),))},
              dtype=0, numel=numel, n_samples=k, seed=SEED, sparse=1, block_window="0:2", ramp="mu",
              ramp_ranges=ramp, out_ranges=",".join(f"{a}:{n}" for a, n in checked))["z"]
    at = 0
    for a, n in checked:
        eps = run(driver, tmp_path / str(a), "normals", "forward", {}, {"eps": (torch.float32, (n,))},
                  dtype=0, start=a, n=n, seed=SEED)["eps"]
        torch.testing.assert_close(got[at:at + n], mu[at:at + n] + eps, rtol=0, atol=0,
                                   msg=lambda m: f"z[{a}:{a + n}]: {m}")
        at += n


# ---- precision: the reductions against float64 references, on inputs where a lost compensation or a float
# accumulator shows (the comparisons with the CPU ops above allow the CPU's own float32 error) --------------------

def test_chunk_totals_are_added_in_double(driver, tmp_path):
    """One row of 64 chunks of 8192: the first chunk's KL terms are 0.5 * 64^2 (its sum 2^24 exactly), every other
    term is 0.5 * 2^-12 (each later chunk sums to 1 exactly): every partial is exact in float32, and the row's sum
    2^24 + 63 needs the double total of the chunk partials; a float32 total rounds each + 1 away (2^24, 3.8e-6
    relative). Against the float64 sum: rtol 1.2e-7, two float32 ulps (the output is float32; measured 6e-8)."""
    D = 64 * 8192
    mu = torch.full((1, D), 2.0 ** -6)
    mu[0, :8192] = 64.0
    lv = torch.zeros(1, D)
    got = run(driver, tmp_path, "reparam_kl_fwd", "forward", {"mu": mu, "lv": lv},
              {"z": (torch.float32, (1, D)), "kl": (torch.float32, (1,))}, dtype=0, rows=1, D=D, seed=SEED)
    want = (0.5 * mu.double() ** 2).sum().reshape(1)
    close(got["kl"], want, rtol=1.2e-7, atol=0, what="kl of 64 chunks")


@pytest.mark.parametrize("N,bw0", [(64, 8.0), (128, 4.0)])
def test_mmd_sums_are_compensated(driver, tmp_path, N, bw0):
    """x and y from one distribution with 16 large bandwidths: kernel values near 1, MMD^2 (~3e-3) a difference of
    means of ~1, so the float32 tile sums' rounding is amplified ~300 times. Against the float64 reference on the
    same float32 inputs: rtol 2e-6 (measured 1.4e-7 and 4e-7); without the Neumaier compensation of the tiles' float
    sums the error is 2e-4 and 5e-5 (the CPU's float32 op: 4e-5 and 4e-6)."""
    g = torch.Generator().manual_seed(5 + N)
    d, bws = 5, [bw0 * 1.5 ** i for i in range(16)]
    x = torch.randn(1, N, d, generator=g, dtype=torch.float64).float()
    y = torch.randn(1, N, d, generator=g, dtype=torch.float64).float()
    got = run(driver, tmp_path, "mmd_forward", "forward", {"x": x, "y": y}, {"out": (torch.float32, (1,))},
              dtype=0, B=1, N=N, M=N, d=d, with_y=1, kernel=KERNELS["rbf"], bandwidths=",".join(map(repr, bws)),
              unbiased=0)["out"]
    want = reference.mmd(x.double(), y.double(), kernel="rbf", bandwidth=bws, estimator="biased").reshape(1)
    close(got, want, rtol=2e-6, atol=0, what="mmd^2 of one distribution")


# ---- NaN in, NaN out (issue 20, class 1): the shared math headers' selects, under the model ----------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "energy"])
def test_mmd_nan_inputs(driver, tmp_path, dtype, kernel):
    """A NaN in x (batch 0) or y (batch 1) makes that batch's MMD and every gradient of it NaN, the other batch's
    untouched. The energy and laplacian weights took a NaN distance for 1 (`r > 0 ? r : 1`): finite gradients."""
    B, N, M, d = 2, 9, 7, 3
    x, y = data(B, N, d, dtype=dtype, seed=61), data(B, M, d, dtype=dtype, seed=62) + 0.5
    x[0, 4, 1] = float("nan")
    y[1, 2, 0] = float("nan")
    common = dict(dtype=DTYPES[dtype], B=B, N=N, M=M, d=d, with_y=1, kernel=KERNELS[kernel],
                  bandwidths="0.5,2.0" if kernel != "energy" else "1.0", unbiased=1)
    bw = [0.5, 2.0] if kernel != "energy" else [1.0]
    got = run(driver, tmp_path, "mmd_forward", "forward", {"x": x, "y": y}, {"out": (dtype, (B,))}, **common)
    assert torch.ops.fastvae.mmd(x, y, None, kernel, bw, True).isnan().all()
    assert got["out"].isnan().all()
    g = torch.tensor([1.0, -2.0], dtype=dtype)
    grads = run(driver, tmp_path / "bwd", "mmd_backward", "forward", {"x": x, "y": y, "g": g},
                {"grad_x": (dtype, (B, N, d)), "grad_y": (dtype, (B, M, d))}, **common)
    gx, gy = torch.ops.fastvae.mmd_backward(g, x, y, None, kernel, bw, True, True)
    assert gx.isnan().all() and gy.isnan().all()
    same_special(grads["grad_x"], gx, rtol=0, atol=0, what="grad_x")
    same_special(grads["grad_y"], gy, rtol=0, atol=0, what="grad_y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
def test_sw_backward_nan_inputs(driver, tmp_path, dtype, p):
    """A NaN projection's gradient (and its partner's) is NaN: d|d|^p/dd took NaN for 0 (p = 1, 1.5)."""
    px, py = _tied_projections(19, dtype, True)
    _, perm_x, perm_y = torch.ops.fastvae.sliced_wasserstein_projected(px, py, p)
    px[0, 1, 5] = float("nan")
    py[1, 2, 7] = float("nan")
    B, L, N = px.shape
    g = torch.tensor([0.5, -1.5], dtype=dtype)
    got = run(driver, tmp_path, "sw_backward", "forward",
              {"g": g, "px": px, "perm_x": perm_x, "py": py, "perm_y": perm_y},
              {"gpx": (dtype, (B, L, N)), "gpy": (dtype, (B, L, N))}, dtype=DTYPES[dtype], B=B, L=L, N=N, p=p,
              with_y=1)
    gpx, gpy = torch.ops.fastvae.sliced_wasserstein_projected_backward(g, px, py, perm_x, perm_y, p, True)
    assert gpx[0, 1, 5].isnan() and gpx.isnan().sum() == 2
    eps = torch.finfo(dtype).eps
    same_special(got["gpx"], gpx, rtol=4 * eps, atol=1e-3 * eps, what="gpx")
    same_special(got["gpy"], gpy, rtol=4 * eps, atol=1e-3 * eps, what="gpy")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gaussian_terms_at_infinite_log_variances(driver, tmp_path, dtype):
    """lv = -inf with x != mean: -log N is +inf (was inf - inf = NaN); KL with lv = +inf or lp = -inf: +inf (e^lv
    - 1 - lv was inf - inf); a NaN stays NaN. Rows 0-2 hold them, row 3 is ordinary."""
    rows, D = 4, 5
    x, mean, lv = (data(rows, D, dtype=dtype, seed=s) for s in (71, 72, 73))
    lv[0, 1], lv[1, 2], lv[2, 3] = -float("inf"), float("inf"), float("nan")
    out = torch.ops.fastvae.gaussian_nll(on_cpu(x), on_cpu(mean), on_cpu(lv))
    assert out[0] == float("inf") and out[2].isnan()
    got = run(driver, tmp_path, "gaussian_nll_fwd", "forward", {"x": x, "mean": mean, "lv": lv},
              {"out": (out.dtype, (rows,))}, dtype=ALL_DTYPES[dtype], rows=rows, D=D, x_rows=rows,
              lv_layout=LAYOUT["full"], offset=0)
    same_special(got["out"], out, **kind_tol("sum", dtype, D), what="gaussian_nll")
    mu, lp = data(rows, D, dtype=dtype, seed=74), data(rows, D, dtype=dtype, seed=75)
    lp[0, 0] = -float("inf")
    out = torch.ops.fastvae.kl_normal(*map(on_cpu, (mu, lv, None, lp)))
    assert out[0] == float("inf") and out[1] == float("inf") and out[2].isnan()
    got = run(driver, tmp_path / "kl", "kl_normal_fwd", "forward", {"mu": mu, "lv": lv, "lp": lp},
              {"out": (out.dtype, (rows,))}, dtype=ALL_DTYPES[dtype], rows=rows, D=D, mp_layout=LAYOUT[None],
              lp_layout=LAYOUT["full"], offset=0)
    same_special(got["out"], out, **kind_tol("sum", dtype, D), what="kl_normal")


# ---- float64 is float64 (issue 20, class 3): coincident and near points -----------------------------------------

@pytest.mark.parametrize("kernel", ["laplacian", "energy"])
@pytest.mark.parametrize("delta", [0.0, 1e-9])
def test_mmd_float64_coincident_points(driver, tmp_path, kernel, delta):
    """y = x (+ delta noise), d = 16: the tiles' |a|^2 + |b|^2 - 2 a.b cancels to ~eps |a|^2 and its square root
    to 1e-8 |a| (2.6e-9 for the energy MMD of a sample with itself); near pairs now take their distance from the
    differences. Against the float64 reference (distances from differences): 16 eps of the terms' magnitude, and
    the gradient of coincident points (weight 0) to 64 eps."""
    B, N, d = 1, 13, 16
    x = data(B, N, d, dtype=torch.float64, seed=81) + 2.0
    y = x + delta * data(B, N, d, dtype=torch.float64, seed=82)
    common = dict(dtype=DTYPES[torch.float64], B=B, N=N, M=N, d=d, with_y=1, kernel=KERNELS[kernel],
                  bandwidths="1.0", unbiased=1)
    got = run(driver, tmp_path, "mmd_forward", "forward", {"x": x, "y": y}, {"out": (torch.float64, (B,))},
              **common)
    xr = x.clone().requires_grad_()
    want = reference.mmd(xr[0], y[0], kernel=kernel, bandwidth=1.0)

    def k(a, b):  # the kernel values, for the magnitude of the three terms the MMD cancels from
        r = (a[:, None] - b[None]).norm(dim=-1)
        return -r if kernel == "energy" else torch.exp(-r)

    magnitude = (k(x[0], x[0]).abs().mean() + k(y[0], y[0]).abs().mean() + 2 * k(x[0], y[0]).abs().mean()).item()
    eps = torch.finfo(torch.float64).eps
    assert abs(got["out"].item() - want.item()) <= 16 * eps * magnitude, (got["out"].item(), want.item())
    if delta == 0.0:
        g = torch.tensor([1.0], dtype=torch.float64)
        grads = run(driver, tmp_path / "bwd", "mmd_backward", "forward", {"x": x, "y": y, "g": g},
                    {"grad_x": (torch.float64, (B, N, d)), "grad_y": (torch.float64, (B, N, d))}, **common)
        (wx,) = torch.autograd.grad(want, xr)
        close(grads["grad_x"], wx, rtol=0, atol=64 * eps * wx.abs().max().item(), what="grad_x")
