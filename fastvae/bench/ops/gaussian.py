"""The Gaussian family's benchmarked ops (reparameterize, reparameterize_kl, reparameterize_tril, gaussian_nll,
bernoulli_nll, kl_normal) and the fused VAE head of the vae_head_speedup target."""
import math

import torch

import fastvae
from fastvae import reference

from .common import LATENT, Op, TRIL_D, Unavailable, _bytes, _compile, _dist, _elems, _need_fastvae, _randn


# ---- Gaussian (elementwise) ops --------------------------------------------------------------------------------
# Bytes models: each input read once, each output written once, per the fused kernels' design (eps regenerated
# from the seed, never read or written; grad_mu of reparameterize is grad_z itself). Per-sample (B,) vectors are
# negligible and not counted.

def _make_mu_logvar(n, dtype, device, gen):
    return (_randn((n, LATENT), dtype, device, gen, grad=True),
            _randn((n, LATENT), dtype, device, gen, grad=True, scale=0.5, shift=-1.0))


def _td_normal(mu, logvar):
    return _dist().Normal(mu, torch.exp(0.5 * logvar), validate_args=False)


def _td_std_normal(like):
    D = _dist()
    return D.Normal(torch.zeros((), dtype=like.dtype, device=like.device),
                    torch.ones((), dtype=like.dtype, device=like.device), validate_args=False)


def _td_kl(mu, logvar):
    D = _dist()
    return D.kl_divergence(_td_normal(mu, logvar), _td_std_normal(mu)).sum(-1)


def _reparameterize_ops():
    ops = []

    ops.append(Op(
        "reparameterize", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: _need_fastvae("reparameterize"),
            "eager": lambda: reference.reparameterize,
            "compile": lambda: _compile(reference.reparameterize),
            "torch.distributions": lambda: (_dist(), lambda mu, lv: _td_normal(mu, lv).rsample())[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(3)),
        doc="z = mu + exp(logvar/2) eps; fwd reads mu, logvar, writes z; bwd reads grad_z, logvar, writes "
            "grad_logvar (grad_mu is grad_z)"))

    def rkl_dist(mu, lv):
        return _td_normal(mu, lv).rsample(), _td_kl(mu, lv)

    ops.append(Op(
        "reparameterize_kl", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: _need_fastvae("reparameterize_kl"),
            "eager": lambda: reference.reparameterize_kl,
            "compile": lambda: _compile(reference.reparameterize_kl),
            "torch.distributions": lambda: (_dist(), rkl_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(5)),
        doc="(z, kl); fwd reads mu, logvar, writes z; bwd reads grad_z, mu, logvar, writes grad_mu, grad_logvar"))

    def make_tril(n, dtype, device, gen):
        mu = _randn((n, TRIL_D), dtype, device, gen, grad=True)
        a = torch.randn((n, TRIL_D, TRIL_D), generator=gen) * (0.3 / math.sqrt(TRIL_D))
        L = torch.tril(a, -1) + torch.diag_embed(torch.rand((n, TRIL_D), generator=gen) + 0.5)
        return mu, L.to(device=device, dtype=dtype).requires_grad_(True)

    def tril_fastvae():
        f = _need_fastvae("reparameterize_tril")
        return lambda mu, L: f(mu, L, validate_args=False)

    def tril_eager(mu, L):
        return reference.reparameterize_tril(mu, L, validate_args=False)

    def tril_dist(mu, L):
        d = _dist().MultivariateNormal(mu, scale_tril=L, validate_args=False)
        z = d.rsample()
        return z, d.log_prob(z)

    d = TRIL_D
    ops.append(Op(
        "reparameterize_tril", "elementwise", [256, 1024, 4096], [128], make_tril,
        {
            "fastvae": tril_fastvae,
            "eager": lambda: tril_eager,
            "compile": lambda: _compile(tril_eager),
            "torch.distributions": lambda: (_dist(), tril_dist)[1],
        },
        lambda n: f"{n}x{d}x{d}",
        lambda n, s, mode: {"forward": n * (d * d + 2 * d) * s, "backward": n * (2 * d * d + 2 * d) * s,
                            "full": n * (3 * d * d + 4 * d) * s}[mode],
        doc="(z, log_q) from the Cholesky factor; fwd reads mu, L, writes z; bwd reads grad_z, L, writes "
            "grad_mu, grad_L"))
    return ops


