"""The Gaussian family: reparameterize, reparameterize_kl, reparameterize_tril, gaussian_nll, kl_normal (and, built
the same way, bernoulli_nll in bernoulli.py). Each public function checks its arguments (errors name the argument),
draws the seed of a random op from the caller's generator, lays the operands out for the kernel, and calls
torch.ops.fastvae.*.

Random ops are pure functions of their inputs: the seed is an int64 tensor drawn here from `generator`
(the default generator of the inputs' device when None) and passed to the op, which derives every eps from
it (Philox, counter = element index). Backward regenerates eps from the same seed, so eps is never stored,
`torch.library.opcheck` can check the ops, and CUDA graphs replay fresh noise (the seed is drawn by a
captured kernel). A CPU generator with CUDA tensors gives the same eps as on CPU.

Reductions: "none" gives one value per sample (the sum over all dims but the first; (k, B) when the
main operand has a leading sample dim), "sum" sums them, "mean" averages them, inside the op (its reduction
argument: 0, 1, 2), so that a reduced loss is one op and one autograd node. Losses of float16/bfloat16 inputs are
float32. On CPU, float16/bfloat16 inputs are computed in float32.

The fixed cost of a call (what decides at the batch sizes VAEs train at): a call whose operands the op takes as
they are goes straight to it (see "the fast path" in _operands.py, with the layout and reduction helpers these ops
share); the rest takes the checked path, which lays them out.

Each op's public function, fake (meta) implementation and autograd formula stand together: the fake
implementations let torch.compile(fullgraph=True) trace the ops; the autograd formulas call the fused backward
ops, which regenerate eps from the saved seed instead of storing it (double backward: see _registry.py).
"""
import torch

from .. import _checks
from ._composites import routed
from ._operands import (_FAILED, _REDUCTION, _acc, _cast, _compute_dtype, _empty, _fast, _fast_operand, _fast_seed,
                        _feature_operand, _likelihood_operands, _loss_shape, _per_sample_shape, _rows, _sampled,
                        _spread, _sum_samples)
from ._registry import LIB, create_graph, direct, draw_seed, fused_backward, not_differentiable, ops


# ---- reparameterize ----------------------------------------------------------------------------------------------

def reparameterize(mu, logvar, *, n_samples=None, generator=None):
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn inside the kernel.

    Shape mu.shape, or (n_samples, *mu.shape) with n_samples (k samples per input, mu is not copied)."""
    if generator is None and (n_samples is None or type(n_samples) is int) and _fast(mu, logvar):
        try:
            return _reparameterize(mu, logvar, _fast_seed(mu), n_samples)
        except _FAILED:
            pass  # the checks below say why
    _checks.tensor(mu, "mu")
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    k = _checks.n_samples(n_samples)
    out_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    dt = _compute_dtype(mu.device, mu, logvar)
    seed = draw_seed(mu.device, generator)
    z = routed.reparameterize(mu.to(dt), logvar.to(dt), seed, k)
    return z.to(out_dtype)


@torch.library.register_fake(LIB + "reparameterize")
def _(mu, logvar, seed, n_samples):
    return mu.new_empty(_sampled(mu, n_samples))


@torch.library.register_fake(LIB + "reparameterize_backward")
def _(grad_z, logvar, seed, n_samples):
    return (logvar.new_empty(logvar.shape) if n_samples is not None else _empty(logvar)), logvar.new_empty(logvar.shape)


def _reparam_setup(ctx, inputs, output):
    mu, logvar, seed, n_samples = inputs
    ctx.save_for_backward(logvar, seed)
    ctx.n_samples = n_samples


def _sd_eps(logvar, seed, k=None):
    """exp(logvar / 2) * eps at the seed's eps, differentiable in logvar: reparameterize at mu = 0."""
    return ops.reparameterize(torch.zeros_like(logvar), logvar, seed, k)


