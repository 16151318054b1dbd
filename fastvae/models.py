"""The thin VAE family: small encoder/decoder networks around the fused fastvae ops.

Every likelihood, KL, sampling and distance term goes through the ops of one backend: `fastvae` (the fused
kernels) or `fastvae.reference` (plain PyTorch, the benchmarks' eager baseline). The two backends draw their
noise from different streams but compute the same quantities, so a model trains the same in distribution.

One class covers: a Gaussian (variance learned / fixed / from the network) or Bernoulli likelihood, beta-VAE,
CVAE (one-hot label into encoder and decoder), IWAE (n_samples > 1), a full-covariance posterior (Cholesky
factor, `reparameterize_tril`), WAE-MMD / InfoVAE (`divergence="mmd"`) and SWAE (`divergence="sliced"`).
"""
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import _checks
from .distances import ESTIMATORS, KERNELS

LIKELIHOODS = ("gaussian", "bernoulli")
VARIANCES = ("learned", "fixed", "network")
DIVERGENCES = ("kl", "mmd", "sliced")
POSTERIORS = ("diagonal", "full")
BACKENDS = ("fastvae", "reference")

# Elements (samples x widest layer) one chunk of log_likelihood may hold: ~64 MiB of float32 activations.
_LL_CHUNK_ELEMENTS = 1 << 24
# The most importance samples log_likelihood takes per input (200 times the K = 5000 of the IWAE paper): its cost
# grows linearly with K, and a K of 2^63 would loop for ever.
MAX_LL_SAMPLES = 10**6


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
        _choice("kernel", kernel, KERNELS)
        _choice("mmd_estimator", mmd_estimator, ESTIMATORS)
        if _is_int(input_dim):
            shape = (_int("input_dim", input_dim, 1),)
        elif isinstance(input_dim, (list, tuple)) and input_dim:
            shape = tuple(_ints("input_dim", input_dim, 1))
        else:
            raise TypeError(f"input_dim must be a positive int or a shape such as (C, H, W); got {input_dim!r}")
        conv = _bool("conv", conv)
        if conv and len(shape) != 3:
            raise ValueError(f"conv=True needs input_dim = (C, H, W); got {input_dim!r}")
        hidden = _ints("hidden_dims", hidden_dims, 1)
        conv_channels = _ints("conv_channels", conv_channels, 1, length=2)
        self.config = dict(
            input_dim=list(shape) if len(shape) > 1 else shape[0], latent_dim=_int("latent_dim", latent_dim, 1),
            hidden_dims=hidden, likelihood=likelihood, variance=variance, beta=_real("beta", beta),
            divergence=divergence, n_samples=_int("n_samples", n_samples, 1), posterior=posterior,
            n_classes=_int("n_classes", n_classes, 0), reg_weight=_real("reg_weight", reg_weight),
            kernel=kernel, bandwidth=None if bandwidth is None else _real("bandwidth", bandwidth, positive=True),
            mmd_estimator=mmd_estimator, n_projections=_int("n_projections", n_projections, 1), conv=conv,
            conv_channels=conv_channels, backend=backend)
        self.input_shape = shape
        self.data_dim = math.prod(shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.variance = variance if likelihood == "gaussian" else None
        self.beta = self.config["beta"]
        self.divergence = divergence
        self.n_samples = self.config["n_samples"]
        self.posterior = posterior
        self.n_classes = self.config["n_classes"]
        self.reg_weight = self.config["reg_weight"]
        self.kernel = kernel
        self.bandwidth = self.config["bandwidth"]
        self.mmd_estimator = mmd_estimator
        self.n_projections = self.config["n_projections"]
        self.backend = backend
        # Set by the trainer under DDP: a differentiable all-gather, so that MMD / SW see the global batch.
        self.gather = None

        d = self.latent_dim
        self.conv = conv
        n_params = self._n_parameters()
        _check_fits(4 * n_params, torch.get_default_device(), f"a model of {n_params} parameters (from input_dim, "
                    f"latent_dim, hidden_dims, n_classes, conv_channels)")
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
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a tensor of integer class labels; got {type(y).__name__}")
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"y must hold integer class labels; got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) (one label per sample); got {tuple(y.shape)}")
        if y.device != self._device():
            raise ValueError(f"y must be on the model's device {self._device()}; got {y.device}")
        # one_hot checks the range on the CPU only; one check (one sync) here covers every device. A compiled
        # graph skips it (a data-dependent branch would break the graph).
        if not torch.compiler.is_compiling() and bool(((y < 0) | (y >= self.n_classes)).any()):
            raise ValueError(f"y must hold class labels in [0, {self.n_classes}); found labels from {int(y.min())} to "
                             f"{int(y.max())}")
        return nn.functional.one_hot(y.long(), self.n_classes).to(self._dtype())

    def _device(self):
        return next(self.parameters()).device

    def _dtype(self):
        return next(self.parameters()).dtype

    def _check_tensor(self, t, name):
        """t is a non-empty floating tensor on the model's device, of its dtype (any floating dtype under autocast)."""
        _checks.tensor(t, name)
        _checks.nonempty_batch(t, name)
        device, dtype = self._device(), self._dtype()
        if t.device != device:
            raise ValueError(f"{name} must be on the model's device {device}; got {t.device}")
        if t.dtype != dtype and not torch.is_autocast_enabled(device.type):
            raise TypeError(f"{name} must have the model's dtype {dtype} (convert the model, e.g. model.double(), "
                            f"or the data); got {t.dtype}")

    def _flat(self, x):
        """x as (B, *input_shape) or (B, D), checked -> x flattened (B, D)."""
        self._check_tensor(x, "x")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.data_dim:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.input_shape))}) or (B, {self.data_dim}); "
                             f"got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.data_dim)

    def encode(self, x, y=None):
        """q(z|x): (mu, logvar) for a diagonal posterior, (mu, scale_tril) for a full one."""
        h = self._flat(x)
        if self.conv:
            h = self.conv_encoder(x.reshape(x.shape[0], *self.input_shape))
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
        self._check_tensor(z, "z")
        if z.dim() < 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}) or (k, B, {self.latent_dim}); got "
                             f"{tuple(z.shape)}")
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
        _generator("generator", generator)
        _generator("distance_generator", distance_generator)
        x_flat = _as_float(self._flat(x))
        if not torch.compiler.is_compiling():
            _check_fits(self.n_samples * x.shape[0] * self._activation_width() * x.element_size(), x.device,
                        f"the activations of n_samples={self.n_samples} x a batch of {x.shape[0]}")
        mu, stat = self.encode(x, y)
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
        samples and the batch are cut in chunks of about chunk_elements activations, so K = 5000 fits.
        n_samples: 1..MAX_LL_SAMPLES (10^6)."""
        n_samples = _int("n_samples", n_samples, 1, MAX_LL_SAMPLES)
        chunk_elements = _int("chunk_elements", chunk_elements, 1)
        _generator("generator", generator)
        self._flat(x)
        width = self._activation_width()
        B = x.shape[0]
        per_row = max(1, chunk_elements // width)           # samples x inputs one chunk may hold
        b = min(B, max(1, per_row))                          # inputs per block
        k_chunk = max(1, min(n_samples, per_row // b))
        _check_fits(k_chunk * b * width * x.element_size(), x.device, f"a chunk of chunk_elements={chunk_elements}")
        out = []
        for i in range(0, B, b):
            xb = x[i:i + b]
            yb = None if y is None else y[i:i + b]
            mu, stat = self.encode(xb, yb)
            x_flat = _as_float(self._flat(xb))
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

    def _n_parameters(self):
        """The number of parameters of the layers __init__ builds, counted before they are allocated (an upper
        bound for the conv layers)."""
        def mlp(sizes):
            return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        d, nc, hidden = self.latent_dim, self.n_classes, self.config["hidden_dims"]
        n_stats = d + (d * (d + 1) // 2 if self.posterior == "full" else d)
        out_mult = 2 if self.variance == "network" else 1
        if not self.conv:
            return mlp([self.data_dim + nc, *hidden, n_stats]) + mlp([d + nc, *hidden[::-1], self.data_dim * out_mult])
        (c, h, w), (c0, c1) = self.input_shape, self.config["conv_channels"]
        grid = c1 * (h // 4) * (w // 4)
        convs = 17 * (c * c0 + c0 * c1 + c1 * c0 + c0 * c * out_mult)    # 4x4 kernels and their biases
        dec_out = hidden[0] if hidden else d + nc
        return convs + mlp([grid + nc, *hidden, n_stats]) + mlp([d + nc, *hidden[::-1]]) + (dec_out + 1) * grid

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
        n = _int("n", n, 1)
        _bool("mean", mean)
        _generator("generator", generator)
        device = self._device()
        _check_fits(n * self._activation_width() * torch.finfo(self._dtype()).bits // 8, device,
                    f"sampling n={n} at once")
        z = _randn((n, self.latent_dim), device, self._dtype(), generator)
        if self.n_classes and y is None:
            y = torch.arange(n, device=device) % self.n_classes
        params, logvar = self.decode(z, y)
        return self._emit(params, logvar, mean, generator).reshape(n, *self.input_shape)

    @torch.no_grad()
    def reconstruct(self, x, y=None, *, generator=None, mean=True):
        """The decoder's mean (or a sample, mean=False) at z = the posterior mean, shaped like x."""
        _bool("mean", mean)
        _generator("generator", generator)
        mu, _ = self.encode(x, y)
        params, logvar = self.decode(mu, y)
        return self._emit(params, logvar, mean, generator).reshape(x.shape)

    def _emit(self, params, logvar, mean, generator):
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(params)
            where = p.device if generator is None else generator.device
            return p if mean else torch.bernoulli(p.to(where), generator=generator).to(p.device)
        if mean:
            return params
        std = torch.ones_like(params) if logvar is None else torch.exp(0.5 * logvar).expand_as(params)
        return params + std * _randn(params.shape, params.device, params.dtype, generator)


