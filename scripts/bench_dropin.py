"""Forward + backward time of the drop-in ops (fastvae.dropin_ops) against the torch code they replace, CPU float32,
interleaved (each repetition times torch then fastvae, so load changes hit both): the median and the minimum of the
repetitions (on a shared machine the minimum is the run least disturbed by other work).

    python scripts/bench_dropin.py [--B 2048] [--D 1024] [--reps 30] [--threads N] [--isa auto|avx512|avx2|baseline]
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fastvae
import fastvae  # noqa: E402
from fastvae import dropin_ops as dr  # noqa: E402


def cases(B, D):
    g = torch.Generator().manual_seed(0)
    r = lambda: torch.randn(B, D, generator=g)  # noqa: E731
    pos = lambda: torch.rand(B, D, generator=g) + 0.5  # noqa: E731
    x, loc, scale = r(), r().requires_grad_(), pos().requires_grad_()
    lq, sq = r(), pos()
    logits, target = r().requires_grad_(), torch.rand(B, D, generator=g)
    ge = r()  # an incoming gradient of an element-wise result
    half_log_2pi = 0.5 * torch.log(torch.tensor(2 * torch.pi)).item()

    def grad(out, ins, go=None):
        return torch.autograd.grad(out, ins, go)

    return {
        "normal_nll(scale) vs Normal.log_prob": (
            lambda: grad(Normal(loc, scale).log_prob(x), (loc, scale), ge),
            lambda: grad(dr.normal_nll(x, loc, scale, "scale", const=half_log_2pi, factor=-1.0), (loc, scale), ge)),
        "bce mean vs F.bce_with_logits(mean)": (
            lambda: grad(F.binary_cross_entropy_with_logits(logits, target), (logits,)),
            lambda: grad(dr.bce_with_logits(logits, target, factor=1.0 / (B * D), event_dims=None), (logits,))),
        "normal_kl vs kl_divergence(Normal, Normal)": (
            lambda: grad(kl_divergence(Normal(loc, scale), Normal(lq, sq)), (loc, scale), ge),
            lambda: grad(dr.normal_kl(loc, scale, lq, sq), (loc, scale), ge)),
        "normal_rsample vs Normal.rsample": (
            lambda: grad(Normal(loc, scale).rsample(), (loc, scale), ge),
            lambda: grad(dr.normal_rsample(loc, scale), (loc, scale), ge)),
    }


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=2048)
    p.add_argument("--D", type=int, default=1024)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--isa", default="auto")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    fastvae._C.force_cpu_isa(a.isa)
    print(f"B={a.B} D={a.D} float32, {torch.get_num_threads()} threads, isa {fastvae._C.cpu_isa()}, "
          f"torch {torch.__version__}")
    for name, (base, ours) in cases(a.B, a.D).items():
        for _ in range(3):  # warm up
            base(), ours()
        tb, to = [], []
        for _ in range(a.reps):
            tb.append(timed(base))
            to.append(timed(ours))
        mb, mo, nb, no = statistics.median(tb), statistics.median(to), min(tb), min(to)
        print(f"{name:44s} median: torch {mb * 1e3:7.2f} ms fastvae {mo * 1e3:7.2f} ms ({mb / mo:4.2f}x)   "
              f"min: torch {nb * 1e3:7.2f} ms fastvae {no * 1e3:7.2f} ms ({nb / no:4.2f}x)")


if __name__ == "__main__":
    main()
