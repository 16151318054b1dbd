"""Semi-supervised learning, Kingma et al. (2014) M2: the objective against an independent computation, the
marginal log-likelihood, the kept labels, the command (train, eval, sample, resume) and the refusals."""
import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from fastvae import VAE
from fastvae.cli import main
from fastvae.data import keep_labels, load_digits


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.train_x, d.train_y, d.test_x, d.test_y


def _model(**kw):
    torch.manual_seed(0)
    return VAE(6, 2, hidden_dims=[5], likelihood="bernoulli", n_classes=3, semi_supervised=True, **kw).double()


def _x(n=5, seed=1):
    return torch.bernoulli(torch.full((n, 6), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


def test_the_objective_is_eq_9_of_the_paper(monkeypatch):
    """Labelled: -log p(x|z,y) + KL - log p(y) + alpha (-log q(y|x)); unlabelled: sum_y q(y|x) (that bound for y)
    - H(q(y|x)); p(y) = 1/3. Every term recomputed with torch.distributions at the draws the model made."""
    model = _model(alpha=7.0)
    x, y = _x(), torch.tensor([2, -1, 0, -1, -1])
    draws = []
    sample_kl = model.q_z.sample_kl

    def recording(ops, mu, stat, generator=None):
        z, kl = sample_kl(ops, mu, stat, generator)
        draws.append(z)
        return z, kl
    monkeypatch.setattr(model.q_z, "sample_kl", recording)
    out = model(x, y, generator=torch.Generator().manual_seed(3))
    z_lab, z_unl = draws                                   # the labelled rows, then every class of the unlabelled

    def neg_bound(xs, ys, z):                              # -log p(x|z,y) + KL(q(z|x,y) || N(0,I)) - log p(y)
        mu, lv = model.encode(xs, ys)
        logits, _ = model.decode(z, ys)
        kl = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(0.0, 1.0)).sum(-1)
        return -Bernoulli(logits=logits).log_prob(xs).sum(-1) + kl + math.log(3)

    log_q = torch.log_softmax(model.classifier(x), -1)
    lab, unl = torch.tensor([0, 2]), torch.tensor([1, 3, 4])
    want = torch.empty(5, dtype=torch.float64)
    want[lab] = neg_bound(x[lab], y[lab], z_lab)
    classes = torch.arange(3).repeat_interleave(3)
    per_class = neg_bound(x[unl].repeat(3, 1), classes, z_unl).reshape(3, 3)          # (C, U)
    q = log_q[unl].T.exp()
    want[unl] = (q * per_class).sum(0) + (q * log_q[unl].T).sum(0)
    ce = -log_q[lab, y[lab]]
    torch.testing.assert_close(out.elbo.double(), -want, rtol=1e-5, atol=1e-5)         # float32 per-sample terms
    torch.testing.assert_close(out.classification.double(), ce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), want.mean() + 7.0 * ce.mean(), rtol=1e-5, atol=1e-5)


