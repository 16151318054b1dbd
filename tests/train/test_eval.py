"""The importance-sampled test log-likelihood (`fastvae eval`): streamed over K in bounded chunks, equal to the direct
computation, its reported numbers (NLL, bits/dim, standard error), and the refusal of a bad K."""
import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from fastvae import VAE
from fastvae.cli import main
from fastvae.data import load_data
from fastvae.models import MAX_LL_SAMPLES
from fastvae.train import model_from_checkpoint
from fastvae.train.evaluation import RunningMoments, evaluate, log_likelihood_report


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(dtype=torch.float64):
    """A Bernoulli VAE small enough that every chunk is a handful of numbers; float64, so that the streamed and the
    direct computations differ only by float64 rounding."""
    torch.manual_seed(0)
    model = VAE(6, 2, hidden_dims=[5], likelihood="bernoulli").to(dtype)
    x = torch.bernoulli(torch.full((7, 6), 0.4, dtype=dtype), generator=torch.Generator().manual_seed(1))
    return model, x


def _record_draws(model, monkeypatch):
    """Wraps the posterior's sampler: every chunk's (z (k, b, d), log q (k, b)) is recorded, in order."""
    draws, sample = [], model.q_z.sample

    def recording(ops, mu, stat, k, generator=None):
        z, log_q = sample(ops, mu, stat, k, generator)
        draws.append((z, log_q))
        return z, log_q
    monkeypatch.setattr(model.q_z, "sample", recording)
    return draws


def _direct_log_weights(model, x, z):
    """log p(x|z) + log p(z) - log q(z|x) for z (K, B, d), with torch.distributions (not the model's ops)."""
    mu, logvar = model.encode(x)
    logits, _ = model.decode(z)
    return (Bernoulli(logits=logits).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1))


def test_streamed_estimate_equals_the_direct_computation(monkeypatch):
    model, x = _tiny()
    K = 50
    width = model._activation_width()
    draws = _record_draws(model, monkeypatch)
    # 3 (input, sample) pairs per chunk: blocks of 3 inputs, one sample per chunk -> 3 blocks x 50 chunks
    streamed = model.log_likelihood(x, n_samples=K, generator=torch.Generator().manual_seed(2),
                                    chunk_elements=3 * width)
    assert len(draws) == 3 * K and {tuple(z.shape[:2]) for z, _ in draws} == {(1, 3), (1, 1)}
    # the same draws, gathered per input into (K, B, d), in one logsumexp over all K
    blocks = [torch.cat([z for z, _ in draws[i * K:(i + 1) * K]]) for i in range(3)]
    z = torch.cat(blocks, dim=1)
    direct = torch.logsumexp(_direct_log_weights(model, x, z), 0) - math.log(K)
    # float64: the two differ by the rounding of ~50 logaddexp steps on values of ~5 nats
    torch.testing.assert_close(streamed, direct, rtol=1e-12, atol=1e-12)
    # and the recorded log q is the posterior's density at the recorded z
    mu, logvar = model.encode(x)
    torch.testing.assert_close(torch.cat([torch.cat([q for _, q in draws[i * K:(i + 1) * K]]) for i in range(3)], 1),
                               Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1), rtol=1e-12, atol=1e-12)


def test_k_equal_one_is_the_elbos_importance_weight():
    model, x = _tiny()
    ll = model.log_likelihood(x, n_samples=1, generator=torch.Generator().manual_seed(3))
    mu, logvar = model.encode(x)
    z = model.ops.get("reparameterize")(mu, logvar, n_samples=1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ll, _direct_log_weights(model, x, z)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [10, pytest.param(2000, marks=pytest.mark.slow)])
def test_chunks_are_bounded_whatever_k_and_the_number_of_inputs(monkeypatch, K):
    """Memory: no chunk holds more than chunk_elements activations (samples x inputs x the widest layer), for any K
    and any number of inputs; the K samples of every input are all drawn, and the progress counts them."""
    torch.manual_seed(0)
    model = VAE(6, 2, hidden_dims=[5], likelihood="bernoulli")
    width = model._activation_width()
    chunk_elements = 128 * width
    for n_inputs in (4, 300):
        x = torch.bernoulli(torch.full((n_inputs, 6), 0.5), generator=torch.Generator().manual_seed(1))
        draws = _record_draws(model, monkeypatch)
        done = []
        ll = model.log_likelihood(x, n_samples=K, generator=torch.Generator().manual_seed(2),
                                  chunk_elements=chunk_elements, progress=done.append)
        assert ll.shape == (n_inputs,) and torch.isfinite(ll).all()
        assert max(z.shape[0] * z.shape[1] for z, _ in draws) * width <= chunk_elements
        assert sum(z.shape[0] * z.shape[1] for z, _ in draws) == K * n_inputs == sum(done)
        monkeypatch.undo()


