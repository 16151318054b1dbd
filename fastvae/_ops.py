"""Fake (meta) and autograd implementations of the fastvae ops, registered next to each other per op.

Fake implementations let torch.compile(fullgraph=True) trace the ops; the autograd formulas call the fused
backward ops, which regenerate eps from the saved seed instead of storing it."""
import torch

from ._load import load_extension

_C = load_extension()
ops = torch.ops.fastvae
_lib = "fastvae::"


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sampled(t, k):
    return (k, *t.shape) if k is not None else tuple(t.shape)


def _empty(ref):
    return ref.new_empty((0,))


# ---- reparameterize ----------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "reparameterize")
def _(mu, logvar, seed, n_samples):
    return mu.new_empty(_sampled(mu, n_samples))


@torch.library.register_fake(_lib + "reparameterize_backward")
def _(grad_z, logvar, seed, n_samples):
    return (logvar.new_empty(logvar.shape) if n_samples is not None else _empty(logvar)), logvar.new_empty(logvar.shape)


def _reparam_setup(ctx, inputs, output):
    mu, logvar, seed, n_samples = inputs
    ctx.save_for_backward(logvar, seed)
    ctx.n_samples = n_samples


def _reparam_backward(ctx, grad_z):
    logvar, seed = ctx.saved_tensors
    grad_mu_k, grad_lv = ops.reparameterize_backward(grad_z, logvar, seed, ctx.n_samples)
    grad_mu = grad_z if ctx.n_samples is None else grad_mu_k
    return grad_mu, grad_lv, None, None


torch.library.register_autograd(_lib + "reparameterize", _reparam_backward, setup_context=_reparam_setup)


@torch.library.register_fake(_lib + "_normals")
def _(seed, start, n):
    return seed.new_empty((n,), dtype=torch.float32)


# ---- reparameterize_kl ---------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "reparameterize_kl")
def _(mu, logvar, seed):
    return mu.new_empty(mu.shape), mu.new_empty((mu.shape[0],), dtype=_acc(mu.dtype))


@torch.library.register_fake(_lib + "reparameterize_kl_backward")
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
    grad_mu, grad_lv = ops.reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, seed)
    return grad_mu, grad_lv, None


torch.library.register_autograd(_lib + "reparameterize_kl", _reparam_kl_backward, setup_context=_reparam_kl_setup)


# ---- reparameterize_tril -------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "reparameterize_tril")
def _(mu, scale_tril, seed, n_samples):
    lead = (n_samples,) if n_samples is not None else ()
    return mu.new_empty((*lead, *mu.shape)), mu.new_empty((*lead, mu.shape[0]), dtype=_acc(mu.dtype))


@torch.library.register_fake(_lib + "reparameterize_tril_backward")
def _(grad_z, grad_log_q, scale_tril, seed, n_samples):
    return scale_tril.new_empty(scale_tril.shape[:2]), scale_tril.new_empty(scale_tril.shape)


def _tril_setup(ctx, inputs, output):
    mu, scale_tril, seed, n_samples = inputs
    ctx.save_for_backward(scale_tril, seed)
    ctx.n_samples = n_samples


def _tril_backward(ctx, grad_z, grad_log_q):
    L, seed = ctx.saved_tensors
    lead = (ctx.n_samples,) if ctx.n_samples is not None else ()
    if grad_z is None:
        grad_z = L.new_zeros((*lead, *L.shape[:2]))
    if grad_log_q is None:
        grad_log_q = L.new_zeros((*lead, L.shape[0]))
    grad_mu, grad_L = ops.reparameterize_tril_backward(grad_z, grad_log_q, L, seed, ctx.n_samples)
    return grad_mu, grad_L, None, None


torch.library.register_autograd(_lib + "reparameterize_tril", _tril_backward, setup_context=_tril_setup)


# ---- gaussian_nll ----------------------------------------------------------------------------------------------

