"""The CUDA launchers of csrc/cuda/logistic.cu executed on the CPU and checked against the CPU ops.

logistic.cu is compiled unchanged with g++ against the CUDA execution model (tests/cudasim, see its README), linked
with the driver tests/cudasim_kernels/logistic_launchers.cpp, once per test run in a temporary directory (with
UBSan's alignment check), by the `build_driver` of tests/helpers.py (whose `run`, `close` and
orders this file reuses too). Each case runs under the three thread/block orders, every buffer guarded, and compares
with torch.ops.fastvae.discretized_logistic_nll(_backward) on CPU tensors."""
import re
import shutil

import pytest
import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)
from helpers import CUDA_INCLUDE, CXX, HALF_DTYPES, ORDERS, ROOT, build_driver, close, run, same_special

pytestmark = [pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which(CXX) is None,
                                 reason="needs g++ and the CUDA toolkit headers"),
              pytest.mark.slow]  # the CUDA sources executed on the CPU: `make test` runs them, `make test-fast` not

DTYPES = {torch.float32: 0, torch.float64: 1}


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver linked with logistic.cu and the model."""
    return build_driver(tmp_path_factory.mktemp("logistic_on_cpu"), [ROOT / "csrc" / "cuda" / "logistic.cu"],
                        ROOT / "tests" / "cudasim_kernels" / "logistic_launchers.cpp", "logistic_launchers")


def inputs(rows, x_rows, D, K, n_bits, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    levels = 2**n_bits - 1
    x = 2 * torch.randint(0, levels + 1, (x_rows, D), generator=g).double() / levels - 1
    x[:, ::5] = -1.0  # edge bins
    x[:, 2::7] = 1.0
    lg = torch.randn(rows, D, K, generator=g, dtype=torch.float64) * 2
    m = torch.randn(rows, D, K, generator=g, dtype=torch.float64) * 0.7
    ls = torch.randn(rows, D, K, generator=g, dtype=torch.float64) - 3
    ls.view(-1)[::13] = 60.0  # extreme scales
    ls.view(-1)[5::17] = -60.0
    return [t.to(dtype) for t in (x, lg, m, ls)]


def cpu_op(x, lg, m, ls, k, n_bits, mix):
    """The CPU op at the same inputs (16-bit ones upcast: the CPU kernels compute them in float32)."""
    up = (lambda t: t.float()) if x.dtype in HALF_DTYPES else (lambda t: t)
    shape = (k, x.shape[0]) if k > 1 else (x.shape[0],)
    lead = lambda t: up(t).reshape(*shape, *t.shape[1:])  # noqa: E731
    args = (up(x), lead(lg) if mix else None, lead(m), lead(ls), n_bits)
    return args, shape


def tol(dtype, D, grad=False):
    # Per-row sums of D pixel losses of a few nats each, added in another order (one thread per pixel, block tree in
    # double, against the CPU's SIMD lanes), and the mixture's log-sum-exp online here, in two passes on the CPU:
    # float32 a few ulp per pixel, 1e-5 D absolute; gradients are per element: 1e-4 relative to the largest. float64:
    # 1e-12 of the same.
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12) if grad else dict(rtol=1e-12, atol=1e-11 * D)
    return dict(rtol=1e-4, atol=1e-4) if grad else dict(rtol=2e-5, atol=1e-5 * D)


CASES = [  # (x_rows, k, D, K, offset): one and two decoder samples, odd sizes, misaligned, rows of several
    # 256-pixel chunks (the last one partial)
    (3, 1, 7, 5, 0), (3, 1, 7, 5, 1), (2, 2, 9, 3, 0), (2, 1, 4 * 256 + 9, 2, 0)]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mix", [True, False])
@pytest.mark.parametrize("x_rows,k,D,K,offset", CASES)
def test_forward_and_backward(driver, tmp_path, order, dtype, mix, x_rows, k, D, K, offset):
    K = K if mix else 1
    rows = x_rows * k
    x, lg, m, ls = inputs(rows, x_rows, D, K, 8, dtype, seed=D + K)
    ins = {"x": x, "means": m, "log_scales": ls, **({"logits": lg} if mix else {})}
    p = dict(dtype=DTYPES[dtype], rows=rows, D=D, K=K, x_rows=x_rows, n_bits=8, mix=int(mix), offset=offset)
    got = run(driver, tmp_path, "logistic_fwd", order, ins, {"out": (dtype, (rows,))}, **p)
    args, shape = cpu_op(x, lg, m, ls, k, 8, mix)
    want = torch.ops.fastvae.discretized_logistic_nll(*args)
    close(got["out"], want.reshape(rows), **tol(dtype, D), what="nll")

    g = torch.linspace(0.5, 1.5, rows, dtype=dtype)
    outs = {n: (dtype, (rows, D, K)) for n in ("grad_means", "grad_log_scales")}
    if mix:
        outs["grad_logits"] = (dtype, (rows, D, K))
    got = run(driver, tmp_path / "bwd", "logistic_bwd", order, {**ins, "g": g}, outs, **p)
    g_lg, g_m, g_ls = torch.ops.fastvae.discretized_logistic_nll_backward(g.reshape(shape), *args)
    for name, w in (("grad_means", g_m), ("grad_log_scales", g_ls)) + ((("grad_logits", g_lg),) if mix else ()):
        w = w.reshape(rows, D, K)
        close(got[name], w, rtol=tol(dtype, D, True)["rtol"],
              atol=tol(dtype, D, True)["atol"] * max(1.0, w.abs().max().item()), what=name)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
def test_16_bit_inputs(driver, tmp_path, order, dtype, offset):
    """float16 / bfloat16 data (5-bit grid: its levels lie within a quarter bin in bfloat16): read through the host
    paths of cuda_fp16.h / cuda_bf16.h, float32 arithmetic, float32 losses, gradients rounded to the 16-bit type."""
    rows, D, K = 3, 11, 4
    x, lg, m, ls = inputs(rows, rows, D, K, 5, dtype, seed=21)
    ins = {"x": x, "logits": lg, "means": m, "log_scales": ls}
    p = dict(dtype=HALF_DTYPES[dtype], rows=rows, D=D, K=K, x_rows=rows, n_bits=5, mix=1, offset=offset)
    got = run(driver, tmp_path, "logistic_fwd", order, ins, {"out": (torch.float32, (rows,))}, **p)
    args, shape = cpu_op(x, lg, m, ls, 1, 5, True)
    close(got["out"], torch.ops.fastvae.discretized_logistic_nll(*args), **tol(torch.float32, D), what="nll")
    g = torch.linspace(0.5, 1.5, rows, dtype=torch.float32)
    outs = {n: (dtype, (rows, D, K)) for n in ("grad_logits", "grad_means", "grad_log_scales")}
    got = run(driver, tmp_path / "bwd", "logistic_bwd", order, {**ins, "g": g}, outs, **p)
    want = torch.ops.fastvae.discretized_logistic_nll_backward(g, *args)
    ulp = torch.finfo(dtype).eps  # the float32 gradients (within 1e-4 of the CPU's) rounded to the 16-bit type
    for name, w in zip(("grad_logits", "grad_means", "grad_log_scales"), want):
        close(got[name], w.to(dtype), rtol=2 * ulp, atol=2 * ulp * max(1.0, w.abs().max().item()), what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("mix", [True, False])
@pytest.mark.parametrize("name", ["x", "logits", "means", "log_scales"])
def test_nan_and_inf_inputs(driver, tmp_path, dtype, mix, name):
    """Issue 20, class 1, on the CUDA sources: NaN in row 0, +inf in row 1, -inf in row 2 of one input give the
    CPU op's outputs (NaN where it has NaN: tests/ops/test_nan_sweep.py checks that against the inputs), forward and
    backward. The mixture's log-sum-exp turned a NaN pixel into +inf (a select on s2 > 0), and the float32 log
    read a NaN as 88.7: a finite loss."""
    if name == "logits" and not mix:
        pytest.skip("one logistic per pixel has no logits")
    rows, D, K = 3, 7, 3 if mix else 1
    x, lg, m, ls = inputs(rows, rows, D, K, 8, dtype, seed=5)
    ins = {"x": x, "means": m, "log_scales": ls, **({"logits": lg} if mix else {})}
    t = ins[name].clone()
    for r, v in enumerate((float("nan"), float("inf"), -float("inf"))):
        t[r].view(-1)[r + 2] = v
    ins[name] = t
    x, m, ls, lg = ins["x"], ins["means"], ins["log_scales"], ins.get("logits", lg)
    p = dict(dtype={**DTYPES, **HALF_DTYPES}[dtype], rows=rows, D=D, K=K, x_rows=rows, n_bits=8, mix=int(mix),
             offset=0)
    acc = torch.float32 if dtype in HALF_DTYPES else dtype
    got = run(driver, tmp_path, "logistic_fwd", "forward", ins, {"out": (acc, (rows,))}, **p)
    args, shape = cpu_op(x, lg, m, ls, 1, 8, mix)
    want = torch.ops.fastvae.discretized_logistic_nll(*args)
    assert want[0].isnan(), "the CPU op must give NaN for the NaN row"
    same_special(got["out"], want, **tol(acc, D), what="nll")
    g = torch.linspace(0.5, 1.5, rows, dtype=acc)
    outs = {n: (dtype, (rows, D, K)) for n in ("grad_means", "grad_log_scales")}
    if mix:
        outs["grad_logits"] = (dtype, (rows, D, K))
    got = run(driver, tmp_path / "bwd", "logistic_bwd", "forward", {**ins, "g": g}, outs, **p)
    g_lg, g_m, g_ls = torch.ops.fastvae.discretized_logistic_nll_backward(g, *args)
    # A +inf logit (row 1) is a limit of 0 * inf the two settle differently, both NaN where the sweep asks: the CPU's
    # two-pass log-sum-exp makes the pixel's every gradient NaN, the online one here only its own component's.
    keep = [0, 2] if name == "logits" else [0, 1, 2]
    for n, w in (("grad_means", g_m), ("grad_log_scales", g_ls)) + ((("grad_logits", g_lg),) if mix else ()):
        w = w.reshape(rows, D, K).to(dtype)[keep]
        ulp = torch.finfo(dtype).eps if dtype in HALF_DTYPES else 0
        scale = max(1.0, w.double().nan_to_num(0, 0, 0).abs().max().item())
        same_special(got[n][keep], w, rtol=tol(acc, D, True)["rtol"] + 2 * ulp,
                     atol=(tol(acc, D, True)["atol"] + 2 * ulp) * scale, what=n)
        if name == "logits":
            assert got[n][1, 1, 0].isnan(), f"{n} of the +inf logit's component"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("x_rows,k,D,bad", [(3, 1, 7, []), (3, 2, 7, [19, 4, 12]), (2, 1, 2 * 256 + 9, [400, 300]),
                                            (2, 2, 300, [599])])
def test_the_forward_checks_x(driver, tmp_path, order, dtype, x_rows, k, D, bad):
    """validate_x on the CUDA sources: the forward lowers first_off_grid to the flat index of the first value of x
    off the grid (the CPU op's refusal names that value), >= x_rows D when there is none; the losses as unchecked.
    Values refused: NaN, outside [-1, 1], 0.3 of a bin off a level (5-bit grid: on it in bfloat16 too)."""
    rows, K = x_rows * k, 3
    x, lg, m, ls = inputs(rows, x_rows, D, K, 5, dtype, seed=D)
    for j, i in enumerate(bad):
        x.view(-1)[i] = (float("nan"), 1.5, (2 * 9.3 / 31 - 1))[j % 3]
    ins = {"x": x, "logits": lg, "means": m, "log_scales": ls}
    p = dict(dtype={**DTYPES, **HALF_DTYPES}[dtype], rows=rows, D=D, K=K, x_rows=x_rows, n_bits=5, mix=1, offset=0,
             checked=1)
    acc = torch.float32 if dtype in HALF_DTYPES else dtype
    got = run(driver, tmp_path, "logistic_fwd", order, ins, {"out": (acc, (rows,)), "first_off_grid":
                                                             (torch.int64, (1,))}, **p)
    first = int(got["first_off_grid"][0])
    if bad:
        assert first == min(bad)
        args, _ = cpu_op(x, lg, m, ls, k, 5, True)
        with pytest.raises(ValueError, match=re.escape(f"got {float(x.view(-1)[first].float())!r}")):
            torch.ops.fastvae.discretized_logistic_nll(*args, 0, True)
    else:
        assert first >= x_rows * D
    unchecked = run(driver, tmp_path / "unchecked", "logistic_fwd", order, ins, {"out": (acc, (rows,))},
                    **{**p, "checked": 0})
    same_special(got["out"], unchecked["out"], rtol=0, atol=0, what="nll")
