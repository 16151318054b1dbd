"""The public fused ops. Each function checks its arguments (errors name the argument), draws the seed of a
random op from the caller's generator, lays the operands out for the kernel, and calls torch.ops.fastvae.*.

Random ops are pure functions of their inputs: the seed is an int64 tensor drawn here from `generator`
(the default generator of the inputs' device when None) and passed to the op, which derives every eps from
it (Philox, counter = element index). Backward regenerates eps from the same seed, so eps is never stored,
`torch.library.opcheck` can check the ops, and CUDA graphs replay fresh noise (the seed is drawn by a
captured kernel). A CPU generator with CUDA tensors gives the same eps as on CPU.

Reductions: "none" gives one value per sample (the sum over all dims but the first; (k, B) when the
main operand has a leading sample dim), "sum" sums them, "mean" averages them. Losses of float16/bfloat16
inputs are float32. On CPU, float16/bfloat16 inputs are computed in float32.
"""
import functools

import torch

from . import _checks
from . import _ops  # noqa: F401  (registers fake and autograd implementations)

_ops_ns = torch.ops.fastvae


def _compute_dtype(device, *tensors):
    dt = functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])
    if device.type == "cpu" and dt in (torch.float16, torch.bfloat16):
        return torch.float32
    return dt


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _draw_seed(device, generator):
    _checks.generator(generator, device)
    gen_device = device if generator is None else generator.device
    seed = torch.randint(0, 2**62, (1,), device=gen_device, generator=generator, dtype=torch.int64)
    return seed if seed.device == device else seed.to(device)


def _reduce(per_sample, reduction):
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def _feature_operand(p, name, main, feature_shape):
    """Lay out a secondary operand against `main` (shape (rows, *F) or (k, B, *F)): returned unchanged when it has
    main's shape (per element), expanded to F when it broadcasts over the trailing dims (per feature: a 0-dim
    tensor, a (D,) vector, ...), or expanded to main's shape when it only broadcasts there (e.g. one value per
    sample). Anything else is an error: never silent broadcasting against the batch."""
    if p is None:
        return None
    _checks.tensor(p, name)
    _checks.same_device(main, "the main operand", p, name)
    if p.shape == main.shape:
        return p
    shape = tuple(p.shape)
    while len(shape) > len(feature_shape) and shape[0] == 1:
        shape = shape[1:]
    if len(shape) <= len(feature_shape) and _broadcastable(shape, feature_shape):
        return p.reshape(shape).expand(feature_shape).contiguous()
    if _broadcastable(tuple(p.shape), tuple(main.shape)):
        return p.expand(main.shape).contiguous()
    raise ValueError(
        f"{name} must have shape {tuple(main.shape)} (per element) or broadcast over the feature dims "
        f"{tuple(feature_shape)} (e.g. a 0-dim tensor); got {tuple(p.shape)}")


def _broadcastable(src, dst):
    if len(src) > len(dst):
        return False
    return all(s == 1 or s == d for s, d in zip(src[::-1], dst[::-1]))


# ---------------------------------------------------------------------------------------------------------------
# sampling