def test_running_moments_and_the_reported_formulas():
    rng = np.random.default_rng(0)
    values = rng.normal(-90.0, 7.0, size=1001)
    m = RunningMoments()
    for part in np.split(values, [1, 2, 300, 301, 1000]):        # uneven parts, one empty-sized boundary
        m.add(torch.from_numpy(part.copy()))
    assert m.n == 1001
    report = log_likelihood_report(m, data_dim=784)
    se = values.std(ddof=1) / math.sqrt(values.size)
    # float64 merges of 1001 values of ~90: agreement to ~1e-12 relative
    assert report["log_likelihood"] == pytest.approx(values.mean(), rel=1e-12)
    assert report["nll"] == pytest.approx(-values.mean(), rel=1e-12)
    assert report["nll_se"] == pytest.approx(se, rel=1e-10)
    assert report["bits_per_dim"] == pytest.approx(-values.mean() / (784 * math.log(2)), rel=1e-12)
    assert report["bits_per_dim_se"] == pytest.approx(se / (784 * math.log(2)), rel=1e-10)
    one = RunningMoments()
    one.add(torch.tensor([-5.0]))
    assert log_likelihood_report(one, 4)["nll_se"] is None          # one image: no spread to estimate


def test_evaluate_reports_the_per_image_estimates_statistics():
    """evaluate's numbers are those of the per-image log_likelihood values drawn with the same noise stream."""
    model, x = _tiny()
    res = evaluate(model, x, n_samples=30, seed=4)
    g = torch.Generator().manual_seed(4)
    model(x, generator=g)                                 # evaluate draws the ELBO's noise first
    ll = model.log_likelihood(x, n_samples=30, generator=g).numpy()
    assert res["log_likelihood"] == pytest.approx(ll.mean(), rel=1e-12)
    assert res["nll_se"] == pytest.approx(ll.std(ddof=1) / math.sqrt(7), rel=1e-10)
    assert res["bits_per_dim"] == pytest.approx(-ll.mean() / (6 * math.log(2)), rel=1e-12)


def test_eval_reports_nll_bits_per_dim_and_se(bernoulli_digits_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(bernoulli_digits_run), "--k", "20", "--limit", "40", "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert res["n_test"] == 40 and res["n_test_all"] == 359 and res["n_samples"] == 20 and res["dim"] == 64
    assert res["binarize"] == "dynamic" and res["time_s"] >= 0
    assert res["nll"] == -res["log_likelihood"] and res["nll_se"] > 0
    assert res["bits_per_dim"] == pytest.approx(res["nll"] / (64 * math.log(2)), rel=1e-12)
    assert "sample/s" not in out.err                     # not a terminal: no progress bar
    # the run's binarization (dynamic): the test set binarized once with the fixed seed, whatever --seed is
    model, _ = model_from_checkpoint(str(bernoulli_digits_run), torch.device("cpu"))
    fixed = load_data("digits", binarize="dynamic").test_x[:40]
    assert evaluate(model, fixed, n_samples=20, seed=0)["log_likelihood"] == res["log_likelihood"]
    assert main(["eval", str(bernoulli_digits_run), "-k", "20", "--limit", "40", "--json", "--device", "cpu",
                 "--progress"]) == 0
    again = capsys.readouterr()
    assert json.loads(again.out)["log_likelihood"] == res["log_likelihood"]      # same seed, same numbers
    assert "log-likelihood (K=20)" in again.err and "800/800" in again.err      # the bar, on stderr
    assert main(["eval", str(bernoulli_digits_run), "--n-samples", "20", "--limit", "40", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "the first 40 of 359 samples" in text and "bits/dim" in text and "SE" in text


@pytest.mark.parametrize("k", ["0", "-1", str(MAX_LL_SAMPLES + 1), "2.5"])
@pytest.mark.parametrize("flag", ["-k", "--k", "--n-samples"])
def test_eval_refuses_a_bad_k_naming_the_flag(bernoulli_digits_run, capsys, flag, k):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(bernoulli_digits_run), flag, k])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument -k/--k/--n-samples: k must be an int from 1 to {MAX_LL_SAMPLES}" in err and k in err


def test_train_refuses_an_eval_k_beyond_the_cap_before_training(tmp_path, capsys):
    """train's eval_k had no cap of its own: 2 * 10^6 trained the whole run, then failed in log_likelihood."""
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "1", "--eval-k", str(2 * MAX_LL_SAMPLES), "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and f"eval_k must be an int from 0 to {MAX_LL_SAMPLES}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
