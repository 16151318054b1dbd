"""The fixed cost of a call (group "overhead"): every public op at 1x1 inputs (2x1 for the distances, which need two
samples), where the time is the cost of the call itself and not of its data.

Per op, per-call times of
- fastvae: the public function (fastvae.kl_normal(mu, logvar), ...);
- op: the registered op torch.ops.fastvae.* with the arguments the public function hands it (the dispatcher, torch's
  register_autograd wrapper and the C++ binding's checks): the floor a public function can reach. sliced_wasserstein
  is a composite of registered ops (random_directions, a matmul per sample set, sliced_wasserstein_projected): its
  op row calls that chain directly, and a "projected op" row times the last op alone;
- eager: the same loss written with torch ops (fastvae.reference, or the few ops a user writes);
- torch: torch's own fused op where one exists (F.binary_cross_entropy_with_logits, F.gaussian_nll_loss);
in three modes: no_grad (inputs without requires_grad, under torch.no_grad), forward (inputs requiring grad: the
autograd graph is built) and full (forward + backward). The target (issue 25): a public call at most 1.5x the
registered op's own cost, with and without grad.

Measured in rounds: each round times one rep (`inner` calls in a loop, perf_counter around it) of every provider of
an op in turn, so a loaded machine slows all providers alike; p20/p50/p80 over the rounds, in microseconds per call.
Each rep makes one untimed call first (in every mode; "full" always did, for its gradients' shapes): the first call
after another provider pays for what that one left behind, 100-250 us after eager's 1x1 mixture (whose
aten::log_sigmoid_forward takes milliseconds), which in 20 calls made the provider timed next 2x slower, whichever
it was.
"""
import math
import time

import torch
import torch.nn.functional as F

import fastvae
from fastvae import reference
from fastvae.ops import _composites, distances, gaussian, logistic

from .measure import percentile

ops = torch.ops.fastvae
MODES = ("no_grad", "forward", "full")
TARGET = 1.5  # public / registered op
_FAMILIES = (gaussian, distances, logistic)  # the modules whose public functions have fast paths (direct calls)
LOG_2PI = math.log(2 * math.pi)


def _captured(name, public):
    """The arguments the public call hands its op `name`: recorded from one call, so that the 'op' row calls the op
    exactly as the public function does. Recorded where the public functions call it: the routed op
    (fastvae.ops._composites.routed.<name>) of their checked path, and the `direct` call of their fast path (the
    attribute _<name> of the op family's module, where there is one)."""
    seen = []
    places = [(_composites.routed, name)] + [(m, "_" + name) for m in _FAMILIES if hasattr(m, "_" + name)]
    originals = [(ns, attr, getattr(ns, attr)) for ns, attr in places]

    def recorder(original):
        def record(*args):
            seen.append(args)
            return original(*args)
        return record
    for ns, attr, original in originals:
        setattr(ns, attr, recorder(original))
    try:
        public()
    finally:
        for ns, attr, original in originals:
            setattr(ns, attr, original)
    # intermediate tensors the public call computed (the projections of sliced_wasserstein) as leaves: each rep's
    # backward then stops at them, instead of running through the recorded call's graph a second time
    return tuple(a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and a.grad_fn is not None
                 else a for a in seen[0])


