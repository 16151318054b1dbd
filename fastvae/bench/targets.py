"""The performance targets, named by what they measure and read off the measured rows:

- vae_head_speedup: the fused VAE head (reparameterize_kl + gaussian_nll) at 4096 x 1024, every decoder
  variance, against the plain eager form, fastvae.reference, torch.compile and torch.distributions, its
  saved-for-backward memory, and its time as a share of a floor (bytes / copy bandwidth + Philox draws x time per
  normal) measured in the same run;
- distance_speedups: mmd and sliced_wasserstein at N = 4096, d = 64 on CPU (N = 65536 on CUDA) against the N x N
  form, geomloss/KeOps, eager matmul + sort and POT;
- copy_bandwidth_fraction (CUDA): each Gaussian op's GB/s as a share of the measured copy bandwidth;
- distance_memory: mmd and sliced_wasserstein forward + backward at N = 65536, d = 64, each its own measurement
  (fresh-process peak RSS on CPU, max_memory_allocated on CUDA)."""
import torch

from . import measure
from .ops import CODE_D, LATENT, MMD_BANDWIDTHS
from .ops.gaussian import (DRAWS_PER_ELEMENT, VAE_HEAD_BASES, VAE_HEAD_MODES, VAE_HEAD_PROBE, vae_head_bytes,
                           vae_head_provider)


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


def _ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


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


VAE_HEAD_GOAL = 8.0          # fastvae vs the plain eager form, every decoder variance
VAE_HEAD_COMPILE_GOAL = 4.0  # fastvae vs torch.compile of the plain form (unit variance)


def _vae_head_mode(provider):
    """The decoder-variance mode of a vae_head provider (None for the floor probe)."""
    if provider == VAE_HEAD_PROBE:
        return None
    for mode, sfx, *_ in reversed(VAE_HEAD_MODES):  # the unit mode's suffix is empty: it comes last
        if provider.endswith(sfx):
            return mode
    return None


def fix_vae_head_rows(rows):
    """report.derive gives every vae_head row the op's bytes model (the unit variance's) and the unit-variance
    eager and compile rows as baselines: here each mode's rows get their mode's bytes and their mode's eager (no
    compile), and the floor probe none of these (in place; run after report.derive)."""
    by = {(r["provider"], r["mode"], r["dtype"], r["size"], r["device"]): r for r in rows if r["op"] == "vae_head"}
    for r in by.values():
        mode = _vae_head_mode(r["provider"])
        if mode == "unit":
            continue
        derived = ("bytes_model", "gbps", "pct_copy_bw", "speedup_vs_eager", "speedup_vs_compile")
        if mode is None:
            for k in derived:
                r.pop(k, None)
            continue
        r.pop("speedup_vs_compile", None)
        r["bytes_model"] = vae_head_bytes(mode)(r["size"], torch.empty((), dtype=getattr(torch, r["dtype"]))
                                                .element_size(), r["mode"])
        if r.get("p50_ms") is None:
            continue
        r["gbps"] = r["bytes_model"] / (r["p50_ms"] / 1e3) / 1e9
        limit = r.get("loop_copy_gbps")
        if limit and r["gbps"] <= limit:
            r["pct_copy_bw"] = 100 * r["gbps"] / limit
        else:
            r.pop("pct_copy_bw", None)
        e = by.get((vae_head_provider("eager", mode), r["mode"], r["dtype"], r["size"], r["device"]))
        if e is not None and e.get("p50_ms"):
            r["speedup_vs_eager"] = e["p50_ms"] / r["p50_ms"]
        else:
            r.pop("speedup_vs_eager", None)
    return rows


def _vae_head_floor(rows, n, mode, f, e):
    """The floor of the fused head in `mode` at n x LATENT, float32, forward + backward, from the same run: bytes /
    (the copy bandwidth of the same interleaved loop) + Philox draws x (the probe's time per normal). A dict, or
    a string saying why there is none."""
    if f is None or f.get("p50_ms") is None:
        return "fastvae not measured"
    copy_gbps = f.get("loop_copy_gbps")
    probe = _row(rows, "vae_head", VAE_HEAD_PROBE, n)
    if not copy_gbps:
        return "no copy bandwidth measured in the loop"
    if probe is None or probe.get("p50_ms") is None:
        return f"{VAE_HEAD_PROBE} not measured ({_t(probe)})"
    draws = DRAWS_PER_ELEMENT["full"] * n * LATENT
    ns_per_normal = probe["p50_ms"] * 1e6 / draws   # the probe draws n x LATENT forward and again backward
    nbytes = vae_head_bytes(mode)(n, 4, "full")
    bytes_ms, draws_ms = nbytes / (copy_gbps * 1e9) * 1e3, draws * ns_per_normal / 1e6
    floor = bytes_ms + draws_ms
    ok = floor <= f["p50_ms"]  # (else the floor was measured wrong: no share of it, no ceiling from it)
    return dict(bytes=nbytes, draws=draws, copy_gbps=copy_gbps, ns_per_normal=ns_per_normal, bytes_ms=bytes_ms,
                draws_ms=draws_ms, floor_ms=floor, fastvae_ms=f["p50_ms"],
                pct_floor=100 * floor / f["p50_ms"] if ok else None,
                ceiling=e["p50_ms"] / floor if ok and e is not None and e.get("p50_ms") else None)


