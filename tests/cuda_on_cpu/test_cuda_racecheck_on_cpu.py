"""The CUDA launchers under the model's race and init checks (tests/cudasim/README.md, "Race and init checks").

The .cu files are compiled with g++ -fsanitize=thread, whose instrumentation calls the model's own __tsan_*
callbacks before every load and store (libtsan is not linked): each access of a kernel to shared memory or to a
guarded buffer is checked for a data race (within a block's barrier interval, and between blocks of the grid, which
a GPU may run at once), for a read of memory nothing wrote (outputs and garbage workspaces are marked uninitialised
by the driver), and against the bounds of static __shared__ arrays and of the dynamic shared memory. A finding
fails the launch (cudaErrorLaunchFailure, with the source lines of both accesses), so the driver's run fails.

The grid caps are shrunk in this build (FLAGS). A chosen subset: every launcher once, in the forward order, at sizes
that take each of its code paths (the lanes-per-row and the chunked "last block" row reductions, the column
reduction, tiles and partial tiles, ...), reusing the checks of tests/cuda_on_cpu/test_cuda_kernels_on_cpu.py and
tests/cuda_on_cpu/test_logistic_cuda_on_cpu.py, whose outputs are compared with the CPU ops as there.
"""
import shutil

import pytest
import torch

import test_cuda_kernels_on_cpu as K
import test_logistic_cuda_on_cpu as L
from helpers import CUDA_INCLUDE, CXX, RACECHECK, ROOT, SEED, build_driver, data, run

