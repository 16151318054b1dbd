"""The VAE family: every variant trains on digits, the bounds relate as theory says, state round-trips."""
import math

import pytest
import torch

import fastvae
from fastvae.data import load_digits
from fastvae.models import VAE, build_model


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread is as fast, and immune to a busy machine's scheduler."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.train_x[:256], d.train_y[:256], d.test_x[:64], d.test_y[:64]


def _has_distances():
    return hasattr(fastvae, "mmd") and hasattr(fastvae, "sliced_wasserstein")


VARIANTS = {
    "vae": dict(),
    "fixed-variance": dict(variance="fixed"),
    "network-variance": dict(variance="network"),
    "bernoulli": dict(likelihood="bernoulli"),
    "beta-vae": dict(beta=4.0),
    "cvae": dict(n_classes=10),
    "iwae": dict(n_samples=4),
    "full-posterior": dict(posterior="full"),
    "full-iwae": dict(posterior="full", n_samples=3),
    "linear": dict(hidden_dims=()),
    "conv": dict(conv=True, hidden_dims=(32,)),
    "reference-backend": dict(backend="reference"),
    "wae-mmd": dict(divergence="mmd", beta=0.0, reg_weight=100.0),
    "infovae": dict(divergence="mmd", beta=1.0, reg_weight=10.0),
    "swae": dict(divergence="sliced", beta=0.0, reg_weight=10.0),
    "swae-reference": dict(divergence="sliced", beta=0.0, backend="reference"),
}


def _make(cfg, seed=0):
    cfg = dict(cfg)
    torch.manual_seed(seed)
    hidden = cfg.pop("hidden_dims", (64, 32))
    shape = (1, 8, 8) if cfg.get("conv") else 64
    return VAE(shape, 4, hidden_dims=hidden, **cfg)


def _batch(model, x, y):
    if model.likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    x = x if model.conv else x.reshape(x.shape[0], -1)
    return x, (y if model.n_classes else None)