def reparameterize(mu, logvar, *, n_samples=None, generator=None):
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn inside the kernel.

    Shape mu.shape, or (n_samples, *mu.shape) with n_samples (k samples per input, mu is not copied)."""
    _checks.tensor(mu, "mu")
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    k = _checks.n_samples(n_samples)
    out_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    dt = _compute_dtype(mu.device, mu, logvar)
    seed = _draw_seed(mu.device, generator)
    z = _ops_ns.reparameterize(mu.to(dt), logvar.to(dt), seed, k)
    return z.to(out_dtype)


def reparameterize_kl(mu, logvar, *, generator=None):
    """The fused VAE head: (z, kl) with z as reparameterize draws it for the same seed and kl the per-sample
    KL(N(mu, exp(logvar)) || N(0, I)), shape (B,)."""
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    out_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    dt = _compute_dtype(mu.device, mu, logvar)
    seed = _draw_seed(mu.device, generator)
    z, kl = _ops_ns.reparameterize_kl(mu.to(dt), logvar.to(dt), seed)
    return z.to(out_dtype), kl


def reparameterize_tril(mu, scale_tril, *, n_samples=None, generator=None, validate_args=True):
    """Full-covariance reparameterization from the Cholesky factor L (lower triangular, non-zero diagonal):
    z = mu + L eps and log q(z|x) = -|eps|^2/2 - sum(log|diag L|) - d/2 log(2 pi), per sample.

    mu (*batch, d), scale_tril (*batch, d, d); returns z (*batch, d) and log_q (*batch), with a leading
    n_samples dim when given. validate_args=False skips the triangularity and singularity checks (each reads
    L once and synchronises with the device); they are skipped while torch.compile traces (a data-dependent
    branch would break the graph) and on meta or fake tensors (no values to read)."""
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(scale_tril, "scale_tril", min_dim=2)
    _checks.same_device(mu, "mu", scale_tril, "scale_tril")
    d = mu.shape[-1]
    if scale_tril.shape != (*mu.shape, d):
        raise ValueError(f"scale_tril must have shape (*mu.shape, d) = {(*mu.shape, d)}; got {tuple(scale_tril.shape)}")
    _checks.nonempty_batch(mu, "mu")
    k = _checks.n_samples(n_samples)
    if _checks.flag(validate_args, "validate_args") and _checks.has_values(scale_tril):
        if torch.any(torch.triu(scale_tril.detach(), diagonal=1) != 0):
            raise ValueError("scale_tril must be lower triangular: it has non-zero entries above the diagonal")
        if torch.any(torch.diagonal(scale_tril.detach(), dim1=-2, dim2=-1) == 0):
            raise ValueError("scale_tril is singular: its diagonal has zero entries")
    out_dtype = torch.promote_types(mu.dtype, scale_tril.dtype)
    dt = _compute_dtype(mu.device, mu, scale_tril)
    batch = mu.shape[:-1]
    seed = _draw_seed(mu.device, generator)
    z, log_q = _ops_ns.reparameterize_tril(mu.to(dt).reshape(-1, d), scale_tril.to(dt).reshape(-1, d, d), seed, k)
    lead = () if k is None else (k,)
    return z.reshape(*lead, *batch, d).to(out_dtype), log_q.reshape((*lead, *batch))


# ---------------------------------------------------------------------------------------------------------------
# likelihoods and KL


def _likelihood_operands(x, main, main_name):
    _checks.tensor(x, "x", min_dim=1)
    _checks.tensor(main, main_name, min_dim=1)
    _checks.same_device(main, main_name, x, "x")
    if main.shape != x.shape and main.shape[1:] != x.shape:
        raise ValueError(
            f"{main_name} must have the shape of x {tuple(x.shape)} or (k, *x.shape); got {tuple(main.shape)}")
    _checks.nonempty_batch(x, "x")
    _checks.nonempty_batch(main, main_name)


def gaussian_nll(x, mean, logvar=None, *, reduction="mean"):
    """-log N(x | mean, diag(exp(logvar))), 0.5 log(2 pi) per coordinate included.

    logvar: None (unit variance), a tensor of mean's shape (a decoder variance network), a 0-dim tensor (one
    learned variance) or a tensor broadcastable over the trailing (feature) dims of x. mean may carry a leading
    sample dim (k, *x.shape)."""
    _checks.reduction(reduction)
    _likelihood_operands(x, mean, "mean")
    lv = _feature_operand(logvar, "logvar", mean, x.shape[1:])
    dt = _compute_dtype(mean.device, x, mean, lv)
    per_sample = _ops_ns.gaussian_nll(x.to(dt), mean.to(dt), _cast(lv, dt))
    return _reduce(per_sample, reduction)


def bernoulli_nll(logits, x, *, reduction="mean"):
    """-log Bernoulli(x | sigmoid(logits)) = softplus(logits) - x * logits, stable for any logit; x in [0, 1]
    (binarized data, or probabilities). logits may carry a leading sample dim (k, *x.shape)."""
    _checks.reduction(reduction)
    _likelihood_operands(x, logits, "logits")
    dt = _compute_dtype(logits.device, x, logits)
    per_sample = _ops_ns.bernoulli_nll(logits.to(dt), x.to(dt))
    return _reduce(per_sample, reduction)


def kl_normal(mu, logvar, mu_prior=None, logvar_prior=None, *, reduction="mean"):
    """Closed-form KL(N(mu, exp(logvar)) || N(mu_prior, exp(logvar_prior))) summed over all dims but the first.
    A prior operand left None is 0 (the standard normal when both are None); given, it has mu's shape or
    broadcasts over the trailing (feature) dims (a learned prior)."""
    _checks.reduction(reduction)
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    mp = _feature_operand(mu_prior, "mu_prior", mu, mu.shape[1:])
    lp = _feature_operand(logvar_prior, "logvar_prior", mu, mu.shape[1:])
    dt = _compute_dtype(mu.device, mu, logvar, mp, lp)
    per_sample = _ops_ns.kl_normal(mu.to(dt), logvar.to(dt), _cast(mp, dt), _cast(lp, dt))
    return _reduce(per_sample, reduction)
