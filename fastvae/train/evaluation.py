"""Test metrics of a model: its mean ELBO, loss, reconstruction and KL, and the importance-sampled log-likelihood
with what papers report of it: the negative log-likelihood in nats per image, in bits per dimension, and the
estimator's standard error over the images."""
import math
import sys

import torch


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


@torch.no_grad()
def evaluate(model, x, y=None, *, n_samples=0, batch_size=4096, seed=0, progress=False, per_image=None):
    """Test metrics: mean ELBO, loss, reconstruction and KL per sample, with a fixed noise seed so that evaluations
    are comparable; with n_samples = K > 0 also the importance-sampled log-likelihood (log_likelihood_report's
    keys). The test set goes through in batches of batch_size and the K samples in the model's chunks, so memory
    does not grow with K or the number of samples. progress: a progress bar of the log-likelihood (on stderr).
    per_image: a list that receives the per-image estimates log p(x_i), a float64 CPU tensor per batch (to compare
    models image by image: the paired differences on the same images have a far smaller error than each mean)."""
    was_training, gather = model.training, model.gather
    model.eval()
    model.gather = None      # rank 0 evaluates alone: no collective calls
    device = x.device
    g = torch.Generator(device).manual_seed(seed)
    sums = dict(elbo=0.0, loss=0.0, recon=0.0, kl=0.0)
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
        for i in range(0, n, batch_size):
            xb = x[i:i + batch_size]
            yb = None if y is None or not model.n_classes else y[i:i + batch_size]
            out = model(xb, yb, generator=g, distance_generator=torch.Generator(device).manual_seed(seed + i))
            b = xb.shape[0]
            sums["elbo"] += out.elbo.sum().item()
            sums["loss"] += out.loss.item() * b
            sums["recon"] += out.recon.sum().item()
            sums["kl"] += out.kl.sum().item()
            if n_samples:
                lp = model.log_likelihood(xb, yb, n_samples=n_samples, generator=g,
                                          progress=None if bar is None else bar.update)
                ll.add(lp)
                if per_image is not None:
                    per_image.append(lp.detach().double().cpu())
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
        model.gather = gather
    res = {k: v / n for k, v in sums.items()}
    if n_samples:
        res.update(log_likelihood_report(ll, model.data_dim))
    return res