def _reparam_backward(ctx, grad_z):
    logvar, seed = ctx.saved_tensors
    k = ctx.n_samples
    if create_graph():  # dz/dlogvar = sd eps / 2
        return _sum_samples(grad_z, k), _sum_samples(0.5 * grad_z * _sd_eps(logvar, seed, k), k), None, None
    grad_mu_k, grad_lv = fused_backward(ops.reparameterize_backward, grad_z, logvar, seed, k)
    grad_mu = grad_z if k is None else grad_mu_k
    return grad_mu, grad_lv, None, None


torch.library.register_autograd(LIB + "reparameterize", _reparam_backward, setup_context=_reparam_setup)
_reparameterize = direct(ops.reparameterize, _reparam_setup, _reparam_backward)
not_differentiable("reparameterize_backward", "fastvae.reparameterize")


@torch.library.register_fake(LIB + "_normals")
def _(seed, start, n):
    return seed.new_empty((n,), dtype=torch.float32)


# ---- reparameterize_kl -------------------------------------------------------------------------------------------

def reparameterize_kl(mu, logvar, *, generator=None):
    """The fused VAE head: (z, kl) with z as reparameterize draws it for the same seed and kl the per-sample
    KL(N(mu, exp(logvar)) || N(0, I)), shape (B,)."""
    if generator is None and _fast(mu, logvar):
        try:
            return _reparameterize_kl(mu, logvar, _fast_seed(mu))
        except _FAILED:
            pass  # the checks below say why
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    out_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    dt = _compute_dtype(mu.device, mu, logvar)
    seed = draw_seed(mu.device, generator)
    z, kl = routed.reparameterize_kl(mu.to(dt), logvar.to(dt), seed)
    return z.to(out_dtype), kl


@torch.library.register_fake(LIB + "reparameterize_kl")
def _(mu, logvar, seed):
    return mu.new_empty(mu.shape), mu.new_empty((mu.shape[0],), dtype=_acc(mu.dtype))


@torch.library.register_fake(LIB + "reparameterize_kl_backward")
def _(grad_z, grad_kl, mu, logvar, seed):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _reparam_kl_setup(ctx, inputs, output):
    mu, logvar, seed = inputs
    ctx.save_for_backward(mu, logvar, seed)


def _reparam_kl_backward(ctx, grad_z, grad_kl):
    mu, logvar, seed = ctx.saved_tensors
    # autograd hands None for an output that did not reach the loss: its gradient is zero
    if grad_z is None:
        grad_z = torch.zeros_like(mu)
    if grad_kl is None:
        grad_kl = mu.new_zeros((mu.shape[0],), dtype=_acc(mu.dtype))
    if create_graph():  # z as reparameterize draws it; kl = sum(mu^2 + exp(logvar) - 1 - logvar) / 2 per row
        gkl = _rows(grad_kl, mu)
        grad_mu = grad_z + gkl * mu
        grad_lv = 0.5 * (grad_z * _sd_eps(logvar, seed) + gkl * torch.expm1(logvar))
        return grad_mu.to(mu.dtype), grad_lv.to(logvar.dtype), None
    grad_mu, grad_lv = fused_backward(ops.reparameterize_kl_backward, grad_z, grad_kl, mu, logvar, seed)
    return grad_mu, grad_lv, None


torch.library.register_autograd(LIB + "reparameterize_kl", _reparam_kl_backward, setup_context=_reparam_kl_setup)
_reparameterize_kl = direct(ops.reparameterize_kl, _reparam_kl_setup, _reparam_kl_backward)
not_differentiable("reparameterize_kl_backward", "fastvae.reparameterize_kl")


# ---- reparameterize_tril -----------------------------------------------------------------------------------------

