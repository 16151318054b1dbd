"""Where eager's time in the torch.distributions VAE loss goes (issue 19's td_vae_loss: B = 2048, D = 1024, d = 64,
forward + backward, float32, 2 torch threads): minor page faults, system time and wall time per step, each provider
in a loop of its own in a fresh process, with glibc's default allocator settings and with its trimming and mmap
thresholds raised (MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ = 1 GiB: freed memory is kept and reused,
no fresh page is faulted in). The difference is what eager's fresh full-size tensors cost in page faults.

  .venv/bin/python bench/td_vae_loss_faults.py [steps]"""
import os
import resource
import subprocess
import sys
import time

import torch

PROVIDERS = ("eager", "fastvae.distributions")


def loop(provider, steps):
    import fastvae.distributions as fvd
    from fastvae.bench.dropin import _make_vae, td_vae_loss
    torch.set_num_threads(2)
    args = _make_vae(2048, torch.float32, "cpu", torch.Generator().manual_seed(0))
    loss = td_vae_loss(torch.distributions if provider == "eager" else fvd)

    def step():
        for a in args[:3]:
            a.grad = None
        loss(*args).backward()
    for _ in range(10):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(f"{(r1.ru_minflt - r0.ru_minflt) / steps:.0f} {1e3 * (r1.ru_stime - r0.ru_stime) / steps:.2f} "
          f"{1e3 * wall / steps:.2f}")


def main(steps):
    big = str(2**30)
    print(f"td_vae_loss B = 2048, D = 1024, d = 64, 2 threads, {steps} steps per provider in a fresh process; load "
          f"average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)\n")
    print("| provider | allocator | minor faults / step | system ms / step | wall ms / step |\n|---|---|---|---|---|")
    for name, extra in (("glibc default", {}),
                        ("trim and mmap thresholds 1 GiB", {"MALLOC_TRIM_THRESHOLD_": big,
                                                            "MALLOC_MMAP_THRESHOLD_": big})):
        for p in PROVIDERS:
            out = subprocess.run([sys.executable, __file__, "--loop", p, str(steps)], env={**os.environ, **extra},
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"| {p} | {name} | {out[0]} | {out[1]} | {out[2]} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--loop" and sys.argv[2] in PROVIDERS and sys.argv[3].isdigit():
        loop(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) <= 2 and (len(sys.argv) == 1 or (sys.argv[1].isdigit() and int(sys.argv[1]) >= 1)):
        main(int(sys.argv[1]) if len(sys.argv) == 2 else 50)
    else:
        sys.exit(f"td_vae_loss_faults.py [steps]: steps an int >= 1; got {sys.argv[1:]!r}")
