"""HierarchicalVAE: L >= 2 stochastic layers, a ladder VAE (Sønderby et al. 2016; NVAE's layout, Vahdat & Kautz
2020) composed of the VAE family's parts.

Generation is top-down: z_L ~ N(0, I) (the StandardNormal prior part), then z_i ~ p(z_i | z_{i+1}) = N(mu_p, diag
exp(logvar_p)) from the top-down network of level i (a hidden layer `down[i]` and a head `p_heads[i]`), and x ~
p(x | z_1) through the VAE's decoder and likelihood part. Inference shares that path: one deterministic bottom-up pass
over x gives features h_1 (the VAE's encoder, up to its last hidden layer) and h_{i+1} = up[i](h_i); then, top-down,
q(z_L | x) comes from h_L and q(z_i | x, z_{>i}) from h_i beside the top-down state of z_{i+1} (`q_heads[i]`).
Posterior and conditional prior of a level are diagonal Gaussians given the same z_{i+1}, so each level's KL is in
closed form: fastvae.kl_normal with the prior's tensors (the top level's against N(0, I)), the draws
fastvae.reparameterize. The bound is recon + sum_i KL_i (beta weights the KLs); with n_samples = k > 1 the
importance-weighted bound of log p(x, z_1..z_L) - log q(z_1..z_L | x), the same weights VAE.log_likelihood streams.

Why a sibling (a subclass) rather than a Posterior / Prior part inside VAE: a level's posterior depends on the
prior's top-down state, so q and p cannot be split into VAE's independent (q_z.split, q_z.sample, p_z.log_prob)
parts without losing the closed-form KL against the learned conditional prior. The subclass keeps every other part
(the likelihood, the encoder and decoder networks, the conv front and back, the op backend) and everything the
trainer, the evaluation and the CLI use (config, log_likelihood's streaming, sample, reconstruct, the checks); it
replaces only the latent path: encode_stats (the bottom-up features), the bound (forward, posterior_elbo), the
importance weights (_log_weights) and the prior draw (_prior_sample).
"""
from typing import List

import math

import torch
from torch import nn

from .. import _checks
from .networks import mlp
from .output import VAEOutput, as_float
from .posteriors import DiagonalGaussian
from .priors import StandardNormal
from .vae import VAE


def _halves(t):
    """A head's output (..., 2d) -> (mean, log-variance), each (..., d)."""
    d = t.shape[-1] // 2
    return t[..., :d], t[..., d:]


def _rows(t, d):
    """t (..., d) as (rows, d): the fused ops sum over every dim after the first."""
    return t.reshape(-1, d)


