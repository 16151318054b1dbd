"""The likelihood p(x|z): what the decoder's outputs mean. A part says how many outputs the decoder gives per data
value (n_outputs) and which free parameters the VAE holds for it beside the networks (free_parameters: a Gaussian's
learned log-variance), turns them into its parameters (params), and from those computes the per-sample negative
log-likelihood (nll), the mean (mean: the usual picture) and a draw x ~ p(x|z) (sample)."""
import torch
from torch import nn

from .priors import randn

VARIANCES = ("learned", "fixed", "network")


class Likelihood(nn.Module):
    """p(x|z) from the decoder's output; params is a tuple whose first entry is the mean or logits (..., D)."""

    name = None         # its VAE(likelihood=...) name
    n_outputs = 1       # decoder outputs per data value

    def free_parameters(self):
        """{name: initial value} of the parameters this part needs that no network computes. The VAE registers
        them under these names (they are state-dict names) and passes them to params()."""
        return {}

    def params(self, out, free):
        """The decoder's output (..., n_outputs * D) and the free parameters -> this likelihood's parameters."""
        raise NotImplementedError

    def nll(self, ops, x, params):
        """-log p(x|z) per sample for x (B, D): (B,), or (k, B) when params carry a leading sample dim."""
        raise NotImplementedError

    def mean(self, params):
        """E[x|z], (..., D)."""
        raise NotImplementedError

    def sample(self, params, generator=None):
        """x ~ p(x|z), (..., D)."""
        raise NotImplementedError


class Gaussian(Likelihood):
    """N(mean, exp(logvar)) per data value; the log-variance is "learned" (one trained scalar), "fixed" (0: unit
    variance) or "network" (the decoder outputs it per value: twice the outputs, laid out channel by channel, the
    means' channels first; a flat input is one channel)."""

    name = "gaussian"

    def __init__(self, variance="learned", channels=1):
        super().__init__()
        self.variance = variance
        self.channels = channels
        self.n_outputs = 2 if variance == "network" else 1

    def free_parameters(self):
        return {"log_variance": torch.zeros(())} if self.variance == "learned" else {}

    def params(self, out, free):
        if self.variance == "network":
            lead, c = out.shape[:-1], self.channels
            per = out.reshape(*lead, 2 * c, -1)
            return per[..., :c, :].reshape(*lead, -1), per[..., c:, :].reshape(*lead, -1)
        return out, free["log_variance"] if self.variance == "learned" else None

    def nll(self, ops, x, params):
        mean, logvar = params
        return ops.get("gaussian_nll")(x, mean, logvar, reduction="none")

    def mean(self, params):
        return params[0]

    def sample(self, params, generator=None):
        mean, logvar = params
        std = torch.ones_like(mean) if logvar is None else torch.exp(0.5 * logvar).expand_as(mean)
        return mean + std * randn(mean.shape, mean.device, mean.dtype, generator)


class Bernoulli(Likelihood):
    """Bernoulli(sigmoid(logits)) per data value (binary data); params = (logits, None)."""

    name = "bernoulli"

    def params(self, out, free):
        return out, None

    def nll(self, ops, x, params):
        return ops.get("bernoulli_nll")(x, params[0], reduction="none", validate_args=False)

    def mean(self, params):
        return torch.sigmoid(params[0])

    def sample(self, params, generator=None):
        p = self.mean(params)
        where = p.device if generator is None else generator.device
        return torch.bernoulli(p.to(where), generator=generator).to(p.device)


def _uniform_open(shape, device, dtype, generator):
    """Uniforms in (0, 1) (never 0 or 1: their logits are finite), drawn on the generator's device."""
    where = device if generator is None else generator.device
    u = torch.rand(shape, device=where, dtype=dtype, generator=generator).to(device)
    tiny = torch.finfo(dtype).tiny
    return u.clamp(tiny, 1 - torch.finfo(dtype).eps)


