"""The former home of the discretized-logistic likelihoods, now fastvae/ops/logistic.py: its public names,
re-exported so that `from fastvae.logistic import ...` keeps working."""
from .ops.logistic import MAX_BITS, discretized_logistic_mixture_nll, discretized_logistic_nll  # noqa: F401