def test_the_marginal_log_likelihood_sums_the_classes():
    """log p(x) = log (1/C) sum_y p(x|y): with y given, the conditional; without, the log-mean-exp over the classes
    of conditionals at K / C samples each (same seeds: the model draws class by class in order)."""
    model = _model()
    x = _x(4)
    k = 30
    g = torch.Generator().manual_seed(5)
    marginal = model.log_likelihood(x, n_samples=k, generator=g)
    g = torch.Generator().manual_seed(5)
    per = [model.log_likelihood(x, torch.full((4,), c), n_samples=k // 3, generator=g) for c in range(3)]
    torch.testing.assert_close(marginal, torch.logsumexp(torch.stack(per), 0) - math.log(3), rtol=1e-12, atol=1e-12)
    # and it bounds the unlabelled ELBO from above on average (a lower bound of log p(x) at K = 1 per class)
    elbo = torch.stack([model(x, torch.full((4,), -1), generator=g).elbo for _ in range(200)]).mean(0)
    assert (model.log_likelihood(x, n_samples=3000, generator=g) > elbo - 0.05).all()


def test_m2_learns_from_few_labels(digits):
    """On the bundled digits with 100 labels, the classifier q(y|x) beats chance by far after a short run."""
    torch.manual_seed(0)
    x, y, tx, ty = digits
    x, tx = x.reshape(x.shape[0], -1), tx.reshape(tx.shape[0], -1)
    hidden, kept = keep_labels(y, 100, 10, seed=0)
    model = VAE(64, 4, hidden_dims=[64], n_classes=10, semi_supervised=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _step in range(150):
        i = torch.randint(0, x.shape[0], (64,), generator=g)
        j = kept[torch.randint(0, 100, (32,), generator=g)]
        out = model(torch.cat([x[i], x[j]]), torch.cat([hidden[i], y[j]]), generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses) and sum(losses[-10:]) / 10 < losses[0] - 1.0
    accuracy = (model.classify(tx).argmax(-1) == ty).double().mean().item()
    assert accuracy > 0.5, accuracy


def test_kept_labels_are_balanced_and_fixed_by_the_seed():
    y = torch.arange(50) % 5
    hidden, kept = keep_labels(y, 12, 5, seed=3)
    assert kept.numel() == 12 and torch.equal(hidden[kept], y[kept]) and (hidden[hidden >= 0].numel() == 12)
    assert torch.bincount(y[kept], minlength=5).tolist() == [3, 3, 2, 2, 2]
    assert torch.equal(keep_labels(y, 12, 5, seed=3)[1], kept)
    assert not torch.equal(keep_labels(y, 12, 5, seed=4)[1], kept)
    with pytest.raises(ValueError, match="labelled must be from 5 .* to 50 .*; got 4"):
        keep_labels(y, 4, 5, seed=0)
    with pytest.raises(ValueError, match="labelled=50 keeps 10 labels of class 0, which has 1 training samples"):
        keep_labels(torch.tensor([0] + [1] * 60), 50, 5, seed=0)


@pytest.mark.parametrize("kw,match", [
    (dict(n_classes=1), "needs n_classes >= 2"),
    (dict(divergence="mmd"), "divergence='kl'"),
    (dict(n_samples=2), "n_samples=1"),
])
def test_bad_semi_supervised_models_are_refused(kw, match):
    args = {**dict(hidden_dims=[5], n_classes=3, semi_supervised=True), **kw}
    with pytest.raises(ValueError, match=match):
        VAE(6, 2, **args)


def test_bad_labels_are_refused_by_name():
    model = _model()
    x = _x(3)
    with pytest.raises(ValueError, match=r"needs labels y: class ids, or -1 for an unlabelled input"):
        model(x)
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 3\) or -1 \(unlabelled\); found labels "
                                         r"from -2 to 1"):
        model(x, torch.tensor([-2, 0, 1]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer class labels"):
        model(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\); found"):     # -1 only in a training batch
        model.encode(x, torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="semi-supervised"):
        VAE(6, 2, hidden_dims=[5]).classify(x.float())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2run") / "run"
    assert main(["train", "--model", "m2", "--labelled", "50", "--epochs", "1", "--hidden-dims", "16",
                 "--latent-dim", "2", "--batch-size", "256", "--eval-k", "20", "--no-progress", "--threads", "1",
                 "--out", str(out)]) == 0
    return out


def test_the_command_trains_evaluates_samples_and_resumes_m2(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labelled"] == 50 and 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["baseline_accuracy"] <= 1
    assert math.isfinite(summary["test_log_likelihood"])
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--k", "10", "--limit", "30", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["accuracy"] <= 1 and math.isfinite(res["nll"])
    assert main(["sample", str(run_dir), "-n", "10"]) == 0
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("flag,value,message", [
    ("--labelled", "0", "labelled must be"),
    ("--alpha", "-1", "alpha must be"),
])
def test_bad_m2_flags_are_refused_by_name(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "m2", flag, value, "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_too_many_labels_are_refused_before_training(tmp_path, capsys):
    assert main(["train", "--model", "m2", "--labelled", "5", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "labelled must be from 10 (one per class)" in capsys.readouterr().err
