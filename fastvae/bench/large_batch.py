"""Peak memory of a whole training step at a large batch (issue 23's "large-batch VAEs" claim made a number): one
step = forward, loss, backward, Adam step, each provider in a fresh process, peak RSS above the process after setup
(model, optimizer, data and one warm-up step at a small batch, so that one-time allocations do not count) on CPU;
max_memory_allocated above the start on CUDA. Two workloads (WORKLOADS), each an op of the `memory` group:

large_batch_memory: a Bernoulli VAE on 784 pixels (MLP 784-512-256-16, SiLU, the decoder mirrored). Providers:
"eager" (the loss as a user writes it: torch.distributions' Normal rsample and KL, F.linear then
F.binary_cross_entropy_with_logits); "fastvae" (the same model: fastvae.reparameterize_kl, each hidden SiLU and the
linear layer after it as fastvae.silu_linear (the activation recomputed in the backward, not kept), and the decoder's
last layer fused with its loss, fastvae.linear_bce_with_logits: the (B, 784) logits and their gradient never exist
whole); "compile" (the eager step's loss under torch.compile).

large_batch_memory_logistic: a VAE on 8-bit 3 x 32 x 32 images with the discretized logistic mixture likelihood
(K = 10): a conv encoder (3-32-64 channels, stride 2, then a linear layer to a 16-dim latent) and a conv decoder
(linear to 64 x 8 x 8, nearest upsampling and 3 x 3 convs to 32 x 32 x 32, SiLU; channels-last) whose three
per-pixel linear heads give logit_probs, means and log_scales of shape (B, 32, 32, 3, K), the image stored
channel-last as they are. Providers: "eager" (torch.distributions' KL and fastvae.reference's mixture NLL, the
PixelCNN++-style form with every (..., K) intermediate materialised, the suite's eager logistic baseline);
"fastvae" (fastvae.reparameterize_kl and fastvae.discretized_logistic_mixture_nll, validate_args=False as in the
suite's logistic rows); "compile" (the eager loss under torch.compile). Its (B, 3072, K) parameters alone take
360 KiB per image, so batch 65536 does not fit a small machine: without --sizes the batch is the largest power of
two up to 65536 whose eager step, extrapolated linearly from its peak at batch 256, fits the memory the suite allows
itself (40% of MemAvailable on CPU, 80% of the free GPU memory), and the table says so."""
import math
import textwrap

from . import measure

PRELUDE = textwrap.dedent("""
    import torch, torch.nn as nn, torch.nn.functional as F
    import fastvae
    from fastvae import reference
    torch.manual_seed(0)
    td = torch.distributions

    def sample_eager(h):
        mu, logvar = h.chunk(2, -1)
        q = td.Normal(mu, torch.exp(0.5 * logvar))
        kl = td.kl_divergence(q, td.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        return q.rsample(), kl

    def sample_fastvae(h):
        return fastvae.reparameterize_kl(*h.chunk(2, -1))
""")

BERNOULLI = textwrap.dedent("""
    D, H1, H2, Z = 784, 512, 256, 16
    enc = nn.Sequential(nn.Linear(D, H1), nn.SiLU(), nn.Linear(H1, H2), nn.SiLU(), nn.Linear(H2, 2 * Z)).to(dev)
    dec = nn.Sequential(nn.Linear(Z, H2), nn.SiLU(), nn.Linear(H2, H1), nn.SiLU()).to(dev)
    out = nn.Linear(H1, D).to(dev)
    params = [*enc.parameters(), *dec.parameters(), *out.parameters()]

    def loss_eager(x):
        z, kl = sample_eager(enc(x))
        rec = F.binary_cross_entropy_with_logits(out(dec(z)), x, reduction="none").sum(-1)
        return (rec + kl).mean()

    def mlp_fastvae(h, seq):  # the same layers, each SiLU + Linear as fastvae.silu_linear (SiLU recomputed)
        lin = [m for m in seq if isinstance(m, nn.Linear)]
        h = F.linear(h, lin[0].weight, lin[0].bias)
        for m in lin[1:]:
            h = fastvae.silu_linear(h, m.weight, m.bias)
        return h if isinstance(seq[-1], nn.Linear) else F.silu(h)

    def loss_fastvae(x):
        z, kl = sample_fastvae(mlp_fastvae(x, enc))
        rec = fastvae.linear_bce_with_logits(mlp_fastvae(z, dec), out.weight, x, out.bias, reduction="sum") / x.shape[0]
        return rec + kl.mean()

    x = torch.bernoulli(torch.rand(B, D, generator=torch.Generator().manual_seed(1))).to(dev)
""")

LOGISTIC = textwrap.dedent("""
    K, Z, cl = 10, 16, torch.channels_last
    enc = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.SiLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.SiLU(), nn.Flatten(),
                        nn.Linear(64 * 8 * 8, 2 * Z)).to(dev, memory_format=cl)
    dec = nn.Sequential(nn.Linear(Z, 64 * 8 * 8), nn.SiLU(), nn.Unflatten(1, (64, 8, 8)), nn.Upsample(scale_factor=2),
                        nn.Conv2d(64, 32, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.SiLU()).to(dev, memory_format=cl)
    heads = nn.ModuleList(nn.Linear(32, 3 * K) for _ in range(3)).to(dev)
    params = [*enc.parameters(), *dec.parameters(), *heads.parameters()]

    def mixture(z):
        h = dec(z).permute(0, 2, 3, 1)  # channels-last: a contiguous (B, 32, 32, 32)
        return [head(h).unflatten(-1, (3, K)) for head in heads]  # (B, 32, 32, 3, K) each, contiguous

    def loss_eager(x):
        z, kl = sample_eager(enc(x.permute(0, 3, 1, 2)))
        rec = reference.discretized_logistic_mixture_nll(x, *mixture(z), reduction="none")
        return (rec + kl).mean()

    def loss_fastvae(x):
        z, kl = sample_fastvae(enc(x.permute(0, 3, 1, 2)))
        rec = fastvae.discretized_logistic_mixture_nll(x, *mixture(z), reduction="none", validate_args=False)
        return (rec + kl).mean()

    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 256, (B, 32, 32, 3), generator=g).float() * (2 / 255) - 1).to(dev)
""")

