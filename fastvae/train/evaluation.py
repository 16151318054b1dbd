"""Test metrics of a model: its mean ELBO, loss, reconstruction and KL, and the importance-sampled log-likelihood
with what papers report of it: the negative log-likelihood in nats per image, in bits per dimension, and the
estimator's standard error over the images."""
import math
import sys
from contextlib import contextmanager

import torch

from .. import _checks


class RunningMoments:
    """The count, mean and sum of squared deviations of a stream of numbers, merged batch by batch in float64
    (Chan et al.'s parallel update): memory that does not grow with the number of values."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values):
        v = values.detach().double().flatten()
        n = v.numel()
        if n == 0:
            return
        mean = v.mean().item()
        m2 = ((v - mean) ** 2).sum().item()
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    @property
    def std(self):
        """The sample standard deviation (n - 1 in the denominator); None for fewer than 2 values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else None


def log_likelihood_report(moments, data_dim):
    """The numbers of an importance-sampled test log-likelihood, from the RunningMoments of the per-image estimates
    log p(x_i) and the D = data_dim values (pixels) of an image:
      log_likelihood  the mean over images of log p(x_i), in nats
      nll             its negative, the number papers report (nats per image)
      nll_se          the standard error of that mean over the images: std(log p(x_i)) / sqrt(n) (None for n < 2)
      bits_per_dim    nll / (D ln 2)
      bits_per_dim_se nll_se / (D ln 2)"""
    se = None if moments.std is None else moments.std / math.sqrt(moments.n)
    per_dim = data_dim * math.log(2)
    return dict(log_likelihood=moments.mean, nll=-moments.mean, nll_se=se, bits_per_dim=-moments.mean / per_dim,
                bits_per_dim_se=None if se is None else se / per_dim)


@contextmanager
def _evaluating(model):
    """The model in eval mode and without its DDP gather (rank 0 evaluates alone: no collective calls), both
    restored afterwards."""
    was_training, gather = model.training, model.gather
    model.eval()
    model.gather = None
    try:
        yield
    finally:
        model.train(was_training)
        model.gather = gather


