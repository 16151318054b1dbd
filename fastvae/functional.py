"""The former home of the Gaussian family and bernoulli_nll, now in fastvae/ops/ (gaussian.py): its public
functions, re-exported so that `from fastvae.functional import ...` keeps working."""
from .ops.gaussian import (  # noqa: F401
    bernoulli_nll,
    gaussian_nll,
    kl_normal,
    reparameterize,
    reparameterize_kl,
    reparameterize_tril,
)
