"""Plain-PyTorch implementations of every fastvae op, with the same signatures: the oracle of the tests
(run them in float64) and the "eager" baseline of the benchmarks.

The random ops draw eps with torch.randn (a different stream from the kernels' Philox); pass `eps=` to
evaluate them at given noise, e.g. the kernels' own stream, when comparing values.

Finite inputs give finite outputs wherever the true value is representable, as in the kernels: a variance
scales a term as a e^(lv/2) = (a q) q with q = e^(lv/4) (never e^lv alone, which overflows first), a zero
factor gives 0 whatever the exponential (never 0 * inf = NaN), e^d - 1 - d is expm1(d) - d, and the
distance-kernel parameters saturate instead of overflowing (see csrc/include/fastvae/gaussian.h and
distances.h)."""
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


def _mul_exp_half(a, c):
    """a e^(c/2) as (a q) q with q = e^(c/4) (e^(c/2) alone overflows first), 0 where a == 0 whatever c is (unless
    c is NaN): the kernels' mul_q2. c is replaced by 0 there before the exp, so that the gradient is 0 too (a where()
    after it would give 0 * inf = NaN)."""
    c = torch.where((a == 0) & ~c.isnan(), torch.zeros_like(c), c)
    q = torch.exp(0.25 * c)
    return (a * q) * q


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


def _softplus(l):
    """log(1 + e^l) to working precision for every l, with the gradient sigmoid(l) (at 0 too). Not
    torch.nn.functional.softplus, which returns l itself above l = 20 (an error of e^-20 ~ 2e-9), nor
    BCE-with-logits, whose log(1 + e^-|l|) loses the relative precision of small results (1e-12 at l = 9)."""
    return torch.where(l > 0, l + torch.log1p(torch.exp(-l.clamp_min(0))), torch.log1p(torch.exp(l.clamp_max(0))))


def bernoulli_nll(x, logits, *, reduction="mean", validate_args=True):
    elem = _softplus(logits) - x * logits
    # an infinite logit: softplus(l) - x l = w |l| + log(1 + e^-|l|) -> w * inf, with w = 1 - x for l > 0 and x
    # otherwise, and 0 when w = 0 (x in {0, 1} on the likely side): the limit, not inf - inf
    # (constants, not w * inf: the masked gradient 0 * inf would be NaN)
    w = torch.where(logits > 0, 1 - x, x).detach()
    inf = torch.full_like(elem, math.inf)
    signed = torch.where(w > 0, inf, torch.where(w < 0, -inf, torch.full_like(elem, math.nan)))  # NaN x stays NaN
    limit = torch.where(w == 0, torch.zeros_like(elem), signed)
    elem = torch.where(logits.isinf(), limit, elem)
    return _reduce(_per_sample(elem, _lead(logits, x)), reduction)


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


# ---- sample distances (MMD / energy distance, sliced-Wasserstein): the plain N x N and sort-based forms ----

def _sq_dists(a, b):
    """|a_i - b_j|^2 from the differences themselves (exact, O(N M d) memory: small inputs only)."""
    return ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)


def _safe_sqrt(u):
    """sqrt with derivative 0 at 0 (the gradient of |x - y| at x = y)."""
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, torch.ones_like(u)).sqrt(), torch.zeros_like(u))


def _kernel_param(p, dtype):
    """A kernel parameter computed in double, saturated at the dtype's largest finite value (a tiny bandwidth):
    k(0) = 1 and k(u > 0) = 0 are then the limits, as in the kernels."""
    return min(p, torch.finfo(dtype).max)


def _inv(v):
    return math.inf if v == 0 else 1.0 / v


def _pair_kernel(u, kernel, bandwidths, d):
    if kernel == "energy":
        return -_safe_sqrt(u)
    k = torch.zeros_like(u)
    for h in bandwidths:
        if kernel == "rbf":  # exp(-u / (2 h^2))
            k = k + torch.exp(-u * _kernel_param(0.5 * _inv(h * h), u.dtype))
        elif kernel == "imq":  # C / (C + u) = 1 / (1 + u / C), C = 2 d h^2 (which overflows for a huge h)
            k = k + 1 / (1 + u * _kernel_param(0.5 * _inv(d * h * h), u.dtype))
        elif kernel == "laplacian":  # exp(-|x - y| / h)
            k = k + torch.exp(-_safe_sqrt(u) * _kernel_param(_inv(h), u.dtype))
        else:
            raise ValueError(f"kernel must be one of ('rbf', 'imq', 'laplacian', 'energy'); got {kernel!r}")
    return k


def _mean_pairs(a, b, kernel, bandwidths, unbiased, same):
    k = _pair_kernel(_sq_dists(a, b), kernel, bandwidths, a.shape[-1])
    n, m = a.shape[-2], b.shape[-2]
    if same and unbiased:
        k = k * (1 - torch.eye(n, dtype=k.dtype, device=k.device))
        return k.sum((-2, -1)) / (n * (n - 1))
    return k.sum((-2, -1)) / (n * m)


