"""The CUDA launchers of csrc/cuda/dropin.cu executed on the CPU and checked against the CPU ops.

dropin.cu is compiled unchanged with g++ against the CUDA execution model (tests/cudasim, see its README), linked with
the driver tests/cudasim_kernels/dropin_launchers.cpp, once per test run in a temporary directory (with UBSan's
alignment check), by the `build_driver` of tests/helpers.py (whose `run`, `close` and orders this
file reuses too). Each case runs under the three thread/block orders, every buffer guarded, and compares with
torch.ops.fastvae.dropin_* on CPU tensors: every reduction regime of the launchers (element-wise, a thread, a warp
or chunked blocks per row, one total), operands of every period (scalar, per-feature, an in-place period longer
than a block, full, absent), each spread parameterization, and the rsample stream."""
import shutil

import pytest
import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)
from helpers import CUDA_INCLUDE, CXX, HALF_DTYPES, ORDERS, ROOT, build_driver, close, run

pytestmark = [pytest.mark.slow,  # (make test-fast leaves the CUDA sources on the CPU out)
              pytest.mark.skipif(CUDA_INCLUDE is None or shutil.which(CXX) is None,
                                 reason="needs g++ and the CUDA toolkit headers")]

DTYPES = {torch.float32: 0, torch.float64: 1}
ops = torch.ops.fastvae


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver linked with dropin.cu and the model."""
    return build_driver(tmp_path_factory.mktemp("dropin_on_cpu"), [ROOT / "csrc" / "cuda" / "dropin.cu"],
                        ROOT / "tests" / "cudasim_kernels" / "dropin_launchers.cpp", "dropin_launchers")


def operands(op, periods, dtype, seed):
    """The operands of `op` with the given periods (0: absent), float64 values cast to dtype."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, P in enumerate(periods):
        if P == 0:
            out.append(None)
            continue
        r = torch.randn(P, generator=g, dtype=torch.float64)
        if (op, k) in (("nll", 2), ("kl", 1), ("kl", 3), ("bce", 2), ("bce", 3)):
            r = torch.exp(0.7 * r)  # scales, variances, weights
        elif (op, k) == ("bce", 1):
            r = torch.rand(P, generator=g, dtype=torch.float64)  # targets
        elif (op, k) == ("bce", 0):
            r = 3 * r
        out.append(r.to(dtype))
    return out


# (N, row_len, periods of the operands): element-wise; rows of a thread, of a warp, of two chunked blocks; one
# total of three chunks; periods: full, per-feature, scalar, and 300 (read in place by the CPU, across blocks)
CASES = [(3 * 37, 1, (111, 37, 1, 37)), (6 * 7, 7, (42, 42, 7, 1)), (5 * 40, 40, (200, 1, 40, 200)),
         (2 * 5100, 5100, (10200, 300, 10200, 1)), (9000, 9000, (9000, 300, 1, 9000))]
PARAMS = {"nll": [0, 1, 2], "kl": [0], "bce": [0]}


def cpu_args(op, ts, N, R, param, factor):
    up = [None if t is None else (t.float() if t.dtype in HALF_DTYPES else t) for t in ts]
    if op == "nll":
        return (*up[:3], param, 0.3, 0.25, factor, R)
    return (*up, factor, R)


def tol(dtype, n):
    # per-element terms agree to a few ulp (one header, compiled twice); the sums add them in another order (lanes
    # and trees in double here, SIMD block sums added in double on the CPU): 1e-6 per summed element of the
    # magnitude, 1e-5 relative (float32); 1e-12 float64.
    return (1e-12, 1e-12 * n) if dtype == torch.float64 else (1e-5, 1e-6 * n)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [*DTYPES, *HALF_DTYPES])
