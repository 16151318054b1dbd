"""Self-tests of the CUDA execution model in tests/cudasim.

Each program in tests/cudasim_kernels is a small CUDA program (kernels, fv_launch launchers, a main that runs one
named case). It is built twice: with g++ as C++ against the execution model (run here as a child process, under
each scheduling order), and with nvcc for sm_90 (compiled only: the same source builds both ways). The binaries
live in a pytest temporary directory for the session.
"""
import math
import os
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import CUDA_INCLUDE, CXX, FLAGS, NVCC, ORDERS, RACECHECK, ROOT, RUN_TIMEOUT, SIM, run_checked

KERNELS = ROOT / "tests" / "cudasim_kernels"
PROGRAMS = ("sync", "warp", "limits", "memory", "sort", "race")
CXXFLAGS = FLAGS
pytestmark = [pytest.mark.skipif(CUDA_INCLUDE is None, reason="needs the CUDA toolkit headers"),
              pytest.mark.slow]  # a compile (g++, nvcc) per case: `make test` runs them, `make test-fast` not


class Builds:
    """g++ builds against the model (needed first) and nvcc compile checks, two at a time in the background."""

    def __init__(self, out):
        self.out = out
        self.pool = ThreadPoolExecutor(max_workers=2)
        # the slowest job first: nvcc on the program that includes the real CUB (~35 s of CPU) runs on one worker
        # while the other builds the simulated programs
        self.nvcc = {"sort": self.pool.submit(self._nvcc, "sort")} if NVCC else {}
        self.runtime = self.pool.submit(self._runtime)
        self.sim = {p: self.pool.submit(self._program, p, []) for p in PROGRAMS}
        self.sim["memory_ubsan"] = self.pool.submit(
            self._program, "memory", ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"], "memory_ubsan")
        self.sim["race_check"] = self.pool.submit(self._program, "race", RACECHECK, "race_check", False)
        if NVCC:
            self.nvcc.update({p: self.pool.submit(self._nvcc, p) for p in PROGRAMS if p != "sort"})

    def _runtime(self):
        obj = self.out / "cudasim.o"
        run_checked([CXX, *CXXFLAGS, "-I", CUDA_INCLUDE, "-c", SIM / "cudasim.cpp", "-o", obj])
        return obj

    def _program(self, name, extra, exe_name=None, link_extra=True):
        exe = self.out / (exe_name or name)
        obj = self.out / f"{exe.name}.o"
        # -I tests/cudasim/shim first: <cub/cub.cuh> is the host implementation
        run_checked([CXX, *CXXFLAGS, *extra, "-I", ROOT / "csrc", "-I", SIM / "shim", "-I", CUDA_INCLUDE,
                     "-include", SIM / "cuda_sim.h", "-x", "c++", "-c", KERNELS / f"{name}.cu", "-o", obj])
        run_checked([CXX, *(extra if link_extra else []), obj, self.runtime.result(), "-o", exe])
        return exe

    def _nvcc(self, name):
        return subprocess.run([NVCC, "-std=c++17", "-gencode", "arch=compute_90,code=sm_90", "-I", ROOT / "csrc",
                               "-c", KERNELS / f"{name}.cu", "-o", "/dev/null"],
                              capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    b = Builds(tmp_path_factory.mktemp("cudasim"))
    yield b
    b.pool.shutdown(wait=True)


def run(builds, program, case, order="forward", **env):
    exe = builds.sim[program].result()
    e = {**os.environ, "CUDASIM_ORDER": order, **{k: str(v) for k, v in env.items()}}
    e.pop("CUDASIM_ABORT", None)
    return subprocess.run([exe, case], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=e)


def ok(r):
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


# ---- block synchronisation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_block_reduction_is_correct_in_every_order(builds, order):
    ok(run(builds, "sync", "reduce", order))


@pytest.mark.parametrize("case", ["missing_sync", "missing_loop_sync"])
def test_a_deleted_syncthreads_changes_the_result(builds, case):
    outs = {o: run(builds, "sync", case, o) for o in ORDERS}
    for r in outs.values():
        assert r.returncode == 0, r.stdout + r.stderr
    wrong = [o for o, r in outs.items() if "WRONG" in r.stdout]
    assert wrong, {o: r.stdout for o, r in outs.items()}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case,kernel", [("divergent", "divergent_barrier(int*)"),
                                         ("exit_before_barrier", "exit_before_barrier(const int*, int*, int)")])
