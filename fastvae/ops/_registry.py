"""What every op family (gaussian.py, distances.py, ...) shares: the loaded op namespace torch.ops.fastvae, the seed
of a random op, the one compute-dtype rule, and the helpers of the autograd registrations.

Double backward (gradient penalties, Hessian-vector products, meta-learning): register_autograd runs a backward
with grad mode on exactly when the caller asked for create_graph=True (`create_graph()`). The backward then takes a
differentiable form, made of torch ops and the fused forward ops, so its result can be differentiated again;
otherwise it calls the fused backward op (`fused_backward`, the first-order path). The fused backward ops have no
derivative of their own: differentiating one raises (`not_differentiable`)."""
import functools
import sys

import torch

from .. import _checks
from .._load import load_extension

_C = load_extension()
ops = torch.ops.fastvae
LIB = "fastvae::"

_16BIT = (torch.float16, torch.bfloat16)


def compute_dtype(*tensors, kernels_16bit=False):
    """The dtype an op computes in: the promoted dtype of its tensor operands (None ignored); float16/bfloat16 become
    float32 unless the op's kernels on this device take 16-bit data (kernels_16bit), which then compute in float32
    inside. The per-sample losses of 16-bit inputs are float32 either way."""
    dt = functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])
    return torch.float32 if dt in _16BIT and not kernels_16bit else dt


def draw_seed(device, generator):
    """The seed tensor of a random op: one int64 in [0, 2^62) drawn from `generator` (the default generator of
    `device` when None), on `device`. The kernels derive every random number from it (Philox, counter = index)."""
    _checks.generator(generator, device)
    gen_device = device if generator is None else generator.device
    try:
        seed = torch.randint(0, 2**62, (1,), device=gen_device, generator=generator, dtype=torch.int64)
    except RuntimeError as e:
        if "randomness" not in str(e):
            raise
        public = sys._getframe(1).f_code.co_name  # the public function that draws (read only on this error)
        raise RuntimeError(
            f"fastvae.{public} draws random numbers, which torch.func.vmap refuses by default (vmap runs inside "
            f"jacfwd and hessian too): pass randomness='same' (one draw for the whole batch) or 'different' (one "
            f"per element), e.g. vmap(f, randomness='same'), jacfwd(f, randomness='same'), and for the Hessian "
            f"jacfwd(jacrev(f), randomness='same')") from e
    return seed if seed.device == device else seed.to(device)


def create_graph():
    """Whether this backward must be differentiable itself (create_graph=True; see the module docstring)."""
    return torch.is_grad_enabled()


def fused_backward(op, *args):
    """Calls a fused backward op. In a first-order backward (grad mode off) below the autograd key: its autograd
    formula (`not_differentiable`) has nothing to do there, and skipping it saves a Python call per backward."""
    if create_graph():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


_below_autograd = torch._C._AutoDispatchBelowAutograd
_any_requires_grad = torch._C._any_requires_grad


def direct(op, setup_context, backward):
    """The registered op `op` with its autograd formula (the `setup_context` and `backward` given to
    register_autograd), for the public functions' fast path in eager mode: the same values, graph and backward,
    without the dispatcher's round trip through torch's Python autograd kernel of a custom op (which wraps every
    call, with or without grad, in a Python function that redispatches to the op). Without grad the op runs below
    the autograd key at once; with grad a torch.autograd.Function made of the same two formulas records it.
    Not for torch.compile or torch.func transforms (the public functions call the registered op there)."""
    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with _below_autograd():
                out = op(*args)
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Fused.__name__ = Fused.__qualname__ = f"{getattr(op, '__name__', 'op')}_direct"
    apply = Fused.apply

    def call(*args):
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            return apply(*args)
        with _below_autograd():
            return op(*args)
    return call


def no_derivative(with_grad_op, public, *, double_backward=True):
    """Registers for a forward-with-gradients op (a CPU fast path that also returns its gradients) an autograd
    formula that raises, naming the public function: its outputs are differentiated through `public`'s own
    autograd, never through the op. double_backward: whether `public`'s backward is differentiable."""
    then = ", whose backward is differentiable" if double_backward else ""

    def backward(ctx, *grads):
        raise RuntimeError(f"torch.ops.fastvae.{with_grad_op} (the forward with gradients behind {public}) has no "
                           f"derivative of its own: differentiate {public}{then}")
    torch.library.register_autograd(LIB + with_grad_op, backward)


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
    torch.library.register_autograd(LIB + backward_op, backward)