@pytest.mark.parametrize("op", ["nll", "kl", "bce"])
@pytest.mark.parametrize("N,R,periods", CASES)
def test_forward_and_backward(driver, tmp_path, order, dtype, op, N, R, periods):
    if dtype in HALF_DTYPES and (N > 1000 or order != "random"):
        pytest.skip("16-bit data: the small cases, one order")
    code = {**DTYPES, **HALF_DTYPES}[dtype]
    periods = periods[:3] if op == "nll" else (periods[0], periods[1], 0, periods[3]) if op == "bce" and R == 7 \
        else periods
    fwd_op = {"nll": ops.dropin_normal_nll, "kl": ops.dropin_normal_kl, "bce": ops.dropin_bce_with_logits}[op]
    bwd_op = {"nll": ops.dropin_normal_nll_backward, "kl": ops.dropin_normal_kl_backward,
              "bce": ops.dropin_bce_with_logits_backward}[op]
    n_grads = 2 if op == "bce" else len(periods)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for param in PARAMS[op]:
        ts = operands(op, periods, dtype, seed=N + param)
        ins = {f"a{k}": t for k, t in enumerate(ts) if t is not None}
        p = dict(dtype=code, N=N, row_len=R, param=param, floor=0.3, cst=0.25, factor=-0.75, offset=int(R == 40),
                 **{f"P{k}": P for k, P in enumerate(periods)})
        got = run(driver, tmp_path / f"{op}{param}", f"{op}_fwd", order, ins, {"out": (acc, (N // R,))}, **p)
        want = fwd_op(*cpu_args(op, ts, N, R, param, -0.75))
        mag = fwd_op(*cpu_args(op, ts, N, 1, param, 1.0)).abs().reshape(-1, R).sum(1)
        rtol, atol = tol(dtype, 1)
        close(got["out"], want, rtol=rtol, atol=atol * mag.max().item(), what=f"{op} param {param} forward")

        g = torch.linspace(0.5, 1.5, N // R, dtype=acc)
        need = [k != 1 or op != "nll" for k in range(n_grads)]  # nll: d/dloc left out (passed as null)
        outs = {f"d{k}": (dtype, (N,)) for k in range(n_grads) if need[k]}
        need_p = {f"need_d{k}": int(need[k]) for k in range(n_grads)}
        got = run(driver, tmp_path / f"{op}{param}b", f"{op}_bwd", order, {**ins, "g": g}, outs, **p, **need_p)
        want = bwd_op(g, *cpu_args(op, ts, N, R, param, -0.75), need)
        for k in range(n_grads):
            if need[k]:
                w = want[k]
                scale = max(1.0, w.abs().max().item())
                if dtype in HALF_DTYPES:  # the float32 gradients rounded to the 16-bit type
                    ulp = torch.finfo(dtype).eps
                    close(got[f"d{k}"], w.to(dtype), rtol=2 * ulp, atol=2 * ulp * scale, what=f"{op} d{k}")
                else:
                    rtol, atol = tol(dtype, 1)
                    close(got[f"d{k}"], w, rtol=rtol, atol=atol * scale, what=f"{op} param {param} d{k}")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("numel,k", [(37, 1), (111, 3), (256, 2)])
def test_rsample(driver, tmp_path, order, dtype, numel, k):
    """The stream of reparameterize (Philox + Box-Muller: libm under the model, the CPU kernels' vectorised
    log/sin/cos on the CPU: a few float32 ulps of eps; 2e-5 as tests/cuda_on_cpu/test_cuda_kernels_on_cpu.py allows)."""
    code = {**DTYPES, **HALF_DTYPES}[dtype]
    loc, scale = operands("kl", (numel, numel), dtype, seed=numel)
    seed = 98765
    p = dict(dtype=code, numel=numel, n_samples=k, seed=seed, offset=int(numel == 111))
    got = run(driver, tmp_path, "rsample_fwd", order, {"a0": loc, "a1": scale}, {"z": (dtype, (k, numel))}, **p)
    up = (lambda t: t.float()) if dtype in HALF_DTYPES else (lambda t: t)
    want = ops.dropin_normal_rsample(up(loc), up(scale), torch.tensor([seed]), k)
    t = 2 * torch.finfo(dtype).eps if dtype in HALF_DTYPES else 2e-5
    close(got["z"], want.to(dtype), rtol=t, atol=t * 5, what="z")
    gz = torch.linspace(-1, 1, k * numel, dtype=torch.float64).to(dtype).reshape(k, numel)
    outs = {"d0": (dtype, (numel,)), "d1": (dtype, (numel,))}
    got = run(driver, tmp_path / "b", "rsample_bwd", order, {"g": gz}, outs, **p)
    want = ops.dropin_normal_rsample_backward(up(gz), up(scale), torch.tensor([seed]), k, [True, True])
    close(got["d0"], want[0].to(dtype), rtol=t, atol=t * k, what="grad loc")
    close(got["d1"], want[1].to(dtype), rtol=t, atol=t * 5 * k, what="grad scale")
