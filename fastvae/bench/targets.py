"""The performance targets, named by what they measure and read off the measured rows:

- vae_head_speedup: the fused VAE head (reparameterize_kl + gaussian_nll) at 4096 x 1024 against eager and
  torch.compile, and its saved-for-backward memory;
- distance_speedups: mmd and sliced_wasserstein at N = 4096, d = 64 on CPU (N = 65536 on CUDA) against the N x N
  form, geomloss/KeOps, eager matmul + sort and POT;
- copy_bandwidth_fraction (CUDA): each Gaussian op's GB/s as a share of the measured copy bandwidth;
- distance_memory: mmd and sliced_wasserstein forward + backward at N = 65536, d = 64, each its own measurement
  (fresh-process peak RSS on CPU, max_memory_allocated on CUDA)."""
import torch

from . import measure
from .ops import CODE_D, MMD_BANDWIDTHS


def _row(rows, op, provider, size, mode="full", dtype="float32"):
    for r in rows:
        if (r["op"], r["provider"], r["size"], r["mode"], r["dtype"]) == (op, provider, size, mode, dtype):
            return r
    return None


def _t(r):
    if r is None:
        return "not run"
    if r.get("p50_ms") is None:
        return r.get("status", "no time")
    return f"{r['p50_ms']:.1f} ms"


def _ratio(base, r):
    if base is None or r is None or base.get("p50_ms") is None or r.get("p50_ms") is None:
        return None
    return base["p50_ms"] / r["p50_ms"]


def _verdict(x, goal, base=None, r=None):
    """The speed-up x against its goal; with the two rows (base, r), marked when their spread is too wide to
    support the verdict: the ratio of the slow ends (base p20 / r p80) and of the fast ends (base p80 / r p20)
    fall on different sides of the goal."""
    if x is None:
        return "n/a"
    out = f"{x:.2f}x ({'meets' if x >= goal else 'misses'} >= {goal}x)"
    if base is not None and r is not None and all(v.get(k) for v in (base, r) for k in ("p20_ms", "p80_ms")):
        lo, hi = base["p20_ms"] / r["p80_ms"], base["p80_ms"] / r["p20_ms"]
        if (lo >= goal) != (hi >= goal):
            out += f" [spread too wide to judge: {lo:.2f}-{hi:.2f}x]"
    return out


def vae_head_speedup(rows):
    n = 4096
    f, e, c, d = (_row(rows, "vae_head", p, n) for p in ("fastvae", "eager", "compile", "torch.distributions"))
    if f is None and e is None:
        return None, "### Target: fused VAE head speed-up (vae_head 4096 x 1024, float32, fwd+bwd): not run " \
                     "(size 4096 not selected)"
    lines = ["### Target: fused VAE head speed-up, vae_head, float32, 4096 x 1024, forward + backward",
             "", "reparameterize_kl then gaussian_nll(x, z), loss = (nll + kl).mean(); targets: >= 5x eager, "
             ">= 4x torch.compile, saved-for-backward no more than eager's.", "",
             "| provider | p50 ms | p20-p80 ms | fastvae speed-up | saved for backward MiB (beyond inputs) "
             "| peak MiB |",
             "|---|---|---|---|---|---|"]
    info = {}
    for name, r, goal in (("fastvae", f, None), ("eager", e, 5), ("compile", c, 4), ("torch.distributions", d, None)):
        if r is None:
            continue
        ratio = _ratio(r, f) if name != "fastvae" else None
        saved = (f"{r['saved_mib']:.1f} ({r['saved_extra_mib']:.1f})" if r.get("saved_mib") is not None else "n/a")
        rng = f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f}" if r.get("p50_ms") is not None else ""
        sp = "" if name == "fastvae" else (_verdict(ratio, goal, r, f) if goal else
                                           (f"{ratio:.2f}x" if ratio else "n/a"))
        peak = f"{r['peak_mem_mib']:.1f}" if r.get("peak_mem_mib") is not None else ""
        lines.append(f"| {name} | {_t(r)} | {rng} | {sp} | {saved} | {peak} |")
        info[name] = dict(p50_ms=r.get("p50_ms"), saved_mib=r.get("saved_mib"),
                          saved_extra_mib=r.get("saved_extra_mib"), speedup=ratio)
    if f is not None and e is not None and f.get("saved_mib") is not None and e.get("saved_mib") is not None:
        ok = f["saved_mib"] <= e["saved_mib"]
        lines += ["", f"Saved for backward: fastvae {f['saved_mib']:.1f} MiB vs eager {e['saved_mib']:.1f} MiB "
                      f"({'meets' if ok else 'misses'} the target)."]
    return info, "\n".join(lines)


