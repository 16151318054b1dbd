"""VAE: the parts composed into a model, its objective (the ELBO, the importance-weighted bound, plus a batch
distance), generation, and the trainer's hook. The importance-sampled log-likelihood is estimators.py's, the
semi-supervised (M2) objective m2.py's; the factory that rebuilds a model from its config is registry.py's."""
import math
from contextlib import nullcontext

import torch
from torch import nn

from .. import _checks
from ..ops.distances import ESTIMATORS, KERNELS
from . import estimators, m2
from .backends import BACKENDS, Ops
from .estimators import MAX_LL_SAMPLES  # noqa: F401 (fastvae.models.vae.MAX_LL_SAMPLES, as before)
from .labels import NoLabels, OneHotLabels, SemiSupervisedLabels
from .likelihoods import LIKELIHOODS, VARIANCES, Bernoulli, Gaussian, Logistic, LogisticMixture
from .networks import ACTIVATIONS, ConvDecoder, ConvEncoder, count_parameters, mlp
from .output import VAEOutput, as_float
from .posteriors import POSTERIORS, DiagonalGaussian, FullGaussian
from .priors import StandardNormal
from .regularisers import DIVERGENCES, KL, MMD, Energy, SlicedWasserstein

# Adam moves a parameter by about lr per step: the one learned log-variance of the Gaussian likelihood has to
# travel from 0 to about -5 on [0, 1] pixel data, which at lr 1e-3 takes thousands of steps and holds the whole
# model back (a straight-line loss curve). Its own, larger step size lets it follow the reconstruction error.
VARIANCE_LR_SCALE = 20.0