def test_divergence_at_a_barrier_is_an_error(builds, case, kernel, order):
    r = run(builds, "sync", case, order)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cudaErrorLaunchFailure" in r.stdout and "divergent barrier" in r.stdout
    assert f"kernel {kernel}, block (0,0,0), thread (" in r.stdout


def test_execution_errors_are_sticky(builds):
    r = run(builds, "sync", "sticky")
    assert "first cudaErrorLaunchFailure second cudaErrorLaunchFailure sync cudaErrorLaunchFailure" in r.stdout


def test_barrier_votes(builds):
    ok(run(builds, "sync", "votes", "random"))


def test_orders_apply_to_blocks(builds):
    def order_of(o, seed=0):
        r = run(builds, "sync", "block_order", o, CUDASIM_SEED=seed)
        return [int(v) for v in r.stdout.split("order")[1].split()]
    assert order_of("forward") == list(range(7))
    assert order_of("reverse") == list(range(7))[::-1]
    randoms = [order_of("random", s) for s in (1, 2, 3)]
    assert all(sorted(p) == list(range(7)) for p in randoms)
    assert any(p not in (list(range(7)), list(range(7))[::-1]) for p in randoms)


# ---- warps ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_warp_shuffles_and_votes(builds, order):
    ok(run(builds, "warp", "shuffles", order))


@pytest.mark.parametrize("case,text", [
    ("lane_missing", "exited, but thread"),
    ("read_unnamed", "lane 3 reads lane 20, which mask 0x0000ffff does not name"),
    ("mismatch", "deadlock: thread (0,0,0) [warp 0 lane 0] waits at __shfl_xor_sync(mask 0xffffffff)"),
    ("vs_barrier", "waits at __syncthreads"),
    ("without_self", "mask 0xfffffffe does not name the calling lane 0"),
])
def test_warp_collective_errors(builds, case, text):
    for order in ORDERS:
        r = run(builds, "warp", case, order)
        assert r.returncode == 1 and "cudaErrorLaunchFailure" in r.stdout, r.stdout + r.stderr
        assert text in r.stdout and "[kernel " in r.stdout and "block (0,0,0)" in r.stdout, r.stdout


# ---- launch limits ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,error", [
    ("threads_1025", "cudaErrorInvalidConfiguration"),
    ("threads_1024", None),
    ("block_x_2048", "cudaErrorInvalidConfiguration"),
    ("block_z_65", "cudaErrorInvalidConfiguration"),
    ("grid_y_65536", "cudaErrorInvalidConfiguration"),
    ("grid_z_65536", "cudaErrorInvalidConfiguration"),
    ("grid_y_65535", None),
    ("grid_zero", "cudaErrorInvalidConfiguration"),
    ("block_zero", "cudaErrorInvalidConfiguration"),
    ("smem_48k", None),
    ("smem_49k", "cudaErrorInvalidValue"),
    ("smem_227k", None),
    ("smem_228k_attribute", "cudaErrorInvalidValue"),
    ("smem_over_attribute", "cudaErrorInvalidValue"),
    ("static_fits", None),
    ("static_over", "cudaErrorInvalidValue"),
    ("static_over_later", "cudaErrorInvalidValue"),
])
def test_launch_limits_of_sm90(builds, case, error):
    r = run(builds, "limits", case)
    if error is None:
        ok(r)
    else:
        assert r.returncode == 1 and "error " in r.stdout and error in r.stdout, r.stdout + r.stderr
    if case.startswith("static_over"):  # static shared memory is counted: the 40 KiB array is named
        assert "40960 B static + 9216 B dynamic" in r.stdout and "::big (40960 B)" in r.stdout


# ---- memory --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_atomics(builds, order):
    ok(run(builds, "memory", "atomics", order))


