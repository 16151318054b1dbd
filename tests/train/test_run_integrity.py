"""A damaged checkpoint is refused (the CRC-32 of every record of its zip archive is verified on every load), the
previous good checkpoint is kept beside the current one and resumed from, and a failed write (a full disk, a
read-only folder) or an unreadable file ends the command with one line that keeps the last good checkpoint."""
import errno
import glob
import os
import zipfile

import pytest
import torch

from fastvae import train as tr
from fastvae.cli import main

TINY = ["--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "512", "--eval-k", "0", "--no-progress",
        "--threads", "1"]
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, *flags, epochs=1):
    return main(["train", "--out", str(out), *TINY, "--epochs", str(epochs), *flags])


def _flip_bytes_of_a_tensor(path, record="archive/data/1"):
    """Flips two bytes in the middle of a tensor's stored data (the zip record's CRC-32 no longer matches)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(record)
    data = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)   # the local header's size
    at = start + info.file_size // 2
    data[at] ^= 0x40
    data[at + 1] ^= 0x01
    open(path, "wb").write(bytes(data))


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A tiny 2-epoch run: checkpoint.pt (epoch 2) and checkpoint.prev.pt (epoch 1)."""
    out = tmp_path_factory.mktemp("two") / "run"
    torch.set_num_threads(1)
    assert _train(out, epochs=2) == 0
    return out


# ---- a damaged checkpoint -----------------------------------------------------------------------------------------


def test_a_run_keeps_its_previous_checkpoint_beside_the_last(two_epochs):
    assert tr.load_checkpoint(two_epochs)["epoch"] == 2
    assert tr.load_checkpoint(two_epochs / tr.PREVIOUS_CHECKPOINT_NAME)["epoch"] == 1


def test_a_flipped_byte_in_a_tensor_is_refused_naming_the_file_and_the_record(two_epochs, tmp_path, capsys):
    """Before, the flipped bytes were read as weights: eval printed 'NLL nan', resume blamed the learning rate."""
    out = tmp_path / "run"
    out.mkdir()
    for name in (tr.CHECKPOINT_NAME, tr.PREVIOUS_CHECKPOINT_NAME):
        (out / name).write_bytes((two_epochs / name).read_bytes())
    path = out / tr.CHECKPOINT_NAME
    _flip_bytes_of_a_tensor(path)
    with pytest.raises(tr.CheckpointError, match=r"is damaged: the stored bytes of its record 'archive/data/1' do "
                                                 r"not match their CRC-32") as e:
        tr.load_checkpoint(path)
    assert str(path) in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["eval", str(out), "--device", "cpu", "-k", "2"])
    msg = str(e.value.code)
    assert msg.startswith(f"fastvae eval: {path} is damaged") and "\n" not in msg
    assert f"the previous checkpoint beside it, {out / tr.PREVIOUS_CHECKPOINT_NAME} (epoch 1), is intact" in msg
    assert main(["eval", str(out / tr.PREVIOUS_CHECKPOINT_NAME), "--device", "cpu", "-k", "2"]) == 0


