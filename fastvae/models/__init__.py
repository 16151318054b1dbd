"""The VAE family, composed of parts around the fused fastvae ops.

`VAE(...)` takes the family's arguments and composes one model from these parts (each an nn.Module of its own file;
every likelihood, KL, sampling and distance term goes through the ops of one backend, backends.py):

    part           attribute          kinds                                         interface
    networks       conv_encoder,      MLP (mlp), conv front and back                nn.Module: tensor -> tensor
                   encoder, decoder,  (ConvEncoder, ConvDecoder)
                   conv_decoder
    posterior      q_z                DiagonalGaussian, FullGaussian (Cholesky)     n_stats, split(stats) -> (mu,
                                                                                    stat), sample(ops, mu, stat, k,
                                                                                    generator) -> (z, log q),
                                                                                    sample_kl(...) -> (z, KL) | None
    prior          p_z                StandardNormal                                log_prob(ops, z), sample(n, ...)
    likelihood     p_x                Gaussian (variance learned / fixed /          n_outputs, free_parameters(),
                                      network), Bernoulli                           params(out, free), nll(ops, x,
                                                                                    params), mean(params),
                                                                                    sample(params, generator)
    regulariser    regulariser        KL (the bound's own, weighted by beta),       name, metric, distance(ops, z,
                                      MMD, SlicedWasserstein                        generator, gather) -> D | None
    labels         labels             NoLabels, OneHotLabels (CVAE)                 n_classes, one_hot(y, n, ...),
                                                                                    default(n, device)

The VAE owns the objective: recon + beta * KL with the closed-form KL where the posterior has one (one fused op),
else the importance-weighted bound over n_samples draws with log p(z) - log q(z|x) (IWAE, the full
posterior), plus reg_weight * the regulariser's batch distance (WAE-MMD, InfoVAE, SWAE); and log_likelihood,
sample, reconstruct (vae.py; the log-likelihood's streamed estimate and posterior_elbo are estimators.py's, M2's
objective and classifier m2.py's, VAEOutput is output.py's). A part's free parameters (the learned log-variance) are
held by the VAE under the part's names, so the state-dict names are those of every checkpoint written so far.
build_model and model_class (registry.py) pick the class a config describes: the base class's file imports no
subclass.

A new family member is a new part, not a flag on VAE:
  - a likelihood (Laplace, a discretised logistic, a categorical per pixel): a Likelihood subclass in likelihoods.py
    (its n_outputs, params, nll, mean, sample; its ops from the backend), its name in LIKELIHOODS and one line
    where VAE.__init__ picks p_x;
  - a regulariser (the energy distance): a SampleDistance subclass in regularisers.py naming its op
    (fastvae.energy_distance), its name in DIVERGENCES and its line in VAE.__init__;
  - hierarchical latents (HierarchicalVAE, hierarchical.py) are the one sibling class: a level's posterior
    depends on the prior's top-down state, which the independent q_z / p_z parts cannot express with a closed-form
    KL per level, so it subclasses VAE keeping every other part and replaces the latent path (encode_stats,
    forward, posterior_elbo, _log_weights, _prior_sample); registry.FAMILY picks it for a config with latent_dims;
  - VAE-GAN (VAEGAN, vaegan.py): a Discriminator part whose features carry the reconstruction term, and the
    trainer's hook: a model's make_optimizers(cfg) (VAE: one Adam) and train_step(...) (VAE: backward and step);
    VAEGAN's are the paper's three optimisers, each on its own loss; registry.FAMILY picks it for a config with
    gamma;
  - semi-supervised (M2, m2.py): a Labels part that takes -1 for an unlabelled input, a classifier network q(y|x),
    and an objective that marginalises the bound over y for the unlabelled inputs.
"""
from .backends import BACKENDS, Ops
from .estimators import MAX_LL_SAMPLES
from .hierarchical import HierarchicalVAE
from .likelihoods import LIKELIHOODS, VARIANCES
from .networks import ACTIVATIONS
from .output import VAEOutput
from .posteriors import POSTERIORS
from .registry import build_model, model_class
from .regularisers import DIVERGENCES
from .vae import VAE
from .vaegan import VAEGAN

__all__ = ["VAE", "HierarchicalVAE", "VAEGAN", "VAEOutput", "build_model", "model_class", "MAX_LL_SAMPLES",
           "LIKELIHOODS", "VARIANCES", "DIVERGENCES", "POSTERIORS", "BACKENDS", "ACTIVATIONS", "Ops"]
