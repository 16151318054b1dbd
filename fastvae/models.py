"""The thin VAE family: small encoder/decoder networks around the fused fastvae ops.

Every likelihood, KL, sampling and distance term goes through the ops of one backend: `fastvae` (the fused
kernels) or `fastvae.reference` (plain PyTorch, the benchmarks' eager baseline). The two backends draw their
noise from different streams but compute the same quantities, so a model trains the same in distribution.

One class covers: a Gaussian (variance learned / fixed / from the network) or Bernoulli likelihood, beta-VAE,
CVAE (one-hot label into encoder and decoder), IWAE (n_samples > 1), a full-covariance posterior (Cholesky
factor, `reparameterize_tril`), WAE-MMD / InfoVAE (`divergence="mmd"`) and SWAE (`divergence="sliced"`).
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

LIKELIHOODS = ("gaussian", "bernoulli")
VARIANCES = ("learned", "fixed", "network")
DIVERGENCES = ("kl", "mmd", "sliced")
POSTERIORS = ("diagonal", "full")
BACKENDS = ("fastvae", "reference")

# Elements (samples x widest layer) one chunk of log_likelihood may hold: ~64 MiB of float32 activations.
_LL_CHUNK_ELEMENTS = 1 << 24


@dataclass
class VAEOutput:
    """What a forward pass returns. Per-sample tensors have shape (B,).

    loss: the scalar to minimise. elbo: the per-sample evidence lower bound (the importance-weighted bound for
    IWAE); recon: per-sample -log p(x|z) (averaged over the k samples); kl: per-sample KL(q(z|x) || p(z))
    (closed form for a diagonal posterior, a one-sample estimate for a full one); distance: the batch MMD or
    sliced-Wasserstein term of WAE/SWAE (None for divergence="kl"); z: the latent sample(s), (B, d) or (k, B, d).
    """
    loss: torch.Tensor
    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
    distance: Optional[torch.Tensor] = None

    @property
    def regulariser(self):
        """The term that the divergence adds to the reconstruction (the KL, or the MMD / SW distance)."""
        return self.kl if self.distance is None else self.distance


def _mlp(sizes, final_activation=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H, W -> H/4, W/4), flattened."""

    def __init__(self, shape, channels=(32, 64)):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"conv=True needs an image height and width divisible by 4; got shape {tuple(shape)}")
        self.net = nn.Sequential(
            nn.Conv2d(c, channels[0], 4, 2, 1), nn.SiLU(),
            nn.Conv2d(channels[0], channels[1], 4, 2, 1), nn.SiLU(),
            nn.Flatten())
        self.out_features = channels[1] * (h // 4) * (w // 4)

    def forward(self, x):
        return self.net(x)


class _ConvDecoder(nn.Module):
    """The mirror of _ConvEncoder: features -> (channels[1], H/4, W/4) -> two stride-2 transposed convs."""

    def __init__(self, in_features, shape, out_channels, channels=(32, 64)):
        super().__init__()
        c, h, w = shape
        self.grid = (channels[1], h // 4, w // 4)
        self.fc = nn.Linear(in_features, channels[1] * (h // 4) * (w // 4))
        self.net = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(channels[1], channels[0], 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(channels[0], out_channels, 4, 2, 1))

    def forward(self, h):
        return self.net(self.fc(h).reshape(-1, *self.grid))


class VAE(nn.Module):
    """A variational autoencoder whose loss terms are the fused fastvae ops.

    input_dim: an int (flat data) or a shape (C, H, W); image inputs are flattened unless conv=True, which puts a
        small conv encoder/decoder in front of / behind the MLPs.
    hidden_dims: widths of the encoder MLP (the decoder mirrors them); () gives linear encoder and decoder.
    likelihood: "gaussian" (variance "learned": one log-variance trained by gradient descent, "fixed": unit,
        "network": the decoder also outputs a per-feature log-variance) or "bernoulli" (decoder outputs logits).
    beta: the weight of the KL term (beta-VAE; for WAE/SWAE beta > 0 adds the KL as InfoVAE does).
    divergence: "kl" (the ELBO), "mmd" (WAE-MMD / InfoVAE: reg_weight * MMD(z, prior) with `kernel`, `bandwidth`
        (None: 1, as fastvae.mmd reads it))
        or "sliced" (SWAE: reg_weight * SW_2^2(z, prior) with n_projections directions).
    n_samples: k > 1 trains on the importance-weighted bound (IWAE), logsumexp over the k samples.
    posterior: "diagonal" or "full" (the encoder outputs a Cholesky factor with a softplus-positive diagonal).
    n_classes: > 0 makes it a CVAE: forward(x, y) with integer labels y, one-hot into encoder and decoder.
    backend: "fastvae" (fused ops) or "reference" (plain-PyTorch ops with the same signatures).
    """

    def __init__(self, input_dim, latent_dim, hidden_dims=(512, 256), likelihood="gaussian", variance="learned",
                 beta=1.0, divergence="kl", n_samples=1, posterior="diagonal", n_classes=0, *, reg_weight=10.0,
                 kernel="imq", bandwidth=None, mmd_estimator="unbiased", n_projections=128, conv=False,
                 conv_channels=(32, 64), backend="fastvae"):
        super().__init__()
        _choice("likelihood", likelihood, LIKELIHOODS)
        _choice("variance", variance, VARIANCES)
        _choice("divergence", divergence, DIVERGENCES)
        _choice("posterior", posterior, POSTERIORS)
        _choice("backend", backend, BACKENDS)
        if isinstance(input_dim, int):
            shape = (input_dim,)
        else:
            shape = tuple(int(s) for s in input_dim)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_dim must be a positive int or a shape such as (C, H, W); got {input_dim!r}")
        if conv and len(shape) != 3:
            raise ValueError(f"conv=True needs input_dim = (C, H, W); got {input_dim!r}")
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1; got {latent_dim}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        if int(n_classes) < 0:
            raise ValueError(f"n_classes must be >= 0; got {n_classes}")
        self.config = dict(
            input_dim=list(shape) if len(shape) > 1 else shape[0], latent_dim=int(latent_dim),
            hidden_dims=[int(h) for h in hidden_dims], likelihood=likelihood, variance=variance, beta=float(beta),
            divergence=divergence, n_samples=int(n_samples), posterior=posterior, n_classes=int(n_classes),
            reg_weight=float(reg_weight), kernel=kernel,
            bandwidth=None if bandwidth is None else float(bandwidth), mmd_estimator=mmd_estimator,
            n_projections=int(n_projections), conv=bool(conv), conv_channels=[int(c) for c in conv_channels],
            backend=backend)
        self.input_shape = shape
        self.data_dim = math.prod(shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.variance = variance if likelihood == "gaussian" else None
        self.beta = float(beta)
        self.divergence = divergence
        self.n_samples = int(n_samples)
        self.posterior = posterior
        self.n_classes = int(n_classes)
        self.reg_weight = float(reg_weight)
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.mmd_estimator = mmd_estimator
        self.n_projections = int(n_projections)
        self.backend = backend
        # Set by the trainer under DDP: a differentiable all-gather, so that MMD / SW see the global batch.
        self.gather = None

        d = self.latent_dim
        hidden = [int(h) for h in hidden_dims]
        self.conv = bool(conv)
        if self.conv:
            self.conv_encoder = _ConvEncoder(shape, tuple(conv_channels))
            enc_in = self.conv_encoder.out_features
        else:
            enc_in = self.data_dim
        n_stats = d + (d * (d + 1) // 2 if posterior == "full" else d)
        self.encoder = _mlp([enc_in + self.n_classes, *hidden, n_stats])
        out_mult = 2 if self.variance == "network" else 1
        dec_hidden = hidden[::-1]
        if self.conv:
            dec_out = dec_hidden[-1] if dec_hidden else d + self.n_classes
            self.decoder = _mlp([d + self.n_classes, *dec_hidden], final_activation=False) if dec_hidden else nn.Identity()
            self.conv_decoder = _ConvDecoder(dec_out, shape, shape[0] * out_mult, tuple(conv_channels))
        else:
            self.decoder = _mlp([d + self.n_classes, *dec_hidden, self.data_dim * out_mult])
        if self.variance == "learned":
            self.log_variance = nn.Parameter(torch.zeros(()))
        if posterior == "full":
            rows, cols = torch.tril_indices(d, d, offset=-1)
            self.register_buffer("_tril_rows", rows, persistent=False)
            self.register_buffer("_tril_cols", cols, persistent=False)

    # ------------------------------------------------------------------------------------------------------------
    # the pieces

    @property
    def ops(self):
        """The op namespace of this model's backend, looked up at call time (ops merged later appear here)."""
        import fastvae
        return fastvae if self.backend == "fastvae" else fastvae.reference

    def _op(self, name):
        op = getattr(self.ops, name, None)
        if op is None:
            where = "fastvae" if self.backend == "fastvae" else "fastvae.reference"
            raise NotImplementedError(f"divergence={self.divergence!r} needs {where}.{name}, which this build lacks")
        return op

    def _one_hot(self, y, n):
        if self.n_classes == 0:
            if y is not None:
                raise ValueError("labels y were given to a model with n_classes=0 (not a CVAE)")
            return None
        if y is None:
            raise ValueError(f"this CVAE (n_classes={self.n_classes}) needs labels y")
        y = torch.as_tensor(y, device=self._device())
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) (one label per sample); got {tuple(y.shape)}")
        if y.is_floating_point():
            raise TypeError(f"y must hold integer class labels; got dtype {y.dtype}")
        return nn.functional.one_hot(y.long(), self.n_classes).to(self._dtype())

    def _device(self):
        return next(self.parameters()).device

    def _dtype(self):
        return next(self.parameters()).dtype

    def _flat(self, x):
        """x as (B, *input_shape) -> what the encoder takes, and x flattened (B, D) for the likelihood."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.data_dim:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.input_shape))}) or (B, {self.data_dim}); "
                             f"got {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], self.data_dim)
        if self.conv:
            return self.conv_encoder(x.reshape(x.shape[0], *self.input_shape)), flat
        return flat, flat

    def encode(self, x, y=None):
        """q(z|x): (mu, logvar) for a diagonal posterior, (mu, scale_tril) for a full one."""
        h, _ = self._flat(x)
        c = self._one_hot(y, x.shape[0])
        stats = self.encoder(h if c is None else torch.cat([h, c], -1))
        d = self.latent_dim
        mu = stats[:, :d]
        if self.posterior == "diagonal":
            return mu, stats[:, d:]
        raw = stats[:, d:]
        diag = nn.functional.softplus(raw[:, :d]) + 1e-4
        scale_tril = torch.diag_embed(diag)
        scale_tril = scale_tril.index_put((torch.arange(scale_tril.shape[0], device=raw.device)[:, None],
                                           self._tril_rows, self._tril_cols), raw[:, d:])
        return mu, scale_tril

    def decode(self, z, y=None):
        """p(x|z) parameters for z (..., d): the mean (Gaussian) or logits (Bernoulli), flat (..., D), and the
        log-variance (a 0-dim parameter, a (..., D) tensor for variance="network", or None)."""
        lead = z.shape[:-1]
        z2 = z.reshape(-1, self.latent_dim)
        if self.n_classes:
            c = self._one_hot(y, lead[-1])
            c = c.expand(*lead, self.n_classes).reshape(-1, self.n_classes)
            z2 = torch.cat([z2, c], -1)
        out = self.decoder(z2)
        if self.conv:
            out = self.conv_decoder(out)
        out = out.reshape(*lead, -1)
        if self.variance == "network":
            c = self.input_shape[0] if self.conv else 1
            if self.conv:
                per = out.reshape(*lead, 2 * c, -1)
                return per[..., :c, :].reshape(*lead, -1), per[..., c:, :].reshape(*lead, -1)
            return out[..., :self.data_dim], out[..., self.data_dim:]
        if self.variance == "learned":
            return out, self.log_variance
        return out, None

    def _nll(self, x_flat, params, logvar):
        """Per-sample -log p(x|z): (B,), or (k, B) when params carry a leading sample dim."""
        if self.likelihood == "bernoulli":
            return self.ops.bernoulli_nll(params, x_flat, reduction="none")
        return self.ops.gaussian_nll(x_flat, params, logvar, reduction="none")

    def _log_prior_and_q(self, z, mu, stat, log_q=None):
        """log p(z) - log q(z|x) for z (k, B, d), through the fused Gaussian NLL (z is the 'mean' operand, which
        may carry the sample dim)."""
        zeros = torch.zeros_like(mu)
        log_p = -self.ops.gaussian_nll(zeros, z, None, reduction="none")
        if log_q is None:
            log_q = -self.ops.gaussian_nll(mu, z, stat, reduction="none")
        return log_p - log_q

    def _sample_z(self, mu, stat, k=None, generator=None):
        """z (k, B, d) (or (B, d) when k is None) and, for a full posterior, log q(z|x)."""
        if self.posterior == "full":
            return self.ops.reparameterize_tril(mu, stat, n_samples=k, generator=generator, validate_args=False)
        return self.ops.reparameterize(mu, stat, n_samples=k, generator=generator), None

    # ------------------------------------------------------------------------------------------------------------
    # the objective

    def forward(self, x, y=None, *, generator=None, distance_generator=None):
        """The loss and its terms for a batch x (B, ...) (and labels y for a CVAE). generator draws the
        posterior noise; distance_generator the projections / prior samples of MMD and SW (under DDP every rank
        passes the same one)."""
        mu, stat = self.encode(x, y)
        _, x_flat = self._flat(x)
        x_flat = _as_float(x_flat)
        k = self.n_samples
        if k == 1 and self.posterior == "diagonal":
            z, kl = self.ops.reparameterize_kl(mu, stat, generator=generator)
            params, logvar = self.decode(z, y)
            recon = self._nll(x_flat, params, logvar)
            elbo = -(recon + kl)
            reg = self.beta * kl
            loss_per_sample = recon + reg
        else:
            zk, log_q = self._sample_z(mu, stat, k, generator)            # (k, B, d)
            params, logvar = self.decode(zk, y)
            recon_k = self._nll(x_flat, params, logvar)                    # (k, B)
            log_ratio = self._log_prior_and_q(zk, mu, stat, log_q)         # log p(z) - log q(z|x), (k, B)
            log_w = -recon_k + self.beta * log_ratio
            bound = torch.logsumexp(log_w, 0) - math.log(k)
            recon = recon_k.mean(0)
            kl = -log_ratio.mean(0)
            elbo = torch.logsumexp(-recon_k + log_ratio, 0) - math.log(k) if self.beta != 1.0 else bound
            loss_per_sample = -bound
            z = zk[0] if k == 1 else zk
        loss = loss_per_sample.mean()
        distance = None
        if self.divergence != "kl":
            z_flat = z.reshape(-1, self.latent_dim)
            if self.gather is not None:
                z_flat = self.gather(z_flat)
            distance = self._distance(z_flat, distance_generator)
            loss = loss + self.reg_weight * distance
        return VAEOutput(loss=loss, elbo=elbo, recon=recon, kl=kl, z=z, distance=distance)

    def _distance(self, z, generator):
        z = z.float()
        if self.divergence == "mmd":
            # bandwidth 1: for "imq" fastvae.mmd uses C = 2 d h^2, the WAE paper's scale for a N(0, I_d) prior
            bandwidth = 1.0 if self.bandwidth is None else self.bandwidth
            return self._op("mmd")(z, None, kernel=self.kernel, bandwidth=bandwidth, estimator=self.mmd_estimator,
                                   generator=generator)
        return self._op("sliced_wasserstein")(z, None, n_projections=self.n_projections, p=2, generator=generator)

    # ------------------------------------------------------------------------------------------------------------
    # evaluation and generation

    @torch.no_grad()
    def log_likelihood(self, x, y=None, *, n_samples=1000, generator=None, chunk_elements=_LL_CHUNK_ELEMENTS):
        """Importance-sampled estimate of log p(x) per sample, (B,): log (1/K) sum_k p(x, z_k) / q(z_k | x) with
        z_k ~ q(z|x). Vectorised over K (all samples of a chunk go through the decoder as one batch); the K
        samples and the batch are cut in chunks of about chunk_elements activations, so K = 5000 fits."""
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        n_samples = int(n_samples)
        width = self._activation_width()
        B = x.shape[0]
        per_row = max(1, chunk_elements // width)           # samples x inputs one chunk may hold
        b = min(B, max(1, per_row))                          # inputs per block
        k_chunk = max(1, min(n_samples, per_row // b))
        out = []
        for i in range(0, B, b):
            xb = x[i:i + b]
            yb = None if y is None else y[i:i + b]
            mu, stat = self.encode(xb, yb)
            _, x_flat = self._flat(xb)
            x_flat = _as_float(x_flat)
            acc = None
            for j in range(0, n_samples, k_chunk):
                k = min(k_chunk, n_samples - j)
                zk, log_q = self._sample_z(mu, stat, k, generator)
                params, logvar = self.decode(zk, yb)
                log_w = -self._nll(x_flat, params, logvar) + self._log_prior_and_q(zk, mu, stat, log_q)
                lse = torch.logsumexp(log_w, 0)
                acc = lse if acc is None else torch.logaddexp(acc, lse)
            out.append(acc - math.log(n_samples))
        return torch.cat(out)

    def _activation_width(self):
        """The widest activation one (sample, input) pair produces: sizes the chunks of log_likelihood."""
        widths = [2 * self.data_dim, self.latent_dim * self.latent_dim, *self.config["hidden_dims"]]
        if self.conv:
            c, h, w = self.input_shape
            widths.append(max(self.config["conv_channels"]) * h * w // 4)
        return max(widths)

    @torch.no_grad()
    def elbo(self, x, y=None, *, generator=None):
        """Per-sample ELBO (the model's bound: importance-weighted for IWAE), (B,)."""
        return self.forward(x, y, generator=generator).elbo

    @torch.no_grad()
    def sample(self, n, y=None, *, generator=None, mean=True):
        """n samples from the model, shaped (n, *input_shape). mean=True returns the decoder's mean (Gaussian) or
        probabilities (Bernoulli), the usual picture; mean=False samples x ~ p(x|z) too. A CVAE takes labels y
        (n,), or cycles through the classes when y is None."""
        device = self._device()
        z = torch.randn(n, self.latent_dim, device=device, dtype=self._dtype(), generator=generator)
        if self.n_classes and y is None:
            y = torch.arange(n, device=device) % self.n_classes
        params, logvar = self.decode(z, y)
        return self._emit(params, logvar, mean, generator).reshape(n, *self.input_shape)

    @torch.no_grad()
    def reconstruct(self, x, y=None, *, generator=None, mean=True):
        """The decoder's mean (or a sample, mean=False) at z = the posterior mean, shaped like x."""
        mu, _ = self.encode(x, y)
        params, logvar = self.decode(mu, y)
        return self._emit(params, logvar, mean, generator).reshape(x.shape)

    def _emit(self, params, logvar, mean, generator):
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(params)
            return p if mean else torch.bernoulli(p, generator=generator)
        if mean:
            return params
        std = torch.ones_like(params) if logvar is None else torch.exp(0.5 * logvar).expand_as(params)
        return params + std * torch.randn(params.shape, device=params.device, dtype=params.dtype,
                                          generator=generator)


def _as_float(x):
    """Data stays in its floating dtype (the ops promote it against the decoder's, e.g. under bf16 autocast)."""
    return x if x.is_floating_point() else x.float()


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


def build_model(config):
    """A VAE from the dict that `VAE.config` (and a checkpoint) holds."""
    cfg = dict(config)
    input_dim = cfg.pop("input_dim")
    latent_dim = cfg.pop("latent_dim")
    cfg["hidden_dims"] = tuple(cfg.get("hidden_dims", (512, 256)))
    if "conv_channels" in cfg:
        cfg["conv_channels"] = tuple(cfg["conv_channels"])
    return VAE(input_dim, latent_dim, **cfg)
