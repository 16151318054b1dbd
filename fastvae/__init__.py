"""fastvae: fused C++/CUDA loss ops for variational autoencoders, registered as PyTorch custom ops."""
import torch  # noqa: F401  (loads libtorch before the extension)

from ._load import load_extension as _load_extension

_C = _load_extension()

from .ops.bernoulli import bernoulli_nll  # noqa: E402
from .ops.gaussian import (  # noqa: E402
    gaussian_nll,
    kl_normal,
    reparameterize,
    reparameterize_kl,
    reparameterize_tril,
)
from .ops.distances import energy_distance, mmd, sliced_wasserstein  # noqa: E402
from .ops.logistic import discretized_logistic_mixture_nll, discretized_logistic_nll  # noqa: E402
from . import distances, dropin_ops, functional, logistic  # noqa: E402,F401  (the ops' former paths)
from .ops.fused_linear import linear_bce_with_logits, silu_linear  # noqa: E402
from .nn import MMDLoss, SlicedWassersteinLoss  # noqa: E402
from . import distributions  # noqa: E402,F401
from ._patching import is_patched, patch, unpatch  # noqa: E402
from . import reference  # noqa: E402,F401
from .models import VAE, VAEOutput  # noqa: E402

__version__ = "0.1.0"
DIST_NAME = "torch-fastvae"  # the name pip knows it by (pyproject.toml); `fastvae` on PyPI is another project

__all__ = [
    "reparameterize",
    "reparameterize_kl",
    "reparameterize_tril",
    "gaussian_nll",
    "bernoulli_nll",
    "kl_normal",
    "discretized_logistic_nll",
    "discretized_logistic_mixture_nll",
    "mmd",
    "energy_distance",
    "sliced_wasserstein",
    "linear_bce_with_logits",
    "silu_linear",
    "MMDLoss",
    "distributions",
    "patch",
    "unpatch",
    "is_patched",
    "SlicedWassersteinLoss",
    "reference",
    "VAE",
    "VAEOutput",
]
