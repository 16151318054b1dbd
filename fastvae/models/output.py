"""What a forward pass of the family returns (VAEOutput), and the dtype rule of its data (as_float): shared by VAE,
its subclasses and the M2 objective, so that none of them imports another's file for it."""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class VAEOutput:
    """What a forward pass returns. Per-sample tensors have shape (B,).

    loss: the scalar to minimise. elbo: the per-sample evidence lower bound (the importance-weighted bound for
    IWAE); recon: per-sample -log p(x|z) (averaged over the k samples); kl: per-sample KL(q(z|x) || p(z))
    (closed form for a diagonal posterior, a one-sample estimate for a full one); distance: the batch MMD or
    sliced-Wasserstein term of WAE/SWAE (None for divergence="kl"); z: the latent sample(s), (B, d) or (k, B, d).
    classification: semi-supervised (M2) only: -log q(y|x) of the labelled inputs, (L,) (None for the others).
    terms: further scalar batch means a model's own train_step reports (VAE-GAN: llike, gan, decoder), which the
    trainer records as train_<name> (None for the others).
    For M2, elbo is the bound on log p(x, y) of a labelled input and on log p(x) of an unlabelled one, recon and kl
    are averaged over q(y|x) for an unlabelled input, and z is the sample under its given or most probable class.
    """
    loss: torch.Tensor
    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
    distance: Optional[torch.Tensor] = None
    classification: Optional[torch.Tensor] = None
    terms: Optional[dict] = None

    @property
    def regulariser(self):
        """The term that the divergence adds to the reconstruction (the KL, or the MMD / SW distance)."""
        return self.kl if self.distance is None else self.distance


def as_float(x):
    """Data stays in its floating dtype (the ops promote it against the decoder's, e.g. under bf16 autocast)."""
    return x if x.is_floating_point() else x.float()
