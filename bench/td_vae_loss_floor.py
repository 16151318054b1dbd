"""The drop-in torch.distributions VAE loss (issue 19's td_vae_loss: B = 2048, D = 1024, d = 64, forward + backward,
float32, 2 torch threads) against the fused kernels it runs, called alone: what fastvae's time cannot go below with
these kernels, so `eager / kernels alone` is the ceiling of the drop-in's speed-up on this machine. Providers
interleaved per rep (ABC ABC ...), each warmed up; medians and p20-p80.

  .venv/bin/python bench/td_vae_loss_floor.py [reps]

The kernels alone: the Bernoulli term with its gradient (dropin_bce_with_logits_with_grad) and the scaling of that
gradient by the rows' incoming gradient, the same for the KL term (two gradients), and the reparameterized sample
with its backward (Philox normals drawn twice). Not counted: the user's own torch ops (exp(0.5 logvar), the means,
z.mean()), autograd and Python, which the loss pays on top."""
import os
import statistics
import sys
import time

import torch

import fastvae  # noqa: F401  (registers torch.ops.fastvae)
import fastvae.distributions as fvd
from fastvae.bench.dropin import _make_vae, td_vae_loss


def main(reps=40):
    torch.set_num_threads(2)
    o = torch.ops.fastvae
    B, D, d = 2048, 1024, 64
    mu, logvar, logits, x = _make_vae(B, torch.float32, "cpu", torch.Generator().manual_seed(0))
    eager, fused = td_vae_loss(torch.distributions), td_vae_loss(fvd)
    std = torch.exp(0.5 * logvar).detach()
    zeros, ones = torch.zeros_like(std), torch.ones_like(std)
    seed, gz, rows = torch.tensor([123]), torch.full((B, d), 1.0 / (B * d)), torch.full((B, 1), -1.0 / B)

    def step(loss):
        for a in (mu, logvar, logits):
            a.grad = None
        loss(mu, logvar, logits, x).backward()

    def kernels():
        _, _, dl, _ = o.dropin_bce_with_logits_with_grad(logits.detach(), x, None, None, -1.0, D, [True, False])
        dl.view(-1, D).mul_(rows)
        _, _, a, b, _, _ = o.dropin_normal_kl_with_grad(mu.detach(), std, zeros, ones, 1.0, d,
                                                          [True, True, False, False])
        a.view(-1, d).mul_(rows)
        b.view(-1, d).mul_(rows)
        o.dropin_normal_rsample(mu.detach(), std, seed, None)
        o.dropin_normal_rsample_backward(gz, std, seed, None, [False, True])

    cases = {"eager (torch.distributions)": lambda: step(eager),
             "fastvae.distributions": lambda: step(fused),
             "fused kernels alone": kernels}
    times = {k: [] for k in cases}
    for f in cases.values():
        for _ in range(5):
            f()
    load = os.getloadavg()[0]
    for _ in range(reps):
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["eager (torch.distributions)"])
    print(f"td_vae_loss B = {B}, D = {D}, d = {d}, 2 threads, {reps} interleaved reps; load average "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)\n")
    print("| what | p50 ms | p20-p80 ms | eager / this |\n|---|---|---|---|")
    for k, v in times.items():
        v = sorted(v)
        n = len(v)
        p50 = statistics.median(v)
        print(f"| {k} | {1e3 * p50:.2f} | {1e3 * v[n // 5]:.2f}-{1e3 * v[4 * n // 5]:.2f} | {base / p50:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and not (sys.argv[1].isdigit() and int(sys.argv[1]) >= 5)):
        sys.exit(f"td_vae_loss_floor.py [reps]: reps an int >= 5 (the p20 / p80 need some); got {sys.argv[1:]!r}")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