class HierarchicalVAE(VAE):
    """A VAE with L = len(latent_dims) >= 2 stochastic layers, latent_dims[0] the lowest (next to x, read by the
    decoder), latent_dims[-1] the top (prior N(0, I)).

    hidden_dims: the encoder widths as for VAE (the decoder mirrors them); the ladder's deterministic layers (the
        bottom-up up[i], the top-down down[i]) have width hidden_dims[-1], so hidden_dims must not be empty.
    The other arguments are VAE's (likelihood, variance, beta, n_samples, conv, conv_channels, activation, backend); a
    hierarchical model has diagonal Gaussian layers, the KL bound (no MMD / SW regulariser) and no labels.
    """

    def __init__(self, input_dim, latent_dims, hidden_dims=(512, 256), likelihood="gaussian", variance="learned",
                 beta=1.0, n_samples=1, *, conv=False, conv_channels=(32, 64), activation="silu", backend="fastvae"):
        dims = _checks.integers(latent_dims, "latent_dims", 1)
        if len(dims) < 2:
            raise ValueError(f"latent_dims must hold at least 2 ints (one per stochastic layer, the lowest first); "
                             f"got {list(latent_dims)!r}")
        hidden = _checks.integers(hidden_dims, "hidden_dims", 1)
        if not hidden:
            raise ValueError("hidden_dims must hold at least one width for a hierarchical VAE (its ladder layers "
                             "have width hidden_dims[-1]); got []")
        super().__init__(input_dim, dims[0], hidden, likelihood, variance, beta, "kl", n_samples, "diagonal", 0,
                         conv=conv, conv_channels=conv_channels, activation=activation, backend=backend)
        self.config = dict(input_dim=self.config["input_dim"], latent_dims=dims, hidden_dims=hidden,
                           likelihood=likelihood, variance=variance, beta=self.beta, n_samples=self.n_samples,
                           conv=conv, conv_channels=self.config["conv_channels"], activation=activation,
                           backend=backend)
        self.latent_dims = dims
        w = self.width = hidden[-1]
        top = dims[-1]
        n_up = len(dims) - 1
        # the bottom-up pass: the VAE's encoder up to its last hidden layer (h_1), then one layer per level above
        act = self.config["activation"]
        self.encoder = mlp([self.encoder[0].in_features, *hidden], final_activation=True, activation=act)
        self.up = nn.ModuleList(mlp([w, w], final_activation=True, activation=act) for _ in range(n_up))
        # the top level: q(z_L | x) from h_L, p(z_L) = N(0, I)
        self.q_z = DiagonalGaussian(top)
        self.p_z = StandardNormal(top)
        self.q_top = nn.Linear(w, self.q_z.n_stats)
        # the levels below: the top-down state of z_{i+1}, the conditional prior, and the posterior beside h_i
        self.down = nn.ModuleList(mlp([dims[i + 1], w], final_activation=True, activation=act) for i in range(n_up))
        self.p_heads = nn.ModuleList(nn.Linear(w, 2 * dims[i]) for i in range(n_up))
        self.q_heads = nn.ModuleList(nn.Linear(2 * w, 2 * dims[i]) for i in range(n_up))

    # ------------------------------------------------------------------------------------------------------------
    # the latent path

    def encode_stats(self, x, y=None):
        """The bottom-up pass: each level's features h_1 .. h_L, concatenated (B, L * width). What the top-down
        pass reads (and what posterior refinement optimises: each input's own inputs to every level's q)."""
        h = super().encode_stats(x, y)
        hs = [h]
        for up in self.up:
            hs.append(up(hs[-1]))
        return torch.cat(hs, -1)

    def _check_stats(self, stats, n):
        width = len(self.latent_dims) * self.width
        if stats.dim() != 2 or stats.shape != (n, width):
            raise ValueError(f"stats must have shape ({n}, {width}) (B, len(latent_dims) * hidden_dims[-1]), as "
                             f"encode_stats returns them; got {tuple(stats.shape)}")

    def _levels(self, ops, stats, k=None, generator=None, *, mean=False) -> List[tuple]:
        """The top-down pass from the bottom-up features: per level, top first, (z, mu, logvar, prior_mu,
        prior_logvar), the prior None at the top (N(0, I)). z: one draw per input (B, d) (k None), k draws
        (k, B, d), or the posterior mean (mean=True: no draw)."""
        hs = stats.split(self.width, -1)
        reparameterize = ops.get("reparameterize")
        levels, z = [], None
        for i in reversed(range(len(self.latent_dims))):
            if z is None:
                mu, logvar = self.q_z.split(self.q_top(hs[i]))
                prior = (None, None)
            else:
                t = self.down[i](z)
                prior = _halves(self.p_heads[i](t))
                h = hs[i].expand(*t.shape[:-1], self.width)        # the sample dim of z, if any
                mu, logvar = _halves(self.q_heads[i](torch.cat([h, t], -1)))
            if mean:
                z = mu
            else:
                z = reparameterize(mu, logvar, n_samples=k if z is None else None, generator=generator)
            levels.append((z, mu, logvar, *prior))
        return levels

    def layer_kls(self, ops, levels):
        """Each level's KL(q(z_i | x, z_{>i}) || p(z_i | z_{i+1})) in closed form (the fused kl_normal, the prior's
        tensors as operands; the top level's against N(0, I)), top first, each (B,): for one draw per input."""
        kl_normal = ops.get("kl_normal")
        out = []
        for _z, mu, logvar, pm, plv in levels:
            d = mu.shape[-1]
            operands = [_rows(t, d) for t in (mu, logvar)] + [None if t is None else _rows(t, d) for t in (pm, plv)]
            out.append(kl_normal(*operands, reduction="none").reshape(mu.shape[:-1]))
        return out

    def _elbo_terms(self, ops, x_flat, stats, y, generator):
        """(recon (B,), the summed KL (B,), z_1 (B, d_1)) of one draw per input."""
        levels = self._levels(ops, stats, None, generator)
        z1 = levels[-1][0]
        return self.p_x.nll(ops, x_flat, self.decode(z1, y)), sum(self.layer_kls(ops, levels)), z1

    def _log_terms(self, ops, x_flat, stats, y, k, generator):
        """(-log p(x | z_1), log p(z_1..z_L) - log q(z_1..z_L | x)), each (k, B), and z_1 (k, B, d_1) at k draws
        per input."""
        gaussian_nll = ops.get("gaussian_nll")
        levels = self._levels(ops, stats, k, generator)
        log_ratio = 0
        for z, mu, logvar, pm, plv in levels:
            d = z.shape[-1]
            log_q = -gaussian_nll(_rows(z, d), _rows(mu.expand_as(z), d), _rows(logvar.expand_as(z), d),
                                  reduction="none").reshape(z.shape[:-1])
            log_p = self.p_z.log_prob(ops, z) if pm is None else -gaussian_nll(
                _rows(z, d), _rows(pm, d), _rows(plv, d), reduction="none").reshape(z.shape[:-1])
            log_ratio = log_ratio + (log_p - log_q)
        z1 = levels[-1][0]
        return self.p_x.nll(ops, x_flat, self.decode(z1, y)), log_ratio, z1

    def _log_weights(self, ops, x_flat, stats, y, k, generator):
        recon, log_ratio, _ = self._log_terms(ops, x_flat, stats, y, k, generator)
        return -recon + log_ratio

    def _prior_sample(self, n, generator):
        device, dtype = self._device(), self._dtype()
        z = self.p_z.sample(n, device, dtype, generator)
        reparameterize = self.ops.get("reparameterize")
        for i in reversed(range(len(self.latent_dims) - 1)):
            z = reparameterize(*_halves(self.p_heads[i](self.down[i](z))), generator=generator)
        return z

    def _activation_width(self):
        return max(super()._activation_width(), len(self.latent_dims) * self.width, 2 * self.width)

    # ------------------------------------------------------------------------------------------------------------
    # the VAE interface

    def encode(self, x, y=None):
        """q(z_1 | x, z_{>1}) at the posterior means of the levels above: (mu, logvar) of the lowest level, the
        one the decoder reads (reconstruct decodes its mean)."""
        _, mu, logvar, _, _ = self._levels(self.ops, self.encode_stats(x, y), mean=True)[-1]
        return mu, logvar

    def forward(self, x, y=None, *, generator=None, distance_generator=None):
        """The loss and its terms for a batch x (B, ...): recon + beta * the summed closed-form KLs (n_samples 1),
        else the importance-weighted bound over n_samples draws; kl is the KL summed over the levels. y must be
        None (no labels); distance_generator is unused (no sample distance)."""
        x_flat = self._forward_input(x, generator, distance_generator)
        ops = self.ops
        stats = self.encode_stats(x, y)
        k = self.n_samples
        if k == 1:
            recon, kl, z = self._elbo_terms(ops, x_flat, stats, y, generator)
            elbo = -(recon + kl)
            loss = (recon + self.beta * kl).mean()
        else:
            recon_k, log_ratio, z = self._log_terms(ops, x_flat, stats, y, k, generator)
            bound = torch.logsumexp(-recon_k + self.beta * log_ratio, 0) - math.log(k)
            elbo = torch.logsumexp(-recon_k + log_ratio, 0) - math.log(k) if self.beta != 1.0 else bound
            recon, kl, loss = recon_k.mean(0), -log_ratio.mean(0), -bound.mean()
        return VAEOutput(loss=loss, elbo=elbo, recon=recon, kl=kl, z=z)

    def posterior_elbo(self, x, stats, y=None, *, generator=None):
        """A one-sample ELBO per input, (B,), for the bottom-up features stats (B, L * width) as encode_stats
        returns them (or refined): recon + the closed-form KLs of every level; differentiable in stats."""
        _checks.generator(generator)
        x_flat = as_float(self._flat(x))
        self._check_stats(stats, x_flat.shape[0])
        recon, kl, _ = self._elbo_terms(self.ops, x_flat, stats, y, generator)
        return -(recon + kl)