def vae_head_speedup(rows, n=4096):
    """The fused VAE head at n x 1024 (4096: the target), float32, forward + backward, every decoder variance:
    the speed-up over the plain eager form (goal >= 8x) and the other providers, and the time as a share of a floor
    measured in the same run. Returns (info, markdown)."""
    fix_vae_head_rows(rows)
    title = f"fused VAE head speed-up, vae_head, float32, {n} x {LATENT}, forward + backward"
    if not any(r["op"] == "vae_head" and r["size"] == n and r["mode"] == "full" for r in rows):
        return None, f"### Target: {title}: not run (size {n}, mode full not selected)"
    lines = [f"### Target: {title}", "",
             "z, kl = reparameterize_kl(mu, logvar); loss = (gaussian_nll(x, z, dec_logvar) + kl).mean(), for "
             "each decoder variance: unit (dec_logvar None), per feature (a (D,) dec_logvar), per element (a "
             "(B, D) one). eager is the plain form a user writes (std = exp(0.5 lv); z = mu + std randn_like(std); "
             "kl = -0.5 sum(1 + lv - mu^2 - exp(lv)); nll = 0.5 sum((x - z)^2 exp(-dec_lv) + dec_lv) + const); "
             "eager (reference) is fastvae.reference's overflow-safe form; compile is torch.compile of the plain "
             f"form. Targets: >= {VAE_HEAD_GOAL:g}x the plain eager form in every mode, >= "
             f"{VAE_HEAD_COMPILE_GOAL:g}x torch.compile, saved-for-backward no more than eager's.", "",
             "| decoder variance | provider | p50 ms | p20-p80 ms | fastvae speed-up | saved for backward MiB "
             "(beyond inputs) | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    info, floors = {}, {}
    for mode, *_ in VAE_HEAD_MODES:
        f = _row(rows, "vae_head", vae_head_provider("fastvae", mode), n)
        e = _row(rows, "vae_head", vae_head_provider("eager", mode), n)
        for base in VAE_HEAD_BASES:
            name = vae_head_provider(base, mode)
            r = _row(rows, "vae_head", name, n)
            if r is None:
                continue
            goal = {"eager": VAE_HEAD_GOAL, "compile": VAE_HEAD_COMPILE_GOAL}.get(base)
            ratio = _ratio(r, f) if base != "fastvae" else None
            sp = "" if base == "fastvae" else (_verdict(ratio, goal, r, f) if goal else
                                               (f"{ratio:.2f}x" if ratio else "n/a"))
            saved = (f"{r['saved_mib']:.1f} ({r['saved_extra_mib']:.1f})" if r.get("saved_mib") is not None
                     else "n/a")
            rng = f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f}" if r.get("p50_ms") is not None else ""
            peak = f"{r['peak_mem_mib']:.1f}" if r.get("peak_mem_mib") is not None else ""
            lines.append(f"| {mode} | {name} | {_t(r)} | {rng} | {sp} | {saved} | {peak} |")
            info[name] = dict(p50_ms=r.get("p50_ms"), saved_mib=r.get("saved_mib"),
                              saved_extra_mib=r.get("saved_extra_mib"), speedup=ratio)
        floors[mode] = _vae_head_floor(rows, n, mode, f, e)
    lines += ["", "Saved for backward, fastvae vs the plain eager form: " + "; ".join(
        f"{mode} {f['saved_mib']:.1f} vs {e['saved_mib']:.1f} MiB "
        f"({'meets' if f['saved_mib'] <= e['saved_mib'] else 'misses'})"
        for mode, f, e in ((m, _row(rows, "vae_head", vae_head_provider("fastvae", m), n),
                            _row(rows, "vae_head", vae_head_provider("eager", m), n)) for m, *_ in VAE_HEAD_MODES)
        if f is not None and e is not None and f.get("saved_mib") is not None and e.get("saved_mib") is not None)
        + "."]
    lines += _vae_head_floor_table(floors, n)
    info["floor"] = floors
    return info, "\n".join(lines)


