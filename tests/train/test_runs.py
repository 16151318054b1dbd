"""No lost work: a run folder is never overwritten unasked, never shared by two runs, a resume uses what it records,
and only a finite state is ever saved as a checkpoint."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import fastvae
from fastvae import train as tr
from fastvae.cli import main

TINY = ["--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "512", "--eval-k", "0", "--no-progress",
        "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (1 epoch) for the tests that must leave it untouched."""
    out = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    assert _train(out) == 0
    return out


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(out, *flags, epochs=1):
    return main(["train", "--out", str(out), *TINY, "--epochs", str(epochs), *flags])


# ---- a folder that holds a run ------------------------------------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    before = _digest(out / "checkpoint.pt")
    capsys.readouterr()
    assert _train(out, "--latent-dim", "3") == 1              # another architecture, and no flag: refused
    err = capsys.readouterr().err
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _digest(out / "checkpoint.pt") == before

    with pytest.raises(SystemExit, match="resume and overwrite exclude each other"):
        main(["train", "--out", str(out), *TINY, "--resume", "--overwrite"])

    assert (out / "latent.png").is_file()
    assert _train(out, "--latent-dim", "3", "--overwrite") == 0
    assert tr.load_checkpoint(out)["model_config"]["latent_dim"] == 3
    assert not (out / "latent.png").exists()                  # the old run's files went with it


# ---- two runs into one folder -------------------------------------------------------------------------------------


def test_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    lock = tr.claim_out_dir(str(out))                          # this process holds it, as a first run would
    try:
        assert _train(out) == 1
        assert f"in use by another fastvae run (pid {os.getpid()})" in capsys.readouterr().err
        assert not (out / "config.json").exists()
    finally:
        tr.release_out_dir(lock)
    assert _train(out) == 0                                     # released: the folder is free again


HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    f = open(sys.argv[1], "a+")
    fcntl.flock(f, fcntl.LOCK_EX)
    f.truncate(0); f.write(f"{os.getpid()}\\n"); f.flush()
    print("locked", flush=True)
    sys.stdin.read()          # holds the lock until killed
