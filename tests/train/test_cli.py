"""The `fastvae` command end to end into tmp_path, exact resume, the NaN stop, checkpoint safety."""
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

import fastvae
from fastvae import train as tr
from fastvae.cli import main

SMALL = ["--hidden-dims", "32", "--latent-dim", "2", "--batch-size", "256", "--no-progress", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_cfg(out, **kw):
    cfg = dict(hidden_dims=[32], latent_dim=2, batch_size=256, progress=False, out=str(out), eval_k=0, threads=1)
    cfg.update(kw)
    return cfg


def test_train_eval_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--eval-k", "20", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "pictures:" in printed and str(out) in printed
    for name in ("checkpoint.pt", "config.json", "metrics.csv", "metrics.json", "summary.json", "loss_curve.png",
                 "samples.png", "reconstructions.png", "latent.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_log_likelihood"] >= summary["test_elbo"] - 0.5
    assert summary["test_bits_per_dim"] == pytest.approx(-summary["test_log_likelihood"] / (64 * math.log(2)))
    assert f"{summary['test_bits_per_dim']:.4f} bits/dim" in printed

    assert main(["eval", str(out / "checkpoint.pt"), "-k", "10", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_test"] == 359 and res["log_likelihood"] > res["elbo"] - 0.5

    assert main(["sample", str(out), "-n", "9", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100


def test_toml_config_keys_mirror_flags_and_flags_win(tmp_path):
    out = tmp_path / "toml"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "iwae"\nlatent-dim = 3\nhidden_dims = [16]\nepochs = 1\nout = "{out}"\n'
                   f'eval_k = 0\nbatch_size = 512\nprogress = false\nn-samples = 2\n')
    assert main(["train", "--config", str(cfg), "--latent-dim", "2"]) == 0
    used = json.loads((out / "config.json").read_text())
    assert used["model"] == "iwae" and used["n_samples"] == 2 and used["latent_dim"] == 2
    assert used["hidden_dims"] == [16]
    bad = tmp_path / "bad.toml"
    bad.write_text("latent_dimz = 3\n")
    with pytest.raises(SystemExit, match="unknown configuration key"):
        main(["train", "--config", str(bad)])


@pytest.mark.parametrize("model", ["vae", "iwae"])
def test_resume_continues_exactly(tmp_path, model):
    kw = dict(model=model, likelihood="bernoulli", n_samples=2 if model == "iwae" else None)
    full = tr.train(_small_cfg(tmp_path / "full", epochs=4, **kw))
    tr.train(_small_cfg(tmp_path / "part", epochs=2, **kw))
    resumed = tr.train(_small_cfg(tmp_path / "part", epochs=4, resume=True, **kw))
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert [m["train_loss"] for m in full.metrics] == [m["train_loss"] for m in resumed.metrics]


def test_resume_refuses_another_models_checkpoint(tmp_path):
    tr.train(_small_cfg(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"cannot resume .* latent_dim \(the run's 2, given 3\)"):
        tr.train(_small_cfg(tmp_path, epochs=2, latent_dim=3, resume=True))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    forward = fastvae.VAE.forward

    def poisoned(self, *a, **k):
        out = forward(self, *a, **k)
        calls["n"] += self.training
        if calls["n"] > 12 and self.training:          # digits: 6 steps per epoch at batch 256; epoch 3 goes bad
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(fastvae.VAE, "forward", poisoned)
    out = tmp_path / "nan"
    rc = main(["train", "--epochs", "5", "--out", str(out), "--eval-k", "0", *SMALL])
    assert rc == 1
    assert "NaN or inf" in capsys.readouterr().err
    ckpt = tr.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_bad_checkpoints_get_clear_errors(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(tr.CheckpointError, match="not a fastvae checkpoint"):
        tr.load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": tr.CHECKPOINT_FORMAT, "version": tr.CHECKPOINT_VERSION + 1, "model_config": {},
                "model": {}, "config": {}}, tmp_path / "newer.pt")
    with pytest.raises(tr.CheckpointError, match="newer"):
        tr.load_checkpoint(tmp_path / "newer.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(tr.CheckpointError, match="junk.pt"):
        tr.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(SystemExit, match="not a fastvae checkpoint"):
        main(["eval", str(tmp_path / "other.pt")])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_runs_code_from_a_checkpoint(tmp_path):
    torch.save({"format": tr.CHECKPOINT_FORMAT, "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(tr.CheckpointError, match="not a loadable"):
        tr.load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.slow
def test_info_and_python_dash_m(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert fastvae.__version__ in text and torch.__version__ in text and "kernels: CPU" in text
    r = subprocess.run([sys.executable, "-m", "fastvae", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "torch" in r.stdout


def test_bench_forwards_its_arguments(monkeypatch):
    seen = {}
    fake = types.ModuleType("fastvae.bench")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fastvae.bench", fake)
    monkeypatch.setattr(fastvae, "bench", fake, raising=False)
    main(["bench", "--out", "x", "--quick"])
    assert seen["argv"] == ["--out", "x", "--quick"]


def test_bench_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastvae.bench", None)   # import fails as if the suite were absent
    monkeypatch.delattr(fastvae, "bench", raising=False)      # (an earlier test may have imported it)
    with pytest.raises(SystemExit, match="benchmark suite"):
        main(["bench"])


def test_bf16_autocast_and_a_dataset_object(tmp_path):
    x = torch.rand(64, 1, 4, 4)
    res = tr.train(_small_cfg(tmp_path, epochs=1, amp="bf16", data=torch.utils.data.TensorDataset(x)))
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert json.loads((tmp_path / "config.json").read_text())["data"] == "<TensorDataset>"
    assert tr.load_checkpoint(tmp_path)["epoch"] == 1


def test_bad_data_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["train", "--data", f"mnist:{tmp_path}", "--out", str(tmp_path / "o"), *SMALL]) == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "Traceback" not in err


def _eight_bit_digits(tmp_path):
    """The digits as uint8 images (v / 16 -> round(255 v / 16)): 8-bit data for the discretized logistics."""
    import numpy as np
    from fastvae.data import load_digits
    d = load_digits()
    u8 = lambda x: np.round(x.numpy() * 255).astype(np.uint8)  # noqa: E731
    path = tmp_path / "digits8.npz"
    np.savez(path, x_train=u8(d.train_x), y_train=d.train_y.numpy(), x_test=u8(d.test_x), y_test=d.test_y.numpy())
    return f"npz:{path}"


@pytest.mark.parametrize("likelihood", ["logistic", "logistic_mixture"])
def test_logistic_likelihoods_train_resume_eval_and_sample(tmp_path, capsys, likelihood):
    data = _eight_bit_digits(tmp_path)
    kw = dict(data=data, likelihood=likelihood, n_mix=3)
    full = tr.train(_small_cfg(tmp_path / "full", epochs=2, **kw))
    tr.train(_small_cfg(tmp_path / "part", epochs=1, **kw))
    resumed = tr.train(_small_cfg(tmp_path / "part", epochs=2, resume=True, **kw))
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match=r"cannot resume .* n_mix \(the run's 3, given 4\)"):
        tr.train(_small_cfg(tmp_path / "part", epochs=3, resume=True, **{**kw, "n_mix": 4}))
    run = str(tmp_path / "full")
    capsys.readouterr()
    assert main(["eval", run, "--k", "5", "--limit", "20", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    # a discrete likelihood: -log P(x) >= 0, and nats / (D ln 2) are bits/dim of the 8-bit data (at most 8 for a
    # model that learned anything in two epochs)
    assert 0 < res["bits_per_dim"] < 8 and res["dim"] == 64
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())  # eval_k = 0: no log-likelihood there
    assert "test_bits_per_dim" not in summary
    assert main(["sample", run, "-n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    model, _ = tr.model_from_checkpoint(run, torch.device("cpu"))
    assert model.likelihood == likelihood and (model.config.get("n_mix") == (3 if "mixture" in likelihood else None))


def test_logistic_likelihood_refuses_data_off_the_8_bit_grid(tmp_path, capsys):
    """The digits' 17 grey levels are not 8-bit data: the run stops with the op's message, naming the grid."""
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\] on the grid of 2\*\*n_bits = 256 levels"):
        tr.train(_small_cfg(tmp_path / "run", epochs=1, likelihood="logistic"))
