"""The VAE family: every variant trains on digits, the bounds relate as theory says, state round-trips."""
import math

import pytest
import torch

import fastvae
from fastvae.data import load_digits
from fastvae.models import VAE, build_model


pytestmark = pytest.mark.usefixtures("one_thread")


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
    "logistic": dict(likelihood="logistic"),
    "logistic-mixture": dict(likelihood="logistic_mixture", n_mix=3),
    "logistic-mixture-conv": dict(likelihood="logistic_mixture", n_mix=2, conv=True, hidden_dims=(32,)),
    "logistic-mixture-iwae": dict(likelihood="logistic_mixture", n_mix=2, n_samples=3),
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
    "mmd-rbf": dict(divergence="mmd", kernel="rbf", beta=0.0, reg_weight=100.0),
    "mmd-laplacian": dict(divergence="mmd", kernel="laplacian", beta=0.0, reg_weight=100.0),
    "mmd-energy": dict(divergence="mmd", kernel="energy", beta=0.0, reg_weight=10.0),
    "energy": dict(divergence="energy", beta=0.0, reg_weight=10.0),
    "energy-reference": dict(divergence="energy", beta=0.0, reg_weight=10.0, backend="reference"),
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
    if model.likelihood.startswith("logistic"):  # the discretized logistics model 8-bit pixels
        x = torch.round(x * 255) / 255
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


@pytest.mark.parametrize("likelihood", ["logistic", "logistic_mixture"])
def test_logistic_likelihoods_sample_and_refuse_data_off_the_8_bit_grid(likelihood, digits):
    """Samples and means are data in [0, 1] (samples on the 8-bit grid); data off the grid (the digits' 17 levels)
    are refused with the op's error, never fitted silently."""
    model = _make(dict(likelihood=likelihood, n_mix=3))
    s = model.sample(6, generator=torch.Generator().manual_seed(0), mean=False)
    assert s.shape == (6, 64) and s.min() >= 0 and s.max() <= 1
    assert torch.equal(torch.round(s * 255) / 255, s)
    assert not torch.equal(s, model.sample(6, generator=torch.Generator().manual_seed(1), mean=False))
    m = model.sample(6)
    assert m.min() >= 0 and m.max() <= 1
    x = digits[0][:4].reshape(4, -1)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\] on the grid of 2\*\*n_bits = 256 levels"):
        model(x)
    r = model.reconstruct(torch.round(x * 255) / 255)
    assert r.shape == (4, 64) and r.min() >= 0 and r.max() <= 1


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
        monkeypatch.delattr(fastvae.ops.distances, "mmd")     # the models read the ops from their modules
    model = VAE(64, 2, hidden_dims=(8,), divergence="mmd")
    with pytest.raises(NotImplementedError, match="fastvae.mmd"):
        model(torch.rand(4, 64))


# ---- every argument is checked: errors name it, the expected and the found ----------------------------------------

