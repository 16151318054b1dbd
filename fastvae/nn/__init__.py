"""nn.Module wrappers of the fused losses. MMDLoss and SlicedWassersteinLoss take the arguments of the functions
they call (checked when the module is built, and again at each call: an attribute set later is checked too).
BCEWithLogitsLoss and GaussianNLLLoss are torch's modules (subclasses: the same constructor, attributes, state dict
and repr) whose forward runs fastvae.nn.functional's drop-ins."""
import torch

from .. import _checks
from ..ops import distances
from . import functional


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    __doc__ = torch.nn.BCEWithLogitsLoss.__doc__

    def forward(self, input, target):
        return functional.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                           reduction=self.reduction)


class GaussianNLLLoss(torch.nn.GaussianNLLLoss):
    __doc__ = torch.nn.GaussianNLLLoss.__doc__

    def forward(self, input, target, var):
        return functional.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class MMDLoss(torch.nn.Module):
    """Squared MMD between codes and a target sample (or the standard normal prior when the target is None);
    see fastvae.mmd for the kernels, bandwidths and estimators."""

    def __init__(self, kernel="imq", bandwidth=1.0, estimator="unbiased", generator=None):
        super().__init__()
        distances._mmd_options(kernel, bandwidth, estimator)
        _checks.generator(generator)
        self.kernel, self.bandwidth, self.estimator, self.generator = kernel, bandwidth, estimator, generator

    def forward(self, x, y=None):
        return distances.mmd(x, y, kernel=self.kernel, bandwidth=self.bandwidth, estimator=self.estimator,
                             generator=self.generator)

    def extra_repr(self):
        return f"kernel={self.kernel!r}, bandwidth={self.bandwidth!r}, estimator={self.estimator!r}"


class SlicedWassersteinLoss(torch.nn.Module):
    """SW_p^p between codes and a target sample (or the standard normal prior); see fastvae.sliced_wasserstein."""

    def __init__(self, n_projections=128, p=2, projections=None, generator=None):
        super().__init__()
        distances._sw_options(n_projections, p)
        _checks.generator(generator)
        self.n_projections, self.p, self.generator = n_projections, p, generator
        if projections is None:
            self.projections = None
        else:  # a buffer: it follows the module's .to(device)
            _checks.tensor(projections, "projections", min_dim=2)
            self.register_buffer("projections", projections)

    def forward(self, x, y=None):
        return distances.sliced_wasserstein(x, y, n_projections=self.n_projections, p=self.p,
                                            projections=self.projections, generator=self.generator)

    def extra_repr(self):
        return f"n_projections={self.n_projections}, p={self.p}"
