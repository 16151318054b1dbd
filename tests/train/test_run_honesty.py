"""The command says only what is true, and never leaves a new user waiting in silence or guessing: --epochs 0
writes and claims nothing, the final ELBO is the last epoch's, data paths are recorded resolved, no lock file or
empty folder is left, SIGTERM is Ctrl-C; a proportionate final evaluation that shows its progress, an output folder
named after the data, the closest flag or key for a typo, pictures with titles and captions, and a word on why a
Gaussian likelihood's numbers are negative."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastvae
from fastvae import train as tr
from fastvae.cli import main

TINY = ["--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "512", "--eval-k", "0", "--no-progress",
        "--threads", "1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastvae.__file__)))

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, *flags, epochs=1):
    return main(["train", "--out", str(out), *TINY, "--epochs", str(epochs), *flags])


def _pixels(path, n_train, n_test, seed=0):
    """An npz of 8x8 float pixels: x_train (n_train) and x_test (n_test)."""
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.random((n_train, 1, 8, 8), dtype=np.float32),
             x_test=rng.random((n_test, 1, 8, 8), dtype=np.float32))
    return path


# ---- the command says only what is true ----------------------------------------------------------------------------


def test_epochs_0_writes_nothing_and_says_so(tmp_path, capsys):
    """Before, it printed the paths of a checkpoint and metrics it never wrote (and left config.json and pictures
    of an untrained model, so that the folder 'held a run')."""
    out = tmp_path / "run"
    assert _train(out, epochs=0) == 0
    printed = capsys.readouterr().out
    assert "nothing trained" in printed and "checkpoint:" not in printed and "metrics:" not in printed
    assert not out.exists()


def test_a_finished_run_leaves_no_lock_and_a_failed_start_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    assert not (out / tr.LOCK_NAME).exists() and (out / tr.CHECKPOINT_NAME).is_file()
    new = tmp_path / "a" / "b"
    assert _train(new, "--data", f"npz:{tmp_path / 'missing.npz'}") == 1
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()                   # it created a/ and a/b; both went with the lock
    existing = tmp_path / "kept"
    existing.mkdir()
    assert _train(existing, "--data", f"npz:{tmp_path / 'missing.npz'}") == 1
    assert existing.is_dir() and os.listdir(existing) == []    # a folder it did not create stays


def test_the_final_test_elbo_is_the_last_epochs_whatever_k(tmp_path):
    """The ELBO and the log-likelihood drew from one noise stream batch after batch, so with K > 0 the ELBO of a
    second batch saw other noise: a run's final ELBO (420.612) differed from its last epoch's (420.675)."""
    torch.manual_seed(0)
    model = fastvae.VAE(64, latent_dim=2, hidden_dims=[8])
    x = torch.rand(300, 64)
    alone = tr.evaluate(model, x, batch_size=128, seed=3)
    with_ll = tr.evaluate(model, x, batch_size=128, seed=3, n_samples=4)
    assert with_ll["elbo"] == alone["elbo"] and with_ll["loss"] == alone["loss"]
    # one batch: the numbers are those of before (the bound's pass draws first, the log-likelihood's next)
    one = tr.evaluate(model, x, seed=3, n_samples=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.eval()
        elbo = model(x, generator=g, distance_generator=torch.Generator().manual_seed(3)).elbo.sum().item() / 300
        ll = model.log_likelihood(x, n_samples=4, generator=g).double().mean().item()
    assert one["elbo"] == pytest.approx(elbo, rel=1e-12) and one["log_likelihood"] == pytest.approx(ll, rel=1e-12)


def test_a_relative_data_path_is_recorded_resolved(tmp_path, monkeypatch, capsys):
    """--data npz:x.npz was recorded as given, so eval from another folder did not find it."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    _pixels(here / "x.npz", 200, 50)
    monkeypatch.chdir(here)
    assert _train("run", "--data", "npz:x.npz") == 0
    want = f"npz:{here / 'x.npz'}"
    assert json.loads((here / "run" / "config.json").read_text())["data"] == want
    assert tr.load_checkpoint(here / "run")["config"]["data"] == want
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(here / "run"), "-k", "2", "--device", "cpu"]) == 0
    assert "on the x.npz test set (50 samples" in capsys.readouterr().out


SIGTERMED = textwrap.dedent("""
    import os, signal, sys
    import fastvae
    from fastvae.cli import main
    forward, steps = fastvae.VAE.forward, []
    def stopped(self, *a, **k):
        steps.append(self.training)
        if sum(steps) == 4:                    # the first step of epoch 2 (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *a, **k)
    fastvae.VAE.forward = stopped
    sys.exit(main(["train", "--out", sys.argv[1], "--epochs", "3", *sys.argv[2:]]))
""")


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    """SIGTERM (a scheduler's stop) killed the run without a word; now it says what Ctrl-C says, frees the folder
    and exits with 128 + 15. (In a child process: the old code's SIGTERM would end the test run itself.)"""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", SIGTERMED, str(out), *TINY], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "Traceback" not in p.stderr
    assert (f"fastvae train: terminated by SIGTERM in epoch 2; the last checkpoint is {out / tr.CHECKPOINT_NAME} "
            f"(epoch 1); continue with --resume") in p.stderr
    assert tr.load_checkpoint(out)["epoch"] == 1 and not (out / tr.LOCK_NAME).exists()


# ---- a new user is never left waiting in silence or guessing ---------------------------------------------------------


