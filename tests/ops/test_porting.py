"""docs/porting.md, tested: each original loss written in its own words (the code of pytorch/examples' VAE, AntixK's
PyTorch-VAE vanilla VAE, pythae's VAE and a torch.distributions VAE) against its fastvae port, values and gradients,
at the same inputs (the decoder's output, mu, logvar). Float64: the two agree to 1e-12 relative (the same sums, in
another order); float32 to 1e-5 (one rounding per element, summed over 784 pixels)."""
import math

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F

import fastvae

D, LATENT, B = 784, 20, 16
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-4)}


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    x = (torch.rand(B, D, generator=g, dtype=torch.float64) < 0.3).to(dtype)
    mu = torch.randn(B, LATENT, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(B, LATENT, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    return logits, x, mu, logvar


def check(original, port, leaves, dtype):
    """The port's value and gradients equal the original's; returns the largest relative differences."""
    a, b = original(*leaves), port(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    ga = torch.autograd.grad(a, wanted, allow_unused=True, materialize_grads=True)
    gb = torch.autograd.grad(b, wanted, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(b, a, **TOL[dtype])
    for x, y in zip(gb, ga):
        torch.testing.assert_close(x, y, **TOL[dtype])
    rel = lambda u, v: ((u - v).abs().max() / v.abs().max().clamp_min(1e-300)).item()  # noqa: E731
    return rel(b, a), max(rel(x, y) for x, y in zip(gb, ga))


# ---- pytorch/examples, vae/main.py ----------------------------------------------------------------------------------
# decoder: return torch.sigmoid(self.fc4(h3))  ->  port: return self.fc4(h3)   (logits; sigmoid when sampling)

def examples_loss(recon_x, x, mu, logvar):  # verbatim, but for recon_x = sigmoid(logits) computed by the decoder
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction='sum')
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def examples_port(logits, x, mu, logvar):
    BCE = fastvae.bernoulli_nll(x.view(-1, 784), logits, reduction="sum")
    KLD = fastvae.kl_normal(mu, logvar, reduction="sum")
    return BCE + KLD


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pytorch_examples_vae(dtype):
    check(lambda l, x, m, v: examples_loss(torch.sigmoid(l), x, m, v), examples_port, inputs(dtype), dtype)


# ---- AntixK/PyTorch-VAE, models/vanilla_vae.py -------------------------------------------------------------------

def antixk_loss(recons, input, mu, log_var, kld_weight):
    recons_loss = F.mse_loss(recons, input)
    kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim=1), dim=0)
    return recons_loss + kld_weight * kld_loss


def antixk_port(recons, input, mu, log_var, kld_weight):
    # mse_loss (the mean over elements of (recons - input)^2) = 2 / D * (gaussian_nll's batch mean - D/2 log 2 pi)
    d = input[0].numel()
    recons_loss = 2.0 / d * (fastvae.gaussian_nll(input, recons) - 0.5 * d * math.log(2 * math.pi))
    kld_loss = fastvae.kl_normal(mu, log_var)  # "mean": the batch mean of per-sample sums, as AntixK's
    return recons_loss + kld_weight * kld_loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_antixk_vanilla_vae(dtype):
    logits, x, mu, logvar = inputs(dtype)
    recons = logits.detach().tanh().requires_grad_()  # a decoder's image output
    image = x.reshape(B, 1, 28, 28)
    check(lambda r, i, m, v: antixk_loss(r, i, m, v, 0.005), lambda r, i, m, v: antixk_port(r, i, m, v, 0.005),
          [recons.reshape(B, 1, 28, 28), image, mu, logvar], dtype)


# ---- pythae, models/vae/vae_model.py ------------------------------------------------------------------------------

def pythae_loss(recon_x, x, mu, log_var, reconstruction_loss):
    if reconstruction_loss == "mse":
        recon_loss = 0.5 * F.mse_loss(recon_x.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1),
                                      reduction="none").sum(dim=-1)
    elif reconstruction_loss == "bce":
        recon_loss = F.binary_cross_entropy(recon_x.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1),
                                            reduction="none").sum(dim=-1)
    KLD = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)
    return (recon_loss + KLD).mean(dim=0), recon_loss.mean(dim=0), KLD.mean(dim=0)


def pythae_port(out, x, mu, log_var, reconstruction_loss):
    if reconstruction_loss == "mse":  # out: the decoder's reconstruction
        d = x[0].numel()
        recon_loss = fastvae.gaussian_nll(x, out, reduction="none") - 0.5 * d * math.log(2 * math.pi)
    elif reconstruction_loss == "bce":  # out: the decoder's logits (its last sigmoid removed)
        recon_loss = fastvae.bernoulli_nll(x, out, reduction="none")
    KLD = fastvae.kl_normal(mu, log_var, reduction="none")
    return (recon_loss + KLD).mean(dim=0), recon_loss.mean(dim=0), KLD.mean(dim=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_pythae_vae(kind, dtype):
    logits, x, mu, logvar = inputs(dtype)
    to_recon = torch.sigmoid if kind == "bce" else (lambda t: t)
    for i in range(3):
        check(lambda o, x_, m, v: pythae_loss(to_recon(o), x_, m, v, kind)[i],
              lambda o, x_, m, v: pythae_port(o, x_, m, v, kind)[i], [logits, x, mu, logvar], dtype)


# ---- a torch.distributions VAE -----------------------------------------------------------------------------------

def distributions_loss(logits_of, x, mu, logvar, Normal, Bernoulli, z=None):
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.rsample() if z is None else z
    rec = Bernoulli(logits=logits_of(z)).log_prob(x).sum(-1)
    kl = td.kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    return (kl - rec).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", ["import", "patch"])
def test_torch_distributions_vae(how, dtype):
    logits, x, mu, logvar = inputs(dtype)
    w = torch.randn(LATENT, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    z = torch.randn(B, LATENT, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)
    decoder = lambda t: t @ w  # noqa: E731

    def original(m, v):
        return distributions_loss(decoder, x, m, v, td.Normal, td.Bernoulli, z=m + torch.exp(0.5 * v) * z)

    def port(m, v):
        if how == "import":  # from fastvae.distributions import Normal, Bernoulli
            N, Bern = fastvae.distributions.Normal, fastvae.distributions.Bernoulli
            return distributions_loss(decoder, x, m, v, N, Bern, z=m + torch.exp(0.5 * v) * z)
        with fastvae.patch():
            return original(m, v)
    check(original, port, [mu, logvar], dtype)
    # rsample itself: the same law, another stream (fastvae's Philox)
    torch.manual_seed(0)
    with fastvae.patch():
        s = td.Normal(torch.zeros(20000, dtype=dtype), torch.ones(20000, dtype=dtype)).rsample()
    assert abs(s.mean().item()) < 0.05 and abs(s.std().item() - 1) < 0.05