""")


def test_the_lock_of_another_process_and_its_release_when_it_dies(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / tr.LOCK_NAME)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"    # deterministic: it holds the lock from here on
        assert _train(out) == 1
        assert f"(pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)                     # a crash: the kernel drops its lock
        holder.wait(timeout=60)
    assert _train(out) == 0


def test_an_interrupted_checkpoint_write_keeps_the_old_one_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    tr.save_checkpoint(str(path), {"a": torch.zeros(2)})
    before = _digest(path)

    def interrupted(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint(str(path), {"a": torch.ones(2)})
    assert _digest(path) == before and os.listdir(tmp_path) == ["checkpoint.pt"]


# ---- resume: a changed setting is applied and recorded, or refused ------------------------------------------------


def test_resume_applies_and_records_a_new_lr(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    # only the changes are given: the run's own settings (latent_dim 2, hidden_dims [8], ...) are kept
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--lr", "1e-6", "--eval-k", "0"]) == 0
    assert "with epochs 1 -> 2, lr 0.001 -> 1e-06" in capsys.readouterr().out
    ckpt = tr.load_checkpoint(out)
    assert ckpt["epoch"] == 2 and ckpt["config"]["lr"] == 1e-6
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-6
    lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert lrs == [1e-6, 1e-6 * tr.VARIANCE_LR_SCALE]            # used, not just recorded


def test_resume_with_another_batch_size_counts_steps_on(tmp_path):
    out = tmp_path / "run"
    assert _train(out) == 0                                        # 1437 samples at 512: 3 steps
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--batch-size", "1024"]) == 0
    ckpt = tr.load_checkpoint(out)
    assert [m["step"] for m in ckpt["metrics"]] == [3, 5] and ckpt["config"]["batch_size"] == 1024


@pytest.mark.parametrize("flags,key", [(["--latent-dim", "3"], "latent_dim"), (["--seed", "1"], "seed"),
                                       (["--model", "iwae"], "model"), (["--hidden-dims", "16"], "hidden_dims"),
                                       (["--likelihood", "bernoulli"], "likelihood")])
def test_resume_refuses_a_changed_model_setting(trained, flags, key):
    before = _digest(trained / "checkpoint.pt")
    with pytest.raises(SystemExit, match=rf"cannot resume .* {key} \(the run's"):
        main(["train", "--out", str(trained), "--resume", "--epochs", "2", *flags])
    assert _digest(trained / "checkpoint.pt") == before


def test_resume_refuses_other_data(trained, tmp_path, capsys):
    import numpy as np
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((100, 1, 8, 8), dtype=np.float32))
    before = _digest(trained / "checkpoint.pt")
    assert main(["train", "--out", str(trained), "--resume", "--epochs", "2", "--data", f"npy:{x}"]) == 1
    assert "is not the data of the run" in capsys.readouterr().err
    assert _digest(trained / "checkpoint.pt") == before


# ---- only a finite state is saved ---------------------------------------------------------------------------------


def test_a_diverging_step_is_never_saved(tmp_path, capsys):
    """lr 1e30, one step per epoch (batch >= the 1437 training samples): the step's own loss is finite, the weights
    it leaves are not usable (the test ELBO is not finite); before, that state was saved as the 'good' one."""
    out = tmp_path / "run"
    assert _train(out, "--lr", "1e30", "--batch-size", "2048", epochs=2) == 1
    err = capsys.readouterr().err
    assert "became NaN or inf in epoch 1" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_saved(tmp_path, capsys, monkeypatch):
    evaluate = tr.evaluate
    calls = []

    def poisoned(model, *a, **k):
        res = evaluate(model, *a, **k)
        calls.append(1)
        if len(calls) == 2:                       # epoch 2: finite test metrics, one weight inf
            with torch.no_grad():
                model.encoder[0].weight[0, 0] = float("inf")
        return res
    monkeypatch.setattr(tr.loop, "evaluate", poisoned)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 1
    err = capsys.readouterr().err
    assert "parameter encoder.0.weight became NaN or inf in epoch 2" in err
    assert tr.load_checkpoint(out)["epoch"] == 1


def test_an_epoch_whose_test_metrics_are_nan_is_not_saved(tmp_path, capsys, monkeypatch):
    evaluate = tr.evaluate
    calls = []

    def poisoned(*a, **k):
        res = evaluate(*a, **k)
        calls.append(1)
        return {**res, "elbo": float("nan")} if len(calls) == 2 else res
    monkeypatch.setattr(tr.loop, "evaluate", poisoned)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 1
    err = capsys.readouterr().err
    assert "the test elbo (nan) became NaN or inf in epoch 2" in err
    assert f"the last good checkpoint, {out / 'checkpoint.pt'} (epoch 1), is kept" in err
    ckpt = tr.load_checkpoint(out)
    assert ckpt["epoch"] == 1 and all(math.isfinite(v) for v in ckpt["metrics"][-1].values())


# ---- Ctrl-C -------------------------------------------------------------------------------------------------------


def test_ctrl_c_says_where_the_last_checkpoint_is_and_frees_the_folder(tmp_path, capsys, monkeypatch):
    forward = fastvae.VAE.forward
    steps = []

    def interrupted(self, *a, **k):
        steps.append(self.training)
        if sum(steps) == 4:                       # the first step of epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return forward(self, *a, **k)
    monkeypatch.setattr(fastvae.VAE, "forward", interrupted)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"interrupted in epoch 2; the last checkpoint is {out / 'checkpoint.pt'} (epoch 1)" in err
    monkeypatch.setattr(fastvae.VAE, "forward", forward)
    assert main(["train", "--out", str(out), "--resume"]) == 0        # the lock went with the interrupted run
    assert tr.load_checkpoint(out)["epoch"] == 3
