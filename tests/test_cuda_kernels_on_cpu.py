"""The CUDA launchers of csrc/cuda/{gaussian,distances}.cu executed on the CPU and checked against the CPU ops.

The two .cu files are compiled unchanged with g++ against the CUDA execution model (csrc/cudasim, see its README),
linked with the driver tests/cudasim_kernels/fastvae_launchers.cpp, once per test run in a temporary directory
(with UBSan's alignment check). Each case runs the driver in a child process (an out-of-bounds access kills it
with the model's report) under the three thread/block orders (forward, reverse, seeded random), with every input,
output and workspace in a guarded buffer whose end lies against an inaccessible page, and compares its outputs
with torch.ops.fastvae on CPU tensors at the same seed. The CUDA kernels read the seed through a pointer; under
the model a host pointer works, so the driver hands them a guarded host int64.
"""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)
from test_cudasim_core import CUDA_INCLUDE, CXX, ROOT, SIM, _check

pytestmark = pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which(CXX) is None,
                                reason="needs g++ and the CUDA toolkit headers")

ORDERS = ("forward", "reverse", "random")
DTYPES = {torch.float32: 0, torch.float64: 1}  # fastvae::DType; the distance launchers take these two
HALF_DTYPES = {torch.float16: 2, torch.bfloat16: 3}
LAYOUT = {None: 0, "feature": 1, "full": 2}
KERNELS = {"rbf": 0, "imq": 1, "laplacian": 2, "energy": 3}
SEED = 1234567
RUN_TIMEOUT = 60
FLAGS = ["-std=c++17", "-O1", "-Wall"]
# a misaligned vector load (float4 from an address not a multiple of 16) would not fault on x86: UBSan reports it
UBSAN = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver linked with both .cu files and the model, built two objects at a time."""
    out = tmp_path_factory.mktemp("cuda_on_cpu")
    includes = ["-I", ROOT / "csrc", "-I", ROOT / "csrc" / "include", "-I", SIM / "shim", "-I", CUDA_INCLUDE]
    sources = {"gaussian": ROOT / "csrc" / "cuda" / "gaussian.cu",
               "distances": ROOT / "csrc" / "cuda" / "distances.cu",
               "driver": ROOT / "tests" / "cudasim_kernels" / "fastvae_launchers.cpp"}

    def compile_model(name, src):
        # -I csrc/cudasim/shim before the toolkit: <cub/cub.cuh> is the host implementation
        obj = out / f"{name}.o"
        _check([CXX, *FLAGS, *UBSAN, *includes, "-include", SIM / "cuda_sim.h", "-x", "c++", "-c", src, "-o", obj])
        return obj

    def compile_runtime():
        obj = out / "cudasim.o"
        _check([CXX, *FLAGS, "-I", CUDA_INCLUDE, "-c", SIM / "cudasim.cpp", "-o", obj])
        return obj

    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compile_model, n, s) for n, s in sources.items()] + [pool.submit(compile_runtime)]
        objs = [j.result() for j in jobs]
    exe = out / "fastvae_launchers"
    _check([CXX, *UBSAN, *objs, "-o", exe])
    return exe


def run(driver, tmp_path, op, order, inputs, outputs, **params):
    """Runs `op` under `order`; inputs: name -> tensor; outputs: name -> (dtype, shape). Returns name -> tensor."""
    d = tmp_path / f"{op}-{order}"
    d.mkdir(parents=True)
    for name, t in inputs.items():
        t.contiguous().view(torch.uint8).numpy().tofile(d / f"{name}.bin")
    (d / "params").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    env = {**os.environ, "CUDASIM_ORDER": order, "CUDASIM_SEED": "7"}
    env.pop("CUDASIM_ABORT", None)
    r = subprocess.run([driver, op, d], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), f"{op} {order} {params}\n{r.stdout}{r.stderr}"
    return {name: torch.from_numpy(np.fromfile(d / f"out_{name}.bin", dtype=np.uint8)).view(dt).reshape(shape)
            for name, (dt, shape) in outputs.items()}


def seed_tensor():
    return torch.tensor([SEED], dtype=torch.int64)


def data(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def close(sim, cpu, rtol, atol, what):
    torch.testing.assert_close(sim.double(), cpu.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# Tolerances. z = mu + exp(lv / 2) eps: the same Philox stream and Box-Muller formula, computed with libm under the
# model and with the CPU kernels' vectorised log/sin/cos: a few float32 ulps of eps (|eps| < 5), times
# exp(lv / 2) < e^2 for these inputs; rtol = atol = 2e-5 as tests/test_gaussian_cuda.py allows a GPU (measured:
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


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_reparam_fwd(driver, tmp_path, order, offset, shape, k):
    mu, lv = data(*shape, seed=1), data(*shape, seed=2)
    got = run(driver, tmp_path, "reparam_fwd", order, {"mu": mu, "lv": lv}, {"z": (torch.float32, (k, *shape))},
              dtype=0, numel=mu.numel(), n_samples=k, seed=SEED, offset=offset)
    want = torch.ops.fastvae.reparameterize(mu, lv, seed_tensor(), k).reshape(k, *shape)
    close(got["z"], want, rtol=2e-5, atol=2e-5, what="z")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0), (2, 2 * 8192 + 13, 0)])
def test_reparam_kl_fwd(driver, tmp_path, order, dtype, rows, D, offset):
    """D = 7, 5: lanes-per-row kernel; D = 16397: three 8192-element chunks per row, the last block adds them."""
    mu, lv = data(rows, D, dtype=dtype, seed=3), data(rows, D, dtype=dtype, seed=4)
    got = run(driver, tmp_path, "reparam_kl_fwd", order, {"mu": mu, "lv": lv},
              {"z": (dtype, (rows, D)), "kl": (dtype, (rows,))},
              dtype=DTYPES[dtype], rows=rows, D=D, seed=SEED, offset=offset)
    z, kl = torch.ops.fastvae.reparameterize_kl(mu, lv, seed_tensor())
    close(got["z"], z, rtol=2e-5, atol=2e-5, what="z")
    close(got["kl"], kl, **tol(dtype, D), what="kl")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lv_layout", [None, "feature", "full"])
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (2, 2 * 8192 + 13, 0)])
def test_gaussian_nll_fwd(driver, tmp_path, order, lv_layout, rows, D, offset):
    x, mean = data(rows, D, seed=5), data(rows, D, seed=6)
    lv = {None: None, "feature": data(D, seed=7), "full": data(rows, D, seed=7)}[lv_layout]
    inputs = {"x": x, "mean": mean, **({"lv": lv} if lv is not None else {})}
    got = run(driver, tmp_path, "gaussian_nll_fwd", order, inputs, {"out": (torch.float32, (rows,))},
              dtype=0, rows=rows, D=D, lv_layout=LAYOUT[lv_layout], offset=offset)
    close(got["out"], torch.ops.fastvae.gaussian_nll(x, mean, lv), **tol(torch.float32, D), what="nll")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mp_layout,lp_layout", [(None, None), ("feature", "full"), ("full", "feature")])
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (3, 5, 0)])
def test_kl_normal_fwd(driver, tmp_path, order, mp_layout, lp_layout, rows, D, offset):
    mu, lv = data(rows, D, seed=8), data(rows, D, seed=9)
    prior = {None: lambda s: None, "feature": lambda s: data(D, seed=s), "full": lambda s: data(rows, D, seed=s)}
    mp, lp = prior[mp_layout](10), prior[lp_layout](11)
    inputs = {"mu": mu, "lv": lv, **({"mp": mp} if mp is not None else {}), **({"lp": lp} if lp is not None else {})}
    got = run(driver, tmp_path, "kl_normal_fwd", order, inputs, {"out": (torch.float32, (rows,))},
              dtype=0, rows=rows, D=D, mp_layout=LAYOUT[mp_layout], lp_layout=LAYOUT[lp_layout], offset=offset)
    close(got["out"], torch.ops.fastvae.kl_normal(mu, lv, mp, lp), **tol(torch.float32, D), what="kl")


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
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("rows,D,offset", [(4, 7, 0), (4, 7, 1), (2, 2 * 8192 + 13, 0)])
def test_16_bit_inputs(driver, tmp_path, order, dtype, rows, D, offset):
    """float16 / bfloat16 data through the host paths of cuda_fp16.h / cuda_bf16.h: 8-byte vector loads where
    aligned, float32 arithmetic, float32 per-row outputs."""
    mu, lv = data(rows, D, dtype=dtype, seed=15), data(rows, D, dtype=dtype, seed=16)
    got = run(driver, tmp_path, "reparam_kl_fwd", order, {"mu": mu, "lv": lv},
              {"z": (dtype, (rows, D)), "kl": (torch.float32, (rows,))},
              dtype=HALF_DTYPES[dtype], rows=rows, D=D, seed=SEED, offset=offset)
    # the CPU kernels take float32 or float64 (the public functions compute 16-bit inputs in float32): the
    # reference is the float32 op on the exactly converted inputs
    z, kl = torch.ops.fastvae.reparameterize_kl(mu.float(), lv.float(), seed_tensor())
    # z: the model rounds to the 16-bit format a float32 value within ~1e-6 of the CPU's (see tol): one ulp apart
    ulp = torch.finfo(dtype).eps
    close(got["z"], z.to(dtype), rtol=ulp, atol=ulp, what="z")
    close(got["kl"], kl, **tol(torch.float32, D), what="kl")
    got = run(driver, tmp_path / "nll", "gaussian_nll_fwd", order, {"x": mu, "mean": lv, "lv": lv},
              {"out": (torch.float32, (rows,))}, dtype=HALF_DTYPES[dtype], rows=rows, D=D,
              lv_layout=LAYOUT["full"], offset=offset)
    want = torch.ops.fastvae.gaussian_nll(mu.float(), lv.float(), lv.float())
    close(got["out"], want, **tol(torch.float32, D), what="nll")


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