def _likelihood_ops():
    ops = []

    def make_nll(n, dtype, device, gen):
        x = _randn((n, LATENT), dtype, device, gen)
        mean = _randn((n, LATENT), dtype, device, gen, grad=True)
        logvar = _randn((n, LATENT), dtype, device, gen, grad=True, scale=0.5)
        return x, mean, logvar

    def nll(ns):
        f = _need_fastvae("gaussian_nll", ns) if ns is fastvae else ns.gaussian_nll
        return lambda x, mean, lv: f(x, mean, lv, reduction="none")

    def nll_dist(x, mean, lv):
        return -_td_normal(mean, lv).log_prob(x).sum(-1)

    ops.append(Op(
        "gaussian_nll", "elementwise", [256, 1024, 4096], [128], make_nll,
        {
            "fastvae": lambda: nll(fastvae),
            "eager": lambda: nll(reference),
            "compile": lambda: _compile(nll(reference)),
            "torch.distributions": lambda: (_dist(), nll_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(3), _elems(5)),
        doc="per-element logvar, reduction='none'; fwd reads x, mean, logvar; bwd reads them and writes "
            "grad_mean, grad_logvar"))

    def make_bern(n, dtype, device, gen):
        logits = _randn((n, LATENT), dtype, device, gen, grad=True, scale=2.0)
        x = (torch.rand((n, LATENT), generator=gen) < 0.3).to(device=device, dtype=dtype)
        return logits, x

    def bern(ns):
        f = _need_fastvae("bernoulli_nll", ns) if ns is fastvae else ns.bernoulli_nll
        return lambda logits, x: f(x, logits, reduction="none")

    def bern_dist(logits, x):
        return -_dist().Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)

    ops.append(Op(
        "bernoulli_nll", "elementwise", [256, 1024, 4096], [128], make_bern,
        {
            "fastvae": lambda: bern(fastvae),
            "eager": lambda: bern(reference),
            "compile": lambda: _compile(bern(reference)),
            "torch.distributions": lambda: (_dist(), bern_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(2), _elems(3)),
        doc="reduction='none'; fwd reads logits, x; bwd reads them and writes grad_logits"))

    def kl(ns):
        f = _need_fastvae("kl_normal", ns) if ns is fastvae else ns.kl_normal
        return lambda mu, lv: f(mu, lv, reduction="none")

    ops.append(Op(
        "kl_normal", "elementwise", [256, 1024, 4096], [128], _make_mu_logvar,
        {
            "fastvae": lambda: kl(fastvae),
            "eager": lambda: kl(reference),
            "compile": lambda: _compile(kl(reference)),
            "torch.distributions": lambda: (_dist(), _td_kl)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(2), _elems(4)),
        doc="standard-normal prior, reduction='none'; fwd reads mu, logvar; bwd writes grad_mu, grad_logvar"))
    return ops


# ---- the fused VAE head: the workload of the vae_head_speedup target ------------------------------------------
# One op, every decoder variance: its providers are named "<provider><suffix>" per decoder-variance mode, so that
# all of them (and the Philox floor probe) are timed side by side in the same interleaved rounds.

# (mode, provider-name suffix, decoder log-variance, forward passes, backward passes). Passes of B x D elements
# per the fused kernels' design: reparameterize_kl fwd reads mu, logvar, writes z (3); gaussian_nll fwd reads x, z
# (+ a per-element logvar); gaussian_nll bwd reads x, z (+ logvar), writes grad_z (+ grad_logvar);
# reparameterize_kl bwd reads grad_z, mu, logvar, writes grad_mu, grad_logvar (5). A (D,) per-feature logvar and
# its gradient, and the (B,) per-sample vectors, are negligible and not counted.
VAE_HEAD_MODES = (
    ("unit", "", None, 3 + 2, 3 + 5),
    ("per-feature", ":feature-var", "feature", 3 + 2, 3 + 5),
    ("per-element", ":element-var", "element", 3 + 3, 5 + 5),
)
VAE_HEAD_BASES = ("fastvae", "eager", "eager (reference)", "compile", "torch.distributions")
# torch.compile and torch.distributions for the unit variance only: the suite knows a compiling provider by its
# exact name ("compile": skipped under --quick, its compile seconds reported), a compile per mode would triple the
# compile time, and every provider lengthens the interleaved rounds (--quick too)
VAE_HEAD_UNIT_ONLY = ("compile", "torch.distributions")
VAE_HEAD_PROBE = "philox-draws"   # the floor probe's provider name
DRAWS_PER_ELEMENT = {"forward": 1, "backward": 1, "full": 2}  # eps drawn in the forward, regenerated in the backward
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def vae_head_bytes(mode):
    """The bytes model of the fused head with decoder variance `mode` (a VAE_HEAD_MODES name)."""
    fwd, bwd = next((f, b) for m, _, _, f, b in VAE_HEAD_MODES if m == mode)
    return _bytes(_elems(fwd), _elems(bwd))


def vae_head_provider(base, mode):
    return base + next(sfx for m, sfx, *_ in VAE_HEAD_MODES if m == mode)


def vae_head_plain(mu, logvar, x, dec_logvar=None):
    """The fused head as a user writes it in plain PyTorch (the eager baseline of the target)."""
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn_like(std)
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - torch.exp(logvar), -1)
    if dec_logvar is None:
        nll = 0.5 * torch.sum((x - z) ** 2, -1)
    else:
        nll = 0.5 * torch.sum((x - z) ** 2 * torch.exp(-dec_logvar) + dec_logvar, -1)
    nll = nll + x.shape[-1] * _HALF_LOG_2PI
    return (nll + kl).mean()


