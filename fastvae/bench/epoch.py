"""A training epoch on Fashion-MNIST, end to end: vae_train_epoch is vae_train_amp's step (fastvae.VAE(784, 32,
likelihood='bernoulli'), hidden 512, 256, SiLU; fastvae, its reference ops as eager, and pythae's VAE with the same
MLP; float32 and bf16 autocast) at batch 128, 1024 and 4096, reported per epoch-equivalent: the step's p50 time x
60000 / batch, the steps of one pass over Fashion-MNIST's 60000 training images (the last, partial batch counted
pro rata; data loading, shuffling and evaluation are not in it).

The fused ops' share of fastvae's step (CPU): a few steps run under torch.profiler after the timing, and the
inclusive CPU time of the torch.ops.fastvae.* events (forward and backward ops, their allocations included; the
outermost only, so that none counts twice) is divided by the wall time of its step, both measured under the
profiler; the median over 5 steps. The Python around each op (argument checks, autograd wiring) is not counted as
fused time. On CUDA the share is left blank (a kernel's time is not its launch's CPU time)."""
from . import e2e
from .measure import quiet_profiler
from .ops import Op

FASHION_TRAIN = 60000
SIZES = [128, 1024, 4096]
_STEP = "fastvae_bench::step"


def vae_epoch_op():
    return Op("vae_train_epoch", "e2e", SIZES, SIZES[:1], e2e.make_binary, e2e._amp_providers(),
              lambda n: f"batch {n}", cuda_sizes=SIZES, annotate=annotate,
              doc=e2e._AMP_DOC + f"; per epoch: time per step x {FASHION_TRAIN} / batch (Fashion-MNIST's "
                  f"training images); the fastvae rows' fused_share is the torch.ops.fastvae.* events' share of "
                  f"the step under torch.profiler (fastvae/bench/epoch.py)")


def epoch_seconds(p50_ms, batch):
    return p50_ms / 1e3 * FASHION_TRAIN / batch


def annotate(provider, step, sets, row):
    """Extra fields of a measured row: epoch_s for every provider, fused_share for fastvae's on CPU."""
    out = dict(epoch_s=epoch_seconds(row["p50_ms"], row["size"]))
    if provider.startswith("fastvae") and row["device"] == "cpu":
        out["fused_share"] = fused_share(step, sets)
    return out


def fused_share(step, sets, reps=5):
    """The share of a call of `step` spent inside torch.ops.fastvae.* ops, by torch.profiler's CPU events (see the
    module doc): the median over `reps` calls (over the input sets in turn), so that one call slowed by the
    machine's other load does not decide it."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(reps):
            with record_function(_STEP):
                step(*sets[i % len(sets)])
    events = prof.events()
    steps = [e.time_range for e in events if e.name == _STEP]
    fused = [0.0] * len(steps)
    for e in events:
        if e.name.startswith("fastvae::") and not _inside_fastvae(e):
            for j, r in enumerate(steps):
                if r.start <= e.time_range.start <= r.end:
                    fused[j] += e.cpu_time_total
    shares = sorted(f / r.elapsed_us() for f, r in zip(fused, steps) if r.elapsed_us() > 0)
    return shares[len(shares) // 2] if shares else None


def _inside_fastvae(event):
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith("fastvae::"):
            return True
        p = p.cpu_parent
    return False


def _row(rows, provider, size, dtype):
    return next((r for r in rows if (r["op"], r["provider"], r["size"], r["dtype"]) ==
                 ("vae_train_epoch", provider, size, dtype)), None)


def epoch_table(rows):
    """The summary: seconds per epoch of each provider, fastvae's speed-ups, and the fused ops' share of its step."""
    ran = sorted({(r["dtype"], r["size"]) for r in rows if r["op"] == "vae_train_epoch"})
    if not ran:
        return ""
    lines = [f"### Training epoch on Fashion-MNIST ({FASHION_TRAIN} images), vae_train_epoch", "",
             f"Bernoulli VAE 784-512-256-32 (SiLU); seconds per epoch = p50 time per step x {FASHION_TRAIN} / batch "
             "(training steps only: no data loading or evaluation); speed-up = the other's time / fastvae's; fused "
             "share = the torch.ops.fastvae.* ops' inclusive CPU time over the step's, under torch.profiler.", "",
             "| batch | precision | fastvae s/epoch | eager s/epoch | pythae s/epoch | fastvae vs eager "
             "| fastvae vs pythae | fused ops' share of the fastvae step |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype, n in ran:
        for suffix, precision in (("", dtype), ("-bf16", "bf16 autocast")):
            f, e, p = (_row(rows, name + suffix, n, dtype) for name in ("fastvae", "eager", "pythae"))
            if f is None and e is None and p is None:
                continue
            cells = [_seconds(r) for r in (f, e, p)]
            cells += [_speedup(r, f) for r in (e, p)]
            share = f.get("fused_share") if f is not None else None
            cells.append("" if share is None else f"{100 * share:.1f}%")
            lines.append(f"| {n} | {precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(r):
    if r is None:
        return "not run"
    if r.get("epoch_s") is None:
        return r.get("status", "no time").split(" (")[0][:60].replace("|", "/")
    return f"{r['epoch_s']:.2f}"


def _speedup(base, f):
    if base is None or f is None or not base.get("epoch_s") or not f.get("epoch_s"):
        return ""
    return f"{base['epoch_s'] / f['epoch_s']:.2f}x"
