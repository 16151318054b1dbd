"""torch.func transforms and forward-mode AD through the fused ops: route a call to a composite of torch ops.

The fused ops are custom ops with a first-order autograd formula (register_autograd). Transforms they do not
support: torch.func.grad / vjp / jacrev refuse them (torch asks for an autograd.Function with setup_context),
and forward-mode AD (torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad dual tensors) gives a silent
zero tangent, since a custom op has no forward-mode formula. Rather than a jvp and a vmap rule for every op (and
double-backward formulas for hessian), a call made while a transform is active goes to a *composite*: a function
with the op's signature and outputs, written with torch ops (the float64-safe forms of fastvae.reference), which
carry every transform's rules. Random ops pass the composite the same seed tensor, and the composite reads the
kernels' own noise from it (torch.ops.fastvae._normals), so the values equal the fused op's for the same
generator state, and the generator is consumed exactly as on the fused path.

"Active" is two cheap reads, taken on every call: a torch.func transform level (vmap, grad, jvp, ... and
functionalize) or a forward-AD dual level. Outside transforms the fused op runs as before (an extra Python call,
~0.3 us). torch.compile without a transform folds both reads to constants: the fused ops trace with no graph break.
The reads are deliberately not skipped while torch.compile traces: compile(torch.func.jvp(f)) then takes the
composite (skipping them would trace the fused op and give a zero tangent). compile(torch.func.grad(f)) works
with a graph break (dynamo cannot trace the level read under grad), so not with fullgraph=True.

Use (how the op families in fastvae/ops/ call their ops):

    from . import _transforms
    _kl_normal = _transforms.route(torch.ops.fastvae.kl_normal, composite_kl_normal)   # once, at import
    per_sample = _kl_normal(mu, logvar, mp, lp)          # instead of torch.ops.fastvae.kl_normal(...)

or a namespace of routed ops, `routed(torch.ops.fastvae, kl_normal=composite_kl_normal, ...)`, whose attribute
`kl_normal` is the routed op (fastvae/ops/_composites.py builds the one the public functions use: `routed.X(...)`).
A composite takes the op's arguments as the public function hands them over (already checked, laid out and cast)
and returns what the op returns. An op with no composite yet: `route(op, None, "fastvae.f")` raises, under a
transform, an error naming fastvae.f and the transform (never a silent zero tangent).
A new public function built on the existing public ones (fastvae.kl_normal, ...) needs nothing: they route.

Value checks (data-dependent Python branches) fail on the batched tensors of vmap: read the values with
`plain(t)` (every functorch wrapper removed: all the vmapped elements, detached)."""
import types

import torch
from torch.autograd import forward_ad as _fw

_level = torch._C._functorch.maybe_current_level
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_unwrap = torch._C._functorch.get_unwrapped


def active():
    """Whether a call now must take the composite: a torch.func transform or a forward-AD dual level is active.
    (torch.compile folds both reads to constants while it traces, without a graph break.)"""
    return _fw._current_level >= 0 or _level() is not None


_compiling = torch.compiler.is_compiling


def fused_call_ok():
    """Whether a public function may call its fused op straight away (its fast path): no torch.func transform or
    forward-AD level is active and torch.compile is not tracing (the traced path keeps the Python checks)."""
    return _fw._current_level < 0 and _level() is None and not _compiling()


def transform_name():
    """The innermost active transform, in words, for error messages."""
    if _level() is not None:
        from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter
        key = retrieve_current_functorch_interpreter().key().name.lower()
        return {"grad": "torch.func.grad/vjp/jacrev", "jvp": "torch.func.jvp/jacfwd",
                "vmap": "torch.func.vmap"}.get(key, f"the torch.func transform {key!r}")
    return "forward-mode AD (torch.autograd.forward_ad)"


def route(op, composite, name=None):
    """op, called as is outside transforms; under a transform (see `active`) composite(*args) instead. composite None:
    under a transform raise a RuntimeError naming `name` (e.g. "fastvae.kl_normal") and the transform."""
    if composite is None:
        def composite(*args):
            raise RuntimeError(f"{name or op} does not support {transform_name()}: it has no composite form "
                               f"(see fastvae/ops/_transforms.py)")

    def call(*args):
        if _fw._current_level >= 0 or _level() is not None:  # active(), inlined: this runs on every call
            return composite(*args)
        return op(*args)
    call.__name__ = getattr(op, "__name__", "op")
    call.__doc__ = f"{call.__name__}, or its composite under a torch.func transform or forward-mode AD."
    call.fused, call.composite = op, composite
    return call


def routed(namespace, **composites):
    """A namespace whose attribute name is route(getattr(namespace, name), composite) for each name=composite."""
    return types.SimpleNamespace(**{n: route(getattr(namespace, n), c, f"torch.ops.fastvae.{n}")
                                    for n, c in composites.items()})


def plain(t):
    """t's values with every functorch wrapper removed (under vmap: all the batch's elements), detached: for value
    checks, which may then branch on them in Python. Elementwise checks only (a vmapped dim may lie anywhere)."""
    while _wrapped(t):
        t = _unwrap(t)
    return t.detach()
