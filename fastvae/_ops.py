"""Fake (meta) and autograd implementations of the fastvae ops, registered next to each other per op.

Fake implementations let torch.compile(fullgraph=True) trace the ops; the autograd formulas call the fused
backward ops, which regenerate eps from the saved seed instead of storing it.

Double backward (gradient penalties, Hessian-vector products, meta-learning): register_autograd runs a backward
with grad mode on exactly when the caller asked for create_graph=True. The backward then takes a differentiable
form, made of torch ops and the fused forward ops (sigma * eps is reparameterize(0, logvar) at the same seed), so
its result can be differentiated again; otherwise it calls the fused backward op (the first-order path). The
fused backward ops have no derivative of their own: differentiating one raises (`not_differentiable`)."""
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


def _create_graph():
    """Whether this backward must be differentiable itself (create_graph=True; see the module docstring)."""
    return torch.is_grad_enabled()


def _rows(grad, like):
    """A per-sample gradient ((B,) or (k, B)) shaped to broadcast against `like` ((B, *F) or (k, B, *F))."""
    return grad.reshape(*grad.shape, *([1] * (like.dim() - grad.dim())))


def _sum_samples(t, k):
    """Sums the leading sample dim of t (k, *shape) when the op drew n_samples = k."""
    return t if k is None else t.sum(0)


def fused_backward(op, *args):
    """Calls a fused backward op. In a first-order backward (grad mode off) below the autograd key: its autograd
    formula (`not_differentiable`) has nothing to do there, and skipping it saves a Python call per backward."""
    if _create_graph():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def not_differentiable(backward_op, public, *, double_backward=True):
    """Registers for the fused backward op an autograd formula that raises, naming the public function `public`:
    differentiating the op would otherwise give torch's warning and a silent None. double_backward: whether
    `public` supports double backward (its backward never calls this op under create_graph=True)."""
    if double_backward:
        message = (f"torch.ops.fastvae.{backward_op} is the first-order backward of {public} and has no derivative: "
                   f"differentiate {public} itself (with create_graph=True its gradient is differentiable)")
    else:
        message = (f"double backward through {public} is not supported "
                   f"(torch.ops.fastvae.{backward_op} has no derivative)")

    def backward(ctx, *grads):
        raise RuntimeError(message)
    torch.library.register_autograd(_lib + backward_op, backward)


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


def _sd_eps(logvar, seed, k=None):
    """exp(logvar / 2) * eps at the seed's eps, differentiable in logvar: reparameterize at mu = 0."""
    return ops.reparameterize(torch.zeros_like(logvar), logvar, seed, k)


def _reparam_backward(ctx, grad_z):
    logvar, seed = ctx.saved_tensors
    k = ctx.n_samples
    if _create_graph():  # dz/dlogvar = sd eps / 2
        return _sum_samples(grad_z, k), _sum_samples(0.5 * grad_z * _sd_eps(logvar, seed, k), k), None, None
    grad_mu_k, grad_lv = fused_backward(ops.reparameterize_backward, grad_z, logvar, seed, k)
    grad_mu = grad_z if k is None else grad_mu_k
    return grad_mu, grad_lv, None, None


torch.library.register_autograd(_lib + "reparameterize", _reparam_backward, setup_context=_reparam_setup)
not_differentiable("reparameterize_backward", "fastvae.reparameterize")


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
    if _create_graph():  # z as reparameterize draws it; kl = sum(mu^2 + exp(logvar) - 1 - logvar) / 2 per row
        gkl = _rows(grad_kl, mu)
        grad_mu = grad_z + gkl * mu
        grad_lv = 0.5 * (grad_z * _sd_eps(logvar, seed) + gkl * torch.expm1(logvar))
        return grad_mu.to(mu.dtype), grad_lv.to(logvar.dtype), None
    grad_mu, grad_lv = fused_backward(ops.reparameterize_kl_backward, grad_z, grad_kl, mu, logvar, seed)
    return grad_mu, grad_lv, None