def reparameterize_tril(mu, scale_tril, *, n_samples=None, generator=None, validate_args=True):
    """Full-covariance reparameterization from the Cholesky factor L (lower triangular, non-zero diagonal):
    z = mu + L eps and log q(z|x) = -|eps|^2/2 - sum(log|diag L|) - d/2 log(2 pi), per sample.

    mu (*batch, d), scale_tril (*batch, d, d); returns z (*batch, d) and log_q (*batch), with a leading
    n_samples dim when given. validate_args=False skips the triangularity and singularity checks (made by the op:
    one read of L, and on CUDA one synchronisation with the device); they are skipped while torch.compile traces (a
    data-dependent branch would break the graph) and on meta or fake tensors (no values to read).
    Limit: on CUDA d <= 6144 (ValueError otherwise)."""
    seed = None
    if (generator is None and (n_samples is None or type(n_samples) is int) and type(validate_args) is bool
            and _fast(mu, scale_tril) and mu.dim() == 2):
        seed = _fast_seed(mu)  # kept for the checked path: a refused call draws no second seed
        try:  # the op checks the values of L (validate); refused, the checks below say why
            return _reparameterize_tril(mu, scale_tril, seed, n_samples, validate_args)
        except _FAILED:
            pass
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(scale_tril, "scale_tril", min_dim=2)
    _checks.same_device(mu, "mu", scale_tril, "scale_tril")
    d = mu.shape[-1]
    if scale_tril.shape != (*mu.shape, d):
        raise ValueError(f"scale_tril must have shape (*mu.shape, d) = {(*mu.shape, d)}; got {tuple(scale_tril.shape)}")
    _checks.nonempty_batch(mu, "mu")
    k = _checks.n_samples(n_samples)
    # the op checks the values (its composite under a transform reads them through plain, on every vmapped element)
    validate = _checks.flag(validate_args, "validate_args") and _checks.has_values(scale_tril)
    out_dtype = torch.promote_types(mu.dtype, scale_tril.dtype)
    dt = _compute_dtype(mu.device, mu, scale_tril)
    batch = mu.shape[:-1]
    if seed is None:
        seed = draw_seed(mu.device, generator)
    z, log_q = routed.reparameterize_tril(mu.to(dt).reshape(-1, d), scale_tril.to(dt).reshape(-1, d, d), seed, k,
                                          validate)
    lead = () if k is None else (k,)
    return z.reshape(*lead, *batch, d).to(out_dtype), log_q.reshape((*lead, *batch))


@torch.library.register_fake(LIB + "reparameterize_tril")
def _(mu, scale_tril, seed, n_samples, validate=False):
    lead = (n_samples,) if n_samples is not None else ()
    return mu.new_empty((*lead, *mu.shape)), mu.new_empty((*lead, mu.shape[0]), dtype=_acc(mu.dtype))


@torch.library.register_fake(LIB + "reparameterize_tril_backward")
def _(grad_z, grad_log_q, scale_tril, seed, n_samples):
    return scale_tril.new_empty(scale_tril.shape[:2]), scale_tril.new_empty(scale_tril.shape)


def _tril_setup(ctx, inputs, output):
    mu, scale_tril, seed, n_samples, _ = inputs
    ctx.save_for_backward(scale_tril, seed)
    ctx.n_samples = n_samples


def _tril_backward(ctx, grad_z, grad_log_q):
    L, seed = ctx.saved_tensors
    lead = (ctx.n_samples,) if ctx.n_samples is not None else ()
    if grad_z is None:
        grad_z = L.new_zeros((*lead, *L.shape[:2]))
    if grad_log_q is None:
        grad_log_q = L.new_zeros((*lead, L.shape[0]))
    if create_graph():
        # z = mu + tril(L) eps, log_q = -|eps|^2 / 2 - sum log|diag L| - const; eps (constant) is z at mu = 0, L = I
        R, d = L.shape[:2]
        eps, _ = ops.reparameterize_tril(L.new_zeros((R, d)), torch.eye(d, dtype=L.dtype, device=L.device)
                                         .expand(R, d, d), seed, ctx.n_samples)
        outer = torch.tril(grad_z.unsqueeze(-1) * eps.unsqueeze(-2))
        grad_L = _sum_samples(outer, ctx.n_samples) - torch.diag_embed(
            _sum_samples(grad_log_q, ctx.n_samples).unsqueeze(-1) / torch.diagonal(L, dim1=-2, dim2=-1))
        return _sum_samples(grad_z, ctx.n_samples).to(L.dtype), grad_L.to(L.dtype), None, None, None
    grad_mu, grad_L = fused_backward(ops.reparameterize_tril_backward, grad_z, grad_log_q, L, seed, ctx.n_samples)
    return grad_mu, grad_L, None, None, None