def test_the_default_final_evaluation_is_proportionate_shown_and_explained(tmp_path, capsys):
    """K = 1000 over 10,000 images ran 3.7 minutes in silence after a 1-epoch Fashion-MNIST run."""
    assert tr.final_eval_k(None, 10_000) == 100 and tr.final_eval_k(None, 359) == 1000   # fashion, digits
    assert tr.final_eval_k(None, 10**7) == 1 and tr.final_eval_k(0, 10) == 0 and tr.final_eval_k(7, 10**7) == 7
    data = _pixels(tmp_path / "wide.npz", 100, 2500)
    out = tmp_path / "run"
    flags = [f for f in TINY if f not in ("--eval-k", "0", "--no-progress")]
    assert main(["train", "--out", str(out), "--data", f"npz:{data}", "--epochs", "1", "--progress", *flags]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_k"] == 400                                 # 10^6 image-samples over 2500 images
    assert "final evaluation: the log-likelihood of the 2500 test samples with K=400" in captured.out
    assert "log-likelihood (K=400)" in captured.err                  # its progress bar
    assert f"`fastvae eval {out} -k 5000` gives the paper-grade one" in captured.out
    assert tr.GAUSSIAN_NOTE in captured.out                        # and why its numbers are negative


def test_the_gaussian_note_is_printed_where_its_numbers_are(bernoulli_digits_run, tmp_path, capsys):
    out = tmp_path / "g"
    assert _train(out) == 0
    assert tr.GAUSSIAN_NOTE in capsys.readouterr().out
    assert main(["eval", str(out), "-k", "2", "--device", "cpu"]) == 0
    assert tr.GAUSSIAN_NOTE in capsys.readouterr().out
    assert main(["eval", str(bernoulli_digits_run), "-k", "2", "--device", "cpu"]) == 0
    assert tr.GAUSSIAN_NOTE not in capsys.readouterr().out       # a probability of binary pixels: no note


def test_the_default_folder_is_named_after_what_was_trained(tmp_path, monkeypatch, capsys):
    """The default was out/digits whatever --data said, so a second run on other data was refused."""
    assert tr.resolve_config({})["out"] == os.path.join("out", "digits")
    assert tr.resolve_config({"data": "fashion"})["out"] == os.path.join("out", "fashion")
    assert tr.resolve_config({"model": "iwae", "data": "npz:/a/b.npz"})["out"] == os.path.join("out", "b-iwae")
    assert tr.resolve_config({"data": "fashion", "out": "mine"})["out"] == "mine"
    monkeypatch.chdir(tmp_path)
    _pixels(tmp_path / "pixels.npz", 200, 50)
    assert main(["train", *TINY, "--epochs", "1"]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--data", "npz:pixels.npz"]) == 0     # not refused
    assert (tmp_path / "out" / "digits" / "checkpoint.pt").is_file()
    assert (tmp_path / "out" / "pixels" / "checkpoint.pt").is_file()


def test_a_misspelt_flag_or_key_gets_the_closest_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--latent_dim", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --latent_dim 3 (--latent_dim: did you mean --latent-dim?)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "somewhere", "--limt", "5"])
    assert "did you mean --limit?" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("latent_dimz = 3\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(bad)])
    assert e.value.code.endswith("unknown configuration key 'latent_dimz'; did you mean 'latent_dim'?")
    assert "hidden_dims" not in e.value.code                        # not the list of all the keys
    bad.write_text("colour = 3\n")
    with pytest.raises(SystemExit, match="unknown configuration key 'colour'; the keys are the flags of"):
        main(["train", "--config", str(bad)])


def _drawn(monkeypatch):
    """The matplotlib figures fastvae.plots saves, kept instead of written: [(file name, figure)]."""
    from fastvae import plots
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append((os.path.basename(path), fig)))
    monkeypatch.setattr(plots._plt(), "close", lambda fig: None)
    return figures


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_the_loss_curve_of_one_epoch_shows_its_points_and_a_title(tmp_path, monkeypatch, beta):
    """After one epoch the curve was blank (a single point, no marker), untitled, and with beta 1 its test loss and
    test -ELBO lines lay on each other."""
    figures = _drawn(monkeypatch)
    assert _train(tmp_path / "run", "--beta", str(beta)) == 0
    drawn = dict(figures)
    ax = drawn["loss_curve.png"].axes[0]
    assert ax.get_title().startswith("vae on digits: loss per epoch (1 epoch)")
    lines = ax.get_lines()
    assert lines and all(line.get_marker() == "o" and line.get_markersize() > 0 for line in lines)
    labels = [line.get_label() for line in lines]
    if beta == 1.0:      # the loss is the -ELBO: one line, labelled so
        assert labels == ["train loss", "test loss (= test -ELBO)"]
    else:
        assert labels == ["train loss", "test loss", "test -ELBO"]
        assert lines[1].get_ydata()[0] != lines[2].get_ydata()[0]
    title = drawn["samples.png"].axes[0].get_title()
    assert title.startswith("64 samples of vae on digits, epoch 1") and "prior" in title


def test_eval_says_what_runs_or_shows_a_bar(bernoulli_digits_run, capsys):
    """Posterior refinement (--refine) ran without a word or a bar, whatever --progress said."""
    argv = ["eval", str(bernoulli_digits_run), "-k", "1", "--refine", "2", "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0
    assert "refining the posteriors of 359 test samples, 2 steps each" in capsys.readouterr().err
    assert main([*argv, "--progress"]) == 0
    assert "refining (2 steps)" in capsys.readouterr().err