def _per_sample_shape(x, main):
    return (main.shape[0], x.shape[0]) if main.dim() == x.dim() + 1 else (x.shape[0],)


@torch.library.register_fake(_lib + "gaussian_nll")
def _(x, mean, logvar):
    return mean.new_empty(_per_sample_shape(x, mean), dtype=_acc(mean.dtype))


@torch.library.register_fake(_lib + "gaussian_nll_backward")
def _(grad, x, mean, logvar, need_mean, need_logvar):
    gm = mean.new_empty(mean.shape) if need_mean else _empty(mean)
    gl = logvar.new_empty(logvar.shape) if need_logvar and logvar is not None else _empty(mean)
    return gm, gl


def _gnll_setup(ctx, inputs, output):
    x, mean, logvar = inputs
    ctx.save_for_backward(x, mean, logvar)


def _gnll_backward(ctx, grad):
    x, mean, logvar = ctx.saved_tensors
    need_x, need_mean, need_lv = ctx.needs_input_grad[:3]
    grad_mean, grad_lv = ops.gaussian_nll_backward(grad, x, mean, logvar, need_mean or need_x,
                                                   need_lv and logvar is not None)
    grad_x = None
    if need_x:  # d/dx = -d/dmean, summed over a leading sample dim
        grad_x = -(grad_mean.sum(0) if mean.dim() == x.dim() + 1 else grad_mean)
    return grad_x, (grad_mean if need_mean else None), (grad_lv if need_lv and logvar is not None else None)


torch.library.register_autograd(_lib + "gaussian_nll", _gnll_backward, setup_context=_gnll_setup)


# ---- bernoulli_nll ---------------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "bernoulli_nll")
def _(logits, x):
    return logits.new_empty(_per_sample_shape(x, logits), dtype=_acc(logits.dtype))


@torch.library.register_fake(_lib + "bernoulli_nll_backward")
def _(grad, logits, x):
    return logits.new_empty(logits.shape)


def _bnll_setup(ctx, inputs, output):
    logits, x = inputs
    ctx.save_for_backward(logits, x)


def _bnll_backward(ctx, grad):
    logits, x = ctx.saved_tensors
    need_logits, need_x = ctx.needs_input_grad[:2]
    grad_logits = ops.bernoulli_nll_backward(grad, logits, x) if need_logits else None
    grad_x = None
    if need_x:  # d/dx = -grad * logits (x enters linearly), summed over a leading sample dim
        g = grad.to(logits.dtype).reshape(*grad.shape, *([1] * (logits.dim() - grad.dim())))
        grad_x = -(g * logits)
        if logits.dim() == x.dim() + 1:
            grad_x = grad_x.sum(0)
    return grad_logits, grad_x


torch.library.register_autograd(_lib + "bernoulli_nll", _bnll_backward, setup_context=_bnll_setup)


# ---- kl_normal -------------------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "kl_normal")
def _(mu, logvar, mu_prior, logvar_prior):
    return mu.new_empty((mu.shape[0],), dtype=_acc(mu.dtype))


@torch.library.register_fake(_lib + "kl_normal_backward")
def _(grad, mu, logvar, mu_prior, logvar_prior, output_mask):
    def like(t, need):
        return t.new_empty(t.shape) if need and t is not None else _empty(mu)
    return like(mu, output_mask[0]), like(logvar, output_mask[1]), like(mu_prior, output_mask[2]), \
        like(logvar_prior, output_mask[3])


def _kl_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _kl_backward(ctx, grad):
    mu, logvar, mp, lp = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[i]) for i in range(4)]
    mask[2] = mask[2] and mp is not None
    mask[3] = mask[3] and lp is not None
    grads = ops.kl_normal_backward(grad, mu, logvar, mp, lp, mask)
    return tuple(g if m else None for g, m in zip(grads, mask))


torch.library.register_autograd(_lib + "kl_normal", _kl_backward, setup_context=_kl_setup)
