"""`fastvae.patch()`: unmodified code written with torch.distributions and torch.nn.functional runs on fastvae's
fused kernels, with torch's values (Liger-Kernel's `apply_liger_kernel_to_*` for VAEs).

    import fastvae
    fastvae.patch()                 # from here on, for the whole process
    with fastvae.patch():           # or for a block only: undone on exit
        ...
    fastvae.unpatch()               # torch's own code again, completely

What it routes (each method falls back to torch's own code where no kernel applies: see fastvae.distributions):
torch.distributions.Normal.rsample/sample/log_prob, Bernoulli.log_prob/entropy, MultivariateNormal.rsample/sample,
Independent.log_prob (the event sum inside the kernel when the base is a Normal or a Bernoulli), kl_divergence for
(Normal, Normal) and (Independent, Independent) over Normals, torch.nn.functional.binary_cross_entropy_with_logits
and gaussian_nll_loss, and so torch.nn.BCEWithLogitsLoss and torch.nn.GaussianNLLLoss, which call them. A name bound
before the patch (`from torch.nn.functional import gaussian_nll_loss`) keeps torch's function: patch first, or call
fastvae.nn.functional. Idempotent: a second patch() changes nothing, and one unpatch() undoes all."""
import torch.distributions as td
import torch.nn.functional as F

from . import distributions as D
from .nn import functional as NF

# (owner, attribute, fastvae's replacement); torch's originals are D.TORCH / NF.TORCH
_METHODS = [
    (td.Normal, "rsample", D.normal_rsample),
    (td.Normal, "sample", D.normal_sample),
    (td.Normal, "log_prob", D.normal_log_prob),
    (td.Bernoulli, "log_prob", D.bernoulli_log_prob),
    (td.Bernoulli, "entropy", D.bernoulli_entropy),
    (td.MultivariateNormal, "rsample", D.mvn_rsample),
    (td.MultivariateNormal, "sample", D.mvn_sample),
    (td.Independent, "log_prob", D.independent_log_prob),
    (F, "binary_cross_entropy_with_logits", NF.binary_cross_entropy_with_logits),
    (F, "gaussian_nll_loss", NF.gaussian_nll_loss),
]
_KL = [
    ((td.Normal, td.Normal), D.kl_normal_normal),
    ((td.Independent, td.Independent), D.kl_independent_independent),
]


def _originals():
    out = {}
    for owner, name, _ in _METHODS:
        key = f"{owner.__name__}.{name}" if isinstance(owner, type) else name
        out[(owner, name)] = D.TORCH[key] if isinstance(owner, type) else NF.TORCH[key]
    return out


_ORIGINAL = _originals()
_KL_ORIGINAL = {pair: td.kl._KL_REGISTRY[pair] for pair, _ in _KL}


def is_patched():
    """Whether fastvae.patch() is in effect."""
    return all(getattr(owner, name) is new for owner, name, new in _METHODS)


def _apply(on):
    for owner, name, new in _METHODS:
        setattr(owner, name, new if on else _ORIGINAL[(owner, name)])
    for pair, new in _KL:
        td.kl._KL_REGISTRY[pair] = new if on else _KL_ORIGINAL[pair]
    td.kl._KL_MEMOIZE.clear()  # the dispatch cache holds the functions found before


class patch:
    """Routes torch.distributions and torch.nn.functional through fastvae (see the module docstring). Used as a
    context manager, it restores on exit the state it found: torch's own code, or the patch if it was on already."""

    def __init__(self):
        self._was_patched = is_patched()
        _apply(True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._was_patched:
            _apply(False)
        return False

    def __repr__(self):
        return f"fastvae.patch() ({'in effect' if is_patched() else 'undone'})"


def unpatch():
    """torch's own code again, completely (whatever number of patch() calls came before)."""
    _apply(False)
