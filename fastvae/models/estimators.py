"""The estimates that evaluation reads from a model beside its training bound.

log_likelihood (VAE.log_likelihood): the importance-sampled log p(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x) with
z_k ~ q(z|x), streamed so that its memory does not grow with K or the batch. The weights log p(x, z_k) -
log q(z_k | x) are the model's own (its _log_weights: HierarchicalVAE's are over every level), the sizes its
_activation_width; an M2 model without labels marginalises over the classes.
posterior_elbo (VAE.posterior_elbo): the one-sample ELBO under a given (e.g. refined) posterior, what posterior
refinement (fastvae.train.evaluation.refine_posteriors) optimises; HierarchicalVAE has its own."""
import math

import torch

from .. import _checks
from .output import as_float

# Elements (samples x widest layer) one chunk of log_likelihood may hold: ~64 MiB of float32 activations.
LL_CHUNK_ELEMENTS = 1 << 24
# The most importance samples log_likelihood takes per input (200 times the K = 5000 of the IWAE paper): its cost
# grows linearly with K, and a K of 2^63 would loop for ever.
MAX_LL_SAMPLES = 10**6


def log_likelihood(model, x, y, n_samples, generator, chunk_elements, progress):
    """VAE.log_likelihood of model (its docstring says what each argument is), (B,)."""
    n_samples = _checks.integer(n_samples, "n_samples", 1, MAX_LL_SAMPLES)
    chunk_elements = _checks.integer(chunk_elements, "chunk_elements", 1)
    _checks.generator(generator)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable; got {type(progress).__name__}")
    model._flat(x)
    b, k_chunk = ll_chunks(model, x.shape[0], n_samples, chunk_elements)
    _checks.check_fits(k_chunk * b * model._activation_width() * x.element_size(), x.device,
                       f"a chunk of chunk_elements={chunk_elements}")
    out = []
    for i in range(0, x.shape[0], b):
        xb = x[i:i + b]
        if model.semi_supervised and y is None:
            # M2: log p(x) = log sum_y p(y) p(x|y), uniform p(y), each p(x|y) from ceil(K / C) of the samples
            c = model.n_classes
            per_class = -(-n_samples // c)
            ll = [_block_log_likelihood(model, xb, torch.full((xb.shape[0],), j, device=xb.device), per_class,
                                        k_chunk, generator, progress) for j in range(c)]
            out.append(torch.logsumexp(torch.stack(ll), 0) - math.log(c))
        else:
            out.append(_block_log_likelihood(model, xb, None if y is None else y[i:i + b], n_samples, k_chunk,
                                             generator, progress))
    return torch.cat(out)


def _block_log_likelihood(model, xb, yb, n_samples, k_chunk, generator, progress):
    """log (1/K) sum_k p(x, z_k | y) / q(z_k | x, y) for a block of inputs, K = n_samples in chunks of k_chunk."""
    ops = model.ops
    stats = model.encode_stats(xb, yb)
    x_flat = as_float(model._flat(xb))
    acc = None                                           # running log-sum-exp of the weights, (b,)
    for j in range(0, n_samples, k_chunk):
        k = min(k_chunk, n_samples - j)
        lse = torch.logsumexp(model._log_weights(ops, x_flat, stats, yb, k, generator), 0)
        acc = lse if acc is None else torch.logaddexp(acc, lse)
        if progress is not None:
            progress(k * xb.shape[0])
    return acc - math.log(n_samples)


def ll_chunks(model, n_inputs, n_samples, chunk_elements):
    """(inputs per block, samples per chunk) of log_likelihood: their product times the widest activation is at
    most chunk_elements (or one pair, when a single one is wider)."""
    per_chunk = max(1, chunk_elements // model._activation_width())     # (input, sample) pairs one chunk holds
    b = min(n_inputs, per_chunk)
    return b, max(1, min(n_samples, per_chunk // b))


def posterior_elbo(model, x, stats, y, generator):
    """VAE.posterior_elbo of model: the one-sample ELBO per input, (B,), under the posterior of the given stats."""
    _checks.generator(generator)
    x_flat = as_float(model._flat(x))
    if stats.dim() != 2 or stats.shape != (x_flat.shape[0], model.q_z.n_stats):
        raise ValueError(f"stats must have shape ({x_flat.shape[0]}, {model.q_z.n_stats}) (B, q_z.n_stats); "
                         f"got {tuple(stats.shape)}")
    ops = model.ops
    mu, stat = model.q_z.split(stats)
    closed_form = model.q_z.sample_kl(ops, mu, stat, generator)
    if closed_form is not None:
        z, kl = closed_form
    else:
        zk, log_q = model.q_z.sample(ops, mu, stat, 1, generator)
        z, kl = zk[0], log_q[0] - model.p_z.log_prob(ops, zk)[0]
    return -(model.p_x.nll(ops, x_flat, model.decode(z, y)) + kl)
