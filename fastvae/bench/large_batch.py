"""Peak memory of a whole training step at a large batch (issue 23's "large-batch VAEs" claim made a number): a
Bernoulli VAE on 784 pixels (MLP 784-512-256-16, SiLU, the decoder mirrored), one step = forward, loss, backward,
Adam step, each provider in a fresh process, peak RSS above the process after setup (model, optimizer, data and one
warm-up step at a small batch, so that one-time allocations do not count) on CPU; max_memory_allocated above the
start on CUDA.

Providers: "eager" (the loss as a user writes it: torch.distributions' Normal rsample and KL, F.linear then
F.binary_cross_entropy_with_logits); "fastvae" (the same model: fastvae.reparameterize_kl and the decoder's last
layer fused with its loss, fastvae.linear_bce_with_logits: the (B, 784) logits and their gradient never exist
whole); "compile" (the eager step's loss under torch.compile)."""
import textwrap

from . import measure

SETUP = textwrap.dedent("""
    import torch, torch.nn as nn, torch.nn.functional as F
    import fastvae
    torch.manual_seed(0)
    B, D, H1, H2, Z = {batch}, 784, 512, 256, 16
    dev = {device!r}
    enc = nn.Sequential(nn.Linear(D, H1), nn.SiLU(), nn.Linear(H1, H2), nn.SiLU(), nn.Linear(H2, 2 * Z)).to(dev)
    dec = nn.Sequential(nn.Linear(Z, H2), nn.SiLU(), nn.Linear(H2, H1), nn.SiLU()).to(dev)
    out = nn.Linear(H1, D).to(dev)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *out.parameters()], lr=1e-3)
    td = torch.distributions

    def loss_eager(x):
        mu, logvar = enc(x).chunk(2, -1)
        q = td.Normal(mu, torch.exp(0.5 * logvar))
        z = q.rsample()
        kl = td.kl_divergence(q, td.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        rec = F.binary_cross_entropy_with_logits(out(dec(z)), x, reduction="none").sum(-1)
        return (rec + kl).mean()

    def loss_fastvae(x):
        mu, logvar = enc(x).chunk(2, -1)
        z, kl = fastvae.reparameterize_kl(mu, logvar)
        rec = fastvae.linear_bce_with_logits(dec(z), out.weight, x, out.bias, reduction="sum") / x.shape[0]
        return rec + kl.mean()

    loss = {{"eager": loss_eager, "fastvae": loss_fastvae,
            "compile": torch.compile(loss_eager, dynamic=False)}}[{provider!r}]

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()

    x = torch.bernoulli(torch.rand(B, D, generator=torch.Generator().manual_seed(1))).to(dev)
    step(x[:256])  # warm-up: kernels loaded, compiled, the optimizer's state allocated
    if dev == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
""")

BODY_CPU = "step(x)\n"
BODY_CUDA = "step(x); torch.cuda.synchronize(); print('CUDA', torch.cuda.max_memory_allocated() - base)\n"

PROVIDERS = ("eager", "fastvae", "compile")
TARGET = 0.6  # fastvae's peak at most 0.6x eager's


def step_peaks(batch=65536, device="cpu", providers=PROVIDERS, log=print):
    """{provider: peak bytes above setup (or the error string)} of one training step at `batch`."""
    out = {}
    for p in providers:
        setup = SETUP.format(batch=batch, device=device, provider=p)
        try:
            if device == "cuda":
                out[p] = _cuda_peak(setup)
            else:
                out[p] = measure.rss_peak_above(setup, BODY_CPU)
        except Exception as e:  # reported, not dropped
            out[p] = f"failed: {str(e)[:160]}"
        log(f"  large-batch step {p}: " + (f"{out[p] / 2**20:.0f} MiB" if isinstance(out[p], int) else out[p]))
    return out


def _cuda_peak(setup):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", setup + BODY_CUDA], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("CUDA "):
            return int(line.split()[1])
    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1])


def table(peaks, batch=65536, device="cpu"):
    e = peaks.get("eager")
    lines = [f"### Target: peak memory of a training step at batch {batch} (Bernoulli VAE, MLP 784-512-256-16)", "",
             "Each provider in a fresh process; " + ("peak RSS above the set-up process" if device == "cpu" else
                                                    "max_memory_allocated above the start") + "; "
             f"target: fastvae at most {TARGET}x eager.", "", "| provider | peak MiB | / eager |", "|---|---|---|"]
    for p, v in peaks.items():
        if not isinstance(v, int):
            lines.append(f"| {p} | {v} | |")
            continue
        ratio = v / e if isinstance(e, int) and e else None
        verdict = "" if ratio is None else f"{ratio:.2f}x" + (
            f" ({'meets' if ratio <= TARGET else 'misses'} <= {TARGET}x)" if p == "fastvae" else "")
        lines.append(f"| {p} | {v / 2**20:.0f} | {verdict} |")
    return "\n".join(lines)
