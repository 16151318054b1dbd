"""Plain-PyTorch implementations of every fastvae op, with the same signatures: the oracle of the tests
(run them in float64) and the "eager" baseline of the benchmarks.

The random ops draw eps with torch.randn (a different stream from the kernels' Philox); pass `eps=` to
evaluate them at given noise, e.g. the kernels' own stream, when comparing values.

Finite inputs give finite outputs wherever the true value is representable, as in the kernels: a variance
scales a term as a e^(lv/2) = (a q) q with q = e^(lv/4) (never e^lv alone, which overflows first), a zero
factor gives 0 whatever the exponential (never 0 * inf = NaN), e^d - 1 - d is expm1(d) - d, and the
distance-kernel parameters saturate instead of overflowing (see csrc/include/fastvae/gaussian.h and
distances.h).

One module per op family (the public functions' twins; the helpers they share in _common.py); this package, and
fastvae.reference, re-export every twin."""
from .bernoulli import bernoulli_nll  # noqa: F401
from .distances import energy_distance, mmd, sliced_wasserstein  # noqa: F401
from .gaussian import gaussian_nll, kl_normal, reparameterize, reparameterize_kl, reparameterize_tril  # noqa: F401
from .logistic import discretized_logistic_mixture_nll, discretized_logistic_nll  # noqa: F401