LOGISTIC_B = 64


def logistic_mixture_speedup(rows, cuda=False):
    """The discretized logistic mixture at B = 64, 3 x 32 x 32, K = 10, float32, forward + backward: >= 4x eager,
    >= 2x torch.compile, peak memory at most 1/4 of eager's; with its saved-for-backward bytes and the forward and
    backward rates as shares of the copy bandwidth."""
    n, op = LOGISTIC_B, "discretized_logistic_mixture_nll"
    f, e, c = (_row(rows, op, p, n) for p in ("fastvae", "eager", "compile"))
    if f is None and e is None:
        return None, (f"### Target: discretized logistic mixture (B = {n}, 3 x 32 x 32, K = 10, float32, fwd+bwd): "
                      f"not run (size {n} not selected)")
    lines = [f"### Target: discretized logistic mixture, {op}, float32, B = {n}, 3 x 32 x 32, K = 10, "
             "forward + backward", "",
             "targets: >= 4x eager, >= 2x torch.compile, peak memory <= 1/4 of eager's." +
             (" (Set on the 2-core CPU; on CUDA the same rows, for reference.)" if cuda else ""), "",
             "| provider | p50 ms | p20-p80 ms | fastvae speed-up | peak MiB | fastvae peak / this peak "
             "| saved for backward MiB (beyond inputs) |",
             "|---|---|---|---|---|---|---|"]
    info = {}
    for name, r, goal in (("fastvae", f, None), ("eager", e, 4), ("compile", c, 2)):
        if r is None:
            continue
        ratio = _ratio(r, f) if name != "fastvae" else None
        sp = "" if name == "fastvae" else _verdict(ratio, goal, r, f)
        rng = f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f}" if r.get("p50_ms") is not None else ""
        peak = r.get("peak_mem_mib")
        fpeak = f.get("peak_mem_mib") if f is not None else None
        share = ""
        if name != "fastvae" and peak and fpeak is not None:
            share = f"{fpeak / peak:.3f}" + (f" ({'meets' if fpeak <= peak / 4 else 'misses'} <= 1/4)"
                                             if name == "eager" else "")
        saved = (f"{r['saved_mib']:.1f} ({r['saved_extra_mib']:.1f})" if r.get("saved_mib") is not None else "n/a")
        lines.append(f"| {name} | {_t(r)} | {rng} | {sp} | {'' if peak is None else f'{peak:.1f}'} | {share} "
                     f"| {saved} |")
        info[name] = dict(p50_ms=r.get("p50_ms"), peak_mem_mib=peak, saved_mib=r.get("saved_mib"), speedup=ratio)
    rates = []
    for mode in ("forward", "backward", "full"):
        r = _row(rows, op, "fastvae", n, mode)
        if r is not None and r.get("gbps") is not None:
            pct = f", {r['pct_copy_bw']:.0f}% of the copy bandwidth" if r.get("pct_copy_bw") is not None else ""
            rates.append(f"{mode} {r['p50_ms']:.1f} ms, {r['bytes_model'] / 2**20:.0f} MiB moved, "
                         f"{r['gbps']:.1f} GB/s{pct}")
    if rates:
        lines += ["", "fastvae bytes moved (inputs read, gradients written): " + "; ".join(rates) + "."]
    return info, "\n".join(lines)


def distance_speedups(rows, memory=None, cuda=False):
    """CPU targets at N = 4096; CUDA targets at N = 65536 (vs KeOps online and eager matmul + sort)."""
    n = 65536 if cuda else 4096
    lines = [f"### Target: distance speed-ups, N = {n}, d = {CODE_D}, float32, forward + backward", "",
             "| op | fastvae | baseline | baseline p50 | fastvae speed-up |", "|---|---|---|---|---|"]
    ran = False
    goals = ((("mmd", "geomloss-online", 5), ("mmd", "nxn-cdist", None), ("sliced_wasserstein", "eager-matmul-sort", 3))
             if cuda else
             (("mmd", "nxn-cdist", 10), ("mmd", "geomloss-tensorized", 3), ("mmd", "geomloss-online", None),
              ("sliced_wasserstein", "eager-matmul-sort", 3), ("sliced_wasserstein", "pot", None)))
    for op, base, goal in goals:
        f, b = _row(rows, op, "fastvae", n), _row(rows, op, base, n)
        if f is None and b is None:
            continue
        ran = True
        ratio = _ratio(b, f)
        extra = (f" (+{b['compile_s']:.1f} s first-call compile)" if b is not None and (b.get("compile_s") or 0) > 0.05
                 else "")
        lines.append(f"| {op} | {_t(f)} | {base} | {_t(b)}{extra} | "
                     f"{_verdict(ratio, goal, b, f) if goal else (f'{ratio:.2f}x' if ratio else 'n/a')} |")
    if cuda:
        f = _row(rows, "mmd", "fastvae", n)
        if f is not None and f.get("pct_matmul") is not None:
            lines += ["", f"mmd at N = {n}: {f['gflops']:.0f} GFLOP/s useful, {f['pct_matmul']:.0f}% of the measured "
                          "matmul rate (target: within 2x of the arithmetic limit, i.e. >= 50%)."]
    if not ran:
        lines = [f"### Target: distance speed-ups (N = {n}): not run (mmd / sliced_wasserstein at N = {n} not "
                 "selected)"]
    if memory:
        lines += [""] + list(memory)
    return "\n".join(lines)


