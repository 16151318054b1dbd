"""Shared helpers of the Gaussian-op tests: the hypothesis profile, the CUDA marker, the kernels' own noise
stream (so random ops can be compared with fastvae.reference at the same eps), per-dtype tolerances and the
CPU instruction-set builds."""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import fastvae

# Reproducible CI: a fixed example budget, no deadline (the first call of a kernel pays for thread start-up),
# and derandomize so that every run draws the same examples.
settings.register_profile(
    "fastvae", max_examples=50, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
# FASTVAE_HYPOTHESIS=thorough: a long random search (not for CI) when hunting bugs
settings.register_profile("thorough", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("FASTVAE_HYPOTHESIS", "fastvae"))

HAS_CUDA = torch.cuda.is_available()

def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


@pytest.fixture(params=supported_isas())
def each_isa(request):
    fastvae._C.force_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        fastvae._C.force_cpu_isa("auto")


@pytest.fixture
def isa_runner():
    """Runs a function under every CPU build this machine supports; returns {isa: result}."""
    def run(fn):
        out = {}
        try:
            for isa in supported_isas():
                fastvae._C.force_cpu_isa(isa)
                out[isa] = fn()
        finally:
            fastvae._C.force_cpu_isa("auto")
        return out
    return run


@pytest.fixture
def one_thread():
    """One torch thread for the tests of tiny models and runs: as fast, and immune to a busy machine's scheduler."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a trained run for the command's tests ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def bernoulli_digits_run(tmp_path_factory):
    """The --out folder of a one-epoch Bernoulli VAE run on the bundled digits (latent 2, hidden 16; no final
    log-likelihood), trained once per test session for the eval tests."""
    from fastvae.cli import main
    out = tmp_path_factory.mktemp("digits_run") / "run"
    assert main(["train", "--epochs", "1", "--hidden-dims", "16", "--latent-dim", "2", "--batch-size", "512",
                 "--likelihood", "bernoulli", "--eval-k", "0", "--no-progress", "--threads", "1", "--out",
                 str(out)]) == 0
    return out
