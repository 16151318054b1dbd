"""The Gaussian family's benchmarked ops (reparameterize, reparameterize_kl, reparameterize_tril, gaussian_nll,
bernoulli_nll, kl_normal) and the fused VAE head of the vae_head_speedup target."""
import math

import torch

import fastvae
from fastvae import reference

from .common import LATENT, Op, TRIL_D, _bytes, _compile, _dist, _elems, _need_fastvae, _randn


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

def _vae_head_op():
    def make(n, dtype, device, gen):
        mu, lv = _make_mu_logvar(n, dtype, device, gen)
        return mu, lv, _randn((n, LATENT), dtype, device, gen)

    def head(ns):
        rkl = _need_fastvae("reparameterize_kl", ns) if ns is fastvae else ns.reparameterize_kl
        nll = _need_fastvae("gaussian_nll", ns) if ns is fastvae else ns.gaussian_nll

        def vae_head(mu, logvar, x):
            z, kl = rkl(mu, logvar)
            return (nll(x, z, reduction="none") + kl).mean()
        return vae_head

    def head_dist(mu, lv, x):
        D = _dist()
        z = _td_normal(mu, lv).rsample()
        nll = -D.Normal(z, torch.ones((), dtype=z.dtype, device=z.device), validate_args=False).log_prob(x).sum(-1)
        return (nll + _td_kl(mu, lv)).mean()

    return Op(
        "vae_head", "elementwise", [256, 1024, 4096], [128], make,
        {
            "fastvae": lambda: head(fastvae),
            "eager": lambda: head(reference),
            "compile": lambda: _compile(head(reference)),
            "torch.distributions": lambda: (_dist(), head_dist)[1],
        },
        lambda n: f"{n}x{LATENT}",
        _bytes(_elems(5), _elems(8)),
        budget_scale=4.0,
        doc="the fused VAE head: z, kl = reparameterize_kl(mu, logvar); loss = (gaussian_nll(x, z) + kl).mean() "
            "(unit-variance decoder). Bytes as the two ops: fwd 3+2 passes, bwd 3+5 passes")
