"""The op backends a model computes with: "fastvae" (the fused ops of fastvae/ops/: their public functions) or
"reference" (fastvae.reference: plain PyTorch ops with the same signatures, the benchmarks' eager baseline). The
two draw their noise from different streams but compute the same quantities, so a model trains the same in
distribution on either."""
from .. import reference
from ..ops import bernoulli, distances, gaussian, logistic

BACKENDS = ("fastvae", "reference")
_MODULES = {"fastvae": (gaussian, bernoulli, distances, logistic), "reference": (reference,)}
_WHERE = {"fastvae": "fastvae", "reference": "fastvae.reference"}


class Ops:
    """The ops of one backend, looked up by name when a part calls them (so that a build that lacks one says
    which, and names the part that needs it)."""

    def __init__(self, backend):
        self.backend = backend

    def get(self, name, needed_by="this model"):
        for module in _MODULES[self.backend]:
            op = getattr(module, name, None)
            if op is not None:
                return op
        raise NotImplementedError(f"{needed_by} needs {_WHERE[self.backend]}.{name}, which this build lacks")
