"""The drop-ins' fixed cost at small batches: warm loops (no other provider's call between two timed ones of the
same size evicting the cache), forward + backward, 2 torch threads, providers interleaved per rep, medians.

  .venv/bin/python bench/dropin_fixed_cost.py [reps]        the table (B = 4 and 64, D = 1024; d = 64)
  .venv/bin/python bench/dropin_fixed_cost.py loop P B N    N steps of provider P (eager, fastvae.distributions) of
                                                            the torch.distributions loss, one thread: run it under
                                                            valgrind --tool=callgrind for two N and take the
                                                            difference of the totals over the difference of N (the
                                                            instructions per step, whatever the machine's load)

Rows: the unmodified torch.distributions VAE loss (fastvae/bench/dropin.py's td_vae_loss) on torch, with the import
swapped (fastvae.distributions) and under fastvae.patch() entered per call; F.binary_cross_entropy_with_logits and
F.gaussian_nll_loss (per-element var) on torch and fastvae.nn.functional."""
import os
import statistics
import sys
import time

import torch

import fastvae
import fastvae.distributions as fvd
import fastvae.nn.functional as fvf
from fastvae.bench.dropin import _make_vae, _patched, td_vae_loss


def _td(B):
    args = _make_vae(B, torch.float32, "cpu", torch.Generator().manual_seed(0))
    td = torch.distributions

    def run(loss):
        def step():
            for a in args[:3]:
                a.grad = None
            loss(*args).backward()
        return step
    return {"eager": run(td_vae_loss(td)), "fastvae.distributions": run(td_vae_loss(fvd)),
            "patch()": run(_patched(td_vae_loss(td)))}


def _losses(B):
    g = torch.Generator().manual_seed(1)
    l = (2 * torch.randn(B, 1024, generator=g)).requires_grad_()
    y = torch.rand(B, 1024, generator=g)
    a = torch.randn(B, 1024, generator=g).requires_grad_()
    v = (torch.rand(B, 1024, generator=g) + 0.1).requires_grad_()

    def run(f, *ts):
        def step():
            for t in ts:
                t.grad = None
            f().backward()
        return step
    bce, gnll = fvf.TORCH["binary_cross_entropy_with_logits"], fvf.TORCH["gaussian_nll_loss"]
    return {"bce_with_logits": {"eager": run(lambda: bce(l, y), l),
                                "fastvae": run(lambda: fvf.binary_cross_entropy_with_logits(l, y), l)},
            "gaussian_nll_loss": {"eager": run(lambda: gnll(a, y, v), a, v),
                                  "fastvae": run(lambda: fvf.gaussian_nll_loss(a, y, v), a, v)}}


def _time(cases, reps):
    for f in cases.values():
        for _ in range(20):
            f()
    times = {k: [] for k in cases}
    for _ in range(reps):
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(reps=400):
    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    print("| op, B x 1024 | provider | p50 us | eager / this |\n|---|---|---|---|")
    for B in (4, 64):
        groups = {"td_vae_loss (d 64)": _td(B), **_losses(B)}
        for name, cases in groups.items():
            med = _time(cases, reps)
            for k, t in med.items():
                print(f"| {name}, B {B} | {k} | {1e6 * t:.0f} | {med['eager'] / t:.2f}x |")
    print(f"\n{reps} interleaved reps per row group, 2 torch threads; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); fastvae {fastvae.__version__}")


def loop(provider, B, n):
    torch.set_num_threads(1)
    step = _td(B)[provider]
    for _ in range(n):
        step()


def _count(text, name):
    if not text.isdigit() or int(text) < 1:
        sys.exit(f"dropin_fixed_cost.py: {name} must be a positive int; got {text!r} (see the module docstring)")
    return int(text)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "loop":
        if len(a) != 4 or a[1] not in ("eager", "fastvae.distributions", "patch()"):
            sys.exit("dropin_fixed_cost.py loop PROVIDER B STEPS: PROVIDER one of eager, fastvae.distributions, "
                     f"patch(); got {a[1:]!r}")
        loop(a[1], _count(a[2], "B"), _count(a[3], "STEPS"))
    elif len(a) <= 1:
        main(_count(a[0], "reps") if a else 400)
    else:
        sys.exit(f"dropin_fixed_cost.py takes [reps] or loop PROVIDER B STEPS; got {a!r}")