def test_resume_falls_back_to_the_previous_checkpoint_saying_so(two_epochs, tmp_path, capsys):
    """checkpoint.pt damaged: the run goes on from checkpoint.prev.pt, exactly as if it had stopped there."""
    out = tmp_path / "run"
    out.mkdir()
    for name in os.listdir(two_epochs):
        (out / name).write_bytes((two_epochs / name).read_bytes())
    _flip_bytes_of_a_tensor(out / tr.CHECKPOINT_NAME)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / tr.CHECKPOINT_NAME} is damaged" in printed
    assert f"using the previous checkpoint, {out / tr.PREVIOUS_CHECKPOINT_NAME} (epoch 1)" in printed
    assert f"resuming from {out / tr.PREVIOUS_CHECKPOINT_NAME} at epoch 1" in printed
    resumed = tr.load_checkpoint(out)
    assert resumed["epoch"] == 3
    assert tr.load_checkpoint(out / tr.PREVIOUS_CHECKPOINT_NAME)["epoch"] == 2     # the damaged one was not kept
    straight = tmp_path / "straight"
    assert _train(straight, epochs=3) == 0
    want = tr.load_checkpoint(straight)
    for name, value in want["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert [m["train_loss"] for m in resumed["metrics"]] == [m["train_loss"] for m in want["metrics"]]


def test_a_damaged_checkpoint_is_never_kept_over_the_good_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for value in (1.0, 2.0):
        tr.save_checkpoint(path, {"w": torch.full((1000,), value)})
    assert torch.load(tmp_path / "checkpoint.prev.pt", weights_only=True)["w"][0] == 1.0
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF                       # inside the tensor's 4000 bytes
    path.write_bytes(bytes(data))
    with pytest.raises(tr.CheckpointError, match="is damaged"):
        tr.verify_checkpoint(path)
    tr.save_checkpoint(path, {"w": torch.full((1000,), 3.0)})
    assert torch.load(tmp_path / "checkpoint.prev.pt", weights_only=True)["w"][0] == 1.0   # the good one stays
    assert torch.load(path, weights_only=True)["w"][0] == 3.0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_truncated_text_and_empty_files_are_refused_by_what_they_are(two_epochs, tmp_path, capsys):
    """Evaluating metrics.csv by mistake ended in 'IndexError: pop from empty list'."""
    with pytest.raises(SystemExit) as e:
        main(["eval", str(two_epochs / "metrics.csv"), "--device", "cpu"])
    assert "is not a fastvae checkpoint" in e.value.code and "a text file beginning 'epoch,step" in e.value.code
    assert "IndexError" not in e.value.code
    cut = tmp_path / "cut.pt"
    cut.write_bytes((two_epochs / tr.CHECKPOINT_NAME).read_bytes()[:3000])
    with pytest.raises(tr.CheckpointError, match="is damaged: its zip archive is broken .* truncated"):
        tr.load_checkpoint(cut)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(tr.CheckpointError, match="this is an empty file"):
        tr.load_checkpoint(tmp_path / "empty.pt")


def test_every_committed_checkpoint_verifies():
    """The checkpoints main wrote (tests/fixtures) pass the integrity check (their numbers: test_checkpoint_compat)."""
    paths = glob.glob(os.path.join(FIXTURES, "*.pt"))
    assert len(paths) >= 18
    for path in paths:
        tr.verify_checkpoint(path)


# ---- a failed write, an unreadable file -----------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    save, calls = torch.save, []

    def disk_full(obj, f):
        calls.append(1)
        if len(calls) == 2:                        # the checkpoint of epoch 2
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f)
    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 1
    err = _one_line_error(capsys)
    path = out / tr.CHECKPOINT_NAME
    assert (f"fastvae train: cannot write {path}: No space left on device (ENOSPC); training stopped in epoch 2 and "
            f"the last good checkpoint, {path} (epoch 1), is kept") in err
    monkeypatch.setattr(torch, "save", save)
    assert tr.load_checkpoint(out)["epoch"] == 1
    assert not [n for n in os.listdir(out) if "tmp" in n] and not (out / tr.LOCK_NAME).exists()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0


def test_a_folder_turned_read_only_is_one_line(tmp_path, capsys, monkeypatch):
    """Root writes into chmod-ed folders, so the read-only file system is simulated: after epoch 1's metrics, every
    file the run opens for writing fails with EROFS."""
    import builtins
    from fastvae.train import rundir
    read_only, write_metrics = [], tr.loop.write_metrics

    def opening(path, mode="r", *a, **k):
        if read_only and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return builtins.open(path, mode, *a, **k)

    def metrics_then_read_only(*a, **k):
        write_metrics(*a, **k)
        read_only.append(1)
    monkeypatch.setattr(rundir, "open", opening, raising=False)     # the run folder's writes go through rundir
    monkeypatch.setattr(tr.loop, "write_metrics", metrics_then_read_only)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 1
    err = _one_line_error(capsys)
    assert f"cannot write {out / tr.CHECKPOINT_NAME}: Read-only file system (EROFS)" in err
    assert f"the last good checkpoint, {out / tr.CHECKPOINT_NAME} (epoch 1), is kept" in err
    assert tr.load_checkpoint(out)["epoch"] == 1


def test_a_read_only_folder_at_the_start_is_one_line(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    out = tmp_path / "ro"
    assert _train(out) == 1
    assert "cannot write into" in _one_line_error(capsys) and not out.exists()


def test_an_unreadable_data_file_is_one_line(tmp_path, capsys, monkeypatch):
    """A data file without read permission (simulated: root reads anything) ended in a PermissionError traceback."""
    import fastvae.data.files
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"")

    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(fastvae.data.files, "_open", denied)
    out = tmp_path / "run"
    assert _train(out, "--data", f"mnist:{folder}") == 1
    err = _one_line_error(capsys)
    assert f"fastvae train: {folder}" in err and "Permission denied (EACCES)" in err
    assert not out.exists()                                     # the failed start leaves no folder behind


def test_a_full_disk_after_the_last_epoch_says_training_finished(tmp_path, capsys, monkeypatch):
    from fastvae.train import summary
    write = summary.atomic_write

    def disk_full(path, *a, **k):
        if path.endswith("summary.json"):
            def full(f):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(path, full)
        return write(path, *a, **k)
    monkeypatch.setattr(summary, "atomic_write", disk_full)
    out = tmp_path / "run"
    assert _train(out, epochs=2) == 1
    err = _one_line_error(capsys)
    assert (f"cannot write {out / 'summary.json'}: No space left on device (ENOSPC); training stopped after the last "
            f"epoch and the last good checkpoint, {out / tr.CHECKPOINT_NAME} (epoch 2), is kept") in err
    assert not (out / "summary.json").exists() and tr.load_checkpoint(out)["epoch"] == 2