def _train(model, x, y, steps=40, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        out = model(x, y, generator=g, distance_generator=torch.Generator().manual_seed(2))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_trains_and_loss_goes_down(name, digits):
    cfg = VARIANTS[name]
    if cfg.get("divergence", "kl") != "kl" and not _has_distances():
        pytest.skip("fastvae.mmd / fastvae.sliced_wasserstein not in this build yet")
    model = _make(cfg)
    x, y = _batch(model, digits[0], digits[1])
    losses = _train(model, x, y)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    out = model(x[:8], None if y is None else y[:8])
    assert out.loss.dim() == 0 and out.elbo.shape == (8,) and out.recon.shape == (8,) and out.kl.shape == (8,)
    if model.divergence == "kl":
        assert out.distance is None
    else:
        assert out.distance.dim() == 0 and torch.isfinite(out.distance)
    k = model.n_samples
    assert out.z.shape == ((8, 4) if k == 1 else (k, 8, 4))
    assert model.sample(5).shape == (5, *model.input_shape)
    assert model.reconstruct(x[:3], None if y is None else y[:3]).shape == x[:3].shape


def test_iwae_with_one_sample_equals_the_vae_bound(digits):
    """The k = 1 importance-weighted bound (sampled KL) has the expectation of the VAE's ELBO (closed-form KL)."""
    model = _make({})
    x, _ = _batch(model, digits[0], None)
    _train(model, x, None, steps=60)
    xr = x[:100].repeat(60, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        vae = model(xr, generator=g).elbo
        iwae = model.log_likelihood(xr, n_samples=1, generator=g)
    se = math.sqrt((vae.var() + iwae.var()).item() / xr.shape[0])
    assert abs(vae.mean().item() - iwae.mean().item()) < 4 * se + 1e-3
    assert se < 0.5         # the comparison has power: 6000 draws pin the means to a fraction of a nat


def test_log_likelihood_bounds_the_elbo_and_tightens_with_k(digits):
    model = _make({})
    x, _ = _batch(model, digits[0], None)
    _train(model, x, None, steps=80)
    xt = digits[2].reshape(64, -1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        elbo = torch.stack([model(xt, generator=g).elbo for _ in range(20)]).mean()
        ll = {k: model.log_likelihood(xt, n_samples=k, generator=g).mean() for k in (1, 10, 100, 1000)}
    assert abs(ll[1] - elbo) < 0.5
    assert ll[10] > ll[1] - 0.05 and ll[100] > ll[10] - 0.05 and ll[1000] > ll[100] - 0.05
    assert ll[1000] >= elbo


def test_log_likelihood_chunks_fit_k_5000(digits):
    model = _make(dict(n_classes=10))
    x = digits[2][:6].reshape(6, -1)
    y = digits[3][:6]
    g = torch.Generator().manual_seed(6)
    big = model.log_likelihood(x, y, n_samples=5000, generator=g)
    small = model.log_likelihood(x, y, n_samples=5000, generator=g, chunk_elements=4096)  # many chunks
    assert big.shape == (6,) and torch.isfinite(big).all()
    assert torch.allclose(big, small, atol=0.2)


def test_full_posterior_gives_a_valid_cholesky_factor(digits):
    model = _make(dict(posterior="full"))
    mu, L = model.encode(digits[0][:5].reshape(5, -1))
    assert L.shape == (5, 4, 4)
    assert torch.equal(L, torch.tril(L))
    assert (torch.diagonal(L, dim1=-2, dim2=-1) > 0).all()


def test_state_dict_round_trips(digits):
    model = _make(dict(variance="learned", posterior="full", n_classes=10))
    x, y = digits[0][:16].reshape(16, -1), digits[1][:16]
    _train(model, x, y, steps=3)
    clone = build_model(model.config)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = model(x, y, generator=torch.Generator().manual_seed(7))
        b = clone(x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.elbo, b.elbo)


def test_backends_agree_in_distribution(digits):
    """fastvae and reference ops draw different noise but compute the same bound."""
    model = _make({})
    x, _ = _batch(model, digits[0], None)
    _train(model, x, None, steps=40)
    ref = _make(dict(backend="reference"))
    ref.load_state_dict(model.state_dict())
    xr = x[:100].repeat(20, 1)
    with torch.no_grad():
        mu, logvar = model.encode(xr)
        a = model(xr).elbo
        b = ref(xr).elbo
        # deterministic parts agree exactly up to rounding
        params, lv = model.decode(mu)
        assert torch.allclose(fastvae.gaussian_nll(xr, params, lv, reduction="none"),
                              fastvae.reference.gaussian_nll(xr, params, lv, reduction="none"), rtol=1e-4, atol=1e-3)
    se = math.sqrt((a.var() + b.var()).item() / xr.shape[0])
    assert abs(a.mean() - b.mean()).item() < 4 * se + 1e-3


def test_argument_errors_are_clear():
    with pytest.raises(ValueError, match="likelihood"):
        VAE(64, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="divergence"):
        VAE(64, 2, divergence="js")
    with pytest.raises(ValueError, match="conv=True"):
        VAE(64, 2, conv=True)
    cvae = VAE(64, 2, hidden_dims=(8,), n_classes=3)
    with pytest.raises(ValueError, match="needs labels"):
        cvae(torch.rand(4, 64))
    with pytest.raises(ValueError, match="x must have shape"):
        VAE(64, 2, hidden_dims=(8,))(torch.rand(4, 63))
    with pytest.raises(ValueError, match="not a CVAE"):
        VAE(64, 2, hidden_dims=(8,))(torch.rand(4, 64), torch.zeros(4, dtype=torch.long))


def test_missing_distance_op_is_reported(monkeypatch):
    if _has_distances():
        monkeypatch.delattr(fastvae, "mmd")
    model = VAE(64, 2, hidden_dims=(8,), divergence="mmd")
    with pytest.raises(NotImplementedError, match="fastvae.mmd"):
        model(torch.rand(4, 64))