torch.library.register_autograd(LIB + "reparameterize_tril", _tril_backward, setup_context=_tril_setup)
_reparameterize_tril = direct(ops.reparameterize_tril, _tril_setup, _tril_backward)
not_differentiable("reparameterize_tril_backward", "fastvae.reparameterize_tril")


# ---- gaussian_nll ------------------------------------------------------------------------------------------------

def gaussian_nll(x, mean, logvar=None, *, reduction="mean"):
    """-log N(x | mean, diag(exp(logvar))), 0.5 log(2 pi) per coordinate included.

    logvar: None (unit variance), a tensor of mean's shape (a decoder variance network), a 0-dim tensor (one
    learned variance) or a tensor broadcastable over the trailing (feature) dims of x. mean may carry a leading
    sample dim (k, *x.shape)."""
    r = _REDUCTION.get(reduction) if type(reduction) is str else None
    if r is not None and _fast(x, mean) and _fast_operand(logvar, x.dtype, mean):
        try:
            return _gaussian_nll(x, mean, logvar, r)
        except _FAILED:
            pass  # the checks below say why
    r = _REDUCTION[_checks.reduction(reduction)]
    _likelihood_operands(x, mean, "mean")
    lv = _feature_operand(logvar, "logvar", mean, x.shape[1:])
    dt = _compute_dtype(mean.device, x, mean, lv)
    return routed.gaussian_nll(x.to(dt), mean.to(dt), _cast(lv, dt), r)


@torch.library.register_fake(LIB + "gaussian_nll")
def _(x, mean, logvar, reduction=0):
    return mean.new_empty(_loss_shape(x, mean, reduction), dtype=_acc(mean.dtype))


@torch.library.register_fake(LIB + "gaussian_nll_backward")
def _(grad, x, mean, logvar, need_mean, need_logvar, reduction=0):
    gm = mean.new_empty(mean.shape) if need_mean else _empty(mean)
    gl = logvar.new_empty(logvar.shape) if need_logvar and logvar is not None else _empty(mean)
    return gm, gl


def _gnll_setup(ctx, inputs, output):
    x, mean, logvar, ctx.reduction = inputs
    ctx.save_for_backward(x, mean, logvar)


def _gnll_backward(ctx, grad):
    x, mean, logvar = ctx.saved_tensors
    need_x, need_mean, need_lv = ctx.needs_input_grad[:3]
    if create_graph():  # per element ((x - mean)^2 exp(-logvar) + logvar + log 2 pi) / 2
        g = _rows(_spread(grad, _per_sample_shape(x, mean), ctx.reduction), mean)
        diff = mean - x
        inv_var = 1.0 if logvar is None else torch.exp(-logvar)
        grad_mean = g * diff * inv_var
        grad_lv = None
        if need_lv and logvar is not None:  # summed over the rows (and samples) of a per-feature logvar
            grad_lv = (0.5 * g * (1 - diff * diff * inv_var)).sum_to_size(logvar.shape).to(logvar.dtype)
        grad_x = -grad_mean.sum_to_size(x.shape).to(x.dtype) if need_x else None
        return grad_x, (grad_mean.to(mean.dtype) if need_mean else None), grad_lv, None
    grad_mean, grad_lv = fused_backward(ops.gaussian_nll_backward, grad, x, mean, logvar, need_mean or need_x,
                                         need_lv and logvar is not None, ctx.reduction)
    grad_x = None
    if need_x:  # d/dx = -d/dmean, summed over a leading sample dim
        grad_x = -(grad_mean.sum(0) if mean.dim() == x.dim() + 1 else grad_mean)
    return grad_x, (grad_mean if need_mean else None), (grad_lv if need_lv and logvar is not None else None), None


torch.library.register_autograd(LIB + "gaussian_nll", _gnll_backward, setup_context=_gnll_setup)
_gaussian_nll = direct(ops.gaussian_nll, _gnll_setup, _gnll_backward)
not_differentiable("gaussian_nll_backward", "fastvae.gaussian_nll")


# ---- kl_normal ---------------------------------------------------------------------------------------------------

