"""The helpers the tests share (imported as `from helpers import ...`; tests/ is on sys.path as the folder of
tests/conftest.py): the kernels' noise stream, per-dtype tolerances and the CPU instruction-set builds of the op tests;
the CUDA toolkit's headers, the compiler and the builds and runs of the CUDA sources on the CPU under the execution
model (tests/cudasim) of the tests in tests/cuda_on_cpu."""
import math
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import fastvae

# ---- the kernels' noise stream -------------------------------------------------------------------------------

def key_of(seed):
    """The Philox key the public random functions draw from a generator seeded with `seed` (see
    fastvae.functional._draw_seed): the first int64 of torch.randint(0, 2**62) of that generator."""
    g = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, 2**62, (1,), generator=g, dtype=torch.int64).item())


def kernel_eps(seed, shape, dtype=torch.float64):
    """eps[j] of the kernels for the flat output index j, as a tensor of `shape` (float32 values, cast)."""
    n = math.prod(shape)
    return fastvae._C.normals_cpu(0, n, key_of(seed)).reshape(shape).to(dtype)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def f64(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=gen(seed))


# opcheck's checks of every op (test_aot_dispatch_dynamic also runs the registered backward)
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


# ---- tolerances ------------------------------------------------------------------------------------------------
# The kernels compute float32 with ~2-ulp polynomial exp/log (Cephes) and float64 with libm; the oracle is the
# float64 reference at the same inputs (float32 inputs upcast exactly). So:
#  * an elementwise value built of a few terms is within a few ulp of the largest term: ELEM_ULPS * eps * scale,
#    scale = the sum of the absolute values of the terms (cancellation between terms is not the kernel's error);
#  * a per-sample sum over D elements adds a rounding per addition whose errors grow like sqrt(D) (blocked
#    SIMD sums; the worst case grows like D but the kernels' sums are 16-lane then block-wise, so depth is small):
#    (ELEM_ULPS + SUM_ULPS * sqrt(D)) * eps * sum of the absolute values of all terms.
ELEM_ULPS = 4
SUM_ULPS = 2
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


def sum_tol(dtype, D, scale):
    return (ELEM_ULPS + SUM_ULPS * math.sqrt(D)) * EPS[dtype] * scale


def assert_within(actual, expected, tol, what=""):
    """|actual - expected| <= tol elementwise (tol a tensor or number), NaN where expected is NaN."""
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = torch.as_tensor(tol, dtype=torch.float64).expand_as(expected)
    err = (actual - expected).abs()
    bad = ~(err <= tol + 1e-300) & ~(actual.isnan() & expected.isnan()) & ~(actual == expected)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {expected.numel()} values off; first at {i}: "
            f"got {actual[tuple(i)].item()!r}, "
            f"expected {expected[tuple(i)].item()!r}, tol {tol[tuple(i)].item():.3g}, "
            f"max err/tol {(err / (tol + 1e-300))[~expected.isnan()].max().item():.3g}")


def grad_tol(dtype, n_summed, mag):
    """A gradient entry sums n_summed contributions of a few rounded products each: its error is a few ulp of the
    sum of the contributions' magnitudes `mag` (not of the result, which may cancel), growing like sqrt(n_summed)."""
    return (ELEM_ULPS + SUM_ULPS * math.sqrt(n_summed)) * EPS[dtype] * mag


def assert_grad_close(actual, expected, dtype, n_summed=1, what=""):
    """Gradients: normwise, errors relative to the largest expected magnitude (a gradient entry is a few
    products, or a sum over n_summed rows/samples for per-feature and n_samples gradients)."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    tol = (ELEM_ULPS + SUM_ULPS * math.sqrt(n_summed)) * EPS[dtype] * max(scale, 1e-30) * 2
    assert_within(actual, expected, tol, what)


# ---- CPU instruction-set builds --------------------------------------------------------------------------------

def supported_isas():
    best = fastvae._C.build_info()["cpu_isa"]
    order = ["baseline", "avx2", "avx512"]
    return order[: order.index(best) + 1]

# ---- the CUDA sources on the CPU (tests/cuda_on_cpu) -----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cudasim"
ORDERS = ("forward", "reverse", "random")  # the model's scheduling orders (CUDASIM_ORDER)
HALF_DTYPES = {torch.float16: 2, torch.bfloat16: 3}  # fastvae::DType of the 16-bit types
SEED = 1234567
RUN_TIMEOUT = 60
CXX = os.environ.get("CXX", "g++")
NVCC = shutil.which("nvcc")
FLAGS = ["-std=c++17", "-O1", "-Wall"]
# a misaligned vector load (float4 from an address not a multiple of 16) would not fault on x86: UBSan reports it
UBSAN = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
# the model's race and init checks (tests/cudasim/README.md): compiled with these, linked without (the model
# implements the __tsan_* callbacks; libtsan is not linked); -g for the source lines of its reports
RACECHECK = ["-fsanitize=thread", "-g"]
# the .cu files build warning-free with -Wconversion (a 64-bit index or size narrowed implicitly), as an error, kernels
# included; nvcc's host pass is checked the same way by `make cuda-check`
CU_WARNINGS = ["-Wconversion", "-Werror=conversion"]


def cuda_include():
    """The CUDA toolkit's include directory (cuda_runtime.h, cuda_fp16.h), as nvcc reports it."""
    if NVCC:
        out = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                             capture_output=True, text=True).stderr
        m = re.search(r'INCLUDES="-I([^"]*?)"', out)
        if m and (Path(m.group(1)) / "cuda_runtime.h").exists():
            return Path(m.group(1))
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