def _generator(name, g):
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(g).__name__}")


def _randn(shape, device, dtype, generator):
    """Standard normals on device, drawn on the generator's device (a CPU generator serves a CUDA model, as the
    fused ops allow)."""
    where = device if generator is None else generator.device
    return torch.randn(shape, device=where, dtype=dtype, generator=generator).to(device)


def _as_float(x):
    """Data stays in its floating dtype (the ops promote it against the decoder's, e.g. under bf16 autocast)."""
    return x if x.is_floating_point() else x.float()


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(name, v, minimum, maximum=None):
    """v as an int in [minimum, maximum]: bools and floats (2.5, and 2.0 too) are refused, not truncated."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int; got {type(v).__name__} {v!r}")
    if v < minimum or (maximum is not None and v > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}; got {v}")
    return int(v)


def _ints(name, v, minimum, length=None):
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of ints; got {type(v).__name__} {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{name} must hold {length} ints; got {list(v)!r}")
    return [_int(f"{name}[{i}]", x, minimum) for i, x in enumerate(v)]


def _real(name, v, *, positive=False):
    """v as a finite float >= 0 (> 0 when positive)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number; got {type(v).__name__} {v!r}")
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}; got {v!r}")
    return float(v)


def _bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False; got {type(v).__name__} {v!r}")
    return v


def _device_memory(device):
    """The memory of device in bytes (physical memory for the CPU), or None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        from .data import _memory_bytes
        return _memory_bytes()
    return None


def _check_fits(n_bytes, device, what):
    """Refuses up front what could only end in an allocation failure (or the OOM killer) on device."""
    memory = _device_memory(torch.device(device))
    if memory is not None and n_bytes > memory:
        raise ValueError(f"{what} would need {n_bytes / 2**30:.1f} GiB, more than the {memory / 2**30:.1f} GiB of "
                         f"memory of {device}")


def build_model(config):
    """A VAE from the dict that `VAE.config` (and a checkpoint) holds: every key is a VAE argument (an unknown key
    is refused, naming it, as is a missing input_dim or latent_dim), and VAE checks each value."""
    if not isinstance(config, dict):
        raise TypeError(f"the model config must be a dict of VAE arguments; got {type(config).__name__}")
    known = [p for p in inspect.signature(VAE.__init__).parameters if p != "self"]
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ValueError(f"the model config has unknown key(s) {unknown}; known: {known}")
    missing = [k for k in ("input_dim", "latent_dim") if k not in config]
    if missing:
        raise ValueError(f"the model config lacks {missing}")
    return VAE(**config)