def _cases(device, dtype, grad):
    """name -> {provider: call} at 1x1 inputs; the tensors that need grad require it when `grad`."""
    def t(*shape, lo=None):
        v = torch.rand(shape) if lo is not None else torch.randn(shape)
        return v.to(device=device, dtype=dtype).requires_grad_(grad and lo is None)

    mu, lv, x, _ = t(1, 1), t(1, 1), t(1, 1, lo=0), t(1, 1, lo=0)
    L = (torch.ones(1, 1, 1) + 0.5).to(device=device, dtype=dtype).requires_grad_(grad)
    xs, ys = t(2, 1), t(2, 1)
    seed = torch.zeros(1, dtype=torch.int64, device=device)
    lg_means, lg_scales, lg_logits = t(1, 1, 2), t(1, 1, 2), t(1, 1, 2)
    xb = (torch.randint(0, 256, (1, 1)) * 2 / 255 - 1).to(device=device, dtype=dtype)  # on the 8-bit grid

    def eager_z(m, v):
        return m + torch.exp(0.5 * v) * torch.randn_like(m)

    def eager_kl(m, v):
        return 0.5 * (m * m + v.exp() - 1 - v).sum(1)

    def op_of(name, public):
        args = _captured(name, public)
        op = getattr(ops, name)
        return lambda: op(*args)

    def sw_ops(a, b):
        """sliced_wasserstein's floor: the registered ops the public function calls, called directly (the seed's
        random_directions, one matmul per sample set, sliced_wasserstein_projected), without its Python."""
        rows = ops.random_directions(seed, a.shape[-1], 1).mT
        return ops.sliced_wasserstein_projected((rows @ a.mT).unsqueeze(0), (rows @ b.mT).unsqueeze(0), 2.0)[0][0]

    cases = {
        "reparameterize": {
            "fastvae": lambda: fastvae.reparameterize(mu, lv),
            "op": lambda: ops.reparameterize(mu, lv, seed, None),
            "eager": lambda: eager_z(mu, lv)},
        "reparameterize_kl": {
            "fastvae": lambda: fastvae.reparameterize_kl(mu, lv),
            "op": lambda: ops.reparameterize_kl(mu, lv, seed),
            "eager": lambda: (eager_z(mu, lv), eager_kl(mu, lv))},
        "reparameterize_tril": {
            "fastvae": lambda: fastvae.reparameterize_tril(mu, L),
            "op": op_of("reparameterize_tril", lambda: fastvae.reparameterize_tril(mu, L)),
            "eager": lambda: reference.reparameterize_tril(mu, L)},
        "gaussian_nll": {
            "fastvae": lambda: fastvae.gaussian_nll(x, mu, lv),
            "op": lambda: ops.gaussian_nll(x, mu, lv, 2),
            "eager": lambda: (0.5 * ((x - mu) ** 2 * torch.exp(-lv) + lv + LOG_2PI)).sum(1).mean(),
            "torch": lambda: F.gaussian_nll_loss(mu, x, lv.exp(), full=True)},
        "bernoulli_nll": {
            "fastvae": lambda: fastvae.bernoulli_nll(x, mu),
            "op": lambda: ops.bernoulli_nll(mu, x, 2, True),
            "eager": lambda: (F.softplus(mu) - x * mu).sum(1).mean(),
            "torch": lambda: F.binary_cross_entropy_with_logits(mu, x)},
        "kl_normal": {
            "fastvae": lambda: fastvae.kl_normal(mu, lv),
            "op": lambda: ops.kl_normal(mu, lv, None, None, 2),
            "eager": lambda: eager_kl(mu, lv).mean()},
        "discretized_logistic_nll": {  # (mean "mean" = 2; x checked on the grid, validate_x)
            "fastvae": lambda: fastvae.discretized_logistic_nll(xb, mu, lv),
            "op": lambda: ops.discretized_logistic_nll(xb, None, mu, lv, 8, 2, True),
            "eager": lambda: reference.discretized_logistic_nll(xb, mu, lv)},
        "discretized_logistic_mixture_nll": {
            "fastvae": lambda: fastvae.discretized_logistic_mixture_nll(xb, lg_logits, lg_means, lg_scales),
            "op": lambda: ops.discretized_logistic_nll(xb, lg_logits, lg_means, lg_scales, 8, 2, True),
            "eager": lambda: reference.discretized_logistic_mixture_nll(xb, lg_logits, lg_means, lg_scales)},
        "mmd": {
            "fastvae": lambda: fastvae.mmd(xs, ys),
            "op": op_of("mmd", lambda: fastvae.mmd(xs, ys)),
            "eager": lambda: reference.mmd(xs, ys)},
        "energy_distance": {
            "fastvae": lambda: fastvae.energy_distance(xs, ys),
            "op": op_of("mmd", lambda: fastvae.energy_distance(xs, ys)),
            "eager": lambda: reference.energy_distance(xs, ys)},
        "sliced_wasserstein": {  # a composite: op = the registered ops it calls, in turn (below)
            "fastvae": lambda: fastvae.sliced_wasserstein(xs, ys, n_projections=1),
            "op": lambda: sw_ops(xs, ys),
            "projected op": op_of("sliced_wasserstein_projected",
                                  lambda: fastvae.sliced_wasserstein(xs, ys, n_projections=1)),
            "eager": lambda: reference.sliced_wasserstein(xs, ys, n_projections=1)},
    }
    return cases