BAD_CONSTRUCTOR_ARGS = [
    (dict(latent_dim=2.5), TypeError, "latent_dim must be an int; got float 2.5"),     # was truncated to 2
    (dict(latent_dim=True), TypeError, "latent_dim must be an int; got bool True"),   # bools are not ints
    (dict(latent_dim=0), ValueError, "latent_dim must be >= 1; got 0"),
    (dict(input_dim=64.0), TypeError, "input_dim must be a positive int or a shape"),
    (dict(input_dim=()), TypeError, "input_dim must be a positive int or a shape"),
    (dict(input_dim=(1, 8, 8.0)), TypeError, r"input_dim\[2\] must be an int; got float"),
    (dict(input_dim=(1, 0, 8)), ValueError, r"input_dim\[1\] must be >= 1; got 0"),
    (dict(hidden_dims=[-1]), ValueError, r"hidden_dims\[0\] must be >= 1; got -1"),          # was a raw torch error
    (dict(hidden_dims=[0]), ValueError, r"hidden_dims\[0\] must be >= 1; got 0"),            # was a zero-width model
    (dict(hidden_dims=[[1]]), TypeError, r"hidden_dims\[0\] must be an int; got list"),
    (dict(hidden_dims="512"), TypeError, "hidden_dims must be a list or tuple of ints; got str"),
    (dict(hidden_dims=[10**12]), ValueError, r"parameters .* would need .* GiB, more than the"),  # was an OOM
    (dict(n_samples=2.5), TypeError, "n_samples must be an int; got float 2.5"),       # was accepted
    (dict(n_samples=0), ValueError, "n_samples must be >= 1; got 0"),
    (dict(n_classes=-1), ValueError, "n_classes must be >= 0; got -1"),
    (dict(n_classes=10**12), ValueError, "would need"),
    (dict(beta=-1.0), ValueError, "beta must be a finite number >= 0; got -1.0"),
    (dict(beta=float("nan")), ValueError, "beta must be a finite number >= 0; got nan"),
    (dict(beta="1"), TypeError, "beta must be a number; got str '1'"),
    (dict(reg_weight=float("inf")), ValueError, "reg_weight must be a finite number"),
    (dict(bandwidth=0.0), ValueError, "bandwidth must be a finite number > 0; got 0.0"),
    (dict(bandwidth="12"), TypeError, "bandwidth must be a number; got str"),
    (dict(kernel="gauss"), ValueError, "kernel must be one of"),
    (dict(mmd_estimator="fast"), ValueError, "mmd_estimator must be one of"),
    (dict(n_projections=0), ValueError, "n_projections must be >= 1; got 0"),
    (dict(n_projections=1.5), TypeError, "n_projections must be an int"),
    (dict(conv="false"), TypeError, "conv must be True or False; got str 'false'"),     # was a conv model
    (dict(conv=1), TypeError, "conv must be True or False; got int 1"),
    (dict(input_dim=(1, 8, 8), conv=True, conv_channels=(32,)), ValueError, r"conv_channels must hold 2 ints"),
    (dict(likelihood=["gaussian"]), ValueError, "likelihood must be one of"),
    (dict(likelihood="logistic_mixture", n_mix=0), ValueError, "n_mix must be >= 1; got 0"),
    (dict(likelihood="logistic_mixture", n_mix=2.0), TypeError, "n_mix must be an int; got float"),
    (dict(backend=None), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_CONSTRUCTOR_ARGS)
def test_constructor_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        VAE(**{"input_dim": 64, "latent_dim": 2, "hidden_dims": (8,), **kwargs})


def test_method_arguments_are_checked():
    m = VAE(64, 2, hidden_dims=(8,))
    cvae = VAE(64, 2, hidden_dims=(8,), n_classes=3)
    x = torch.rand(4, 64)
    cases = [
        (lambda: m(torch.randint(0, 2, (4, 64))), TypeError,                 # was torch's mat1/mat2 dtype error
         "x must be a floating-point tensor; got dtype torch.int64"),
        (lambda: m(x.double()), TypeError, "x must have the model's dtype torch.float32"),
        (lambda: m(x.numpy()), TypeError, "x must be a torch.Tensor; got ndarray"),
        (lambda: m(x[:0]), ValueError, r"x has an empty batch \(shape \(0, 64\)\)"),
        (lambda: m(x.to("meta")), ValueError, "x must be on the model's device cpu; got meta"),
        (lambda: m(x, generator=0), TypeError, "generator must be a torch.Generator or None; got int"),
        (lambda: m(x, distance_generator="g"), TypeError, "distance_generator must be a torch.Generator or None"),
        (lambda: m.sample(0), ValueError, "n must be >= 1; got 0"),                   # was a reshape error
        (lambda: m.sample(2.5), TypeError, "n must be an int; got float 2.5"),
        (lambda: m.sample(10**13), ValueError, r"sampling n=10000000000000 at once would need .* GiB"),
        (lambda: m.sample(2, mean="no"), TypeError, "mean must be True or False; got str"),
        (lambda: m.reconstruct(x, mean=None), TypeError, "mean must be True or False; got NoneType"),
        (lambda: m.log_likelihood(x, n_samples=2**63), ValueError,                    # was "Expected Optional[int]"
         r"n_samples must be in \[1, 1000000\]; got 9223372036854775808"),
        (lambda: m.log_likelihood(x, n_samples=2.5), TypeError, "n_samples must be an int; got float 2.5"),
        (lambda: m.log_likelihood(x, n_samples=True), TypeError, "n_samples must be an int; got bool"),
        (lambda: m.log_likelihood(x, chunk_elements=0), ValueError, "chunk_elements must be >= 1; got 0"),
        (lambda: m.log_likelihood(torch.rand(4000, 64), n_samples=10**6, chunk_elements=2**62), ValueError,
         r"a chunk of chunk_elements=4611686018427387904 would need"),
        (lambda: m.log_likelihood(x, generator=1), TypeError, "generator must be a torch.Generator"),
        (lambda: m.decode(torch.rand(3, 5)), ValueError, r"z must have shape \(B, 2\) or \(k, B, 2\); got \(3, 5\)"),
        (lambda: cvae(x, torch.tensor([0, 1, 2, 3])), ValueError,                   # was one_hot's RuntimeError
         r"y must hold class labels in \[0, 3\); found labels from 0 to 3"),
        (lambda: cvae(x, torch.tensor([0, -1, 2, 1])), ValueError, "found labels from -1 to 2"),
        (lambda: cvae(x, torch.tensor([0.0, 1, 2, 1])), TypeError,
         "y must hold integer class labels; got dtype torch.float32"),
        (lambda: cvae(x, torch.tensor([True, False, True, False])), TypeError, "got dtype torch.bool"),
        (lambda: cvae(x, [0, 1, 2, 1]), TypeError, "y must be a tensor of integer class labels; got list"),
        (lambda: cvae(x, torch.tensor([0, 1])), ValueError, r"y must have shape \(4,\) \(one label per sample\)"),
        (lambda: cvae.sample(2, torch.tensor([5, 0])), ValueError, "found labels from 0 to 5"),
        (lambda: m.sample(2, torch.tensor([0, 1])), ValueError, r"not a CVAE"),       # was ignored
        (lambda: m.decode(torch.rand(2, 2), torch.tensor([0, 1])), ValueError, r"not a CVAE"),
        (lambda: cvae.log_likelihood(x, torch.tensor([0, 1, 2, 9]), n_samples=2), ValueError, "from 0 to 9"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_a_cpu_generator_serves_every_random_method():
    g = torch.Generator().manual_seed(0)
    m = VAE(64, 2, hidden_dims=(8,), likelihood="bernoulli")
    a = m.sample(3, generator=g, mean=False)
    b = m.sample(3, generator=torch.Generator().manual_seed(0), mean=False)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}


def test_the_base_class_file_imports_none_of_its_subclasses():
    """vae.py imports neither a subclass nor the factory that knows them all (registry.py): no import circle."""
    import ast
    import fastvae.models.vae
    with open(fastvae.models.vae.__file__) as f:
        tree = ast.parse(f.read())
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]       # at the top or inside a function
    names = {n.module.split(".")[-1] for n in froms if n.module} | {a.name for n in froms for a in n.names}
    assert "backends" in names                    # (the walk sees the imports)
    assert not names & {"hierarchical", "vaegan", "registry", "HierarchicalVAE", "VAEGAN", "build_model"}


def test_build_model_refuses_unknown_missing_and_bad_keys():
    cfg = VAE(64, 2, hidden_dims=(8,)).config
    assert build_model(cfg).config == cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dropout'\]; known: \['input_dim', 'latent_dim'"):
        build_model({**cfg, "dropout": 0.1})                        # was VAE's "unexpected keyword argument"
    with pytest.raises(ValueError, match=r"lacks \['input_dim'\]"):
        build_model({k: v for k, v in cfg.items() if k != "input_dim"})
    with pytest.raises(ValueError, match="would need"):
        build_model({**cfg, "hidden_dims": [10**12]})               # a crafted checkpoint: refused, not allocated
    with pytest.raises(TypeError, match="latent_dim must be an int; got str"):
        build_model({**cfg, "latent_dim": "2"})
    with pytest.raises(TypeError, match="the model config must be a dict"):
        build_model([("input_dim", 64)])


@pytest.mark.parametrize("backend", ["fastvae", "reference"])
def test_the_energy_divergence_is_the_energy_distance_to_prior_draws(backend, digits):
    """divergence="energy" adds reg_weight * energy_distance(z, N(0, I) draws from the distance generator): the
    same number as mmd with the distance kernel, and as the plain formula on the same prior draws."""
    model = _make(dict(divergence="energy", beta=0.0, reg_weight=10.0, backend=backend))
    x, _ = _batch(model, digits[0][:64], None)
    out = model(x, generator=torch.Generator().manual_seed(1), distance_generator=torch.Generator().manual_seed(2))
    ops = model.ops
    z = out.z.detach().float()
    energy = ops.get("energy_distance")(z, None, generator=torch.Generator().manual_seed(2))
    mmd = ops.get("mmd")(z, None, kernel="energy", generator=torch.Generator().manual_seed(2))
    assert out.distance.item() == energy.item() == mmd.item()
    recon_kl = (out.recon + 0.0 * out.kl).mean()
    torch.testing.assert_close(out.loss, recon_kl + 10.0 * out.distance, rtol=1e-6, atol=1e-6)
