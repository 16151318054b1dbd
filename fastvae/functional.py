"""The former home of the Gaussian family and bernoulli_nll, now fastvae/ops/gaussian.py and bernoulli.py: their
public functions, re-exported so that `from fastvae.functional import ...` keeps working."""
from .ops.bernoulli import bernoulli_nll  # noqa: F401
from .ops.gaussian import (  # noqa: F401
    gaussian_nll,
    kl_normal,
    reparameterize,
    reparameterize_kl,
    reparameterize_tril,
)