def _vae_head_floor_table(floors, n):
    lines = ["", "Floor, measured in the same run: bytes the fused ops move / the copy bandwidth of the same "
             "interleaved loop + Philox draws x the time per normal of the floor probe "
             f"({VAE_HEAD_PROBE}: torch.ops.fastvae._normals(seed, 0, B x D) in the forward and again in the "
             "backward, timed in the same rounds). Bytes: inputs read and outputs written once per pass, forward "
             "and backward (unit and per feature 5 + 8 passes of B x D floats, per element 6 + 10); draws: 2 "
             "normals per latent element (eps drawn in the forward, regenerated in the backward). % of floor = "
             "floor / fastvae's time; implied ceiling = plain eager time / floor, the best speed-up over the plain "
             "form this machine allows.", "",
             "| decoder variance | fastvae p50 ms | MiB moved | Philox draws | floor ms (bytes + draws) "
             "| % of floor | implied ceiling |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for mode, fl in floors.items():
        if isinstance(fl, str):
            lines.append(f"| {mode} | | | | n/a: {fl} | | |")
            continue
        wrong = fl["pct_floor"] is None
        if wrong:  # fastvae cannot beat its floor: the floor (its bandwidth or its time per normal) is wrong
            pct = (f"floor above the measured time ({_ms(fl['floor_ms'])} > {_ms(fl['fastvae_ms'])} ms): the floor "
                   "was measured wrong")
            ceil = "n/a (floor wrong)"
        else:
            pct = f"{fl['pct_floor']:.0f}%"
            ceil = f"{fl['ceiling']:.1f}x" if fl["ceiling"] is not None else "n/a (eager not measured)"
        lines.append(f"| {mode} | {_ms(fl['fastvae_ms'])} | {fl['bytes'] / 2**20:.1f} | {fl['draws']:,} "
                     f"| {_ms(fl['floor_ms'])} ({_ms(fl['bytes_ms'])} + {_ms(fl['draws_ms'])}) | {pct} | {ceil} |")
        if not wrong and fl["ceiling"] is not None and fl["ceiling"] < VAE_HEAD_GOAL:
            notes.append(f"{mode}: the {VAE_HEAD_GOAL:g}x target is unreachable on this machine: at the floor "
                         f"fastvae would be {fl['ceiling']:.1f}x the plain eager form, and "
                         f"{100 * fl['draws_ms'] / fl['floor_ms']:.0f}% of that floor is the Philox draws (2 per "
                         "element: the forward's, and the backward's regeneration in place of a stored eps), "
                         f"{100 * fl['bytes_ms'] / fl['floor_ms']:.0f}% the bytes.")
    fl = next((v for v in floors.values() if not isinstance(v, str)), None)
    if fl is not None:
        lines += ["", f"In this loop: copy bandwidth {fl['copy_gbps']:.1f} GB/s, {fl['ns_per_normal']:.2f} ns per "
                      "normal. The floor adds the two terms (no overlap of the draws' arithmetic with the memory "
                      "traffic) and the probe writes each normal to memory (the fused kernels keep eps in a stack "
                      "block): both err towards a higher floor, a higher % of floor and a lower ceiling."]
    if notes:
        lines += [""] + notes
    return lines


LOGISTIC_B = 64
LOGISTIC_MIXTURE_GOAL = 8.0  # fastvae vs eager (issue 23; the suite's first target was 4x)


def logistic_mixture_speedup(rows, cuda=False):
    """The discretized logistic mixture at B = 64, 3 x 32 x 32, K = 10, float32, forward + backward: >= 8x eager,
    >= 2x torch.compile, peak memory at most 1/4 of eager's; with its saved-for-backward bytes and the forward and
    backward rates as shares of the copy bandwidth."""
    n, op = LOGISTIC_B, "discretized_logistic_mixture_nll"
    f, e, c = (_row(rows, op, p, n) for p in ("fastvae", "eager", "compile"))
    if f is None and e is None:
        return None, (f"### Target: discretized logistic mixture (B = {n}, 3 x 32 x 32, K = 10, float32, fwd+bwd): "
                      f"not run (size {n} not selected)")
    lines = [f"### Target: discretized logistic mixture, {op}, float32, B = {n}, 3 x 32 x 32, K = 10, "
             "forward + backward", "",
             f"targets: >= {LOGISTIC_MIXTURE_GOAL:g}x eager, >= 2x torch.compile, peak memory <= 1/4 of eager's." +
             (" (Set on the 2-core CPU; on CUDA the same rows, for reference.)" if cuda else ""), "",
             "| provider | p50 ms | p20-p80 ms | fastvae speed-up | peak MiB | fastvae peak / this peak "
             "| saved for backward MiB (beyond inputs) |",
             "|---|---|---|---|---|---|---|"]
    info = {}
    for name, r, goal in (("fastvae", f, None), ("eager", e, LOGISTIC_MIXTURE_GOAL), ("compile", c, 2)):
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
        saved = _saved(r)
        lines.append(f"| {name} | {_t(r)} | {rng} | {sp} | {'' if peak is None else f'{peak:.1f}'} | {share} "
                     f"| {saved} |")
        info[name] = _info(r, ratio)
    return _with_rates(info, lines, rows, op, n)


LOGISTIC_SINGLE_GOAL = 5.0  # fastvae vs the plain eager (PixelCNN++) form


def logistic_single_speedup(rows, cuda=False):
    """The single discretized logistic at B = 64, 3 x 32 x 32, float32, forward + backward: >= 5x the plain eager
    (PixelCNN++) form; fastvae.reference's overflow-safe form and torch.compile of the plain form for reference; with
    the peak and saved-for-backward memory and the forward and backward rates as shares of the copy bandwidth."""
    n, op = LOGISTIC_B, "discretized_logistic_nll"
    title = f"single discretized logistic, {op}, float32, B = {n}, 3 x 32 x 32, forward + backward"
    provs = ("fastvae", "eager", "eager (reference)", "compile")
    got = {p: _row(rows, op, p, n) for p in provs}
    f = got["fastvae"]
    if f is None and got["eager"] is None:
        return None, f"### Target: {title}: not run (size {n} not selected)"
    lines = [f"### Target: {title}", "",
             f"target: >= {LOGISTIC_SINGLE_GOAL:g}x the plain eager form (PixelCNN++'s: inv_stdv = exp(-log_scale), "
             "sigmoids of inv_stdv (x - mean +- 1/255), the edge bins and the midpoint fallback by torch.where, log "
             "of the difference). eager (reference) is fastvae.reference's overflow-safe form, compile "
             "torch.compile of the plain form (no goals)." +
             (" (Set on the 2-core CPU; on CUDA the same rows, for reference.)" if cuda else ""), "",
             "| provider | p50 ms | p20-p80 ms | fastvae speed-up | peak MiB | saved for backward MiB "
             "(beyond inputs) |",
             "|---|---|---|---|---|---|"]
    info = {}
    for name in provs:
        r = got[name]
        if r is None:
            continue
        goal = LOGISTIC_SINGLE_GOAL if name == "eager" else None
        ratio = _ratio(r, f) if name != "fastvae" else None
        sp = "" if name == "fastvae" else (_verdict(ratio, goal, r, f) if goal else
                                           (f"{ratio:.2f}x" if ratio else "n/a"))
        rng = f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}" if r.get("p50_ms") is not None else ""
        peak = r.get("peak_mem_mib")
        saved = _saved(r)
        t = _t(r) if r.get("p50_ms") is None else f"{_ms(r['p50_ms'])} ms"
        lines.append(f"| {name} | {t} "
                     f"| {rng} | {sp} | {'' if peak is None else f'{peak:.1f}'} | {saved} |")
        info[name] = _info(r, ratio)
    return _with_rates(info, lines, rows, op, n)


