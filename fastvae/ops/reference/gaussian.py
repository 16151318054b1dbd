"""The Gaussian family's twins: reparameterize, reparameterize_kl, reparameterize_tril, gaussian_nll, kl_normal."""
import torch

from ._common import _LOG_2PI, _lead, _mul_exp_half, _per_sample, _reduce


def reparameterize(mu, logvar, *, n_samples=None, generator=None, eps=None):
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + _mul_exp_half(eps.reshape(shape), logvar)


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
    s = _mul_exp_half(x - mean, -logvar)  # (x - mean) e^(-lv/2)
    s2 = s * s  # where it overflows the term is +inf whatever lv is (lv = -inf: not inf - inf)
    elem = 0.5 * (s2 + torch.where(s2.isinf(), torch.zeros_like(logvar), logvar) + _LOG_2PI)
    elem = elem.expand(mean.shape)
    return _reduce(_per_sample(elem, _lead(mean, x)), reduction)


def _exp_m1_mx(d):
    """e^d - 1 - d; +inf at d = +inf (where e^d overflows, d is left out: not inf - inf)."""
    e = torch.expm1(d)
    return e - torch.where(e.isinf(), torch.zeros_like(d), d)


def kl_normal(mu, logvar, mu_prior=None, logvar_prior=None, *, reduction="mean"):
    if mu_prior is None and logvar_prior is None:
        elem = 0.5 * (mu * mu + _exp_m1_mx(logvar))
    else:
        mp = torch.zeros_like(mu) if mu_prior is None else mu_prior
        lp = torch.zeros_like(mu) if logvar_prior is None else logvar_prior
        d = logvar - lp  # e^d - 1 - d: the ratio of the variances, finite for two tiny (or huge) ones
        s = _mul_exp_half(mu - mp, -lp)  # (mu - mp) e^(-lp/2)
        elem = 0.5 * (_exp_m1_mx(d) + s * s)
    elem = elem.expand(mu.shape)
    return _reduce(_per_sample(elem, 1), reduction)