@torch.no_grad()
def evaluate(model, x, y=None, *, n_samples=0, batch_size=4096, seed=0, progress=False, per_image=None):
    """Test metrics: mean ELBO, loss, reconstruction and KL per sample, with a fixed noise seed so that evaluations
    are comparable (a semi-supervised model: the bound on log p(x), labels hidden, and with labels y the accuracy
    of its classifier q(y|x)); with n_samples = K > 0 also the importance-sampled log-likelihood
    (log_likelihood_report's keys). The test set goes through in batches of batch_size and the K samples in the
    model's chunks, so memory does not grow with K or the number of samples. progress: a progress bar of the
    log-likelihood (on stderr). The bound's pass over the batches comes first, then the log-likelihood's: the ELBO
    is the same number whatever n_samples.
    per_image: a list that receives the per-image estimates log p(x_i), a float64 CPU tensor per batch (to compare
    models image by image: the paired differences on the same images have a far smaller error than each mean)."""
    device = x.device
    g = torch.Generator(device).manual_seed(seed)
    sums = dict(elbo=0.0, loss=0.0, recon=0.0, kl=0.0)
    m2 = model.semi_supervised
    if m2:
        sums["accuracy"] = 0.0
    ll = RunningMoments()
    n = x.shape[0]
    if n == 0:
        raise ValueError("evaluate: x holds no samples")
    bar = None
    if progress and n_samples:
        from tqdm.auto import tqdm
        bar = tqdm(total=n * n_samples, desc=f"log-likelihood (K={n_samples})", unit="sample", unit_scale=True,
                   dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    try:
        with _evaluating(model):
            # two passes, the bound's then the log-likelihood's, both drawing from g: the ELBO of every batch is
            # drawn alike whether or not the log-likelihood follows (one stream interleaving both gave the ELBO of
            # a second batch other noise with K > 0, so that a run's final ELBO differed from its last epoch's)
            for i in range(0, n, batch_size):
                xb = x[i:i + batch_size]
                yb = None if y is None or not model.n_classes else y[i:i + batch_size]
                if m2:      # the bound on log p(x) (labels hidden), and q(y|x)'s accuracy on the labels
                    if yb is not None:
                        sums["accuracy"] += (model.classify(xb).argmax(-1) == yb).sum().item()
                    yb = torch.full((xb.shape[0],), -1, dtype=torch.long, device=device)
                out = model(xb, yb, generator=g, distance_generator=torch.Generator(device).manual_seed(seed + i))
                b = xb.shape[0]
                sums["elbo"] += out.elbo.sum().item()
                sums["loss"] += out.loss.item() * b
                sums["recon"] += out.recon.sum().item()
                sums["kl"] += out.kl.sum().item()
            for i in range(0, n if n_samples else 0, batch_size):
                xb = x[i:i + batch_size]
                yb = None if y is None or not model.n_classes or m2 else y[i:i + batch_size]
                lp = model.log_likelihood(xb, yb, n_samples=n_samples, generator=g,
                                          progress=None if bar is None else bar.update)
                ll.add(lp)
                if per_image is not None:
                    per_image.append(lp.detach().double().cpu())
    finally:
        if bar is not None:
            bar.close()
    res = {k: v / n for k, v in sums.items()}
    if m2 and y is None:
        del res["accuracy"]
    if n_samples:
        res.update(log_likelihood_report(ll, model.data_dim))
    return res


# Steps of posterior refinement at most: each is a decoder pass over the test set (10^5 is already hours on a GPU).
MAX_REFINE_STEPS = 10**5
# One-sample ELBO estimates per input that refine_posteriors averages, before and after refinement.
REFINE_EVAL_DRAWS = 16


def refine_posteriors(model, x, y=None, *, steps, lr=1e-2, n_eval=REFINE_EVAL_DRAWS, batch_size=1024, seed=0,
                      progress=None):
    """The amortisation gap: how much better each input's own posterior fits than the one the encoder gives.
    Starting from the encoder's statistics (encode_stats: q(z|x) in the encoder's own parametrisation), each
    input's statistics are optimised on their own (Adam, lr, `steps` steps on a fresh one-sample ELBO estimate each,
    the model fixed: per-datapoint inference as before amortised encoders), in batches of batch_size inputs that go
    through the fused ops together. Returns the mean over inputs of the ELBO before and after, both estimated with
    the same n_eval draws per input (a fixed seed):
      amortised_elbo, refined_elbo  nats per input (the plain ELBO, beta = 1, one sample per draw)
      amortisation_gap              refined_elbo - amortised_elbo
    progress: None, or a callable given the number of inputs each batch has finished."""
    steps = _checks.integer(steps, "steps", 1, MAX_REFINE_STEPS)
    lr = _checks.real(lr, "lr", positive=True)
    n_eval = _checks.integer(n_eval, "n_eval", 1, 10**4)
    batch_size = _checks.integer(batch_size, "batch_size", 1)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable; got {type(progress).__name__}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("refine_posteriors: x holds no samples")
    if model.n_classes and y is None:
        raise ValueError(f"refine_posteriors: the model is a cvae of {model.n_classes} classes; give the labels y")
    device = x.device
    sums = dict(amortised_elbo=0.0, refined_elbo=0.0)
    with _evaluating(model):
        for i in range(0, n, batch_size):
            xb = x[i:i + batch_size]
            yb = None if y is None or not model.n_classes else y[i:i + batch_size]
            with torch.no_grad():
                start = model.encode_stats(xb, yb)
            sums["amortised_elbo"] += _mean_elbo(model, xb, yb, start, n_eval, seed + i).sum().item()
            stats = start.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([stats], lr=lr)
            g = torch.Generator(device).manual_seed(seed + i + 1)
            with torch.enable_grad():
                for _ in range(steps):
                    # the inputs' estimates are independent: the gradient of the sum is each input's own
                    loss = -model.posterior_elbo(xb, stats, yb, generator=g).sum()
                    stats.grad, = torch.autograd.grad(loss, [stats])
                    opt.step()
            sums["refined_elbo"] += _mean_elbo(model, xb, yb, stats.detach(), n_eval, seed + i).sum().item()
            if progress is not None:
                progress(xb.shape[0])
    res = {k: v / n for k, v in sums.items()}
    res["amortisation_gap"] = res["refined_elbo"] - res["amortised_elbo"]
    return res


@torch.no_grad()
def _mean_elbo(model, x, y, stats, n_draws, seed):
    """The per-input ELBO averaged over n_draws one-sample estimates drawn from seed, (B,)."""
    g = torch.Generator(x.device).manual_seed(seed)
    return sum(model.posterior_elbo(x, stats, y, generator=g) for _ in range(n_draws)) / n_draws


def supervised_baseline(model, x, y, test_x, test_y, *, steps=2000, batch_size=100, lr=1e-3, seed=0):
    """The test accuracy of a classifier of the same network as a semi-supervised model's q(y|x) (a fresh copy of
    its classifier's architecture), trained on the labelled examples x, y alone: cross-entropy, Adam(lr), `steps`
    steps of batch_size examples drawn by seed. What M2's accuracy is compared with."""
    from ..models.networks import mlp
    if not model.semi_supervised:
        raise ValueError("supervised_baseline needs a semi-supervised (M2) model")
    torch.manual_seed(seed)
    device = x.device
    net = mlp([model.data_dim, *model.config["hidden_dims"], model.n_classes],
              activation=model.config["activation"]).to(device, model._dtype())
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 31)
    flat = x.reshape(x.shape[0], -1).to(model._dtype())
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g).to(device)
        loss = torch.nn.functional.cross_entropy(net(flat[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat([net(t.reshape(t.shape[0], -1).to(model._dtype())).argmax(-1)
                          for t in test_x.split(4096)])
    return (pred == test_y).double().mean().item()