def mmd(x, y=None, *, kernel="imq", bandwidth=1.0, estimator="unbiased", generator=None, prior_samples=None):
    """MMD^2 by its definition. y None: the standard normal prior, in closed form for "rbf"; for the other kernels
    `prior_samples` (x's shape) or N samples of torch.randn stand in for it."""
    bws = [float(bandwidth)] if isinstance(bandwidth, (int, float)) else [float(h) for h in bandwidth]
    unbiased = estimator == "unbiased"
    d = x.shape[-1]
    xx = _mean_pairs(x, x, kernel, bws, unbiased, True)
    if y is None and kernel == "rbf":
        # (h^2 / (h^2 + c))^(d/2) as exp(-d/2 log1p(c / h^2)): h^2 may over- or underflow
        yy = sum(math.exp(-d / 2 * math.log1p(2 * _inv(h * h))) for h in bws)
        n2 = (x * x).sum(-1)
        xy = sum(math.exp(-d / 2 * math.log1p(_inv(h * h))) * torch.exp(-n2 / (2 * (h * h + 1))) for h in bws).mean(-1)
        return xx + yy - 2 * xy
    if y is None:
        y = prior_samples if prior_samples is not None else torch.randn(
            x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return xx + _mean_pairs(y, y, kernel, bws, unbiased, True) - 2 * _mean_pairs(x, y, kernel, bws, unbiased, False)


def energy_distance(x, y=None, **kwargs):
    return mmd(x, y, kernel="energy", **kwargs)


def sliced_wasserstein(x, y=None, *, n_projections=128, p=2, projections=None, generator=None):
    """SW_p^p by sorting both projections (y None: the normal quantiles Phi^-1((i + 1/2) / N) as the target)."""
    if projections is None:
        projections = torch.randn(x.shape[-1], n_projections, dtype=x.dtype, device=x.device, generator=generator)
        projections = projections / projections.norm(dim=0, keepdim=True)
    xs = torch.sort(x @ projections, dim=-2).values
    if y is None:
        n = x.shape[-2]
        q = torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n).to(x.dtype)
        ys = q.unsqueeze(-1)
    else:
        ys = torch.sort(y @ projections, dim=-2).values
    return ((xs - ys).abs() ** p).mean((-2, -1))


# ---- discretized logistics (the eager form: every (..., K) intermediate materialised, as PixelCNN++ / NVAE write it)

def _log_bin_mass(x, mean, log_scale, n_bits):
    """log P(x) of a logistic(mean, e^log_scale) discretized on the 2^n_bits grid in [-1, 1], edge bins with the
    tails, without cancellation: the bin is moved to the side of the mean (P is symmetric), where its ends H > L have
    H + L <= 0, and log P = logsigmoid(H) - log1p(e^L) + log(1 - e^-d), d = H - L = 2h e^-log_scale (as
    log d - d / 2 where d underflows). Ends are a e^-log_scale as (a q) q, q = e^(-log_scale / 2)."""
    levels = 2**n_bits - 1
    h = 1.0 / levels
    k = torch.round((x + 1) * (levels / 2)).clamp(0, levels)
    lo_edge, hi_edge = k == 0, k == levels
    u = (2 * k - levels) * h - mean
    flip = u > 0
    au = -u.abs()
    H = _mul_exp_half(au + h, -2 * log_scale)
    L = _mul_exp_half(au - h, -2 * log_scale)
    hi_inf = torch.where(flip, lo_edge, hi_edge)
    lo_inf = torch.where(flip, hi_edge, lo_edge)
    edge = lo_edge | hi_edge
    ld = math.log(2 * h) - log_scale
    d = torch.exp(ld)
    log1mexp = torch.where(d < 0.5, ld + torch.log(-torch.expm1(-d) / torch.where(d > 0, d, torch.ones_like(d))),
                           torch.log1p(-torch.exp(-d)))
    log1mexp = torch.where(d > 0, log1mexp, ld)  # d underflowed: (1 - e^-d) / d = 1
    zero = torch.zeros_like(H)
    return (torch.where(hi_inf, zero, torch.nn.functional.logsigmoid(H))
            - torch.where(lo_inf, zero, torch.log1p(torch.exp(L)))
            + torch.where(edge, zero, log1mexp))


def discretized_logistic_nll(x, mean, log_scale, *, n_bits=8, reduction="mean"):
    lp = _log_bin_mass(x, mean, log_scale, n_bits)
    return _reduce(_per_sample(-lp, _lead(mean, x)), reduction)


def discretized_logistic_mixture_nll(x, logit_probs, means, log_scales, *, n_bits=8, reduction="mean"):
    lp = _log_bin_mass(x.unsqueeze(-1), means, log_scales, n_bits)
    nll = -torch.logsumexp(torch.log_softmax(logit_probs, -1) + lp, -1)
    return _reduce(_per_sample(nll, 2 if means.dim() == x.dim() + 2 else 1), reduction)