def kl_normal(mu, logvar, mu_prior=None, logvar_prior=None, *, reduction="mean"):
    """Closed-form KL(N(mu, exp(logvar)) || N(mu_prior, exp(logvar_prior))) summed over all dims but the first.
    A prior operand left None is 0 (the standard normal when both are None); given, it has mu's shape or
    broadcasts over the trailing (feature) dims (a learned prior)."""
    r = _REDUCTION.get(reduction) if type(reduction) is str else None
    if r is not None and _fast(mu, logvar) and (mu_prior is None and logvar_prior is None or (
            _fast_operand(mu_prior, mu.dtype, mu) and _fast_operand(logvar_prior, mu.dtype, mu))):
        try:
            return _kl_normal(mu, logvar, mu_prior, logvar_prior, r)
        except _FAILED:
            pass  # the checks below say why
    r = _REDUCTION[_checks.reduction(reduction)]
    _checks.tensor(mu, "mu", min_dim=1)
    _checks.tensor(logvar, "logvar")
    _checks.same_device(mu, "mu", logvar, "logvar")
    _checks.same_shape(mu, "mu", logvar, "logvar")
    _checks.nonempty_batch(mu, "mu")
    mp = _feature_operand(mu_prior, "mu_prior", mu, mu.shape[1:])
    lp = _feature_operand(logvar_prior, "logvar_prior", mu, mu.shape[1:])
    dt = _compute_dtype(mu.device, mu, logvar, mp, lp)
    return routed.kl_normal(mu.to(dt), logvar.to(dt), _cast(mp, dt), _cast(lp, dt), r)


@torch.library.register_fake(LIB + "kl_normal")
def _(mu, logvar, mu_prior, logvar_prior, reduction=0):
    return mu.new_empty(() if reduction else (mu.shape[0],), dtype=_acc(mu.dtype))


@torch.library.register_fake(LIB + "kl_normal_backward")
def _(grad, mu, logvar, mu_prior, logvar_prior, output_mask, reduction=0):
    def like(t, need):
        return t.new_empty(t.shape) if need and t is not None else _empty(mu)
    return like(mu, output_mask[0]), like(logvar, output_mask[1]), like(mu_prior, output_mask[2]), \
        like(logvar_prior, output_mask[3])


def _kl_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.reduction = inputs[4]


def _kl_backward(ctx, grad):
    mu, logvar, mp, lp = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[i]) for i in range(4)]
    mask[2] = mask[2] and mp is not None
    mask[3] = mask[3] and lp is not None
    if create_graph():
        grads = _kl_grads(_spread(grad, (mu.shape[0],), ctx.reduction), mu, logvar, mp, lp)
    else:
        grads = fused_backward(ops.kl_normal_backward, grad, mu, logvar, mp, lp, mask, ctx.reduction)
    return (*(g if m else None for g, m in zip(grads, mask)), None)


def _kl_grads(grad, mu, logvar, mp, lp):
    """The differentiable gradients of the per-element (lp - logvar + exp(logvar - lp) + (mu - mp)^2 exp(-lp) - 1)
    / 2, an absent prior operand being 0; a per-feature prior operand's gradient is summed over the rows."""
    g = _rows(grad, mu)
    diff = mu if mp is None else mu - mp
    inv_pv = 1.0 if lp is None else torch.exp(-lp)
    ratio_m1 = torch.expm1(logvar if lp is None else logvar - lp)  # exp(logvar - lp) - 1
    g_mu = g * diff * inv_pv
    g_lv = 0.5 * g * ratio_m1
    g_mp = None if mp is None else (-g_mu).sum_to_size(mp.shape).to(mp.dtype)
    g_lp = None if lp is None else (-0.5 * g * (ratio_m1 + diff * diff * inv_pv)).sum_to_size(lp.shape).to(lp.dtype)
    return g_mu.to(mu.dtype), g_lv.to(logvar.dtype), g_mp, g_lp


torch.library.register_autograd(LIB + "kl_normal", _kl_backward, setup_context=_kl_setup)
_kl_normal = direct(ops.kl_normal, _kl_setup, _kl_backward)
not_differentiable("kl_normal_backward", "fastvae.kl_normal")
