"""fastvae's sample distances against the eager and library baselines on CPU, side by side in one run.

    python bench/scripts/distances_cpu.py [--reps 5] [--skip-memory] [--out bench/results/distances_cpu.md]

Times are forward + backward, median of --reps after one warm-up, float32, N = 4096, d = 64, on every thread torch
uses (torch.get_num_threads()). Memory: peak RSS of a fresh subprocess running one forward + backward at
N = M = 65536, d = 64 (resource.getrusage), minus its RSS once the inputs exist.

Baselines:
- eager mmd: the N x N form built on torch.cdist (three kernel matrices, summed over the bandwidths);
- geomloss: SamplesLoss("gaussian", blur=1, backend="tensorized"), a single Gaussian bandwidth;
- eager sliced-Wasserstein: matmul + torch.sort of both sides, the prior side sampled (N x d) and projected;
- POT: ot.sliced_wasserstein_distance on torch tensors (the same prior samples), for reference.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import fastvae

N, D = 4096, 64
BANDWIDTHS = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
L = 256


def median_time(fn, reps):
    fn()  # warm-up (allocator, thread pool)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def eager_mmd_imq(x, y, bandwidths):
    d = x.shape[1]

    def mean_k(a, b, same):
        d2 = torch.cdist(a, b).pow(2)
        k = sum(c / (c + d2) for c in [2.0 * d * h * h for h in bandwidths])
        n, m = a.shape[0], b.shape[0]
        if same:
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.sum() / (n * m)

    return mean_k(x, x, True) + mean_k(y, y, True) - 2 * mean_k(x, y, False)


def eager_sliced_wasserstein(x, theta, generator):
    y = torch.randn(x.shape, generator=generator)
    xs = torch.sort(x @ theta, dim=0).values
    ys = torch.sort(y @ theta, dim=0).values
    return ((xs - ys) ** 2).mean()


def fwd_bwd(loss_fn, *inputs):
    def run():
        for t in inputs:
            t.grad = None
        loss_fn().backward()
    return run


def timings(reps):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g).requires_grad_()
    y = (torch.randn(N, D, generator=g) * 1.1 + 0.1).requires_grad_()
    rows = []
    t_fv = median_time(fwd_bwd(lambda: fastvae.mmd(x, y, kernel="imq", bandwidth=BANDWIDTHS), x, y), reps)
    t_eager = median_time(fwd_bwd(lambda: eager_mmd_imq(x, y, BANDWIDTHS), x, y), reps)
    rows.append(("mmd imq, 7 bandwidths", t_fv, "eager torch.cdist N x N", t_eager, 10))
    try:
        import geomloss
        gl = geomloss.SamplesLoss("gaussian", blur=1.0, backend="tensorized")
        t_geo = median_time(fwd_bwd(lambda: gl(x, y), x, y), reps)
        rows.append(("mmd imq, 7 bandwidths", t_fv, "geomloss tensorized, 1 gaussian", t_geo, 3))
    except ImportError:
        pass
    t_rbf = median_time(fwd_bwd(lambda: fastvae.mmd(x, y, kernel="rbf", bandwidth=1.0), x, y), reps)
    rows.append(("mmd rbf, 1 bandwidth (info)", t_rbf, "", float("nan"), None))

    theta = torch.randn(D, L, generator=g)
    theta = theta / theta.norm(dim=0, keepdim=True)
    t_sw = median_time(fwd_bwd(lambda: fastvae.sliced_wasserstein(x, n_projections=L, generator=g), x), reps)
    t_sw_eager = median_time(fwd_bwd(lambda: eager_sliced_wasserstein(x, theta, g), x), reps)
    rows.append((f"sliced_wasserstein, {L} directions, y=None", t_sw, "eager matmul + sort of both sides",
                 t_sw_eager, 3))
    try:
        import ot
        prior = torch.randn(N, D, generator=g)
        t_pot = median_time(fwd_bwd(lambda: ot.sliced_wasserstein_distance(x, prior, projections=theta, p=2) ** 2, x),
                            reps)
        rows.append((f"sliced_wasserstein, {L} directions, y=None", t_sw, "POT sliced_wasserstein_distance", t_pot,
                     None))
    except ImportError:
        pass
    return rows


MEMORY_CHILD = r"""
import json, resource, sys, torch, fastvae
op, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g).requires_grad_()
y = torch.randn(n, d, generator=g).requires_grad_()
small_x, small_y = x[:256].detach().clone().requires_grad_(), y[:256].detach().clone().requires_grad_()
def run(a, b):
    if op == "mmd":
        fastvae.mmd(a, b, kernel="imq", bandwidth=[0.5, 1.0, 2.0]).backward()
    else:
        fastvae.sliced_wasserstein(a, n_projections=256, generator=g).backward()
run(small_x, small_y)  # load kernels, start the thread pool
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(x, y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def memory(op, n, d):
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, op, str(n), str(d)], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak_kib"] - r["base_kib"]) / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    lines = [f"fastvae distances, CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"isa {fastvae._C.cpu_isa()}, N = {N}, d = {D}, float32, forward + backward, median of {args.reps}",
             "", "| op | fastvae (s) | baseline | baseline (s) | speed-up | target |", "|---|---|---|---|---|---|"]
    for name, t, base_name, t_base, target in timings(args.reps):
        if base_name:
            ok = "" if target is None else (f">= {target}x: {'met' if t_base / t >= target else 'MISSED'}")
            lines.append(f"| {name} | {t:.4f} | {base_name} | {t_base:.4f} | {t_base / t:.1f}x | {ok} |")
        else:
            lines.append(f"| {name} | {t:.4f} | | | | |")
    if not args.skip_memory:
        lines += ["", "| op (fresh process, fwd + bwd, float32) | peak RSS above inputs (MiB) | target |", "|---|---|---|"]
        mib = memory("mmd", 65536, 64)
        lines.append(f"| mmd imq N = M = 65536, d = 64 | {mib:.1f} | < 256: {'met' if mib < 256 else 'MISSED'} |")
        mib = memory("sw", 65536, 64)
        n_by_n = 65536 * 65536 * 4 / 2**20
        lines.append(f"| sliced_wasserstein N = 65536, d = 64, L = 256, y=None | {mib:.1f} | "
                     f"no N x N ({n_by_n:.0f} MiB): {'met' if mib < n_by_n / 16 else 'MISSED'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
