"""The semi-supervised model M2 (Kingma, Rezende, Mohamed & Welling 2014): VAE(..., n_classes=C,
semi_supervised=True). Its parts are the VAE's, with the labels part SemiSupervisedLabels (labels.py: -1 marks an
unlabelled input) and a classifier network q(y|x) beside the encoder (classifier_network); VAE.forward hands its
batches to objective, VAE.classify to classify, and log_likelihood (estimators.py) marginalises p(x) over the
classes. p(y) is uniform."""
import math

import torch

from .networks import mlp
from .output import VAEOutput, as_float


def classifier_network(data_dim, hidden, n_classes, activation):
    """q(y|x): the encoder's widths on the flat input, one logit per class."""
    return mlp([data_dim, *hidden, n_classes], activation=activation)


def classify(model, x):
    """q(y|x) of a semi-supervised (M2) model: log-probabilities of the classes, (B, n_classes)."""
    if not model.semi_supervised:
        raise ValueError("classify needs a semi-supervised (M2) model: VAE(..., semi_supervised=True)")
    return torch.log_softmax(model.classifier(as_float(model._flat(x)).to(model._dtype())).float(), -1)


def objective(model, x, x_flat, y, generator):
    """M2's objective (Kingma et al. 2014, eq. 9): a labelled input's -bound on log p(x, y) plus alpha times
    -log q(y|x); an unlabelled one's sum over the classes y of q(y|x) times -bound(x, y), minus q's entropy.
    Unlabelled inputs go through the model's bound (_bound) once for all classes: (C * U) rows, class-major."""
    y = model.labels.check(y, x.shape[0], model._device(), partial=True).long()
    c, log_c = model.n_classes, math.log(model.n_classes)
    log_q_y = model.classify(x)                                                # (B, C)
    lab = (y >= 0).nonzero().squeeze(1)
    unl = (y < 0).nonzero().squeeze(1)
    b = x.shape[0]
    terms = [x_flat.new_zeros(b, dtype=torch.float32) for _ in range(4)]      # loss, elbo, recon, kl
    z = x_flat.new_zeros(b, model.latent_dim, dtype=torch.float32)
    classification = None
    if lab.numel():
        loss_l, elbo_l, recon_l, kl_l, z_l = model._bound(x[lab], x_flat[lab], y[lab], generator)
        classification = -log_q_y[lab].gather(1, y[lab, None]).squeeze(1)
        for t, v in zip(terms, (loss_l + log_c, elbo_l - log_c, recon_l, kl_l)):
            t[lab] = v.float()
        z[lab] = z_l.float()
    if unl.numel():
        n = unl.numel()
        xs, xf = x[unl], x_flat[unl]
        classes = torch.arange(c, device=y.device).repeat_interleave(n)
        loss_u, elbo_u, recon_u, kl_u, z_u = model._bound(xs.repeat(c, *[1] * (xs.dim() - 1)), xf.repeat(c, 1),
                                                          classes, generator)
        log_q = log_q_y[unl].T                                                 # (C, U)
        q = log_q.exp()
        loss_cu = loss_u.float().reshape(c, n) + log_c
        elbo_cu = elbo_u.float().reshape(c, n) - log_c
        terms[0][unl] = (q * (loss_cu + log_q)).sum(0)          # sum_y q (-bound(x, y)) - H(q)
        terms[1][unl] = (q * (elbo_cu - log_q)).sum(0)          # the bound on log p(x)
        terms[2][unl] = (q * recon_u.float().reshape(c, n)).sum(0)
        terms[3][unl] = (q * kl_u.float().reshape(c, n)).sum(0)
        best = log_q.argmax(0)                                   # (U,): each input's most probable class
        z[unl] = z_u.float().reshape(c, n, -1)[best, torch.arange(n, device=y.device)]
    loss = terms[0].mean()
    if classification is not None:
        loss = loss + model.alpha * classification.mean()
    return VAEOutput(loss=loss, elbo=terms[1], recon=terms[2], kl=terms[3], z=z, classification=classification)
