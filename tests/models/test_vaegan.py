"""VAEGAN (`--model vaegan`, issue 14 item 3; Larsen et al. 2016): the feature reconstruction term is a unit-variance
Gaussian on the discriminator's features; the three optimisers own disjoint parameter sets that cover the model and
each moves only its own; a small run's losses are finite and the adversarial ones move; the command trains, resumes
exactly, evaluates and samples it; bad arguments are refused by name."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from fastvae import train as tr
from fastvae.cli import main
from fastvae.data import load_digits
from fastvae.models import VAE, VAEGAN, build_model
from fastvae.models.vaegan import OPTIMIZERS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits().train_x[:256].reshape(256, -1)


def _make(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden_dims", (32, 16))
    return VAEGAN((1, 8, 8) if kw.get("conv") else 64, 4, **kw)


CFG = dict(lr=3e-4)


# ---- the terms ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fastvae", "reference"])
@pytest.mark.parametrize("feature_variance", ["learned", "fixed"])
def test_feature_reconstruction_is_a_normal_log_prob_on_the_features(backend, feature_variance):
    model = _make(backend=backend, feature_variance=feature_variance).double()
    sd = 1.0
    if feature_variance == "learned":
        with torch.no_grad():
            model.feature_log_variance.fill_(-1.3)
        sd = math.exp(-0.65)
    else:
        assert not hasattr(model, "feature_log_variance")
    g = torch.Generator().manual_seed(1)
    f_x, f_rec = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g,
                                                                                 dtype=torch.float64)
    f_rec.requires_grad_(True)
    got = model.feature_nll(f_x, f_rec)
    want = -Normal(f_rec, torch.full_like(f_rec, sd)).log_prob(f_x).sum(-1)
    # float64 throughout: the two differ by float64 rounding over 16 terms (each O(1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), f_rec)[0], torch.autograd.grad(want.sum(), f_rec)[0],
                               rtol=1e-12, atol=1e-12)


def test_losses_are_the_papers_on_one_batch(digits):
    """The encoder's, decoder's and discriminator's losses recomputed from the model's own networks in float64
    (the same draws: the generator replayed)."""
    model = _make().double()
    with torch.no_grad():
        model.feature_log_variance.fill_(0.7)
        model.log_variance.fill_(-2.0)
    x = digits[:8].double()
    out, losses = model.losses(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    mu, logvar = model.encode(x)
    z, kl = model.q_z.sample_kl(model.ops, mu, logvar, g)
    x_rec = model.decode(z)[0]
    x_p = model.decode(model._prior_sample(8, g))[0]
    (f_x, d_x), (f_r, d_r), (_, d_p) = (model.discriminator(t) for t in (x, x_rec, x_p))
    llike = -Normal(f_r, math.exp(0.35)).log_prob(f_x).sum(-1)
    gan = -(F.logsigmoid(d_x) + F.logsigmoid(-d_r) + F.logsigmoid(-d_p)).mean()
    lv = model.log_variance
    pixel = -Normal(x_rec, (0.5 * lv).exp()).log_prob(x).sum(-1)
    # float64: the fused ops against torch.distributions differ by rounding over 64 pixels / 16 features
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(losses["encoder"], (kl + llike).mean(), **close)
    torch.testing.assert_close(losses["discriminator"], gan, **close)
    torch.testing.assert_close(losses["decoder"], model.gamma * llike.mean() - gan + pixel.mean(), **close)
    torch.testing.assert_close(out.recon, pixel, **close)
    torch.testing.assert_close(out.elbo, -(pixel + kl), **close)


# ---- the three optimisers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(conv=True, hidden_dims=(16,)), dict(likelihood="bernoulli"),
                                dict(variance="fixed"), dict(feature_variance="fixed")])
def test_the_optimisers_are_disjoint_and_cover_the_model(kw):
    model = _make(**kw)
    opts = model.make_optimizers(CFG)
    assert list(opts) == list(OPTIMIZERS) and all(isinstance(o, torch.optim.RMSprop) for o in opts.values())
    owned = {name: [id(p) for g in o.param_groups for p in g["params"]] for name, o in opts.items()}
    every = [id(p) for p in model.parameters()]
    assert sorted(sum(owned.values(), [])) == sorted(every)        # disjoint (no id twice) and all of them
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[i].startswith("discriminator.") for i in owned["discriminator"])
    assert all(names[i].split(".")[0] in ("encoder", "conv_encoder") for i in owned["encoder"])


def test_each_optimiser_moves_only_its_own_parameters_on_its_own_loss(digits):
    """One step with two of the three learning rates 0: only the third's parameters move, and by its loss's
    gradient alone (the step of a fresh RMSprop on that gradient)."""
    x = digits[:32]
    for name in OPTIMIZERS:
        model = _make()
        opts = model.make_optimizers(CFG)
        for other in OPTIMIZERS:
            if other != name:
                for group in opts[other].param_groups:
                    group["lr"] = 0.0
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        twin = _make()
        _, losses = twin.losses(x, generator=torch.Generator().manual_seed(5))
        twin_opts = twin.make_optimizers(CFG)
        twin_opts[name].zero_grad()
        losses[name].backward()          # every gradient; the twin steps only this optimiser
        twin_opts[name].step()
        model.train_step(model, x, None, opts, generator=torch.Generator().manual_seed(5))
        own = {n for n, p in model.named_parameters()
               if any(p is q for g in opts[name].param_groups for q in g["params"])}
        twin_params = dict(twin.named_parameters())
        for n, p in model.named_parameters():
            if n in own:
                assert not torch.equal(p, before[n]), (name, n)
                torch.testing.assert_close(p, twin_params[n], rtol=0, atol=1e-6)   # float32, the same arithmetic
            else:
                assert torch.equal(p, before[n]), (name, n)


def test_a_small_run_is_finite_and_the_adversarial_losses_move(digits):
    model = _make()
    opts = model.make_optimizers(dict(lr=1e-3))
    g = torch.Generator().manual_seed(0)
    rows = []
    for step in range(40):
        x = digits[(step * 32) % 256:(step * 32) % 256 + 32]
        out = model.train_step(model, x, None, opts, generator=g)
        rows.append({k: v.item() for k, v in out.terms.items()} | dict(loss=out.loss.item(),
                                                                       elbo=out.elbo.mean().item()))
    assert all(math.isfinite(v) for r in rows for v in r.values())
    first, last = rows[0], sum(torch.tensor(list(r.values())) for r in rows[-5:]) / 5
    keys = list(rows[0])
    last = dict(zip(keys, last.tolist()))
    assert abs(last["gan"] - first["gan"]) > 0.05 and abs(last["decoder"] - first["decoder"]) > 0.05
    assert last["elbo"] > first["elbo"]        # the fitted pixel variance and the reconstructions improve


# ---- the model and its config ------------------------------------------------------------------------------------

def test_build_model_rebuilds_it_from_its_config():
    model = _make(gamma=0.5, conv=True, hidden_dims=(16,))
    again = build_model(model.config)
    assert type(again) is VAEGAN and again.gamma == 0.5 and again.config == model.config
    assert type(build_model(VAE(64, 2, hidden_dims=[8]).config)) is VAE


@pytest.mark.parametrize("kw,match", [
    (dict(likelihood="logistic"), "likelihood must be 'gaussian' or 'bernoulli' for a VAE-GAN"),
    (dict(variance="network"), "variance must be 'learned' or 'fixed' for a VAE-GAN"),
    (dict(hidden_dims=()), r"hidden_dims must hold at least one width for a VAE-GAN"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(gamma="1"), "gamma"),
    (dict(feature_variance="network"), "feature_variance"),
])
def test_bad_models_are_refused_by_name(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        _make(**kw)


# ---- the command -------------------------------------------------------------------------------------------------

def _cfg(out, **kw):
    return dict(dict(model="vaegan", latent_dim=2, hidden_dims=[16], batch_size=256, progress=False, out=str(out),
                     eval_k=0, threads=1), **kw)


@pytest.mark.slow
def test_train_resume_eval_sample_on_digits(tmp_path, capsys):
    full = tr.train(_cfg(tmp_path / "full", epochs=3))
    assert type(full.model) is VAEGAN and full.config["lr"] == 3e-4 and full.config["gamma"] == 1e-2
    keys = ("train_loss", "train_llike", "train_gan", "train_decoder", "test_elbo")
    assert all(math.isfinite(m[k]) for m in full.metrics for k in keys)
    ckpt = tr.load_checkpoint(tmp_path / "full")
    assert "optimizer" not in ckpt and sorted(ckpt["optimizers"]) == sorted(OPTIMIZERS)
    out = tmp_path / "part"
    assert main(["train", "--model", "vaegan", "--latent-dim", "2", "--hidden-dims", "16", "--batch-size", "256",
                 "--epochs", "2", "--eval-k", "0", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    resumed = tr.train(_cfg(out, epochs=3, resume=True))
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert [m["train_loss"] for m in full.metrics] == [m["train_loss"] for m in resumed.metrics]
    assert [m["train_gan"] for m in full.metrics] == [m["train_gan"] for m in resumed.metrics]
    with pytest.raises(ValueError, match=r"cannot resume .* gamma \(the run's 0.01, given 0.5\)"):
        tr.train(_cfg(out, epochs=4, resume=True, gamma=0.5))
    capsys.readouterr()
    assert main(["eval", str(out), "--k", "20", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert math.isfinite(res["elbo"]) and res["log_likelihood"] >= res["elbo"] - 0.5
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "8", "--out", str(png)]) == 0 and png.is_file()


def test_resume_applies_a_new_lr_to_all_three_optimisers(tmp_path):
    tr.train(_cfg(tmp_path, epochs=1))
    tr.train(_cfg(tmp_path, epochs=2, resume=True, lr=1e-5))
    states = tr.load_checkpoint(tmp_path)["optimizers"]
    assert {name: [g["lr"] for g in s["param_groups"]] for name, s in states.items()} == {
        "encoder": [1e-5], "decoder": [1e-5, 1e-5 * tr.VARIANCE_LR_SCALE], "discriminator": [1e-5]}


def test_a_vae_checkpoint_keeps_its_single_optimizer_entry(bernoulli_digits_run, tmp_path):
    ckpt = tr.load_checkpoint(bernoulli_digits_run)
    assert "optimizer" in ckpt and "optimizers" not in ckpt


@pytest.mark.parametrize("args, match", [
    (["--hidden-dims", ""], r"--model vaegan cannot take hidden_dims \[\] \(it takes at least one width"),
    (["--posterior", "full"], r"posterior 'full' \(it takes diagonal\)"),
    (["--divergence", "mmd"], r"divergence 'mmd' \(it takes kl\)"),
    (["--n-samples", "3"], r"n_samples 3 \(it takes 1\)"),
    (["--likelihood", "logistic"], r"likelihood 'logistic' \(it takes gaussian or bernoulli\)"),
    (["--variance", "network"], r"variance 'network' \(it takes learned or fixed\)"),
    (["--gamma", "-1"], r"gamma must be a finite number >= 0; got float -1.0"),
    (["--gamma", "x"], r"gamma must be a finite number >= 0; got 'x'"),
    (["--feature-variance", "unit"], r"feature_variance must be one of learned, fixed; got str 'unit'"),
    (["--compile"], r"compile True \(it takes false: its step is three optimisers' steps"),
])
def test_bad_settings_are_refused_by_name(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "vaegan", "--out", str(tmp_path / "o"), "--epochs", "1", "--no-progress",
              "--hidden-dims", "16", "--threads", "1", *args])
    said = f"{e.value.code} {capsys.readouterr().err}"
    assert re.search(match, said), said


def test_resume_refuses_a_checkpoint_without_all_three_optimisers(tmp_path):
    tr.train(_cfg(tmp_path, epochs=1))
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["optimizers"]["discriminator"]
    torch.save(ckpt, path)
    with pytest.raises(tr.CheckpointError, match=r"cannot resume from it \(ValueError: it holds the optimizers "
                                                 r"\['decoder', 'encoder'\], the model trains with \['decoder', "
                                                 r"'discriminator', 'encoder'\]\)"):
        tr.train(_cfg(tmp_path, epochs=2, resume=True))