@pytest.mark.parametrize("program,case,env,kernel,where", [
    ("memory", "write_one_past", {}, "write_one_past(float*, int)",
     "0 B past the end of guarded buffer 'cudaMalloc #2 (4000 B)'"),
    ("memory", "read_one_past", {}, "read_one_past(const float*, float*, int)",
     "0 B past the end of guarded buffer 'cudaMalloc #1 (4000 B)'"),
    ("memory", "read_one_before", {"CUDASIM_MALLOC_PLACEMENT": "start"}, "read_one_before(const float*, float*, int)",
     "4 B before the start of guarded buffer 'cudaMalloc #1 (4000 B)'"),
    ("limits", "dyn_one_past", {}, "dyn_one_past(float*, int)",
     "0 B past the end of guarded buffer 'the dynamic shared memory (1024 B of this launch)'"),
])
def test_out_of_bounds_access_kills_the_child_with_a_report(builds, program, case, env, kernel, where):
    r = run(builds, program, case, **env)
    assert r.returncode == 139, r.stdout + r.stderr
    assert "OK" not in r.stdout
    assert f"kernel {kernel}, block (" in r.stderr and ", thread (" in r.stderr, r.stderr
    assert where in r.stderr, r.stderr


def test_misaligned_vector_load_is_caught_with_ubsan_alignment(builds):
    r = run(builds, "memory_ubsan", "misaligned_float4")
    assert r.returncode != 0 and "OK" not in r.stdout
    assert "misaligned address" in r.stderr and "requires 16 byte alignment" in r.stderr, r.stderr
    assert "[kernel misaligned_float4(const float*, float*), block (0,0,0), thread (0,0,0)]" in r.stderr, r.stderr


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _bf16(x):
    """float32 -> bfloat16 (round to nearest even) -> float"""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    b = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", b))[0], b >> 16


def _same(text, value):
    """The printed float (%.9g of a float32) is `value` rounded to float32 (inf and nan included)."""
    return np.float32(float(text)) == np.float32(value) or (math.isnan(float(text)) and math.isnan(value))


def test_float16_and_bfloat16_round_trips(builds):
    r = run(builds, "memory", "sixteen_bit")
    ok(r)
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("x ")]
    assert len(rows) == 14
    xs = [_f32(float(row[1])) for row in rows]
    with np.errstate(over="ignore"):  # 70000 -> inf in float16
        halves = [np.float16(np.float32(x)) for x in xs]
    for i, row in enumerate(rows):
        half = halves[i]
        assert _same(row[3], half) and int(row[4], 16) == int(half.view(np.uint16)), row
        bf, bits = _bf16(xs[i])
        assert _same(row[6], bf) and int(row[7], 16) == bits, row
        assert _same(row[9], np.float16(np.float32(half) + np.float32(1.0))), row  # __hadd
        assert _same(row[11], halves[i ^ 1]), row  # __shfl_xor_sync of a __half


# ---- cub shim ------------------------------------------------------------------------------------------------

def test_cub_shim_segmented_sort_stable_on_ties(builds):
    r = run(builds, "sort", "segmented")
    ok(r)
    assert "StableSortPairs sorted yes ties stable" in r.stdout
    # SortPairs promises no order among ties: the shim reverses them, so reliance on stability shows
    assert "SortPairs sorted yes ties reordered" in r.stdout


def test_cub_shim_radix_sort(builds):
    r = run(builds, "sort", "radix")
    ok(r)
    assert "bits [4,8) stable" in r.stdout


@pytest.mark.parametrize("order", ORDERS)
def test_cub_shim_block_and_warp_reduce(builds, order):
    ok(run(builds, "sort", "reductions", order))


# ---- race and init checks (-fsanitize=thread instrumentation, the model's own callbacks) -----------------------

def _line(snippet):
    """The line of tests/cudasim_kernels/race.cu that holds `snippet` (reports name the source line)."""
    lines = (KERNELS / "race.cu").read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if snippet in text]
    assert len(hits) == 1, (snippet, hits)
    return hits[0]


