"""Test metrics of a model: its mean ELBO, loss, reconstruction and KL, and the importance-sampled log-likelihood."""
import torch


@torch.no_grad()
def evaluate(model, x, y=None, *, n_samples=0, batch_size=4096, seed=0):
    """Test metrics: mean ELBO, loss, reconstruction and KL (and the importance-sampled log-likelihood with
    n_samples > 0), per sample, with a fixed noise seed so that evaluations are comparable."""
    was_training, gather = model.training, model.gather
    model.eval()
    model.gather = None      # rank 0 evaluates alone: no collective calls
    device = x.device
    g = torch.Generator(device).manual_seed(seed)
    sums = dict(elbo=0.0, loss=0.0, recon=0.0, kl=0.0)
    ll = 0.0
    n = x.shape[0]
    if n == 0:
        raise ValueError("evaluate: x holds no samples")
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
            ll += model.log_likelihood(xb, yb, n_samples=n_samples, generator=g).sum().item()
    model.train(was_training)
    model.gather = gather
    res = {k: v / n for k, v in sums.items()}
    if n_samples:
        res["log_likelihood"] = ll / n
    return res
