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
        return ops.get("bernoulli_nll")(params[0], x, reduction="none")

    def mean(self, params):
        return torch.sigmoid(params[0])

    def sample(self, params, generator=None):
        p = self.mean(params)
        where = p.device if generator is None else generator.device
        return torch.bernoulli(p.to(where), generator=generator).to(p.device)


LIKELIHOODS = (Gaussian.name, Bernoulli.name)