class VAE(nn.Module):
    """A variational autoencoder whose loss terms are the fused fastvae ops.

    input_dim: an int (flat data) or a shape (C, H, W); image inputs are flattened unless conv=True, which puts a
        small conv encoder/decoder in front of / behind the MLPs.
    hidden_dims: widths of the encoder MLP (the decoder mirrors them); () gives linear encoder and decoder.
    likelihood: "gaussian" (variance "learned": one log-variance trained by gradient descent, "fixed": unit,
        "network": the decoder also outputs a per-feature log-variance), "bernoulli" (decoder outputs logits), or for
        8-bit data "logistic" (a discretized logistic per value) and "logistic_mixture" (n_mix of them per value).
    beta: the weight of the KL term (beta-VAE; for WAE/SWAE beta > 0 adds the KL as InfoVAE does).
    divergence: "kl" (the ELBO), "mmd" (WAE-MMD / InfoVAE: reg_weight * MMD(z, prior) with `kernel`, `bandwidth`
        (None: 1, as fastvae.mmd reads it)),
        "sliced" (SWAE: reg_weight * SW_2^2(z, prior) with n_projections directions) or "energy" (reg_weight *
        the energy distance between z and prior draws, estimated with mmd_estimator: the Radon-Sobolev VAE).
    n_samples: k > 1 trains on the importance-weighted bound (IWAE), logsumexp over the k samples.
    posterior: "diagonal" or "full" (the encoder outputs a Cholesky factor with a softplus-positive diagonal).
    n_classes: > 0 makes it a CVAE: forward(x, y) with integer labels y, one-hot into encoder and decoder.
    semi_supervised: with n_classes >= 2, Kingma et al.'s (2014) M2: a classifier q(y|x) beside the encoder, labels
        y = -1 for unlabelled inputs, whose bound is summed over the classes weighted by q(y|x) (all classes in one
        batched pass), plus q's entropy; labelled inputs add alpha * -log q(y|x). p(y) is uniform.
    backend: "fastvae" (fused ops) or "reference" (plain-PyTorch ops with the same signatures).

    The model is composed of parts (see fastvae.models): p_x (the likelihood), q_z (the posterior), p_z (the
    prior), regulariser, labels, and the networks conv_encoder (conv=True), encoder, decoder, conv_decoder.
    """

    def __init__(self, input_dim, latent_dim, hidden_dims=(512, 256), likelihood="gaussian", variance="learned",
                 beta=1.0, divergence="kl", n_samples=1, posterior="diagonal", n_classes=0, *, reg_weight=10.0,
                 kernel="imq", bandwidth=None, mmd_estimator="unbiased", kernel_scales=(1.0,), n_projections=128,
                 conv=False, conv_channels=(32, 64), activation="silu", backend="fastvae", n_mix=10,
                 semi_supervised=False, alpha=50.0):
        super().__init__()
        for name, value, allowed in (("likelihood", likelihood, LIKELIHOODS), ("variance", variance, VARIANCES),
                                     ("divergence", divergence, DIVERGENCES), ("posterior", posterior, POSTERIORS),
                                     ("backend", backend, BACKENDS), ("kernel", kernel, KERNELS),
                                     ("mmd_estimator", mmd_estimator, ESTIMATORS),
                                     ("activation", activation, tuple(ACTIVATIONS))):
            _checks.choice(value, name, allowed)
        if _checks.is_int(input_dim):
            shape = (_checks.integer(input_dim, "input_dim", 1),)
        elif isinstance(input_dim, (list, tuple)) and input_dim:
            shape = tuple(_checks.integers(input_dim, "input_dim", 1))
        else:
            raise TypeError(f"input_dim must be a positive int or a shape such as (C, H, W); got {input_dim!r}")
        conv = _checks.boolean(conv, "conv")
        if conv and len(shape) != 3:
            raise ValueError(f"conv=True needs input_dim = (C, H, W); got {input_dim!r}")
        hidden = _checks.integers(hidden_dims, "hidden_dims", 1)
        conv_channels = _checks.integers(conv_channels, "conv_channels", 1, length=2)
        semi_supervised = _checks.boolean(semi_supervised, "semi_supervised")
        if semi_supervised and (not _checks.is_int(n_classes) or n_classes < 2 or divergence != "kl"
                                or n_samples != 1):
            raise ValueError(f"semi_supervised=True (M2) needs n_classes >= 2, divergence='kl' and n_samples=1; got "
                             f"n_classes={n_classes!r}, divergence={divergence!r}, n_samples={n_samples!r}")
        if not isinstance(kernel_scales, (list, tuple)) or not kernel_scales:
            raise TypeError(f"kernel_scales must be a non-empty list of positive numbers; got {kernel_scales!r}")
        kernel_scales = [_checks.real(s, "kernel_scales", positive=True) for s in kernel_scales]
        self.config = dict(
            input_dim=list(shape) if len(shape) > 1 else shape[0],
            latent_dim=_checks.integer(latent_dim, "latent_dim", 1), hidden_dims=hidden, likelihood=likelihood,
            variance=variance, beta=_checks.real(beta, "beta"),
            divergence=divergence, n_samples=_checks.integer(n_samples, "n_samples", 1), posterior=posterior,
            n_classes=_checks.integer(n_classes, "n_classes", 0), reg_weight=_checks.real(reg_weight, "reg_weight"),
            kernel=kernel, bandwidth=None if bandwidth is None else _checks.real(bandwidth, "bandwidth", positive=True),
            mmd_estimator=mmd_estimator, kernel_scales=kernel_scales,
            n_projections=_checks.integer(n_projections, "n_projections", 1), conv=conv,
            conv_channels=conv_channels, activation=activation, backend=backend)
        n_mix = _checks.integer(n_mix, "n_mix", 1)
        if likelihood == "logistic_mixture":  # recorded where it matters (other models' configs stay as they were)
            self.config["n_mix"] = n_mix
        alpha = _checks.real(alpha, "alpha")
        if semi_supervised:     # (only then: the configs of every other model stay those of older checkpoints)
            self.config.update(semi_supervised=True, alpha=alpha)
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
        self.semi_supervised = semi_supervised
        self.alpha = alpha
        # Set by the trainer under DDP: a differentiable all-gather, so that MMD / SW see the global batch.
        self.gather = None

        # the parts (no random draws: the networks below take torch's generator in the order they always did)
        d = self.latent_dim
        channels = shape[0] if conv else 1
        self.p_x = {"gaussian": lambda: Gaussian(variance, channels=channels), "bernoulli": Bernoulli,
                    "logistic": lambda: Logistic(channels=channels),
                    "logistic_mixture": lambda: LogisticMixture(n_mix, channels=channels)}[likelihood]()
        self.q_z = DiagonalGaussian(d) if posterior == "diagonal" else FullGaussian(d)
        self.p_z = StandardNormal(d)
        self.regulariser = {"kl": KL, "mmd": lambda: MMD(kernel, self.bandwidth, mmd_estimator, kernel_scales),
                            "sliced": lambda: SlicedWasserstein(self.n_projections),
                            "energy": lambda: Energy(mmd_estimator)}[divergence]()
        self.labels = (SemiSupervisedLabels(self.n_classes) if semi_supervised else OneHotLabels(self.n_classes)
                       if self.n_classes else NoLabels())
        # parameters that no network computes (a learned log-variance): held here, under the part's names
        free = self.p_x.free_parameters()
        for name, value in free.items():
            self.register_parameter(name, nn.Parameter(value))
        self._free = tuple(free)

        # the networks
        n_params = count_parameters(shape, d, self.q_z.n_stats, self.p_x.n_outputs, self.n_classes, hidden, conv,
                                    conv_channels)
        _checks.check_fits(4 * n_params, torch.get_default_device(), f"a model of {n_params} parameters (from "
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
        if semi_supervised:     # q(y|x)
            self.classifier = m2.classifier_network(self.data_dim, hidden, self.n_classes, activation)

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
        return self.q_z.split(self.encode_stats(x, y))

    def encode_stats(self, x, y=None):
        """The encoder's output (B, q_z.n_stats): q(z|x)'s statistics in the encoder's own unconstrained
        parametrisation (encode reads them with q_z.split); what posterior refinement optimises."""
        h = self._flat(x)
        if self.conv:
            h = self.conv_encoder(x.reshape(x.shape[0], *self.input_shape))
        c = self._one_hot(y, x.shape[0])
        return self.encoder(h if c is None else torch.cat([h, c], -1))

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
    # training: the trainer's hook (a model with other optimisers or another step overrides both)

    own_step = False        # True: train_step does not run forward through step_model (no DDP, no compile)

    def make_optimizers(self, cfg):
        """{name: optimizer} of a run with settings cfg: one Adam (lr, adam_beta1, adam_beta2, adam_eps) over every
        parameter, the learned log-variance with VARIANCE_LR_SCALE times the step size. A checkpoint stores a single
        one as `optimizer`."""
        lr = cfg["lr"]
        if self._free:
            rest = [p for n, p in self.named_parameters() if n not in self._free]
            groups = [{"params": rest, "lr": lr},
                      {"params": [getattr(self, n) for n in self._free], "lr": lr * VARIANCE_LR_SCALE}]
        else:
            groups = [{"params": list(self.parameters()), "lr": lr}]
        return {"optimizer": torch.optim.Adam(groups, lr=lr, betas=(cfg["adam_beta1"], cfg["adam_beta2"]),
                                              eps=cfg["adam_eps"])}

    def train_step(self, step_model, x, y, optimizers, *, generator=None, distance_generator=None,
                   autocast=nullcontext):
        """One training step on a batch: the loss of step_model (this model, or it wrapped by DDP / compile)
        backpropagated and the one optimizer stepped; returns the VAEOutput."""
        opt = optimizers["optimizer"]
        with autocast():
            out = step_model(x, y, generator=generator, distance_generator=distance_generator)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out

    # ------------------------------------------------------------------------------------------------------------
    # the objective

    def forward(self, x, y=None, *, generator=None, distance_generator=None):
        """The loss and its terms for a batch x (B, ...) (and labels y for a CVAE). generator draws the
        posterior noise; distance_generator the projections / prior samples of MMD and SW (under DDP every rank
        passes the same one)."""
        x_flat = self._forward_input(x, generator, distance_generator)
        if self.semi_supervised:
            return m2.objective(self, x, x_flat, y, generator)
        loss_per_sample, elbo, recon, kl, z = self._bound(x, x_flat, y, generator)
        loss = loss_per_sample.mean()
        distance = self.regulariser.distance(self.ops, z, distance_generator, self.gather)
        if distance is not None:
            loss = loss + self.reg_weight * distance
        return VAEOutput(loss=loss, elbo=elbo, recon=recon, kl=kl, z=z, distance=distance)

    def _forward_input(self, x, generator, distance_generator):
        """forward's checks of its arguments and of the memory its activations need; returns x flat (B, D)."""
        _checks.generator(generator)
        _checks.generator(distance_generator, name="distance_generator")
        x_flat = as_float(self._flat(x))
        if not torch.compiler.is_compiling():
            _checks.check_fits(self.n_samples * x.shape[0] * self._activation_width() * x.element_size(), x.device,
                               f"the activations of n_samples={self.n_samples} x a batch of {x.shape[0]}")
        return x_flat

    def _bound(self, x, x_flat, y, generator):
        """(loss per sample, elbo, recon, kl, z) of the bound for inputs x (and labels y), x_flat their flat view."""
        ops = self.ops
        mu, stat = self.encode(x, y)
        k = self.n_samples
        # the KL in closed form where the posterior has one against the standard normal prior (fused with the draw)
        closed_form = self.q_z.sample_kl(ops, mu, stat, generator) if k == 1 else None
        if closed_form is not None:
            z, kl = closed_form
            recon = self.p_x.nll(ops, x_flat, self.decode(z, y))
            return recon + self.beta * kl, -(recon + kl), recon, kl, z
        zk, log_q = self.q_z.sample(ops, mu, stat, k, generator)      # (k, B, d), (k, B)
        recon_k = self.p_x.nll(ops, x_flat, self.decode(zk, y))        # (k, B)
        log_ratio = self.p_z.log_prob(ops, zk) - log_q                 # log p(z) - log q(z|x), (k, B)
        log_w = -recon_k + self.beta * log_ratio
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        elbo = torch.logsumexp(-recon_k + log_ratio, 0) - math.log(k) if self.beta != 1.0 else bound
        return -bound, elbo, recon_k.mean(0), -log_ratio.mean(0), zk[0] if k == 1 else zk

    def classify(self, x):
        """q(y|x) of a semi-supervised (M2) model: log-probabilities of the classes, (B, n_classes)."""
        return m2.classify(self, x)

    # ------------------------------------------------------------------------------------------------------------
    # evaluation and generation

    @torch.no_grad()
    def log_likelihood(self, x, y=None, *, n_samples=1000, generator=None, chunk_elements=estimators.LL_CHUNK_ELEMENTS,
                       progress=None):
        """Importance-sampled estimate of log p(x) per sample, (B,): log (1/K) sum_k p(x, z_k) / q(z_k | x) with
        z_k ~ q(z|x) (the IWAE bound at K; K = 1 is the ELBO's single-sample weight). Streamed: the inputs are cut
        in blocks and the K samples in chunks, so that one chunk (samples x inputs x the widest activation) holds
        at most chunk_elements values whatever K and B are; each chunk goes through the decoder as one batch and is
        folded into a running log-sum-exp per input. n_samples: 1..MAX_LL_SAMPLES (10^6). progress: None, or a
        callable given the number of (input, sample) pairs each chunk has done (B * K in all). A semi-supervised
        (M2) model without y estimates log p(x) = log sum_y p(y) p(x|y), ceil(K / n_classes) samples per class."""
        return estimators.log_likelihood(self, x, y, n_samples, generator, chunk_elements, progress)

    def _log_weights(self, ops, x_flat, stats, y, k, generator):
        """log p(x, z_k) - log q(z_k | x) at k draws z_k ~ q(z|x) per input, (k, B), for the encoder's stats."""
        mu, stat = self.q_z.split(stats)
        zk, log_q = self.q_z.sample(ops, mu, stat, k, generator)
        return -self.p_x.nll(ops, x_flat, self.decode(zk, y)) + (self.p_z.log_prob(ops, zk) - log_q)

    def posterior_elbo(self, x, stats, y=None, *, generator=None):
        """A one-sample estimate of the ELBO log p(x|z) - KL(q || p(z)) per input, (B,), for the posterior whose
        statistics (B, q_z.n_stats) are given (as encode_stats returns them, or refined): the KL in closed form
        where the posterior has one, else log q(z|x) - log p(z) at the sample. The plain ELBO whatever the model's
        beta and k; differentiable in stats."""
        return estimators.posterior_elbo(self, x, stats, y, generator)

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
        n = _checks.integer(n, "n", 1)
        _checks.boolean(mean, "mean")
        _checks.generator(generator)
        device = self._device()
        _checks.check_fits(n * self._activation_width() * torch.finfo(self._dtype()).bits // 8, device,
                           f"sampling n={n} at once")
        z = self._prior_sample(n, generator)
        if y is None:
            y = self.labels.default(n, device)
        return self._emit(self.decode(z, y), mean, generator).reshape(n, *self.input_shape)

    def _prior_sample(self, n, generator):
        """n draws of the latent the decoder reads, z ~ p(z), (n, latent_dim)."""
        return self.p_z.sample(n, self._device(), self._dtype(), generator)

    @torch.no_grad()
    def reconstruct(self, x, y=None, *, generator=None, mean=True):
        """The decoder's mean (or a sample, mean=False) at z = the posterior mean, shaped like x (an M2 model
        without y: under the class q(y|x) finds most probable)."""
        _checks.boolean(mean, "mean")
        _checks.generator(generator)
        if self.semi_supervised and y is None:
            y = self.classify(x).argmax(-1)          # M2: the class q(y|x) finds most probable
        mu, _ = self.encode(x, y)
        return self._emit(self.decode(mu, y), mean, generator).reshape(x.shape)

    def _emit(self, params, mean, generator):
        return self.p_x.mean(params) if mean else self.p_x.sample(params, generator)