def _grad_outputs(out):
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor) and o.requires_grad]
    return outs, [torch.ones_like(o) for o in outs]


def _rep(call, mode, inner):
    """The time of `inner` calls, after one untimed call (as the full mode's first call, which makes the gradients):
    the first call after another provider's rep can cost far more than the rest (~470 us for a fused mmd right after
    eager energy distances on the 2-CPU machine), which would otherwise fall on whichever provider comes next."""
    if mode == "no_grad":
        with torch.no_grad():
            call()
            t0 = time.perf_counter()
            for _ in range(inner):
                call()
            return time.perf_counter() - t0
    if mode == "forward":
        call()
        t0 = time.perf_counter()
        for _ in range(inner):
            call()
        return time.perf_counter() - t0
    outs, grads = _grad_outputs(call())
    t0 = time.perf_counter()
    for _ in range(inner):
        torch.autograd.backward(_grad_outputs(call())[0], grads)
    return time.perf_counter() - t0


def overhead_rows(device, dtype=torch.float32, *, quick=False, names=None, log=print):
    """Rows in the suite's long format (op "call_overhead", shape = the public op, p20/p50/p80 in ms per call),
    every provider of an op measured in interleaved rounds."""
    rounds, inner = (7, 20) if quick else (25, 100)
    rows = []
    for mode in MODES:
        cases = _cases(device, dtype, grad=mode != "no_grad")
        for name, providers in cases.items():
            if names and name not in names:
                continue
            times = {p: [] for p in providers}
            try:
                for call in providers.values():  # warm-up
                    _rep(call, mode, 3)
                for _ in range(rounds):
                    for p, call in providers.items():
                        times[p].append(_rep(call, mode, inner) / inner * 1e3)
            except Exception as e:  # an op that fails here is reported, not dropped
                log(f"  call_overhead {name} {mode}: failed ({type(e).__name__}: {e})")
                rows += [dict(_base(name, p, mode, dtype, device), status=f"failed: {type(e).__name__}")
                         for p in providers]
                continue
            for p, v in times.items():
                rows.append(dict(_base(name, p, mode, dtype, device), status="ok", reps=len(v),
                                 p20_ms=percentile(v, 20), p50_ms=percentile(v, 50), p80_ms=percentile(v, 80)))
            log(f"  call_overhead {name} {mode}: " +
                ", ".join(f"{p} {percentile(v, 50) * 1e3:.1f} us" for p, v in times.items()))
    return rows


def _base(name, provider, mode, dtype, device):
    return dict(op="call_overhead", provider=provider, mode=mode, dtype=str(dtype).replace("torch.", ""), size=1,
                shape=name, device=device)


