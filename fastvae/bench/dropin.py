"""The drop-in cases of `fastvae bench` (group "dropin"): code written with torch.distributions and
torch.nn.functional, run as torch runs it ("eager") and through fastvae ("fastvae": the same code under
fastvae.patch(); "fastvae.distributions": the import swapped).

- td_vae_loss: an unmodified torch.distributions VAE loss at batch B (the size), D = 1024 pixels, d = 64 latents:
  q = Normal(mu, exp(logvar / 2)); z = q.rsample(); -Independent(Bernoulli(logits), 1).log_prob(x) +
  kl_divergence(Independent(q, 1), Independent(Normal(0, 1), 1)), the batch mean; the decoder's logits are an input
  (a decoder would take z: here z joins the loss through its mean, so its backward runs).
- gaussian_nll_loss, bce_with_logits: torch.nn.functional's losses at (B, 1024), reduction "mean"; gaussian_nll_loss
  with a per-element variance (a decoder variance network)."""
import torch

import fastvae

from .ops.common import LATENT, Op, _bytes, _compile, _elems, _randn
from .targets import _ratio as ratio, _row as find, _t as t, _verdict as verdict

VAE_D, VAE_LATENT = 1024, 64


def _make_vae(n, dtype, device, gen):
    mu = _randn((n, VAE_LATENT), dtype, device, gen, grad=True)
    logvar = _randn((n, VAE_LATENT), dtype, device, gen, grad=True, scale=0.5, shift=-1.0)
    logits = _randn((n, VAE_D), dtype, device, gen, grad=True, scale=2.0)
    x = (torch.rand((n, VAE_D), generator=gen) < 0.3).to(device=device, dtype=dtype)
    return mu, logvar, logits, x


def td_vae_loss(D):
    """The loss as a user writes it with the distributions module D (torch.distributions or fastvae's)."""
    def loss(mu, logvar, logits, x):
        q = D.Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
        z = q.rsample()
        prior = D.Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
        rec = D.Independent(D.Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)
        kl = torch.distributions.kl_divergence(D.Independent(q, 1), D.Independent(prior, 1))
        return (kl - rec).mean() + z.mean()
    return loss


def _patched(fn):
    def call(*args):
        with fastvae.patch():
            return fn(*args)
    return call


def _make_gnll(n, dtype, device, gen):
    return (_randn((n, LATENT), dtype, device, gen, grad=True), _randn((n, LATENT), dtype, device, gen),
            (torch.rand((n, LATENT), generator=gen) + 0.1).to(device=device, dtype=dtype).requires_grad_())


def _make_bce(n, dtype, device, gen):
    return (_randn((n, LATENT), dtype, device, gen, grad=True, scale=2.0),
            torch.rand((n, LATENT), generator=gen).to(device=device, dtype=dtype))


def dropin_ops():
    import fastvae.distributions as fvd
    import fastvae.nn.functional as fvf
    td = torch.distributions
    gnll = fvf.TORCH["gaussian_nll_loss"]
    bce = fvf.TORCH["binary_cross_entropy_with_logits"]
    return [
        Op("td_vae_loss", "elementwise", [256, 2048], [128], _make_vae,
           {"fastvae": lambda: _patched(td_vae_loss(td)),
            "fastvae.distributions": lambda: td_vae_loss(fvd),
            "eager": lambda: td_vae_loss(td)},
           lambda n: f"{n}x{VAE_D} (d {VAE_LATENT})",
           doc="unmodified torch.distributions VAE loss (Normal posterior, Bernoulli likelihood, KL to N(0, I)); "
               "fastvae = the same code under fastvae.patch()"),
        Op("gaussian_nll_loss", "elementwise", [256, 2048], [128], _make_gnll,
           {"fastvae": lambda: (lambda a, b, v: fvf.gaussian_nll_loss(a, b, v)),
            "eager": lambda: (lambda a, b, v: gnll(a, b, v)),
            "compile": lambda: _compile(lambda a, b, v: gnll(a, b, v))},
           lambda n: f"{n}x{LATENT}", _bytes(_elems(3), _elems(5)),
           doc="F.gaussian_nll_loss(input, target, var), per-element var, reduction mean; fwd reads 3 tensors, "
               "bwd reads them and writes grad_input, grad_var"),
        Op("bce_with_logits", "elementwise", [256, 2048], [128], _make_bce,
           {"fastvae": lambda: (lambda l, y: fvf.binary_cross_entropy_with_logits(l, y)),
            "eager": lambda: (lambda l, y: bce(l, y)),
            "compile": lambda: _compile(lambda l, y: bce(l, y))},
           lambda n: f"{n}x{LATENT}", _bytes(_elems(2), _elems(3)),
           doc="F.binary_cross_entropy_with_logits(input, target), reduction mean; fwd reads 2 tensors, bwd reads "
               "them and writes grad_input"),
    ]


TARGETS = {"td_vae_loss": 3.0, "gaussian_nll_loss": 2.0, "bce_with_logits": 2.0}
TARGET_SIZE = 2048


def speedup_targets(rows):
    """The drop-in targets at B = 2048, float32, forward + backward: >= 3x for the torch.distributions loss under
    patch(), >= 2x for the two torch.nn.functional losses, with the saved-for-backward memory beside each."""
    lines = [f"### Target: drop-ins, float32, B = {TARGET_SIZE}, forward + backward", "",
             "fastvae (patch() or fastvae.nn.functional) against the same code on torch; targets: td_vae_loss >= 3x, "
             "gaussian_nll_loss and bce_with_logits >= 2x.", "",
             "| op | fastvae | eager | speed-up | fastvae.distributions (import swap) | saved MiB fastvae / eager |",
             "|---|---|---|---|---|---|"]
    any_row = False
    for op, goal in TARGETS.items():
        f, e, s = (find(rows, op, p, TARGET_SIZE) for p in ("fastvae", "eager", "fastvae.distributions"))
        if f is None and e is None:
            continue
        any_row = True
        saved = "n/a"
        if f is not None and e is not None and f.get("saved_mib") is not None and e.get("saved_mib") is not None:
            saved = f"{f['saved_mib']:.1f} / {e['saved_mib']:.1f}"
        swap = "" if s is None else f"{t(s)} ({verdict(ratio(e, s), goal, e, s)})"
        lines.append(f"| {op} | {t(f)} | {t(e)} | {verdict(ratio(e, f), goal, e, f)} | {swap} | {saved} |")
    if not any_row:
        return f"### Target: drop-ins: not run (size {TARGET_SIZE} not selected)"
    return "\n".join(lines)
