"""The plain-PyTorch twins of every fastvae op (the tests' oracle, the benchmarks' eager baseline), now one module
per op family in fastvae/ops/reference/: re-exported here, where tests, docs and users import them from."""
from .ops.reference import (  # noqa: F401
    bernoulli_nll,
    discretized_logistic_mixture_nll,
    discretized_logistic_nll,
    energy_distance,
    gaussian_nll,
    kl_normal,
    mmd,
    reparameterize,
    reparameterize_kl,
    reparameterize_tril,
    sliced_wasserstein,
)