# (op, the call, the memory goal in MiB above the inputs, what the goal stands for): forward + backward at
# N = 65536, d = 64, float32. x and y are (N, d); the N x N float32 matrix alone would be 16 GiB.
MEMORY_N = 65536
_NXN_MIB = MEMORY_N * MEMORY_N * 4 / 2**20
MEMORY_CASES = (
    ("mmd", f"fastvae.mmd(x, y, kernel='imq', bandwidth={tuple(MMD_BANDWIDTHS)!r}).backward()", 256.0,
     "< 256 MiB"),
    ("sliced_wasserstein", "fastvae.sliced_wasserstein(x, n_projections=256, generator=g).backward()", _NXN_MIB / 16,
     f"no N x N: < 1/16 of its {_NXN_MIB:.0f} MiB"),
)


def distance_memory(device, log=print, ops=("mmd", "sliced_wasserstein")):
    """Memory above the inputs of each distance op's forward + backward at N = 65536, d = 64, float32: one line
    per op (a fresh process's peak RSS on CPU, CUDA max_memory_allocated on CUDA)."""
    setup = ("import torch, fastvae\n"
             "g = torch.Generator().manual_seed(0)\n"
             f"x = torch.randn({MEMORY_N}, {CODE_D}, generator=g, device='{device}').requires_grad_()\n"
             f"y = torch.randn({MEMORY_N}, {CODE_D}, generator=g, device='{device}')\n")
    lines = []
    for op, body, goal_mib, goal in MEMORY_CASES:
        if op not in ops:
            continue
        head = (f"{op} memory, N = {MEMORY_N}, d = {CODE_D}, float32, forward + backward (target {goal} above the "
                f"inputs): ")
        try:
            if torch.device(device).type == "cuda":
                g = {}
                exec(setup, g)
                peak = measure.peak_memory_bytes(lambda: exec(body, g), device)
                what = "CUDA max_memory_allocated"
            else:
                peak = measure.rss_peak_above(setup, body)
                what = "fresh-process peak RSS"
            res = f"{what} {peak / 2**20:.1f} MiB ({'meets' if peak < goal_mib * 2**20 else 'misses'} the target)"
        except Exception as e:
            res = f"failed: {type(e).__name__}: {e}"
        log("  " + head + res)
        lines.append(head + res + f" (inputs: x and y, {2 * MEMORY_N * CODE_D * 4 / 2**20:.0f} MiB, plus x.grad).")
    return lines


def copy_bandwidth_fraction(rows):
    """CUDA target: >= 80% of the measured copy bandwidth on forward and on backward, and faster than
    torch.compile, for every Gaussian op at its largest measured size."""
    lines = ["### Target: share of the measured copy bandwidth (goal >= 80% fwd and bwd) and speed-up over "
             "torch.compile (goal > 1), largest size", "",
             "| op | size | forward GB/s (% copy) | backward GB/s (% copy) | ×compile fwd | ×compile bwd |",
             "|---|---|---|---|---|---|"]
    ops = [o for o in ("reparameterize", "reparameterize_kl", "reparameterize_tril", "gaussian_nll", "bernoulli_nll",
                       "kl_normal", "vae_head") if any(r["op"] == o for r in rows)]
    for op in ops:
        sizes = [r["size"] for r in rows if r["op"] == op and r["provider"] == "fastvae" and r.get("p50_ms")]
        if not sizes:
            continue
        n = max(sizes)
        cells = []
        for mode in ("forward", "backward"):
            r = _row(rows, op, "fastvae", n, mode)
            cells.append(f"{r['gbps']:.0f} ({r['pct_copy_bw']:.0f}%)" if r and r.get("pct_copy_bw") is not None else "")
        for mode in ("forward", "backward"):
            r = _row(rows, op, "fastvae", n, mode)
            cells.append(f"{r['speedup_vs_compile']:.2f}" if r and r.get("speedup_vs_compile") else "")
        lines.append(f"| {op} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