STEP = textwrap.dedent("""
    # (torch.compile built only when asked for: merely building it imports the compiler, seconds of CPU)
    loss = torch.compile(loss_eager, dynamic=False) if provider == "compile" else {
        "eager": loss_eager, "fastvae": loss_fastvae}[provider]
    opt = torch.optim.Adam(params, lr=1e-3)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()

    step(x[:WARM])  # warm-up: kernels loaded, compiled, the optimizer's state allocated
    if dev == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
""")

BODY_CPU = "step(x)\n"
BODY_CUDA = "step(x); torch.cuda.synchronize(); print('CUDA', torch.cuda.max_memory_allocated() - base)\n"

PROVIDERS = ("eager", "fastvae", "compile")
TARGET = 0.6  # fastvae's peak at most 0.6x eager's
MAX_BATCH = 65536
PROBE_BATCH = 256  # the eager step measured here to size the logistic workload's batch


class Workload:
    def __init__(self, name, title, model, warm, quick_batch, sized):
        self.name, self.title, self.model, self.warm = name, title, model, warm
        self.quick_batch = quick_batch
        self.sized = sized  # the batch is chosen to fit the machine (pick_batch), not fixed at MAX_BATCH

    def setup(self, batch, device, provider):
        head = f"B, dev, provider, WARM = {batch}, {device!r}, {provider!r}, {min(self.warm, batch)}\n"
        return head + PRELUDE + self.model + STEP


WORKLOADS = {w.name: w for w in (
    Workload("large_batch_memory", "Bernoulli VAE, MLP 784-512-256-16", BERNOULLI, 256, 4096, sized=False),
    Workload("large_batch_memory_logistic", "discretized logistic mixture VAE, 3 x 32 x 32, K = 10, conv "
             "3-32-64 / 64-32-32", LOGISTIC, 16, 32, sized=True),
)}


def step_peaks(batch=MAX_BATCH, device="cpu", providers=PROVIDERS, log=print, workload="large_batch_memory"):
    """{provider: peak bytes above setup (or the error string)} of one training step at `batch`."""
    w = WORKLOADS[workload]
    out = {}
    for p in providers:
        out[p] = _peak(w, batch, device, p)
        log(f"  {w.name} batch {batch} {p}: " + (f"{out[p] / 2**20:.0f} MiB" if isinstance(out[p], int) else out[p]))
    return out


def _peak(w, batch, device, provider):
    setup = w.setup(batch, device, provider)
    try:
        return _cuda_peak(setup) if device == "cuda" else measure.rss_peak_above(setup, BODY_CPU)
    except Exception as e:  # reported, not dropped
        return f"failed: {str(e)[:160]}"


def pick_batch(device="cpu", log=print, workload="large_batch_memory_logistic"):
    """(batch, note): the largest power of two <= MAX_BATCH whose eager step fits the memory the suite allows,
    by linear extrapolation of the eager step's peak at PROBE_BATCH; the note says how it was chosen."""
    from .run import _free_memory_bytes
    w = WORKLOADS[workload]
    probe = _peak(w, PROBE_BATCH, device, "eager")
    if not isinstance(probe, int) or probe <= 0:
        return PROBE_BATCH, f"the eager step's peak at batch {PROBE_BATCH} could not be measured ({probe})"
    allowed = _free_memory_bytes(device)
    per_image = probe / PROBE_BATCH
    need = per_image * MAX_BATCH
    if need <= allowed:
        return MAX_BATCH, ""
    batch = max(1, min(MAX_BATCH, 2 ** int(math.floor(math.log2(allowed / per_image)))))
    note = (f"batch {MAX_BATCH} would need ~{need / 2**30:.0f} GiB for eager (its peak at batch {PROBE_BATCH}, "
            f"{probe / 2**20:.0f} MiB, extrapolated linearly), more than the {allowed / 2**30:.1f} GiB this run allows "
            f"itself ({'40% of MemAvailable' if device == 'cpu' else '80% of the free GPU memory'}): measured at "
            f"batch {batch}, the largest power of two within it")
    log(f"  {w.name}: {note}")
    return batch, note


def _cuda_peak(setup):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", setup + BODY_CUDA], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("CUDA "):
            return int(line.split()[1])
    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1])


def table(peaks, batch=MAX_BATCH, device="cpu", workload="large_batch_memory", note=""):
    e = peaks.get("eager")
    lines = [f"### Target: peak memory of a training step at batch {batch} ({WORKLOADS[workload].title})", "",
             "Each provider in a fresh process; " + ("peak RSS above the set-up process" if device == "cpu" else
                                                    "max_memory_allocated above the start") + "; "
             f"target: fastvae at most {TARGET}x eager." + (f" Batch: {note}." if note else ""), "",
             "| provider | peak MiB | / eager |", "|---|---|---|"]
    for p, v in peaks.items():
        if not isinstance(v, int):
            lines.append(f"| {p} | {v} | |")
            continue
        ratio = v / e if isinstance(e, int) and e else None
        verdict = "" if ratio is None else f"{ratio:.2f}x" + (
            f" ({'meets' if ratio <= TARGET else 'misses'} <= {TARGET}x)" if p == "fastvae" else "")
        lines.append(f"| {p} | {v / 2**20:.0f} | {verdict} |")
    return "\n".join(lines)
