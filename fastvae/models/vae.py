"""VAE: the parts composed into a model, its objective (the ELBO, the importance-weighted bound, plus a batch
distance), the importance-sampled log-likelihood, generation; and build_model, which rebuilds one from its config."""
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import _checks
from ..distances import ESTIMATORS, KERNELS
from . import checks
from .backends import BACKENDS, Ops
from .labels import NoLabels, OneHotLabels
from .likelihoods import LIKELIHOODS, VARIANCES, Bernoulli, Gaussian
from .networks import ACTIVATIONS, ConvDecoder, ConvEncoder, count_parameters, mlp
from .posteriors import POSTERIORS, DiagonalGaussian, FullGaussian
from .priors import StandardNormal
from .regularisers import DIVERGENCES, KL, MMD, SlicedWasserstein

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

    The model is composed of parts (see fastvae.models): p_x (the likelihood), q_z (the posterior), p_z (the
    prior), regulariser, labels, and the networks conv_encoder (conv=True), encoder, decoder, conv_decoder.
    """

    def __init__(self, input_dim, latent_dim, hidden_dims=(512, 256), likelihood="gaussian", variance="learned",
                 beta=1.0, divergence="kl", n_samples=1, posterior="diagonal", n_classes=0, *, reg_weight=10.0,
                 kernel="imq", bandwidth=None, mmd_estimator="unbiased", kernel_scales=(1.0,), n_projections=128,
                 conv=False, conv_channels=(32, 64), activation="silu", backend="fastvae"):
        super().__init__()
        for name, value, allowed in (("likelihood", likelihood, LIKELIHOODS), ("variance", variance, VARIANCES),
                                     ("divergence", divergence, DIVERGENCES), ("posterior", posterior, POSTERIORS),
                                     ("backend", backend, BACKENDS), ("kernel", kernel, KERNELS),
                                     ("mmd_estimator", mmd_estimator, ESTIMATORS),
                                     ("activation", activation, tuple(ACTIVATIONS))):
            _checks.choice(value, name, allowed)
        if checks.is_int(input_dim):
            shape = (checks.integer("input_dim", input_dim, 1),)
        elif isinstance(input_dim, (list, tuple)) and input_dim:
            shape = tuple(checks.integers("input_dim", input_dim, 1))
        else:
            raise TypeError(f"input_dim must be a positive int or a shape such as (C, H, W); got {input_dim!r}")
        conv = checks.boolean("conv", conv)
        if conv and len(shape) != 3:
            raise ValueError(f"conv=True needs input_dim = (C, H, W); got {input_dim!r}")
        hidden = checks.integers("hidden_dims", hidden_dims, 1)
        conv_channels = checks.integers("conv_channels", conv_channels, 1, length=2)
        if not isinstance(kernel_scales, (list, tuple)) or not kernel_scales:
            raise TypeError(f"kernel_scales must be a non-empty list of positive numbers; got {kernel_scales!r}")
        kernel_scales = [checks.real("kernel_scales", s, positive=True) for s in kernel_scales]
        self.config = dict(
            input_dim=list(shape) if len(shape) > 1 else shape[0],
            latent_dim=checks.integer("latent_dim", latent_dim, 1), hidden_dims=hidden, likelihood=likelihood,
            variance=variance, beta=checks.real("beta", beta),
            divergence=divergence, n_samples=checks.integer("n_samples", n_samples, 1), posterior=posterior,
            n_classes=checks.integer("n_classes", n_classes, 0), reg_weight=checks.real("reg_weight", reg_weight),
            kernel=kernel, bandwidth=None if bandwidth is None else checks.real("bandwidth", bandwidth, positive=True),
            mmd_estimator=mmd_estimator, kernel_scales=kernel_scales,
            n_projections=checks.integer("n_projections", n_projections, 1), conv=conv,
            conv_channels=conv_channels, activation=activation, backend=backend)
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
        self.conv = conv
        # Set by the trainer under DDP: a differentiable all-gather, so that MMD / SW see the global batch.
        self.gather = None

        # the parts (no random draws: the networks below take torch's generator in the order they always did)
        d = self.latent_dim
        self.p_x = Gaussian(variance, channels=shape[0] if conv else 1) if likelihood == "gaussian" else Bernoulli()
        self.q_z = DiagonalGaussian(d) if posterior == "diagonal" else FullGaussian(d)
        self.p_z = StandardNormal(d)
        self.regulariser = (KL() if divergence == "kl" else MMD(kernel, self.bandwidth, mmd_estimator, kernel_scales)
                            if divergence == "mmd" else SlicedWasserstein(self.n_projections))
        self.labels = OneHotLabels(self.n_classes) if self.n_classes else NoLabels()
        # parameters that no network computes (a learned log-variance): held here, under the part's names
        free = self.p_x.free_parameters()
        for name, value in free.items():
            self.register_parameter(name, nn.Parameter(value))
        self._free = tuple(free)

        # the networks
        n_params = count_parameters(shape, d, self.q_z.n_stats, self.p_x.n_outputs, self.n_classes, hidden, conv,
                                    conv_channels)
        checks.check_fits(4 * n_params, torch.get_default_device(), f"a model of {n_params} parameters (from "
                          f"input_dim, latent_dim, hidden_dims, n_classes, conv_channels)")
        if self.conv:
            self.conv_encoder = ConvEncoder(shape, tuple(conv_channels), activation)
            enc_in = self.conv_encoder.out_features
        else:
            enc_in = self.data_dim
        self.encoder = mlp([enc_in + self.n_classes, *hidden, self.q_z.n_stats], activation=activation)
        dec_hidden = hidden[::-1]
        if self.conv:
            dec_out = dec_hidden[-1] if dec_hidden else d + self.n_classes
            self.decoder = (mlp([d + self.n_classes, *dec_hidden], activation=activation) if dec_hidden
                            else nn.Identity())
            self.conv_decoder = ConvDecoder(dec_out, shape, shape[0] * self.p_x.n_outputs, tuple(conv_channels),
                                            activation)
        else:
            self.decoder = mlp([d + self.n_classes, *dec_hidden, self.data_dim * self.p_x.n_outputs],
                               activation=activation)

    # ------------------------------------------------------------------------------------------------------------
    # the pieces

    @property
    def ops(self):
        """The ops of this model's backend (looked up when a part calls one)."""
        return Ops(self.backend)

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

    def _one_hot(self, y, n):
        return self.labels.one_hot(y, n, self._device(), self._dtype())

    def encode(self, x, y=None):
        """q(z|x): (mu, logvar) for a diagonal posterior, (mu, scale_tril) for a full one."""
        h = self._flat(x)
        if self.conv:
            h = self.conv_encoder(x.reshape(x.shape[0], *self.input_shape))
        c = self._one_hot(y, x.shape[0])
        return self.q_z.split(self.encoder(h if c is None else torch.cat([h, c], -1)))

    def decode(self, z, y=None):
        """p(x|z) parameters for z (..., d): the mean (Gaussian) or logits (Bernoulli), flat (..., D), and the
        log-variance (a 0-dim parameter, a (..., D) tensor for variance="network", or None)."""
        self._check_tensor(z, "z")
        if z.dim() < 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}) or (k, B, {self.latent_dim}); got "
                             f"{tuple(z.shape)}")
        lead = z.shape[:-1]
        z2 = z.reshape(-1, self.latent_dim)
        c = self._one_hot(y, lead[-1])
        if c is not None:
            c = c.expand(*lead, self.n_classes).reshape(-1, self.n_classes)
            z2 = torch.cat([z2, c], -1)
        out = self.decoder(z2)
        if self.conv:
            out = self.conv_decoder(out)
        return self.p_x.params(out.reshape(*lead, -1), {name: getattr(self, name) for name in self._free})

    # ------------------------------------------------------------------------------------------------------------
    # the objective

    def forward(self, x, y=None, *, generator=None, distance_generator=None):
        """The loss and its terms for a batch x (B, ...) (and labels y for a CVAE). generator draws the
        posterior noise; distance_generator the projections / prior samples of MMD and SW (under DDP every rank
        passes the same one)."""
        checks.generator("generator", generator)
        checks.generator("distance_generator", distance_generator)
        x_flat = _as_float(self._flat(x))
        if not torch.compiler.is_compiling():
            checks.check_fits(self.n_samples * x.shape[0] * self._activation_width() * x.element_size(), x.device,
                              f"the activations of n_samples={self.n_samples} x a batch of {x.shape[0]}")
        ops = self.ops
        mu, stat = self.encode(x, y)
        k = self.n_samples
        # the KL in closed form where the posterior has one against the standard normal prior (fused with the draw)
        closed_form = self.q_z.sample_kl(ops, mu, stat, generator) if k == 1 else None
        if closed_form is not None:
            z, kl = closed_form
            recon = self.p_x.nll(ops, x_flat, self.decode(z, y))
            elbo = -(recon + kl)
            loss_per_sample = recon + self.beta * kl
        else:
            zk, log_q = self.q_z.sample(ops, mu, stat, k, generator)      # (k, B, d), (k, B)
            recon_k = self.p_x.nll(ops, x_flat, self.decode(zk, y))        # (k, B)
            log_ratio = self.p_z.log_prob(ops, zk) - log_q                 # log p(z) - log q(z|x), (k, B)
            log_w = -recon_k + self.beta * log_ratio
            bound = torch.logsumexp(log_w, 0) - math.log(k)
            recon = recon_k.mean(0)
            kl = -log_ratio.mean(0)
            elbo = torch.logsumexp(-recon_k + log_ratio, 0) - math.log(k) if self.beta != 1.0 else bound
            loss_per_sample = -bound
            z = zk[0] if k == 1 else zk
        loss = loss_per_sample.mean()
        distance = self.regulariser.distance(ops, z, distance_generator, self.gather)
        if distance is not None:
            loss = loss + self.reg_weight * distance
        return VAEOutput(loss=loss, elbo=elbo, recon=recon, kl=kl, z=z, distance=distance)

    # ------------------------------------------------------------------------------------------------------------
    # evaluation and generation

    @torch.no_grad()
    def log_likelihood(self, x, y=None, *, n_samples=1000, generator=None, chunk_elements=_LL_CHUNK_ELEMENTS,
                       progress=None):
        """Importance-sampled estimate of log p(x) per sample, (B,): log (1/K) sum_k p(x, z_k) / q(z_k | x) with
        z_k ~ q(z|x) (the IWAE bound at K; K = 1 is the ELBO's single-sample weight). Streamed: the inputs are cut
        in blocks and the K samples in chunks, so that one chunk (samples x inputs x the widest activation) holds
        at most chunk_elements values whatever K and B are; each chunk goes through the decoder as one batch and is
        folded into a running log-sum-exp per input. n_samples: 1..MAX_LL_SAMPLES (10^6). progress: None, or a
        callable given the number of (input, sample) pairs each chunk has done (B * K in all)."""
        n_samples = checks.integer("n_samples", n_samples, 1, MAX_LL_SAMPLES)
        chunk_elements = checks.integer("chunk_elements", chunk_elements, 1)
        checks.generator("generator", generator)
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be None or a callable; got {type(progress).__name__}")
        self._flat(x)
        b, k_chunk = self._ll_chunks(x.shape[0], n_samples, chunk_elements)
        checks.check_fits(k_chunk * b * self._activation_width() * x.element_size(), x.device,
                          f"a chunk of chunk_elements={chunk_elements}")
        ops = self.ops
        out = []
        for i in range(0, x.shape[0], b):
            xb = x[i:i + b]
            yb = None if y is None else y[i:i + b]
            mu, stat = self.encode(xb, yb)
            x_flat = _as_float(self._flat(xb))
            acc = None                                           # running log-sum-exp of the weights, (b,)
            for j in range(0, n_samples, k_chunk):
                k = min(k_chunk, n_samples - j)
                zk, log_q = self.q_z.sample(ops, mu, stat, k, generator)
                log_w = -self.p_x.nll(ops, x_flat, self.decode(zk, yb)) + (self.p_z.log_prob(ops, zk) - log_q)
                lse = torch.logsumexp(log_w, 0)
                acc = lse if acc is None else torch.logaddexp(acc, lse)
                if progress is not None:
                    progress(k * xb.shape[0])
            out.append(acc - math.log(n_samples))
        return torch.cat(out)

    def _ll_chunks(self, n_inputs, n_samples, chunk_elements):
        """(inputs per block, samples per chunk) of log_likelihood: their product times the widest activation is at
        most chunk_elements (or one pair, when a single one is wider)."""
        per_chunk = max(1, chunk_elements // self._activation_width())     # (input, sample) pairs one chunk holds
        b = min(n_inputs, per_chunk)
        return b, max(1, min(n_samples, per_chunk // b))

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
        n = checks.integer("n", n, 1)
        checks.boolean("mean", mean)
        checks.generator("generator", generator)
        device = self._device()
        checks.check_fits(n * self._activation_width() * torch.finfo(self._dtype()).bits // 8, device,
                          f"sampling n={n} at once")
        z = self.p_z.sample(n, device, self._dtype(), generator)
        if y is None:
            y = self.labels.default(n, device)
        return self._emit(self.decode(z, y), mean, generator).reshape(n, *self.input_shape)

    @torch.no_grad()
    def reconstruct(self, x, y=None, *, generator=None, mean=True):
        """The decoder's mean (or a sample, mean=False) at z = the posterior mean, shaped like x."""
        checks.boolean("mean", mean)
        checks.generator("generator", generator)
        mu, _ = self.encode(x, y)
        return self._emit(self.decode(mu, y), mean, generator).reshape(x.shape)

    def _emit(self, params, mean, generator):
        return self.p_x.mean(params) if mean else self.p_x.sample(params, generator)


def _as_float(x):
    """Data stays in its floating dtype (the ops promote it against the decoder's, e.g. under bf16 autocast)."""
    return x if x.is_floating_point() else x.float()


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
