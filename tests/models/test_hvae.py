"""HierarchicalVAE (`--model hvae`, issue 14 item 1): it trains; each level's KL is the closed-form KL between the
level's posterior and its conditional prior; the importance-sampled log-likelihood is log p(x, z_1..z_L) -
log q(z_1..z_L | x) streamed over K; bad arguments are refused by name; the command trains, resumes, evaluates and
samples it."""
import json
import math
import re

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from fastvae import train as tr
from fastvae.cli import main
from fastvae.data import load_digits
from fastvae.models import HierarchicalVAE, VAE, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.train_x[:256].reshape(256, -1), d.test_x[:32].reshape(32, -1)


def _make(dims=(6, 3), seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden_dims", (32, 16))
    return HierarchicalVAE((1, 8, 8) if kw.get("conv") else 64, list(dims), **kw)


def _tiny():
    """Small enough that every chunk of log_likelihood is a handful of numbers; float64, so that the streamed and
    the direct computations differ by float64 rounding alone."""
    model = _make((3, 2), hidden_dims=[5], likelihood="bernoulli").double()
    x = torch.bernoulli(torch.full((5, 64), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    return model, x


# ---- it learns ------------------------------------------------------------------------------------------------

VARIANTS = {
    "two-levels": dict(),
    "three-levels": dict(dims=(8, 4, 2)),
    "bernoulli": dict(likelihood="bernoulli"),
    "iwae": dict(n_samples=3),
    "beta": dict(beta=2.0),
    "conv": dict(conv=True, hidden_dims=(32,)),
    "reference-backend": dict(backend="reference"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_trains_and_loss_goes_down(name, digits):
    model = _make(**VARIANTS[name])
    x = digits[0]
    if model.likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    if model.conv:
        x = x.reshape(-1, 1, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        out = model(x, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    out = model(x, generator=g)
    for t in (out.elbo, out.recon, out.kl):
        assert t.shape == (x.shape[0],) and torch.isfinite(t).all()
    assert (out.kl >= -1e-4).all() or model.n_samples > 1      # a sum of KLs (IWAE: a sampled estimate)
    ll = model.log_likelihood(x[:8], n_samples=20, generator=g)
    s = model.sample(5, generator=g)
    assert torch.isfinite(ll).all() and s.shape == (5, *model.input_shape) and torch.isfinite(s).all()
    assert model.reconstruct(x[:4]).shape == x[:4].shape


# ---- the bound's terms ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fastvae", "reference"])
def test_each_levels_kl_is_the_kl_between_its_posterior_and_conditional_prior(backend, digits):
    model = _make((6, 4, 3), backend=backend).double()
    x = digits[1].double()
    stats = model.encode_stats(x)
    levels = model._levels(model.ops, stats, None, torch.Generator().manual_seed(3))
    kls = model.layer_kls(model.ops, levels)
    assert len(kls) == 3
    for (_z, mu, logvar, pm, plv), kl in zip(levels, kls):
        prior = Normal(0.0, 1.0) if pm is None else Normal(pm, (0.5 * plv).exp())
        want = kl_divergence(Normal(mu, (0.5 * logvar).exp()), prior).sum(-1)
        # float64: the closed forms differ by rounding alone (values of a few nats)
        torch.testing.assert_close(kl, want, rtol=1e-10, atol=1e-10)
    # the prior below the top is the network's, not N(0, I): the KLs against it differ
    z, mu, logvar, pm, plv = levels[1]
    assert not torch.allclose(kls[1], kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1))
    # forward's KL is their sum and its recon the decoder's at the lowest draw, for the same noise
    out = model(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.kl, sum(kls), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.z, levels[-1][0], rtol=0, atol=0)
    torch.testing.assert_close(model.posterior_elbo(x, stats, generator=torch.Generator().manual_seed(3)), out.elbo)


def _direct_log_weights(model, x, zs):
    """log p(x | z_1) + log p(z_L) + sum_i log p(z_i | z_{i+1}) - sum_i log q(z_i | x, z_{i+1}) for the draws zs
    (top first, each (K, B, d_i)), the conditionals from the model's networks, the densities torch.distributions'."""
    hs = model.encode_stats(x).split(model.width, -1)
    L = len(model.latent_dims)
    mu, logvar = model.q_top(hs[-1]).chunk(2, -1)
    log_w = Normal(0.0, 1.0).log_prob(zs[0]).sum(-1) - Normal(mu, (0.5 * logvar).exp()).log_prob(zs[0]).sum(-1)
    for j, i in enumerate(reversed(range(L - 1))):
        t = model.down[i](zs[j])
        pm, plv = model.p_heads[i](t).chunk(2, -1)
        qm, qlv = model.q_heads[i](torch.cat([hs[i].expand(*t.shape[:-1], -1), t], -1)).chunk(2, -1)
        z = zs[j + 1]
        log_w = log_w + Normal(pm, (0.5 * plv).exp()).log_prob(z).sum(-1) - Normal(
            qm, (0.5 * qlv).exp()).log_prob(z).sum(-1)
    logits, _ = model.decode(zs[-1])
    return log_w + Bernoulli(logits=logits).log_prob(x).sum(-1)


def _record_levels(model, monkeypatch):
    draws, levels = [], model._levels

    def recording(ops, stats, k=None, generator=None, **kw):
        out = levels(ops, stats, k, generator, **kw)
        draws.append([z for z, *_ in out])
        return out
    monkeypatch.setattr(model, "_levels", recording)
    return draws


def test_streamed_log_likelihood_equals_the_direct_computation(monkeypatch):
    model, x = _tiny()
    K = 30
    draws = _record_levels(model, monkeypatch)
    # 2 (input, sample) pairs per chunk: blocks of 2 inputs, one sample per chunk -> 3 blocks x 30 chunks
    streamed = model.log_likelihood(x, n_samples=K, generator=torch.Generator().manual_seed(2),
                                    chunk_elements=2 * model._activation_width())
    assert len(draws) == 3 * K and {tuple(d[0].shape[:2]) for d in draws} == {(1, 2), (1, 1)}
    # the same draws, gathered per input into (K, B, d) per level, in one logsumexp over all K
    zs = [torch.cat([torch.cat([d[lvl] for d in draws[b * K:(b + 1) * K]]) for b in range(3)], 1)
          for lvl in range(2)]
    direct = torch.logsumexp(_direct_log_weights(model, x, zs), 0) - math.log(K)
    # float64: the two differ by the rounding of ~30 logaddexp steps on values of ~50 nats
    torch.testing.assert_close(streamed, direct, rtol=1e-12, atol=1e-10)


def test_log_likelihood_bounds_the_elbo_and_tightens_with_k(digits):
    model = _make(likelihood="bernoulli")
    x = torch.bernoulli(digits[0], generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = model(x, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = x[:64]
    elbo = torch.stack([model.elbo(xt, generator=g) for _ in range(20)]).mean(0).mean().item()
    ll = {k: model.log_likelihood(xt, n_samples=k, generator=g).mean().item() for k in (1, 500)}
    # K = 1 is a one-draw ELBO estimate; 64 inputs x 20 draws put the mean's noise well below 0.5 nats
    assert abs(ll[1] - elbo) < 0.5, (ll, elbo)
    assert ll[500] > elbo + 0.1, (ll, elbo)


# ---- arguments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(latent_dims=[8]), ValueError, r"latent_dims must hold at least 2 ints .* got \[8\]"),
    (dict(latent_dims=[]), ValueError, r"latent_dims must hold at least 2 ints"),
    (dict(latent_dims=8), TypeError, "latent_dims must be a list or tuple of ints; got int 8"),
    (dict(latent_dims=[8, 0]), ValueError, r"latent_dims\[1\] must be >= 1; got 0"),
    (dict(latent_dims=[8, 2.5]), TypeError, r"latent_dims\[1\] must be an int; got float 2.5"),
    (dict(latent_dims=[8, True]), TypeError, r"latent_dims\[1\] must be an int; got bool"),
    (dict(latent_dims=[8, 4], hidden_dims=()), ValueError, "hidden_dims must hold at least one width"),
    (dict(latent_dims=[8, 4], likelihood="poisson"), ValueError, "likelihood"),
    (dict(latent_dims=[8, 4], n_samples=0), ValueError, "n_samples must be >= 1"),
])
def test_constructor_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        HierarchicalVAE(**{"input_dim": 64, "hidden_dims": (8,), **kwargs})


def test_method_arguments_are_checked(digits):
    model = _make()
    x = digits[1]
    with pytest.raises(ValueError, match=r"stats must have shape \(32, 32\)"):
        model.posterior_elbo(x, torch.zeros(32, 7))
    with pytest.raises(ValueError, match="labels y were given to a model with n_classes=0"):
        model(x, torch.zeros(32, dtype=torch.long))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        model(x, generator=3)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 6\)"):
        model.decode(torch.zeros(2, 3))


def test_build_model_picks_the_class_from_the_config():
    model = _make()
    clone = build_model(model.config)
    assert type(clone) is HierarchicalVAE and clone.config == model.config
    clone.load_state_dict(model.state_dict())
    assert type(build_model(VAE(64, 2, (8,)).config)) is VAE
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['latent_dim'\]"):
        build_model({**model.config, "latent_dim": 4})
    with pytest.raises(ValueError, match=r"lacks \['input_dim'\]"):
        build_model({"latent_dims": [4, 2]})


def test_sampling_is_seeded_and_goes_through_the_conditional_priors():
    model = _make(likelihood="bernoulli")
    a = model.sample(6, generator=torch.Generator().manual_seed(5))
    b = model.sample(6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (6, 64)
    # z_1 ~ p(z_1 | z_2): shifting the conditional prior's mean head moves the samples
    with torch.no_grad():
        model.p_heads[0].bias[:6] += 3.0
    assert not torch.allclose(model.sample(6, generator=torch.Generator().manual_seed(5)), a)


# ---- the command ----------------------------------------------------------------------------------------------

def _cfg(out, **kw):
    return dict(dict(model="hvae", latent_dims=[4, 2], hidden_dims=[16], batch_size=256, progress=False,
                     out=str(out), eval_k=0, threads=1, likelihood="bernoulli"), **kw)


def test_train_resume_eval_sample_on_digits(tmp_path, capsys):
    full = tr.train(_cfg(tmp_path / "full", epochs=3))
    assert type(full.model) is HierarchicalVAE and full.config["latent_dim"] == 4
    assert all(math.isfinite(m[k]) for m in full.metrics for k in ("train_loss", "test_elbo", "test_kl"))
    assert full.metrics[-1]["train_loss"] < full.metrics[0]["train_loss"]
    out = tmp_path / "part"
    assert main(["train", "--model", "hvae", "--latent-dims", "4,2", "--hidden-dims", "16", "--batch-size", "256",
                 "--likelihood", "bernoulli", "--epochs", "2", "--eval-k", "0", "--no-progress", "--threads", "1",
                 "--out", str(out)]) == 0
    resumed = tr.train(_cfg(out, epochs=3, resume=True))
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert [m["train_loss"] for m in full.metrics] == [m["train_loss"] for m in resumed.metrics]
    with pytest.raises(ValueError, match=r"cannot resume .* latent_dims \(the run's \[4, 2\], given \[4, 3\]\)"):
        tr.train(_cfg(out, epochs=4, resume=True, latent_dims=[4, 3]))
    capsys.readouterr()
    assert main(["eval", str(out), "--k", "50", "--refine", "3", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["log_likelihood"] >= res["elbo"] - 0.5 and math.isfinite(res["nll_se"])
    assert math.isfinite(res["refined_elbo"]) and math.isfinite(res["amortisation_gap"])
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "8", "--out", str(png)]) == 0 and png.is_file()


@pytest.mark.parametrize("args, match", [
    (["--model", "hvae", "--latent-dims", "8"], r"--model hvae cannot take latent_dims \[8\] \(it takes at least 2"),
    (["--model", "hvae", "--latent-dims", ""], r"--model hvae cannot take latent_dims \[\]"),
    (["--model", "hvae", "--latent-dims", "8,0"], "latent_dims must be a list of ints from 1"),
    (["--model", "hvae", "--latent-dims", "8,x"], "latent_dims must be a list of ints"),
    (["--model", "vae", "--latent-dims", "8,4"], "latent_dims is the layer sizes of --model hvae; --model vae takes"),
    (["--model", "hvae", "--latent-dim", "3"], r"latent_dim 3 \(it is latent_dims\[0\]"),
    (["--model", "hvae", "--posterior", "full"], r"posterior 'full' \(it takes diagonal\)"),
    (["--model", "hvae", "--divergence", "mmd"], r"divergence 'mmd' \(it takes kl\)"),
    (["--model", "hvae", "--hidden-dims", ""], r"hidden_dims \[\] \(it takes at least one width"),
])
def test_bad_settings_are_refused_by_name(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "o"), "--epochs", "1", "--no-progress", *args])
    said = f"{e.value.code} {capsys.readouterr().err}"       # resolve_config's message, or argparse's on stderr
    assert re.search(match, said), said
    assert not (tmp_path / "o").exists()
