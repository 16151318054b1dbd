"""VAEGAN: a VAE whose reconstruction term is measured in a discriminator's features (Larsen, Sønderby, Larochelle &
Winther 2016, "Autoencoding beyond pixels using a learned similarity metric").

Parts: the VAE's encoder, posterior (diagonal Gaussian), prior, decoder and pixel likelihood, plus a Discriminator
part. Dis_l(x) are the discriminator's features at its last hidden layer (the paper's l-th layer: one more hidden
layer and the real/fake logit follow it). The losses of one batch (section 2 and Algorithm 1 of the paper):

    L_prior    = KL(q(z|x) || N(0, I))                                     (closed form, fused with the draw of z)
    L_llike    = -log N(Dis_l(x) | Dis_l(Dec(z)), s^2 I)                    (fastvae.gaussian_nll on the features)
    L_GAN      = BCE(D(x), real) + BCE(D(Dec(z)), fake) + BCE(D(Dec(z_p)), fake),  z_p ~ p(z)
               = -[log D(x) + log(1 - D(Dec(z))) + log(1 - D(Dec(z_p)))]

and three optimisers, each stepping only its own network on its own loss (the paper's "limiting error signals"):
the encoder on beta * L_prior + L_llike, the decoder on gamma * L_llike - L_GAN (the paper's minimax sign), the
discriminator on L_GAN. Dec(z) is the decoder's mean (the probabilities of a Bernoulli likelihood). The target
features Dis_l(x) are constants of L_llike (the discriminator does not learn from it).

The feature variance s^2: the paper's identity (feature_variance="fixed"), or by default one learned log-variance
(feature_variance="learned", the decoder's optimiser on its gradient of gamma * L_llike; RMSProp's step does not
depend on gamma's scale). Why learned: the scale of an MLP discriminator's features is arbitrary and small (SiLU of
small activations), so under unit variance L_llike barely depends on z and the KL wins: on Fashion-MNIST the
posterior carried 2-3 nats (KL) after 3 epochs with unit variance, about 30 with the learned one (see docs/vae.md).

The pixel likelihood is not part of this objective. Its one free parameter (the learned log-variance) is fitted to
the pixel reconstruction error of the detached decoder means, so that the ELBO and the importance-sampled
log-likelihood that `evaluate` and `fastvae eval` report (VAE.forward, VAE.log_likelihood: the pixel bound) are
those of the trained encoder/decoder under a calibrated variance; that term moves no network.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from .networks import ConvEncoder, mlp
from .output import VAEOutput, as_float
from .vae import VARIANCE_LR_SCALE, VAE

# the optimisers, in the order Algorithm 1 updates them (the names of the checkpoint's `optimizers` entry)
OPTIMIZERS = ("encoder", "decoder", "discriminator")
FEATURE_VARIANCES = ("learned", "fixed")


class Discriminator(nn.Module):
    """x (B, D) -> (Dis_l(x) (B, hidden[-1]), the real/fake logit (B,)): an MLP of the encoder's widths on the flat
    input (behind the conv front ConvEncoder for conv=True), whose last hidden layer gives the features; one more
    hidden layer of that width and a linear logit follow."""

    def __init__(self, shape, hidden, conv=False, conv_channels=(32, 64)):
        super().__init__()
        self.shape = tuple(shape)
        if conv:
            self.conv = ConvEncoder(shape, tuple(conv_channels))
            n_in = self.conv.out_features
        else:
            self.conv = None
            n_in = 1
            for s in shape:
                n_in *= s
        self.features = mlp([n_in, *hidden], final_activation=True)
        self.head = mlp([hidden[-1], hidden[-1], 1])

    def forward(self, x):
        h = x if self.conv is None else self.conv(x.reshape(x.shape[0], *self.shape))
        f = self.features(h)
        return f, self.head(f).squeeze(-1)


class VAEGAN(VAE):
    """VAE-GAN (Larsen et al. 2016): VAE's encoder and decoder with a Discriminator part whose features carry the
    reconstruction term; trained by train_step with three optimisers (make_optimizers).

    gamma: the weight of L_llike against the GAN loss in the decoder's objective. feature_variance: "learned" (one
    log-variance s^2 of the features) or "fixed" (the paper's identity). hidden_dims: as VAE's (the
    discriminator takes the encoder's widths; at least one). likelihood: "gaussian" (variance "learned" or "fixed")
    or "bernoulli": the decoder's mean goes to the discriminator. beta weights L_prior. The posterior is diagonal,
    one sample, no labels."""

    own_step = True         # trains by its own train_step (not the one loss of VAE.forward): no DDP, no compile

    def __init__(self, input_dim, latent_dim, hidden_dims=(512, 256), likelihood="gaussian", variance="learned",
                 beta=1.0, *, gamma=1e-2, feature_variance="learned", conv=False, conv_channels=(32, 64),
                 backend="fastvae"):
        if likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli' for a VAE-GAN (its decoder's mean goes "
                             f"to the discriminator); got {likelihood!r}")
        if likelihood == "gaussian" and variance == "network":
            raise ValueError("variance must be 'learned' or 'fixed' for a VAE-GAN (a decoder variance network would "
                             "train the decoder on the pixel likelihood); got 'network'")
        _checks.choice(feature_variance, "feature_variance", FEATURE_VARIANCES)
        hidden = _checks.integers(hidden_dims, "hidden_dims", 1)
        if not hidden:
            raise ValueError("hidden_dims must hold at least one width for a VAE-GAN (its discriminator's features "
                             "are the last hidden layer); got []")
        super().__init__(input_dim, latent_dim, hidden, likelihood, variance, beta, conv=conv,
                         conv_channels=conv_channels, backend=backend)
        self.gamma = _checks.real(gamma, "gamma")
        self.config = dict(input_dim=self.config["input_dim"], latent_dim=self.latent_dim, hidden_dims=hidden,
                           likelihood=likelihood, variance=variance, beta=self.beta, gamma=self.gamma,
                           feature_variance=feature_variance, conv=conv, conv_channels=self.config["conv_channels"],
                           backend=backend)
        self.feature_variance = feature_variance
        self.discriminator = Discriminator(self.input_shape, hidden, conv, self.config["conv_channels"])
        if feature_variance == "learned":       # the log of s^2, held like the pixel likelihood's log_variance
            self.feature_log_variance = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------------------------------------------------------

    def parameter_groups(self):
        """{optimiser name: its parameters (name -> parameter)}: the encoder (conv front, encoder MLP), the
        discriminator, the decoder (decoder MLP, conv back, the learned feature log-variance and the pixel
        likelihood's free log-variance).
        Disjoint, and together every parameter of the model."""
        groups = {name: {} for name in OPTIMIZERS}
        for n, p in self.named_parameters():
            top = n.split(".")[0]
            groups["encoder" if top in ("encoder", "conv_encoder") else
                   "discriminator" if top == "discriminator" else "decoder"][n] = p
        return groups

    def make_optimizers(self, cfg):
        """The paper's three RMSProp optimisers (lr cfg["lr"]; the preset's is the paper's 3e-4); the learned
        log-variances (features, pixels) have their own step size as in VAE.make_optimizers."""
        lr, opts = cfg["lr"], {}
        variances = (*self._free, "feature_log_variance")
        for name, params in self.parameter_groups().items():
            rest = [p for n, p in params.items() if n not in variances]
            groups = [{"params": rest, "lr": lr}]
            free = [p for n, p in params.items() if n in variances]
            if free:
                groups.append({"params": free, "lr": lr * VARIANCE_LR_SCALE})
            opts[name] = torch.optim.RMSprop(groups, lr=lr)
        return opts

    def losses(self, x, *, generator=None):
        """(VAEOutput of the batch, {optimiser name: its scalar loss}) for x (B, ...): the encoder's beta * L_prior +
        L_llike, the decoder's gamma * L_llike - L_GAN (plus the pixel variance's fit, which moves no network), the
        discriminator's L_GAN; batch means. The output's loss is the encoder's, its recon and elbo the pixel
        likelihood's (detached decoder means: what evaluate reports), and its terms L_llike, L_GAN and the
        decoder's loss."""
        _checks.generator(generator)
        x_flat = as_float(self._flat(x))
        ops = self.ops
        mu, logvar = self.encode(x)
        z, kl = self.q_z.sample_kl(ops, mu, logvar, generator)
        params = self.decode(z)
        x_rec = self.p_x.mean(params)
        x_prior = self.p_x.mean(self.decode(self._prior_sample(x.shape[0], generator)))
        f_x, d_x = self.discriminator(x_flat.to(x_rec.dtype))
        f_rec, d_rec = self.discriminator(x_rec)
        _, d_prior = self.discriminator(x_prior)
        llike = self.feature_nll(f_x, f_rec)
        gan = (F.binary_cross_entropy_with_logits(d_x, torch.ones_like(d_x))
               + F.binary_cross_entropy_with_logits(d_rec, torch.zeros_like(d_rec))
               + F.binary_cross_entropy_with_logits(d_prior, torch.zeros_like(d_prior)))
        recon = self.p_x.nll(ops, x_flat, (params[0].detach(), *params[1:]))    # pixels: moves the variance only
        losses = dict(encoder=(self.beta * kl + llike).mean(), decoder=self.gamma * llike.mean() - gan + recon.mean(),
                      discriminator=gan)
        terms = dict(llike=llike.detach().mean(), gan=gan.detach(), decoder=(self.gamma * llike.mean() - gan).detach())
        out = VAEOutput(loss=losses["encoder"], elbo=-(recon + kl).detach(), recon=recon.detach(), kl=kl.detach(),
                        z=z.detach(), terms=terms)
        return out, losses

    def feature_nll(self, f_x, f_rec):
        """L_llike per sample, (B,): -log N(Dis_l(x) | Dis_l(x~), s^2 I) summed over the features (0.5 log 2 pi
        each included), the fused gaussian_nll with the scalar learned log-variance (or unit variance, "fixed");
        Dis_l(x) is the target (no gradient)."""
        return self.ops.get("gaussian_nll", "a VAE-GAN")(f_x.detach(), f_rec, getattr(self, "feature_log_variance",
                                                                                      None), reduction="none")

    def train_step(self, step_model, x, y, optimizers, *, generator=None, distance_generator=None,
                   autocast=nullcontext):
        """One step of Algorithm 1: every loss's gradient with respect to its own optimiser's parameters alone
        (one graph, all gradients taken before any parameter moves), then the three steps."""
        if set(optimizers) != set(OPTIMIZERS):
            raise ValueError(f"optimizers must be the VAE-GAN's {list(OPTIMIZERS)}; got {sorted(optimizers)}")
        with autocast():
            out, losses = self.losses(x, generator=generator)
        grads = {}
        for name in OPTIMIZERS:
            params = [p for g in optimizers[name].param_groups for p in g["params"]]
            grads[name] = (params, torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True))
        for name in OPTIMIZERS:
            optimizers[name].zero_grad(set_to_none=True)
            for p, g in zip(*grads[name]):
                p.grad = g
            optimizers[name].step()
        return out