class _Draws(torch.autograd.Function):
    """The floor probe: the Philox normals the fused head draws, and nothing else. The forward draws one normal per
    element of mu (torch.ops.fastvae._normals, one call: one parallel region, as the fused kernel's pass), the
    backward regenerates them (a second call); the output is a 0-dim zero, so the suite can time fwd and bwd."""

    @staticmethod
    def forward(ctx, mu, seed):
        ctx.n, ctx.seed = mu.numel(), seed
        torch.ops.fastvae._normals(seed, 0, ctx.n)
        return mu.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        torch.ops.fastvae._normals(ctx.seed, 0, ctx.n)
        return None, None


def _vae_head_op():
    def make(n, dtype, device, gen):
        mu, lv = _make_mu_logvar(n, dtype, device, gen)
        x = _randn((n, LATENT), dtype, device, gen)
        dec_feature = _randn((LATENT,), dtype, device, gen, grad=True, scale=0.5)
        dec_element = _randn((n, LATENT), dtype, device, gen, grad=True, scale=0.5)
        return mu, lv, x, dec_feature, dec_element

    def pick(dec, feature, element):
        return None if dec is None else feature if dec == "feature" else element

    def head(ns, dec):
        rkl = _need_fastvae("reparameterize_kl", ns) if ns is fastvae else ns.reparameterize_kl
        nll = _need_fastvae("gaussian_nll", ns) if ns is fastvae else ns.gaussian_nll

        def vae_head(mu, logvar, x, feature, element):
            z, kl = rkl(mu, logvar)
            return (nll(x, z, pick(dec, feature, element), reduction="none") + kl).mean()
        return vae_head

    def plain(dec):
        return lambda mu, logvar, x, feature, element: vae_head_plain(mu, logvar, x, pick(dec, feature, element))

    def dist(dec):
        def head_dist(mu, lv, x, feature, element):
            D = _dist()
            z = _td_normal(mu, lv).rsample()
            dlv = pick(dec, feature, element)
            scale = (torch.ones((), dtype=z.dtype, device=z.device) if dlv is None else torch.exp(0.5 * dlv))
            nll = -D.Normal(z, scale, validate_args=False).log_prob(x).sum(-1)
            return (nll + _td_kl(mu, lv)).mean()
        return lambda: (_dist(), head_dist)[1]

    def probe():
        _need_fastvae("reparameterize_kl")
        if not hasattr(torch.ops.fastvae, "_normals"):
            raise Unavailable("torch.ops.fastvae._normals does not exist in this build")
        seeds = {}

        def draws(mu, *_):
            if mu.device not in seeds:
                seeds[mu.device] = torch.tensor([0x5EED], dtype=torch.int64, device=mu.device)
            return _Draws.apply(mu, seeds[mu.device])
        return draws

    providers = {}
    for mode, _, dec, _, _ in VAE_HEAD_MODES:
        builders = {
            "fastvae": lambda dec=dec: head(fastvae, dec),
            "eager": lambda dec=dec: plain(dec),
            "eager (reference)": lambda dec=dec: head(reference, dec),
            "compile": lambda dec=dec: _compile(plain(dec)),
            "torch.distributions": dist(dec),
        }
        providers.update({vae_head_provider(b, mode): builders[b] for b in VAE_HEAD_BASES
                          if mode == "unit" or b not in VAE_HEAD_UNIT_ONLY})
    providers[VAE_HEAD_PROBE] = probe

    return Op(
        "vae_head", "elementwise", [256, 1024, 4096], [128], make, providers,
        lambda n: f"{n}x{LATENT}",
        vae_head_bytes("unit"),
        budget_scale=4.0,
        doc="the fused VAE head: z, kl = reparameterize_kl(mu, logvar); loss = (gaussian_nll(x, z, dec_logvar) + kl)"
            ".mean(), per decoder variance: unit (dec_logvar None; providers without a suffix), per feature (a (D,) "
            "log-variance, ':feature-var') and per element (a (B, D) one, ':element-var'). eager = the plain form "
            "a user writes (exp, randn_like, sums); eager (reference) = fastvae.reference (overflow-safe); compile = "
            "torch.compile of the plain form (compile and torch.distributions: unit variance only). Bytes "
            "(fastvae's, per mode; the other providers' GB/s are the same bytes over their time): unit and per "
            "feature fwd 3+2, bwd 3+5 passes; per element fwd 3+3, bwd 5+5. "
            f"{VAE_HEAD_PROBE}: the floor probe, the head's Philox normals alone (torch.ops.fastvae._normals of "
            "B x D in the forward, again in the backward; no bytes model, no speed-ups)")
