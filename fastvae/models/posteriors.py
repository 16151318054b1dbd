"""The posterior q(z|x): a Gaussian whose statistics the encoder outputs. A part says how many statistics it needs
(n_stats), reads them from the encoder's output (split), and samples z with log q(z|x) (sample) or, where it has
one, with the closed-form KL against the StandardNormal prior in one fused op (sample_kl)."""
import torch
from torch import nn


class Posterior(nn.Module):
    """q(z|x) over latent_dim dimensions; `stat` is its second statistic (a log-variance or a Cholesky factor)."""

    name = None     # its VAE(posterior=...) name

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim

    @property
    def n_stats(self):
        """The encoder outputs one input needs: mu and the statistics of the spread."""
        raise NotImplementedError

    def split(self, stats):
        """The encoder's output (B, n_stats) -> (mu (B, d), stat)."""
        raise NotImplementedError

    def sample(self, ops, mu, stat, k, generator=None):
        """(z (k, B, d), log q(z|x) (k, B)): k reparameterised samples per input and their log-density."""
        raise NotImplementedError

    def sample_kl(self, ops, mu, stat, generator=None):
        """(z (B, d), KL(q(z|x) || N(0, I)) (B,)) in closed form, or None where there is none (the VAE then
        estimates the KL from the samples: log q(z|x) - log p(z))."""
        return None


class DiagonalGaussian(Posterior):
    """N(mu, diag(exp(logvar))): stat is the log-variance (B, d)."""

    name = "diagonal"

    @property
    def n_stats(self):
        return 2 * self.latent_dim

    def split(self, stats):
        d = self.latent_dim
        return stats[:, :d], stats[:, d:]

    def sample(self, ops, mu, stat, k, generator=None):
        z = ops.get("reparameterize")(mu, stat, n_samples=k, generator=generator)
        return z, -ops.get("gaussian_nll")(mu, z, stat, reduction="none")

    def sample_kl(self, ops, mu, stat, generator=None):
        return ops.get("reparameterize_kl")(mu, stat, generator=generator)


class FullGaussian(Posterior):
    """N(mu, L L^T): stat is the Cholesky factor L (B, d, d), its diagonal made positive by a softplus."""

    name = "full"

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("_tril_rows", rows, persistent=False)
        self.register_buffer("_tril_cols", cols, persistent=False)

    @property
    def n_stats(self):
        d = self.latent_dim
        return d + d * (d + 1) // 2

    def split(self, stats):
        d = self.latent_dim
        mu, raw = stats[:, :d], stats[:, d:]
        diag = nn.functional.softplus(raw[:, :d]) + 1e-4
        scale_tril = torch.diag_embed(diag)
        scale_tril = scale_tril.index_put((torch.arange(scale_tril.shape[0], device=raw.device)[:, None],
                                           self._tril_rows, self._tril_cols), raw[:, d:])
        return mu, scale_tril

    def sample(self, ops, mu, stat, k, generator=None):
        return ops.get("reparameterize_tril")(mu, stat, n_samples=k, generator=generator, validate_args=False)


POSTERIORS = (DiagonalGaussian.name, FullGaussian.name)