def overhead_table(rows):
    """The markdown summary: per op and mode, us per call of each provider and public / op against the target."""
    by = {}
    for r in rows:
        if r.get("op") == "call_overhead" and r.get("p50_ms") is not None:
            by[(r["shape"], r["mode"], r["dtype"])] = {**by.get((r["shape"], r["mode"], r["dtype"]), {}),
                                                       r["provider"]: r["p50_ms"] * 1e3}
    if not by:
        return "### Per-call overhead: not run (group overhead)"
    lines = ["### Per-call overhead (1x1 inputs; us per call, p50 of interleaved rounds)", "",
             f"public = the fastvae function, op = torch.ops.fastvae.* as the function calls it; target: public / op "
             f"<= {TARGET} in every mode. eager = the same loss in torch ops, torch = torch's own fused op.", "",
             "| op | mode | dtype | public | op | public / op | eager | torch |", "|---|---|---|---|---|---|---|---|"]
    for (name, mode, dt), v in by.items():
        pub, op = v.get("fastvae"), v.get("op")
        ratio = f"{pub / op:.2f} ({'met' if pub / op <= TARGET else 'missed'})" if pub and op else ""
        cells = [name, mode, dt] + [f"{v[p]:.1f}" if p in v else "" for p in ("fastvae", "op")] + [ratio] + \
                [f"{v[p]:.1f}" if p in v else "" for p in ("eager", "torch")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the small-batch workloads: the VAE head + likelihood, and the training step at batch 64 --------------------

HEAD_LATENT, HEAD_D = 32, 784


def _make_small_head(n, dtype, device, gen):
    from .ops.common import _randn
    return (_randn((n, HEAD_LATENT), dtype, device, gen, grad=True),
            _randn((n, HEAD_LATENT), dtype, device, gen, grad=True, scale=0.5, shift=-1.0),
            _randn((n, HEAD_D), dtype, device, gen, grad=True),
            torch.rand((n, HEAD_D), generator=gen).to(device=device, dtype=dtype))


def _small_head(ns):
    def head(mu, logvar, mean, x):
        z, kl = ns.reparameterize_kl(mu, logvar)
        return (ns.gaussian_nll(x, mean, reduction="none") + kl).mean() + z.mean()
    return head


def small_head_op():
    from .ops.common import Op, _compile
    return Op(
        "vae_head_small", "elementwise", [64, 128, 256], [64], _make_small_head,
        {"fastvae": lambda: _small_head(fastvae), "eager": lambda: _small_head(reference),
         "compile": lambda: _compile(_small_head(reference))},
        lambda n: f"{n}x{HEAD_LATENT} head, {n}x{HEAD_D} data",
        budget_scale=4.0,
        doc=f"a VAE step's loss at the batch sizes VAEs train at: z, kl = reparameterize_kl(mu, logvar) on "
            f"(B, {HEAD_LATENT}); loss = (gaussian_nll(x, mean) + kl).mean() + z.mean() with x, mean (B, {HEAD_D}) "
            f"(z joins the loss so that its backward runs); the fixed cost of the calls decides here")


def small_batch_targets(rows):
    """Issue 25's targets: vae_head_small at B 64 forward + backward >= 2x eager; the training step at batch 64
    faster than eager (and not slower than pythae's) in float32 and under bf16 autocast; the steps at batch 128
    and 256 beside them (measured, no target)."""
    from .targets import _ratio, _row, _t
    lines = ["### Target: small batches (float32 data; forward + backward)", "",
             "vae_head_small at batch 64 >= 2x eager; vae_train_step and vae_train_amp (float32 and bf16 autocast) at "
             "batch 64 faster than eager and not slower than pythae; batch 128 and 256 beside them (no target).", "",
             "| workload | batch | fastvae | eager | vs eager | pythae | vs pythae |", "|---|---|---|---|---|---|---|"]
    any_row = False
    for op, suffix, goal in (("vae_head_small", "", 2.0), ("vae_train_step", "", 1.0), ("vae_train_amp", "", 1.0),
                             ("vae_train_amp", "-bf16", 1.0)):
        for batch in (64, 128, 256):
            f, e, p = (_row(rows, op, prov + suffix, batch) for prov in ("fastvae", "eager", "pythae"))
            if f is None and e is None:
                continue
            any_row = True

            def verdict(base, g, f=f, batch=batch):
                x = _ratio(base, f)
                if x is None:
                    return "n/a"
                if batch != 64:
                    return f"{x:.2f}x"
                met = x >= g if g > 1 else x > g  # ">= 2x", or "faster"
                return f"{x:.2f}x ({'meets' if met else 'misses'})"
            lines.append(f"| {op}{suffix or ''} | {batch} | {_t(f)} | {_t(e)} | {verdict(e, goal)} | "
                         f"{_t(p) if p else 'n/a'} | {verdict(p, 1.0) if p and p.get('p50_ms') else 'n/a'} |")
    if not any_row:
        return "### Target: small batches: not run (vae_head_small, vae_train_step, vae_train_amp at 64)"
    return "\n".join(lines)
