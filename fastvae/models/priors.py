"""The prior p(z): a part with log_prob (for the importance weights and the sampled KL) and sample (for generation).
The closed-form KL against StandardNormal is the posterior's (Posterior.sample_kl: one fused op)."""
import torch
from torch import nn


def randn(shape, device, dtype, generator):
    """Standard normals on device, drawn on the generator's device (a CPU generator serves a CUDA model, as the
    fused ops allow)."""
    where = device if generator is None else generator.device
    return torch.randn(shape, device=where, dtype=dtype, generator=generator).to(device)


class Prior(nn.Module):
    """p(z) over latent_dim dimensions."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, ops, z):
        """log p(z) for z (..., B, d): (..., B)."""
        raise NotImplementedError

    def sample(self, n, device, dtype, generator=None):
        """n draws z ~ p(z), (n, d)."""
        raise NotImplementedError


class StandardNormal(Prior):
    """N(0, I_d)."""

    def log_prob(self, ops, z):
        # through the fused Gaussian NLL: z is its 'mean' operand, which may carry the sample dim
        zeros = z.new_zeros(z.shape[-2:])
        return -ops.get("gaussian_nll")(zeros, z, None, reduction="none")

    def sample(self, n, device, dtype, generator=None):
        return randn((n, self.latent_dim), device, dtype, generator)
