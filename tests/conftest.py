"""What every test shares through pytest: the hypothesis profile, the CUDA marker, the fixtures (the CPU
instruction-set builds, one thread, a trained run). The importable helpers are in tests/helpers.py."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import fastvae
from helpers import supported_isas

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


# ---- CPU instruction-set builds --------------------------------------------------------------------------------

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
