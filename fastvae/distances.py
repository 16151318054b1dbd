"""The former home of the distances, now fastvae/ops/distances.py: its public names, re-exported so that
`from fastvae.distances import ...` keeps working."""
from .ops.distances import ESTIMATORS, KERNELS, energy_distance, mmd, sliced_wasserstein  # noqa: F401