# case -> (the report's kind and memory, the kernel, the source line of the access that completes the hazard)
RACES = {
    "shared_tree_race": ("race on __shared__ shared_tree(float const*, float*, bool)::sh", "shared_tree",
                         "sh[threadIdx.x] += sh[threadIdx.x + o]"),
    "warp_tail_race": ("write-after-read race on __shared__ warp_tail(float const*, float*, bool)::sh", "warp_tail",
                       "sh[threadIdx.x] = v;"),
    "global_same_element": ("write-after-write race on global buffer 'cudaMalloc #2 (2048 B)' at byte offset 0: "
                            "block (0,0,0) thread (1,0,0) writes", "global_same_element", "out[threadIdx.x / 2] ="),
    "blocks_add_plain": ("read-after-write race on global buffer 'cudaMalloc #2 (2048 B)' at byte offset 0: block "
                         "(1,0,0) thread (0,0,0) reads", "blocks_add", "else out[0] += in[blockIdx.x]"),
    "stride_overlap": ("write-after-write race on global buffer 'cudaMalloc #2 (2048 B)' at byte offset 512: block "
                       "(2,0,0)", "overlapping_stride", "out[i] = 2.0f * in[i]"),
    "last_block_plain_ticket": ("race on global buffer 'cudaMalloc #4 (4 B)' at byte offset 0", "last_block",
                                "variant == 1 ? (*ticket)++"),
    "last_block_no_fence": ("read-after-write race on global buffer 'cudaMalloc #3 (32 B)' at byte offset 0: block "
                            "(7,0,0) thread (0,0,0) reads", "last_block", "s += p[b]"),
    "shared_unwritten": ("initcheck: read of 4 B of __shared__ shared_unwritten(float*)::sh at byte offset 508, "
                         "which no thread of this block has written", "shared_unwritten", "out[threadIdx.x] = sh[kN"),
    "output_unwritten": ("initcheck: read of 4 B of global buffer 'cudaMalloc #3 (512 B)' at byte offset 508, which "
                         "nothing has written", "reverse_copy", "if (i < n) out[i] = in[n - 1 - i]"),
    "shared_past_end": ("out-of-bounds read of 4 B of static shared memory: 512 B past the start of __shared__ "
                        "shared_past_end(float*)::sh (512 B)", "shared_past_end", "sh[threadIdx.x + 1]"),
    "dynamic_read_past_end": ("out-of-bounds read of 4 B at the dynamic shared memory at byte offset 1000: 4 B past "
                              "the end of the 1000 B requested", "dynamic_past_end", "else out[0] = dyn[n]"),
}
CLEAN = ["shared_tree_ok", "warp_tail_ok", "blocks_add_atomic", "stride_ok", "last_block_ok", "kernel_boundary"]


@pytest.mark.parametrize("case", RACES)
def test_racecheck_reports_the_hazard_with_its_source_line(builds, case):
    text, kernel, snippet = RACES[case]
    r = run(builds, "race_check", case)
    assert r.returncode == 1 and "error launch cudaErrorLaunchFailure" in r.stdout, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("cudasim: racecheck: ") and text in first, first
    assert f"race.cu:{_line(snippet)} ({kernel}(" in first and f"[kernel {kernel}(" in first, first


@pytest.mark.parametrize("case", RACES)
def test_without_the_instrumentation_the_hazards_go_unseen(builds, case):
    """The model alone runs these to completion (what the race-checking build adds), except the overrun of the
    dynamic shared memory, whose write the poisoned slack shows."""
    ok(run(builds, "race", case))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", CLEAN)
def test_racecheck_passes_the_correct_patterns(builds, case, order):
    """Barriers, __syncwarp, atomics, the "last block" ticket with __threadfence (twice: the ticket is reset), a
    grid-stride loop, and the kernel boundary order what they should."""
    ok(run(builds, "race_check", case, order))


def test_a_write_into_the_slack_of_the_dynamic_shared_memory_fails_the_launch(builds):
    r = run(builds, "race", "dynamic_write_past_end")
    assert r.returncode == 1 and "write past the end of the dynamic shared memory: byte 1000 of the launch's " \
        "1000 B was written" in r.stdout, r.stdout + r.stderr


def test_racecheck_can_report_without_failing(builds):
    r = run(builds, "race_check", "global_same_element", CUDASIM_RACECHECK="report")
    ok(r)
    assert "write-after-write race" in r.stderr
    ok(run(builds, "race_check", "global_same_element", CUDASIM_RACECHECK="0"))


# ---- the same sources with nvcc --------------------------------------------------------------------------------

@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("program", PROGRAMS)
def test_sources_also_compile_with_nvcc_for_sm90(builds, program):
    r = builds.nvcc[program].result()
    assert r.returncode == 0, r.stdout + r.stderr