def _saved(r):
    """The saved-for-backward column of a row: all saved MiB (those beyond the inputs)."""
    return f"{r['saved_mib']:.1f} ({r['saved_extra_mib']:.1f})" if r.get("saved_mib") is not None else "n/a"


def _info(r, ratio):
    return dict(p50_ms=r.get("p50_ms"), peak_mem_mib=r.get("peak_mem_mib"), saved_mib=r.get("saved_mib"),
                speedup=ratio)


def _with_rates(info, lines, rows, op, n):
    """(info, the table) with the line of fastvae's forward / backward / full rates under it."""
    rates = _rates(rows, op, n)
    if rates:
        lines += ["", "fastvae bytes moved (inputs read, gradients written): " + "; ".join(rates) + "."]
    return info, "\n".join(lines)


def _rates(rows, op, n):
    out = []
    for mode in ("forward", "backward", "full"):
        r = _row(rows, op, "fastvae", n, mode)
        if r is not None and r.get("gbps") is not None:
            pct = f", {r['pct_copy_bw']:.0f}% of the copy bandwidth" if r.get("pct_copy_bw") is not None else ""
            out.append(f"{mode} {r['p50_ms']:.2f} ms, {r['bytes_model'] / 2**20:.1f} MiB moved, "
                       f"{r['gbps']:.1f} GB/s{pct}")
    return out


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
