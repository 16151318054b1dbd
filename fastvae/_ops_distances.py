"""Fake (meta) and autograd implementations of the distance ops (MMD / energy distance, sliced-Wasserstein).
Double backward (see _ops.py): sliced-Wasserstein's gradient is a scatter through the saved permutations, which
has a differentiable form; MMD's tiled backward has none, so differentiating its gradient raises."""
import torch

from ._load import load_extension
from ._ops import _create_graph, fused_backward, not_differentiable

_C = load_extension()
ops = torch.ops.fastvae
_lib = "fastvae::"


# ---- mmd -------------------------------------------------------------------------------------------------------

@torch.library.register_fake(_lib + "mmd")
def _(x, y, seed, kernel, bandwidth, unbiased):
    return x.new_empty((x.shape[0],))


@torch.library.register_fake(_lib + "mmd_backward")
def _(grad, x, y, seed, kernel, bandwidth, unbiased, need_y):
    return x.new_empty(x.shape), (y.new_empty(y.shape) if need_y and y is not None else x.new_empty((0,)))


def _mmd_setup(ctx, inputs, output):
    x, y, seed, kernel, bandwidth, unbiased = inputs
    ctx.save_for_backward(x, y, seed)
    ctx.args = (kernel, bandwidth, unbiased)


def _mmd_backward(ctx, grad):
    x, y, seed = ctx.saved_tensors
    need_y = y is not None and ctx.needs_input_grad[1]
    grad_x, grad_y = fused_backward(ops.mmd_backward, grad, x, y, seed, *ctx.args, need_y)
    return (grad_x if ctx.needs_input_grad[0] else None), (grad_y if need_y else None), None, None, None, None


torch.library.register_autograd(_lib + "mmd", _mmd_backward, setup_context=_mmd_setup)
# reached under create_graph=True by the backward of mmd itself: that is where a double backward is refused
not_differentiable("mmd_backward", "fastvae.mmd (energy_distance, MMDLoss)", double_backward=False)


# ---- sliced-Wasserstein on projections ------------------------------------------------------------------------

@torch.library.register_fake(_lib + "sliced_wasserstein_projected")
def _(px, py, p):
    perm_y = px.new_empty(px.shape, dtype=torch.int32) if py is not None else px.new_empty((0,), dtype=torch.int32)
    return px.new_empty((px.shape[0],)), px.new_empty(px.shape, dtype=torch.int32), perm_y


@torch.library.register_fake(_lib + "sliced_wasserstein_projected_backward")
def _(grad, px, py, perm_x, perm_y, p, need_py):
    return px.new_empty(px.shape), (py.new_empty(py.shape) if need_py and py is not None else px.new_empty((0,)))


def _sw_setup(ctx, inputs, output):
    px, py, p = inputs
    _, perm_x, perm_y = output
    ctx.save_for_backward(px, py, perm_x, perm_y)
    ctx.p = p


def _sw_backward(ctx, grad, _grad_perm_x, _grad_perm_y):
    px, py, perm_x, perm_y = ctx.saved_tensors
    need_py = py is not None and ctx.needs_input_grad[1]
    if _create_graph():
        gpx, gpy = _sw_grads(grad, px, py, perm_x, perm_y, ctx.p)
    else:
        gpx, gpy = fused_backward(ops.sliced_wasserstein_projected_backward, grad, px, py, perm_x, perm_y, ctx.p,
                                  need_py)
    return (gpx if ctx.needs_input_grad[0] else None), (gpy if need_py else None), None


def _sw_grads(grad, px, py, perm_x, perm_y, p):
    """The differentiable gradients of mean_{l,i} |px[perm_x]_i - py[perm_y]_i|^p (py None: the normal quantiles
    Phi^-1((i + 1/2) / N)): |delta|^p differentiated, then scattered back through the permutations."""
    B, L, N = px.shape
    perm_x = perm_x.long()
    xs = px.gather(-1, perm_x)
    if py is None:
        ys = torch.special.ndtri((torch.arange(N, dtype=torch.float64, device=px.device) + 0.5) / N).to(px.dtype)
    else:
        perm_y = perm_y.long()
        ys = py.gather(-1, perm_y)
    delta = xs - ys
    if p == 2:
        d_loss = 2 * delta
    else:  # p sign(delta) |delta|^(p - 1), 0 at delta = 0 (also the second derivative there, through the where)
        nonzero = delta != 0
        d_loss = torch.where(nonzero, p * torch.sign(delta) * torch.where(nonzero, delta.abs(), 1) ** (p - 1), 0)
    g = grad.to(px.dtype).reshape(B, 1, 1) * d_loss / (L * N)
    gpx = torch.zeros_like(px).scatter(-1, perm_x, g)
    gpy = None if py is None else torch.zeros_like(py).scatter(-1, perm_y, -g)
    return gpx, gpy


torch.library.register_autograd(_lib + "sliced_wasserstein_projected", _sw_backward, setup_context=_sw_setup)
not_differentiable("sliced_wasserstein_projected_backward", "fastvae.sliced_wasserstein")


@torch.library.register_fake(_lib + "random_directions")
def _(seed, d, n):
    return seed.new_empty((d, n), dtype=torch.float32)
