"""The regulariser: what pulls the posterior towards the prior besides the bound's own KL (which VAE.beta weighs).
A part measures a distance between the batch's latent samples and the prior (distance), which the VAE adds to the
loss weighted by reg_weight; `metric` names it in the training metrics."""
import math

from torch import nn


class Regulariser(nn.Module):
    """A regulariser of the VAE's loss."""

    name = None         # its VAE(divergence=...) name
    metric = None       # its name in the metrics (train_kl, train_mmd, ...)

    def distance(self, ops, z, generator=None, gather=None):
        """D(z, prior) of the latent samples z (..., d) of the batch (of every rank's batch with gather, a
        differentiable all-gather), a 0-dim tensor; None when there is none."""
        raise NotImplementedError


class KL(Regulariser):
    """The bound's own KL alone (the ELBO, beta-VAE, IWAE): no batch distance."""

    name = metric = "kl"

    def distance(self, ops, z, generator=None, gather=None):
        return None


class SampleDistance(Regulariser):
    """A distance between the batch's latent samples, gathered over ranks, and samples of N(0, I) that the op
    draws itself (from generator: under DDP every rank passes the same one)."""

    op = None           # the name of its op in the backend

    def _distance(self, op, z, generator):
        """The op's value for the samples z (n, d), float32."""
        raise NotImplementedError

    def distance(self, ops, z, generator=None, gather=None):
        z = z.reshape(-1, z.shape[-1])
        if gather is not None:
            z = gather(z)
        return self._distance(ops.get(self.op, needed_by=f"divergence={self.name!r}"), z.float(), generator)


class MMD(SampleDistance):
    """WAE-MMD / InfoVAE: MMD(z, prior) with `kernel`, `bandwidth` h (None: 1; for "imq" fastvae.mmd uses
    C = 2 d h^2, the WAE paper's scale for a N(0, I_d) prior) and `estimator`; the kernel is summed over `scales`
    s of h^2 (bandwidths h sqrt(s): the WAE paper's imq sum over C = 2 d s for s in .1, .2, .5, 1, 2, 5, 10)."""

    name = metric = op = "mmd"

    def __init__(self, kernel="imq", bandwidth=None, estimator="unbiased", scales=(1.0,)):
        super().__init__()
        self.kernel, self.bandwidth, self.estimator, self.scales = kernel, bandwidth, estimator, tuple(scales)

    def _distance(self, mmd, z, generator):
        h = 1.0 if self.bandwidth is None else self.bandwidth
        return mmd(z, None, kernel=self.kernel, bandwidth=[h * math.sqrt(s) for s in self.scales],
                   estimator=self.estimator, generator=generator)


class SlicedWasserstein(SampleDistance):
    """SWAE: SW_2^2(z, prior) over n_projections random directions."""

    name, metric, op = "sliced", "sw", "sliced_wasserstein"

    def __init__(self, n_projections=128):
        super().__init__()
        self.n_projections = n_projections

    def _distance(self, sliced_wasserstein, z, generator):
        return sliced_wasserstein(z, None, n_projections=self.n_projections, p=2, generator=generator)


class Energy(SampleDistance):
    """The energy distance 2 E|z - p| - E|z - z2| - E|p - p2| between the codes z, z2 and prior draws p, p2
    (Szekely & Rizzo; the Radon-Sobolev VAE's regulariser): MMD with the distance kernel -|a - b|, no bandwidth to
    tune, estimated with `estimator`."""

    name = metric = "energy"
    op = "energy_distance"

    def __init__(self, estimator="unbiased"):
        super().__init__()
        self.estimator = estimator

    def _distance(self, energy_distance, z, generator):
        return energy_distance(z, None, estimator=self.estimator, generator=generator)


DIVERGENCES = (KL.name, MMD.name, SlicedWasserstein.name, Energy.name)
