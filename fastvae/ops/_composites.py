"""The composite twins of the fused ops, for torch.func transforms and forward-mode AD (see _transforms.py).

Each takes the arguments of torch.ops.fastvae.<op> as the public function hands them over (checked, laid out, cast
to the compute dtype) and returns what the op returns, computed with torch ops by the float64-safe plain forms of
fastvae.reference, in float32 for 16-bit operands as the kernels compute. Random ops read the kernels' own noise
from the seed (`_eps`), so a composite's value equals the fused op's for the same seed.

`routed` is the namespace the public functions call: routed.<op>(...) is torch.ops.fastvae.<op>(...) outside
transforms and the composite under one.

Random ops under vmap: the seed is drawn by torch.randint, which vmap refuses unless randomness="same" (one seed,
the noise of one unbatched call) or "different" (one seed per element); draw_seed turns the refusal into an error
naming the fastvae function. The ops of a seed (_normals, random_directions) get vmap rules below: one call per
seed, so "different" gives each element its own noise."""
import torch

from . import reference
from ._registry import ops
from ._transforms import plain
from ._transforms import routed as _routed


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _up(*tensors):
    """The operands in the accumulation dtype (float32 for 16-bit ones, as inside the kernels); None stays None."""
    acc = _acc(next(t for t in tensors if t is not None).dtype)
    return [None if t is None else t.to(acc) for t in tensors]


def _eps(seed, shape, dtype):
    """The kernels' eps of this seed (Philox, counter = element index), shape `shape`: the element i of the flat
    output is eps[i], as the fused random ops draw it."""
    n = 1
    for s in shape:
        n *= s
    return ops._normals(seed, 0, n).to(dtype).reshape(shape)


def _sampled(t, k):
    return (k, *t.shape) if k is not None else tuple(t.shape)


def reparameterize(mu, logvar, seed, n_samples):
    m, lv = _up(mu, logvar)
    z = reference.reparameterize(m, lv, n_samples=n_samples, eps=_eps(seed, _sampled(mu, n_samples), m.dtype))
    return z.to(mu.dtype)


def reparameterize_kl(mu, logvar, seed):
    m, lv = _up(mu, logvar)
    z, kl = reference.reparameterize_kl(m, lv, eps=_eps(seed, mu.shape, m.dtype))
    return z.to(mu.dtype), kl


def reparameterize_tril(mu, scale_tril, seed, n_samples, validate=False):
    # the kernels read the lower triangle only: the entries above the diagonal have no effect (zero derivative)
    if validate:  # the op's value check, on every vmapped element (plain)
        L = plain(scale_tril)
        if torch.any(torch.triu(L, diagonal=1) != 0):
            raise ValueError("fastvae.reparameterize_tril: scale_tril must be lower triangular: it has non-zero "
                             "entries above the diagonal")
        if torch.any(torch.diagonal(L, dim1=-2, dim2=-1) == 0):
            raise ValueError("fastvae.reparameterize_tril: scale_tril is singular: its diagonal has zero entries")
    m, L = _up(mu, torch.tril(scale_tril))
    z, log_q = reference.reparameterize_tril(m, L, n_samples=n_samples, eps=_eps(seed, _sampled(mu, n_samples),
                                                                                 m.dtype))
    return z.to(mu.dtype), log_q


_REDUCTIONS = ("none", "sum", "mean")  # the ops' reduction argument 0, 1, 2


def gaussian_nll(x, mean, logvar, reduction=0):
    return reference.gaussian_nll(*_up(x, mean, logvar), reduction=_REDUCTIONS[reduction])


def bernoulli_nll(logits, x, reduction=0, validate_x=False):
    """(validate_x: the public function has checked x's values already, through plain())"""
    lg, xx = _up(logits, x)
    return reference.bernoulli_nll(logits=lg, x=xx, reduction=_REDUCTIONS[reduction])


def kl_normal(mu, logvar, mu_prior, logvar_prior, reduction=0):
    return reference.kl_normal(*_up(mu, logvar, mu_prior, logvar_prior), reduction=_REDUCTIONS[reduction])


def mmd(x, y, seed, kernel, bandwidth, unbiased):
    prior = None
    if y is None and kernel != "rbf":  # the prior samples the kernel draws: y[b, j, k] = eps[(b N + j) d + k]
        prior = _eps(seed, x.shape, x.dtype)
    return reference.mmd(x, y, kernel=kernel, bandwidth=list(bandwidth),
                         estimator="unbiased" if unbiased else "biased", prior_samples=prior)


def sliced_wasserstein_projected(px, py, p):
    """mean over (l, i) of |sort(px)_i - sort(py)_i|^p per batch row (py None: the normal quantiles), and the
    sorting permutations (int32) the op returns."""
    xs, perm_x = torch.sort(px, dim=-1)
    N = px.shape[-1]
    if py is None:
        ys = torch.special.ndtri((torch.arange(N, dtype=torch.float64, device=px.device) + 0.5) / N).to(px.dtype)
        perm_y = px.new_empty((0,), dtype=torch.int32)
    else:
        ys, perm_y = torch.sort(py, dim=-1)
        perm_y = perm_y.int()
    delta = xs - ys
    out = (delta * delta if p == 2 else delta.abs() ** p).mean((-2, -1))
    return out, perm_x.int(), perm_y


def discretized_logistic_nll(x, logit_probs, means, log_scales, n_bits, reduction=0, validate_x=False):
    """(validate_x: the public function has checked x's values already, through plain())"""
    x, lg, m, ls = _up(x, logit_probs, means, log_scales)
    r = _REDUCTIONS[reduction]
    if lg is None:  # one component: means, log_scales of x's shape or with a trailing dim of 1
        if m.dim() != x.dim():
            m, ls = m.squeeze(-1), ls.squeeze(-1)
        return reference.discretized_logistic_nll(x, m, ls, n_bits=n_bits, reduction=r)
    return reference.discretized_logistic_mixture_nll(x, lg, m, ls, n_bits=n_bits, reduction=r)


routed = _routed(ops, reparameterize=reparameterize, reparameterize_kl=reparameterize_kl,
                 reparameterize_tril=reparameterize_tril, gaussian_nll=gaussian_nll, bernoulli_nll=bernoulli_nll,
                 kl_normal=kl_normal, mmd=mmd, sliced_wasserstein_projected=sliced_wasserstein_projected,
                 discretized_logistic_nll=discretized_logistic_nll)


def _per_seed(op):
    """A vmap rule for an op of a seed (randomness="different" gives one seed per element): one call per seed."""
    def rule(info, in_dims, seed, *args):
        if in_dims[0] is None:
            return op(seed, *args), None
        return torch.stack([op(s, *args) for s in seed.movedim(in_dims[0], 0)]), 0
    return rule


torch.library.register_vmap("fastvae::_normals", _per_seed(ops._normals))
torch.library.register_vmap("fastvae::random_directions", _per_seed(ops.random_directions))