CUDA_INCLUDE = cuda_include()


def run_checked(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r


def build_driver(out, cu_sources, driver_source, name="driver", cu_flags=()):
    """An executable of `driver_source` linked with the .cu files `cu_sources` (compiled unchanged against the
    model, with UBSan's alignment check, and `cu_flags`: RACECHECK for the race-checking build) and the model's
    runtime, in the folder `out`; two compilers at a time."""
    includes = ["-I", ROOT / "csrc", "-I", ROOT / "csrc" / "include", "-I", SIM / "shim", "-I", CUDA_INCLUDE]

    def compile_model(src):
        # -I tests/cudasim/shim before the toolkit: <cub/cub.cuh> is the host implementation
        obj = out / f"{Path(src).stem}.o"
        extra = [*CU_WARNINGS, *cu_flags] if Path(src).suffix == ".cu" else []
        run_checked([CXX, *FLAGS, *UBSAN, *extra, *includes, "-include", SIM / "cuda_sim.h", "-x", "c++", "-c", src,
                     "-o", obj])
        return obj

    def compile_runtime():
        obj = out / "cudasim.o"
        run_checked([CXX, *FLAGS, "-I", CUDA_INCLUDE, "-c", SIM / "cudasim.cpp", "-o", obj])
        return obj

    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compile_model, s) for s in [*cu_sources, driver_source]] + [pool.submit(compile_runtime)]
        objs = [j.result() for j in jobs]
    exe = out / name
    run_checked([CXX, *UBSAN, *objs, "-o", exe])
    return exe


def run(driver, tmp_path, op, order, inputs, outputs, env=None, timeout=RUN_TIMEOUT, expect_error=False, **params):
    """Runs `op` under `order`; inputs: name -> tensor; outputs: name -> (dtype, shape); env: extra environment
    variables of the model (tests/cudasim/README.md). Returns name -> tensor, or with expect_error the driver's
    message of a launcher that returned an error (and nothing else: no crash, no error left pending)."""
    d = tmp_path / f"{op}-{order}"
    d.mkdir(parents=True)
    for name, t in inputs.items():
        t.contiguous().view(torch.uint8).numpy().tofile(d / f"{name}.bin")
    (d / "params").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    env = {**os.environ, "CUDASIM_ORDER": order, "CUDASIM_SEED": "7", **(env or {})}
    env.pop("CUDASIM_ABORT", None)
    r = subprocess.run([driver, op, d], capture_output=True, text=True, timeout=timeout, env=env)
    if expect_error:
        assert r.returncode == 1 and r.stdout.startswith("error launcher"), f"{op} {params}\n{r.stdout}{r.stderr}"
        return r.stdout
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), f"{op} {order} {params}\n{r.stdout}{r.stderr}"
    return {name: torch.from_numpy(np.fromfile(d / f"out_{name}.bin", dtype=np.uint8)).view(dt).reshape(shape)
            for name, (dt, shape) in outputs.items()}


def seed_tensor():
    return torch.tensor([SEED], dtype=torch.int64)


def data(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def close(sim, cpu, rtol, atol, what):
    torch.testing.assert_close(sim.double(), cpu.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def same_special(sim, cpu, rtol, atol, what):
    """NaN exactly where the CPU op has NaN (tests/ops/test_nan_sweep.py checks the CPU ops against their inputs), the
    same infinities, the finite values close."""
    sim, cpu = sim.double(), cpu.double()
    assert torch.equal(sim.isnan(), cpu.isnan()), (f"{what}: NaN at {sim.isnan().nonzero().tolist()} under the "
                                                   f"model, at {cpu.isnan().nonzero().tolist()} on the CPU")
    assert torch.equal(sim.isinf(), cpu.isinf()) and torch.equal(sim[sim.isinf()], cpu[cpu.isinf()]), what
    fin = cpu.isfinite()
    close(sim[fin], cpu[fin], rtol=rtol, atol=atol, what=what)
