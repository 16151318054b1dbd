"""Plain-PyTorch implementations of every fastvae op, with the same signatures: the oracle of the tests
(run them in float64) and the "eager" baseline of the benchmarks.

The random ops draw eps with torch.randn (a different stream from the kernels' Philox); pass `eps=` to
evaluate them at given noise, e.g. the kernels' own stream, when comparing values."""
import math

import torch

_LOG_2PI = math.log(2 * math.pi)


def _per_sample(t, lead):
    """Sum over all dims after the first `lead` ones."""
    return t.reshape(*t.shape[:lead], -1).sum(-1)


def _reduce(per_sample, reduction):
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'); got {reduction!r}")


def _lead(main, x):
    return 2 if main.dim() == x.dim() + 1 else 1


def reparameterize(mu, logvar, *, n_samples=None, generator=None, eps=None):
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps.reshape(shape)


def reparameterize_kl(mu, logvar, *, generator=None, eps=None):
    z = reparameterize(mu, logvar, generator=generator, eps=eps)
    return z, kl_normal(mu, logvar, reduction="none")


def reparameterize_tril(mu, scale_tril, *, n_samples=None, generator=None, eps=None, validate_args=True):
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    eps = eps.reshape(shape)
    z = mu + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    d = mu.shape[-1]
    log_det = torch.log(torch.abs(torch.diagonal(scale_tril, dim1=-2, dim2=-1))).sum(-1)
    log_q = -0.5 * (eps * eps).sum(-1) - log_det - 0.5 * d * _LOG_2PI
    return z, log_q


def gaussian_nll(x, mean, logvar=None, *, reduction="mean"):
    if logvar is None:
        logvar = torch.zeros((), dtype=mean.dtype, device=mean.device)
    elem = 0.5 * ((x - mean) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI)
    elem = elem.expand(mean.shape)
    return _reduce(_per_sample(elem, _lead(mean, x)), reduction)


def _softplus(l):
    """log(1 + e^l) to working precision for every l, with the gradient sigmoid(l) (at 0 too). Not
    torch.nn.functional.softplus, which returns l itself above l = 20 (an error of e^-20 ~ 2e-9), nor
    BCE-with-logits, whose log(1 + e^-|l|) loses the relative precision of small results (1e-12 at l = 9)."""
    return torch.where(l > 0, l + torch.log1p(torch.exp(-l.clamp_min(0))), torch.log1p(torch.exp(l.clamp_max(0))))


def bernoulli_nll(logits, x, *, reduction="mean"):
    elem = _softplus(logits) - x * logits
    return _reduce(_per_sample(elem, _lead(logits, x)), reduction)


def kl_normal(mu, logvar, mu_prior=None, logvar_prior=None, *, reduction="mean"):
    if mu_prior is None and logvar_prior is None:
        elem = 0.5 * (mu * mu + torch.exp(logvar) - 1 - logvar)
    else:
        mp = torch.zeros_like(mu) if mu_prior is None else mu_prior
        lp = torch.zeros_like(mu) if logvar_prior is None else logvar_prior
        elem = 0.5 * (lp - logvar + torch.exp(logvar - lp) + (mu - mp) ** 2 * torch.exp(-lp) - 1)
    elem = elem.expand(mu.shape)
    return _reduce(_per_sample(elem, 1), reduction)
