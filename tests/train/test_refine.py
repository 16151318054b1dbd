"""Per-datapoint posteriors (`fastvae eval --refine STEPS`): the one-sample ELBO of given posterior statistics, its
refinement from the encoder's, which must reach the known optimum where there is one, and the refusals."""
import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from fastvae import VAE
from fastvae.cli import main
from fastvae.train import MAX_REFINE_STEPS, refine_posteriors


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _data(n=9, d=6, seed=1):
    return torch.bernoulli(torch.full((n, d), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_posterior_elbo_is_the_one_sample_elbo(posterior):
    """Against torch.distributions at the same draw: closed-form KL for the diagonal posterior, log q - log p at the
    sample for the full one; at the encoder's statistics it is the forward pass's ELBO (same generator)."""
    torch.manual_seed(0)
    model = VAE(6, 3, hidden_dims=[5], likelihood="bernoulli", posterior=posterior).double()
    x = _data()
    stats = model.encode_stats(x)
    got = model.posterior_elbo(x, stats, generator=torch.Generator().manual_seed(3))
    mu, stat = model.encode(x)
    if posterior == "diagonal":
        z, _ = model.q_z.sample_kl(model.ops, mu, stat, torch.Generator().manual_seed(3))
        q = Normal(mu, (0.5 * stat).exp())
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    else:
        z = model.q_z.sample(model.ops, mu, stat, 1, torch.Generator().manual_seed(3))[0][0]
        kl = MultivariateNormal(mu, scale_tril=stat).log_prob(z) - Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits, _ = model.decode(z)
    want = Bernoulli(logits=logits).log_prob(x).sum(-1) - kl
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if posterior == "diagonal":
        elbo = model(x, generator=torch.Generator().manual_seed(3)).elbo
        torch.testing.assert_close(got, elbo, rtol=1e-12, atol=1e-12)


def test_refinement_reaches_the_exact_log_likelihood_when_the_decoder_ignores_z():
    """With the decoder's last layer zeroed, p(x|z) = p(x) for every z: the best posterior is the prior, where the
    ELBO equals log p(x) exactly. The encoder's posterior is not the prior, so the amortised ELBO is below; the
    refined one must reach log p(x) (the KL is then the whole gap, and its gradient is exact: z does not matter)."""
    torch.manual_seed(0)
    model = VAE(6, 3, hidden_dims=[5], likelihood="bernoulli").double()
    last = model.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64))
        model.encoder[-1].bias.add_(0.8)           # a posterior well away from the prior
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _data()
    log_px = Bernoulli(logits=last.bias).log_prob(x).sum(-1).mean().item()
    model.train()
    res = refine_posteriors(model, x, steps=400, lr=0.05)
    assert res["amortised_elbo"] < log_px - 0.5
    assert res["refined_elbo"] == pytest.approx(log_px, abs=1e-3)
    assert res["amortisation_gap"] == pytest.approx(res["refined_elbo"] - res["amortised_elbo"], rel=1e-12)
    assert model.training                                           # the mode is restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the model is not trained


def test_refinement_improves_on_an_untrained_encoder_and_is_reproducible():
    """An untrained encoder's posteriors are far from each input's best: refinement must raise the ELBO, the same
    seed must give the same numbers, and the batch size (how inputs share a fused call) must not change the
    amortised estimate."""
    torch.manual_seed(0)
    model = VAE(6, 2, hidden_dims=[8], likelihood="bernoulli").double()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(5.0)           # a decoder for which z matters
    x = _data(n=64, seed=2)
    a = refine_posteriors(model, x, steps=50, lr=0.05, batch_size=16, seed=4)
    b = refine_posteriors(model, x, steps=50, lr=0.05, batch_size=16, seed=4)
    assert a == b
    assert a["amortisation_gap"] > 0.5 and math.isfinite(a["refined_elbo"])


def test_refinement_of_a_cvae_needs_labels():
    model = VAE(6, 2, hidden_dims=[5], n_classes=3).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="cvae of 3 classes; give the labels y"):
        refine_posteriors(model, x, steps=1)
    res = refine_posteriors(model, x, torch.tensor([0, 1, 2, 0]), steps=2)
    assert math.isfinite(res["refined_elbo"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), rf"steps must be in \[1, {MAX_REFINE_STEPS}\]; got 0"),
    (dict(steps=1.5), "steps must be an int"),
    (dict(steps=1, lr=0.0), "lr must be"),
    (dict(steps=1, lr=float("nan")), "lr must be"),
    (dict(steps=1, n_eval=0), r"n_eval must be in \[1, 10000\]; got 0"),
    (dict(steps=1, batch_size=0), "batch_size must be >= 1; got 0"),
])
def test_refine_posteriors_refuses_bad_arguments_by_name(kwargs, match):
    model = VAE(6, 2, hidden_dims=[5]).double()
    with pytest.raises((TypeError, ValueError), match=match):
        refine_posteriors(model, torch.rand(3, 6, dtype=torch.float64), **kwargs)


def test_posterior_elbo_refuses_stats_of_the_wrong_shape():
    model = VAE(6, 2, hidden_dims=[5]).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"stats must have shape \(3, 4\) \(B, q_z.n_stats\); got \(3, 5\)"):
        model.posterior_elbo(x, torch.zeros(3, 5, dtype=torch.float64))


def test_eval_refine_reports_the_amortisation_gap(bernoulli_digits_run, capsys):
    capsys.readouterr()
    args = ["eval", str(bernoulli_digits_run), "--k", "5", "--limit", "30", "--device", "cpu", "--refine", "20"]
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["refine_steps"] == 20 and res["refine_lr"] == 0.01 and res["refine_time_s"] >= 0
    assert res["amortisation_gap"] > 0
    assert res["amortisation_gap"] == pytest.approx(res["refined_elbo"] - res["amortised_elbo"], rel=1e-12)
    assert main(args + ["--refine-lr", "0.02"]) == 0
    assert "amortisation gap" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value,message", [
    ("--refine", "0", f"refine must be an int from 1 to {MAX_REFINE_STEPS}"),
    ("--refine", "x", "refine must be an int"),
    ("--refine-lr", "-1", "refine_lr must be"),
])
def test_eval_refuses_bad_refine_flags_by_name(bernoulli_digits_run, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(bernoulli_digits_run), flag, value])
    assert e.value.code == 2 and message in capsys.readouterr().err