torch.library.register_autograd(_lib + "reparameterize_kl", _reparam_kl_backward, setup_context=_reparam_kl_setup)
not_differentiable("reparameterize_kl_backward", "fastvae.reparameterize_kl")


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
    if _create_graph():
        # z = mu + tril(L) eps, log_q = -|eps|^2 / 2 - sum log|diag L| - const; eps (constant) is z at mu = 0, L = I
        R, d = L.shape[:2]
        eps, _ = ops.reparameterize_tril(L.new_zeros((R, d)), torch.eye(d, dtype=L.dtype, device=L.device)
                                         .expand(R, d, d), seed, ctx.n_samples)
        outer = torch.tril(grad_z.unsqueeze(-1) * eps.unsqueeze(-2))
        grad_L = _sum_samples(outer, ctx.n_samples) - torch.diag_embed(
            _sum_samples(grad_log_q, ctx.n_samples).unsqueeze(-1) / torch.diagonal(L, dim1=-2, dim2=-1))
        return _sum_samples(grad_z, ctx.n_samples).to(L.dtype), grad_L.to(L.dtype), None, None
    grad_mu, grad_L = fused_backward(ops.reparameterize_tril_backward, grad_z, grad_log_q, L, seed, ctx.n_samples)
    return grad_mu, grad_L, None, None


torch.library.register_autograd(_lib + "reparameterize_tril", _tril_backward, setup_context=_tril_setup)
not_differentiable("reparameterize_tril_backward", "fastvae.reparameterize_tril")


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
    if _create_graph():  # per element ((x - mean)^2 exp(-logvar) + logvar + log 2 pi) / 2
        g = _rows(grad, mean)
        diff = mean - x
        inv_var = 1.0 if logvar is None else torch.exp(-logvar)
        grad_mean = g * diff * inv_var
        grad_lv = None
        if need_lv and logvar is not None:  # summed over the rows (and samples) of a per-feature logvar
            grad_lv = (0.5 * g * (1 - diff * diff * inv_var)).sum_to_size(logvar.shape).to(logvar.dtype)
        grad_x = -grad_mean.sum_to_size(x.shape).to(x.dtype) if need_x else None
        return grad_x, (grad_mean.to(mean.dtype) if need_mean else None), grad_lv
    grad_mean, grad_lv = fused_backward(ops.gaussian_nll_backward, grad, x, mean, logvar, need_mean or need_x,
                                         need_lv and logvar is not None)
    grad_x = None
    if need_x:  # d/dx = -d/dmean, summed over a leading sample dim
        grad_x = -(grad_mean.sum(0) if mean.dim() == x.dim() + 1 else grad_mean)
    return grad_x, (grad_mean if need_mean else None), (grad_lv if need_lv and logvar is not None else None)


torch.library.register_autograd(_lib + "gaussian_nll", _gnll_backward, setup_context=_gnll_setup)
not_differentiable("gaussian_nll_backward", "fastvae.gaussian_nll")


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
    g = _rows(grad.to(logits.dtype), logits)
    grad_logits = None
    if need_logits and _create_graph():  # d/dlogits = grad * (sigmoid(logits) - x)
        grad_logits = g * (torch.sigmoid(logits) - x)
    elif need_logits:
        grad_logits = fused_backward(ops.bernoulli_nll_backward, grad, logits, x)
    # d/dx = -grad * logits (x enters linearly), summed over a leading sample dim
    grad_x = -(g * logits).sum_to_size(x.shape) if need_x else None
    return grad_logits, grad_x


torch.library.register_autograd(_lib + "bernoulli_nll", _bnll_backward, setup_context=_bnll_setup)
not_differentiable("bernoulli_nll_backward", "fastvae.bernoulli_nll")


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
    if _create_graph():
        grads = _kl_grads(grad, mu, logvar, mp, lp)
    else:
        grads = fused_backward(ops.kl_normal_backward, grad, mu, logvar, mp, lp, mask)
    return tuple(g if m else None for g, m in zip(grads, mask))


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


torch.library.register_autograd(_lib + "kl_normal", _kl_backward, setup_context=_kl_setup)
not_differentiable("kl_normal_backward", "fastvae.kl_normal")
