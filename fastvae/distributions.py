"""torch.distributions' Normal, Bernoulli, MultivariateNormal and Independent, on fastvae's fused kernels.

Each class here is a subclass of torch's, so `isinstance`, `Independent`, `expand`, `batch_shape`/`event_shape`,
`validate_args` and every method not listed below are torch's own. These methods run one fused kernel where one
exists (CPU, and CUDA when the extension was built with it; float16/bfloat16/float32/float64) and torch's own code
otherwise (another device or dtype, a Python number as the value, a torch.func transform or forward-mode AD in
progress), so they never give another answer than torch's, only a faster one:

- `Normal.rsample` / `sample` (any sample_shape): z = loc + scale * eps in one pass, eps regenerated in backward;
- `Normal.log_prob`: -((x - loc) / scale)^2 / 2 - log scale - log(2 pi) / 2, one pass forward, one backward;
- `kl_divergence(Normal, Normal)`: the closed form from the two scales (either side may be torch's Normal);
- `Bernoulli.log_prob` / `entropy`: -BCE-with-logits, one pass;
- `MultivariateNormal.rsample` / `sample`: z = loc + L eps (fastvae.reparameterize_tril);
- `Independent(...).log_prob` and `kl_divergence(Independent, Independent)` over the above: the event sum inside
  the same kernel.

The random stream is not torch's: eps comes from Philox inside the kernel, keyed by a seed drawn from torch's
default generator of the parameters' device, so `torch.manual_seed` makes a run reproducible, but the numbers differ
from torch.distributions' for the same seed (the distribution of z is the same). MultivariateNormal's log_prob,
entropy and KL, Bernoulli.sample and Normal's entropy/cdf/icdf are torch's own (no fused kernel).

`fastvae.patch()` routes torch's own classes through the same code."""
import math

import torch
import torch.distributions as td
from torch.distributions.kl import register_kl

from .ops import _transforms, dropin
from .ops.gaussian import reparameterize_tril

__all__ = ["Normal", "Bernoulli", "MultivariateNormal", "Independent", "kl_divergence"]

kl_divergence = td.kl_divergence

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _devices():
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("fastvae::reparameterize", "CUDA")
    return ("cpu", "meta", "cuda") if has_cuda else ("cpu", "meta")


_DEVICES = _devices()

# torch's own methods and KL functions, taken before anything is patched: the fallback of every fused method
TORCH = {
    "Normal.rsample": td.Normal.rsample,
    "Normal.sample": td.Normal.sample,
    "Normal.log_prob": td.Normal.log_prob,
    "Bernoulli.log_prob": td.Bernoulli.log_prob,
    "Bernoulli.entropy": td.Bernoulli.entropy,
    "MultivariateNormal.rsample": td.MultivariateNormal.rsample,
    "MultivariateNormal.sample": td.MultivariateNormal.sample,
    "Independent.log_prob": td.Independent.log_prob,
    "kl.Normal.Normal": td.kl._KL_REGISTRY[td.Normal, td.Normal],
    "kl.Independent.Independent": td.kl._KL_REGISTRY[td.Independent, td.Independent],
}


def fusable(*tensors):
    """Whether the fused kernels take these operands: tensors of a float dtype on a device the extension serves, and
    no forward-mode AD or torch.func transform in progress (those run torch's own code, which carries their rules)."""
    if _transforms.active():
        return False
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOATS or t.device.type not in _DEVICES:
            return False
    return True


# ---- Normal -----------------------------------------------------------------------------------------------------

def normal_rsample(self, sample_shape=torch.Size()):
    if not fusable(self.loc, self.scale):
        return TORCH["Normal.rsample"](self, sample_shape)
    return dropin.normal_rsample(self.loc, self.scale, torch.Size(sample_shape))


def normal_sample(self, sample_shape=torch.Size()):
    with torch.no_grad():
        return normal_rsample(self, sample_shape)


def normal_log_prob(self, value):
    return _normal_log_prob(self, value, 0)


def _normal_log_prob(self, value, event_dims):
    if self._validate_args:
        self._validate_sample(value)
    if not fusable(value, self.loc, self.scale):
        out = TORCH["Normal.log_prob"](self, value)
        return out if event_dims == 0 else out.sum(tuple(range(-event_dims, 0)))
    # loc and scale are broadcast_all's expanded views: the op reads them periodically, never materialised
    return dropin.normal_nll(value, self.loc, self.scale, "scale", const=_HALF_LOG_2PI, factor=-1.0,
                                 event_dims=event_dims)