def _to_unit(v, n_bits):
    """A value of [-1, 1] snapped to the 2^n_bits grid, as data in [0, 1] (pixels v / 255)."""
    levels = 2**n_bits - 1
    return torch.round((v.clamp(-1, 1) + 1) * (levels / 2)) / levels


class Logistic(Likelihood):
    """A discretized logistic per data value, for 8-bit data: the pixels v / 255 in [0, 1] of the data sets, mapped
    to 2 x - 1 in [-1, 1] (fastvae.discretized_logistic_nll; data off the 8-bit grid are refused with the op's
    error). The decoder gives a mean and a log-scale per value, laid out channel by channel (the means' channels
    first). nll is -log P(x) of x's bin (the edge bins with the tails): a discrete likelihood, so nats / (D ln 2) are
    bits/dim."""

    name = "logistic"
    n_bits = 8

    def __init__(self, channels=1):
        super().__init__()
        self.channels = channels
        self.n_outputs = 2

    def params(self, out, free):
        lead, c = out.shape[:-1], self.channels
        per = out.reshape(*lead, 2 * c, -1)
        return per[..., :c, :].reshape(*lead, -1), per[..., c:, :].reshape(*lead, -1)

    def nll(self, ops, x, params):
        mean, log_scale = params
        return ops.get("discretized_logistic_nll", "likelihood='logistic'")(2 * x - 1, mean, log_scale,
                                                                             n_bits=self.n_bits, reduction="none")

    def mean(self, params):
        """The mean clamped to [-1, 1], as data in [0, 1] (the picture; not snapped to the grid)."""
        return (params[0].clamp(-1, 1) + 1) / 2

    def sample(self, params, generator=None):
        mean, log_scale = params
        u = _uniform_open(mean.shape, mean.device, mean.dtype, generator)
        return _to_unit(mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u)), self.n_bits)


class LogisticMixture(Logistic):
    """A mixture of n_mix discretized logistics per data value (fastvae.discretized_logistic_mixture_nll), for 8-bit
    data as Logistic. The decoder gives 3 n_mix outputs per value, laid out channel by channel as (part, component,
    channel) with the parts mixture logits, means, log-scales; params = (logits, means, log_scales), each
    (..., D, n_mix), the mixture dim last."""

    name = "logistic_mixture"

    def __init__(self, n_mix=10, channels=1):
        super().__init__(channels)
        self.n_mix = n_mix
        self.n_outputs = 3 * n_mix

    def params(self, out, free):
        lead, c, K = out.shape[:-1], self.channels, self.n_mix
        per = out.reshape(*lead, 3, K, c, -1).movedim(-3, -1)  # (..., 3, c, HW, K)
        per = per.reshape(*lead, 3, -1, K)
        return per[..., 0, :, :], per[..., 1, :, :], per[..., 2, :, :]

    def nll(self, ops, x, params):
        logits, means, log_scales = params
        op = ops.get("discretized_logistic_mixture_nll", "likelihood='logistic_mixture'")
        return op(2 * x - 1, logits, means, log_scales, n_bits=self.n_bits, reduction="none")

    def mean(self, params):
        logits, means, _ = params
        return ((torch.softmax(logits, -1) * means.clamp(-1, 1)).sum(-1) + 1) / 2

    def sample(self, params, generator=None):
        logits, means, log_scales = params
        g = -torch.log(-torch.log(_uniform_open(logits.shape, logits.device, logits.dtype, generator)))
        k = torch.argmax(logits + g, -1, keepdim=True)  # a component by the Gumbel-max trick
        m, ls = means.gather(-1, k)[..., 0], log_scales.gather(-1, k)[..., 0]
        u = _uniform_open(m.shape, m.device, m.dtype, generator)
        return _to_unit(m + torch.exp(ls) * (torch.log(u) - torch.log1p(-u)), self.n_bits)


LIKELIHOODS = (Gaussian.name, Bernoulli.name, Logistic.name, LogisticMixture.name)