pytestmark = [pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which(CXX) is None,
                                 reason="needs g++ and the CUDA toolkit headers"),
              pytest.mark.slow]  # the CUDA sources executed on the CPU: `make test` runs them, `make test-fast` not

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
# The grid caps shrunk (csrc/cuda/common.cuh, distances.cu): 3 blocks at most for the grid-stride kernels and 1
# batch per launch group, so that their loops iterate at these sizes (and overlapping strides would race).
FLAGS = [*RACECHECK, "-DFV_MAX_GRID=3", "-DFV_MAX_GRID_Y=1"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """gaussian.cu and distances.cu race-checked, with the launchers' driver and the model."""
    return build_driver(tmp_path_factory.mktemp("race_on_cpu"),
                        [ROOT / "csrc" / "cuda" / n for n in ("gaussian.cu", "distances.cu", "normals.cu")],
                        ROOT / "tests" / "cudasim_kernels" / "fastvae_launchers.cpp", "fastvae_launchers_race",
                        cu_flags=FLAGS)


@pytest.fixture(scope="module")
def logistic_driver(tmp_path_factory):
    return build_driver(tmp_path_factory.mktemp("race_logistic"), [ROOT / "csrc" / "cuda" / "logistic.cu"],
                        ROOT / "tests" / "cudasim_kernels" / "logistic_launchers.cpp", "logistic_launchers_race",
                        cu_flags=FLAGS)


CHUNKED = 2 * 8192 + 13  # three chunks per row: the "last block" ticket reduction

GAUSSIAN = {
    "reparam_fwd": lambda d, p: K.test_reparam_fwd(d, p, "forward", F16, 1, (4, 7), 3),
    "reparam_fwd_grid_stride": lambda d, p: K.test_reparam_fwd(d, p, "forward", F32, 0, (40, 101), 3),
    "reparam_bwd_grid_stride": lambda d, p: K.test_reparam_bwd(d, p, "forward", F32, (40, 101), 0, 3),
    "reparam_kl_fwd": lambda d, p: K.test_reparam_kl_fwd(d, p, "forward", F32, 4, 7, 0),
    "reparam_kl_fwd_chunked": lambda d, p: K.test_reparam_kl_fwd(d, p, "forward", BF16, 2, CHUNKED, 0),
    "gaussian_nll_fwd": lambda d, p: K.test_gaussian_nll_fwd(d, p, "forward", "full", 6, 5, 2, 0, F64),
    "gaussian_nll_fwd_chunked": lambda d, p: K.test_gaussian_nll_fwd(d, p, "forward", "feature", 2, CHUNKED, 2, 0,
                                                                     F32),
    "kl_normal_fwd": lambda d, p: K.test_kl_normal_fwd(d, p, "forward", "feature", "full", 4, 7, 1, F32),
    "normals": lambda d, p: K.test_normals(d, p, "forward", 3, 37),
    "reparam_bwd": lambda d, p: K.test_reparam_bwd(d, p, "forward", F32, (4, 7), 1, 3),
    "reparam_kl_bwd_chunked": lambda d, p: K.test_reparam_kl_bwd(d, p, "forward", F32, 2, CHUNKED, 0),
    "gaussian_nll_bwd": lambda d, p: K.test_gaussian_nll_bwd(d, p, "forward", "feature", 6, 5, 2, 0, F32),
    "gaussian_nll_bwd_one_gradient": lambda d, p: K.test_gaussian_nll_bwd_one_gradient(d, p, "forward", "full",
                                                                                       False, True),
    "bernoulli_nll_chunked": lambda d, p: K.test_bernoulli_nll(d, p, "forward", 2, CHUNKED, 2, 0, F16),
    "kl_normal_bwd": lambda d, p: K.test_kl_normal_bwd(d, p, "forward", "feature", "full", 4, 7, 0, F64),
    "kl_normal_bwd_some_gradients": lambda d, p: K.test_kl_normal_bwd_some_gradients(d, p, "forward",
                                                                                     (True, False, True, True)),
    "tril": lambda d, p: K.test_tril(d, p, "forward", F32, 3, 300, None),
    "tril_samples": lambda d, p: K.test_tril(d, p, "forward", F64, 3, 5, 3),
}
DISTANCES = {
    "mmd_imq": lambda d, p: K.test_mmd_forward_imq_with_y(d, p, "forward", F32, True),
    "mmd_backward_imq": lambda d, p: K.test_mmd_backward_imq_with_y(d, p, "forward", F64),
    "mmd_rbf_prior": lambda d, p: K.test_mmd_kernels(d, p, "forward", F32, "rbf", False, False),
    "mmd_17_bandwidths": lambda d, p: K.test_mmd_more_than_16_bandwidths(d, p, "forward", F32, True),
    "mmd_d129": lambda d, p: K.test_mmd_largest_d(d, p, "forward", F32, 129),
    "sw_forward": lambda d, p: K.test_sw_forward_with_ties(d, p, "forward", F32, True, 2.0),
    "sw_backward": lambda d, p: K.test_sw_backward_with_ties(d, p, "forward", F64, True, 1.0),
}


@pytest.mark.parametrize("case", [*GAUSSIAN, *DISTANCES])
def test_launchers_race_free(driver, tmp_path, case):
    {**GAUSSIAN, **DISTANCES}[case](driver, tmp_path)


@pytest.mark.parametrize("x_rows,k,D,K_,offset", [(3, 1, 7, 5, 1), (2, 1, 4 * 256 + 9, 2, 0)])
def test_logistic_race_free(logistic_driver, tmp_path, x_rows, k, D, K_, offset):
    L.test_forward_and_backward(logistic_driver, tmp_path, "forward", F32, True, x_rows, k, D, K_, offset)


@pytest.mark.parametrize("x_rows,k,D,bad", [(3, 2, 7, [19, 4, 12]), (2, 1, 2 * 256 + 9, [400, 300])])
def test_logistic_checked_forward_race_free(logistic_driver, tmp_path, x_rows, k, D, bad):
    """validate_x: the blocks lower one index with atomicMin (after the launcher's memset)"""
    L.test_the_forward_checks_x(logistic_driver, tmp_path, "forward", F32, x_rows, k, D, bad)


def test_the_checks_are_live_in_this_build(driver, tmp_path):
    """An input the driver marks as never written (`uninit`): the kernel reading it fails with the initcheck's
    report, naming the buffer and the line of gaussian.cu, so the runs above were checked."""
    mu, lv = data(4, 7, seed=1), data(4, 7, seed=2)
    msg = run(driver, tmp_path, "reparam_fwd", "forward", {"mu": mu, "lv": lv}, {"z": (F32, (4, 7))},
              expect_error=True, dtype=0, numel=28, n_samples=1, seed=SEED, uninit="lv")
    assert "racecheck: initcheck: read of" in msg and "global buffer 'lv' at byte offset" in msg, msg
    assert "gaussian.cu:" in msg, msg