def kl_normal_normal(p, q, event_dims=0):
    if not fusable(p.loc, p.scale, q.loc, q.scale):
        out = TORCH["kl.Normal.Normal"](p, q)
        return out if event_dims == 0 else out.sum(tuple(range(-event_dims, 0)))
    return dropin.normal_kl(p.loc, p.scale, q.loc, q.scale, event_dims=event_dims)


class Normal(td.Normal):
    __doc__ = td.Normal.__doc__
    rsample = normal_rsample
    sample = normal_sample
    log_prob = normal_log_prob


_NORMALS = (td.Normal, Normal)  # exactly these types: a subclass may have a KL of its own


# ---- Bernoulli --------------------------------------------------------------------------------------------------

def bernoulli_log_prob(self, value):
    return _bernoulli_log_prob(self, value, 0)


def _bernoulli_log_prob(self, value, event_dims):
    if self._validate_args:
        self._validate_sample(value)
    logits = self.logits
    if not fusable(logits, value) or value.dtype != logits.dtype:  # torch's BCE has its own rule for mixed dtypes
        out = TORCH["Bernoulli.log_prob"](self, value)
        return out if event_dims == 0 else out.sum(tuple(range(-event_dims, 0)))
    return dropin.bce_with_logits(logits, value, factor=-1.0, event_dims=event_dims)


def bernoulli_entropy(self):
    logits, probs = self.logits, self.probs
    if not fusable(logits, probs):
        return TORCH["Bernoulli.entropy"](self)
    return dropin.bce_with_logits(logits, probs)


class Bernoulli(td.Bernoulli):
    __doc__ = td.Bernoulli.__doc__
    log_prob = bernoulli_log_prob
    entropy = bernoulli_entropy


# ---- MultivariateNormal -----------------------------------------------------------------------------------------

def mvn_rsample(self, sample_shape=torch.Size()):
    sample_shape = torch.Size(sample_shape)
    L = self._unbroadcasted_scale_tril
    n = sample_shape.numel()
    if not fusable(self.loc, L) or n == 0 or self.batch_shape.numel() == 0 or (
            self.loc.device.type == "cuda" and self.event_shape[0] > 6144):
        return TORCH["MultivariateNormal.rsample"](self, sample_shape)
    d = self.event_shape[0]
    L = L.expand(self.batch_shape + (d, d))
    z, _ = reparameterize_tril(self.loc, L, n_samples=n if sample_shape else None, validate_args=False)
    return z.reshape(self._extended_shape(sample_shape))


def mvn_sample(self, sample_shape=torch.Size()):
    with torch.no_grad():
        return mvn_rsample(self, sample_shape)


class MultivariateNormal(td.MultivariateNormal):
    __doc__ = td.MultivariateNormal.__doc__
    rsample = mvn_rsample
    sample = mvn_sample


# ---- Independent: the sum over the event dims inside the kernel ---------------------------------------------------

_FUSED_LOG_PROB = {td.Normal: (normal_log_prob, _normal_log_prob),
                   td.Bernoulli: (bernoulli_log_prob, _bernoulli_log_prob)}


def _base_kind(d):
    for kind in (td.Normal, td.Bernoulli):
        if isinstance(d, kind) and type(d).log_prob in (TORCH[f"{kind.__name__}.log_prob"], _FUSED_LOG_PROB[kind][0]):
            return kind
    return None  # a subclass with a log_prob of its own (or another distribution): torch's path


def independent_log_prob(self, value):
    kind = _base_kind(self.base_dist)
    if kind is None:
        return TORCH["Independent.log_prob"](self, value)
    return _FUSED_LOG_PROB[kind][1](self.base_dist, value, self.reinterpreted_batch_ndims)


def kl_independent_independent(p, q):
    n = p.reinterpreted_batch_ndims
    if n == q.reinterpreted_batch_ndims and type(p.base_dist) in _NORMALS and type(q.base_dist) in _NORMALS:
        return kl_normal_normal(p.base_dist, q.base_dist, event_dims=n)
    return TORCH["kl.Independent.Independent"](p, q)


class Independent(td.Independent):
    __doc__ = td.Independent.__doc__
    log_prob = independent_log_prob


for _p, _q in ((Normal, Normal), (Normal, td.Normal), (td.Normal, Normal)):
    register_kl(_p, _q)(kl_normal_normal)
for _p, _q in ((Independent, Independent), (Independent, td.Independent), (td.Independent, Independent)):
    register_kl(_p, _q)(kl_independent_independent)
