"""Checkpoints: written atomically with the previous one kept beside them, verified on every load (the CRC-32 of
every record of torch.save's zip archive: a flipped byte is refused, not read as a weight), read without running
code from them (weights_only), and every entry that fastvae reads checked first (model_from_checkpoint, in
build.py, builds the model one describes)."""
import inspect
import os
import zipfile
import zlib

import torch

from ..models import model_class
from .rundir import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, atomic_write
from .settings import SETTINGS, check_settings, is_kind

CHECKPOINT_FORMAT = "fastvae-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a fastvae checkpoint, is from a newer format, or belongs to another model."""


def previous_path(path):
    """Where save_checkpoint keeps the checkpoint that path held before (checkpoint.pt: checkpoint.prev.pt)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if name == CHECKPOINT_NAME:
        return os.path.join(folder, PREVIOUS_CHECKPOINT_NAME)
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext}"


def save_checkpoint(path, state):
    """Writes state to path atomically (a temporary file of this process in the same folder, fsync, rename); the
    checkpoint path held before is kept as previous_path(path) when it verifies (a damaged one is not kept over
    the good one there)."""
    path = os.fspath(path)
    keep = None
    if os.path.isfile(path):
        try:
            verify_checkpoint(path)
            keep = previous_path(path)
        except CheckpointError:
            pass
    atomic_write(path, lambda f: torch.save(state, f), binary=True, keep_previous=keep)


_ZIP_MAGIC = b"PK\x03\x04"


def verify_checkpoint(path):
    """A CheckpointError naming path and the damage unless it is an intact torch.save zip archive: its structure
    reads and every record's stored bytes (the pickle and each tensor's data) match their CRC-32. A file in
    torch's legacy format (a pickle, before torch 1.6) has no checksums and passes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e})") from None
    if not head.startswith(_ZIP_MAGIC):
        if head[:1] == b"\x80":          # a pickle: torch's legacy format
            return
        text = head.decode("utf-8", "replace")[:-3]       # (the last bytes may cut a character in two)
        if not head:
            what = "an empty file"
        elif "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
            what = f"a text file beginning {text.splitlines()[0][:40]!r}"
        else:
            what = f"a file beginning with the bytes {head[:8].hex()}"
        raise CheckpointError(f"{path} is not a fastvae checkpoint: a checkpoint is the zip archive torch.save "
                              f"writes; this is {what}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged: its zip archive is broken ({e}); truncated or overwritten "
                              f"since it was written") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: the stored bytes of its record {bad!r} do not match their CRC-32 "
                              f"(the file changed since it was written)")


def load_checkpoint(path, map_location="cpu"):
    """Reads a fastvae checkpoint without running code from it (weights_only=True), after verifying its integrity
    (verify_checkpoint: a CheckpointError naming the file and the damage), and checks every entry that fastvae
    reads (a CheckpointError naming the file and the entry otherwise)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    verify_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable fastvae checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fastvae checkpoint (no format={CHECKPOINT_FORMAT!r} entry; "
                              f"a checkpoint of another model or program?)")
    version = ckpt.get("version")
    if type(version) is int and version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, newer than this fastvae reads "
                              f"(up to {CHECKPOINT_VERSION}); upgrade fastvae")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: its version entry must be an int from 1 to {CHECKPOINT_VERSION}; got "
                              f"{type(version).__name__} {version!r}")
    _check_entries(ckpt, path)
    return ckpt


def load_run_checkpoint(out, map_location="cpu"):
    """The checkpoint of the run in the folder out: (path, checkpoint, note). Its checkpoint.pt, or, when that is
    missing or refused (damaged, unreadable), the previous one kept beside it, with a note that says so (None
    otherwise). None when out holds neither; a CheckpointError naming both when neither loads."""
    current, previous = os.path.join(out, CHECKPOINT_NAME), os.path.join(out, PREVIOUS_CHECKPOINT_NAME)
    error = None
    if os.path.isfile(current):
        try:
            return current, load_checkpoint(current, map_location), None
        except CheckpointError as e:
            error = e
    if not os.path.isfile(previous):
        if error is not None:
            raise error
        return None
    try:
        ckpt = load_checkpoint(previous, map_location)
    except CheckpointError as e:
        if error is None:
            raise
        raise CheckpointError(f"{error}; and the previous checkpoint beside it: {e}") from None
    why = f"{error}" if error is not None else f"{current} is missing"
    return previous, ckpt, f"{why}; using the previous checkpoint, {previous} (epoch {ckpt['epoch']})"


# The entries of a checkpoint that eval, sample and resume read, and their types (optimizer, rng and step are
# checked where a resume reads them).
_CHECKPOINT_ENTRIES = dict(model_config=dict, model=dict, config=dict, data_info=dict, epoch=int, metrics=list)
_DATA_INFO = dict(name=str, shape=list, n_train=int, n_test=int, n_classes=int)
_A = {dict: "a dict", list: "a list", int: "an int", str: "a string"}


def _check_entries(ckpt, path):
    def entry(name, value, kind, where="its"):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: {where} {name!r} entry must be {_A[kind]}; got "
                                  f"{type(value).__name__} {value!r:.80}")

    for name, kind in _CHECKPOINT_ENTRIES.items():
        if name not in ckpt:
            raise CheckpointError(f"{path} lacks the {name!r} entry of a fastvae checkpoint")
        entry(name, ckpt[name], kind)
    bad = [k for k, v in ckpt["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: its 'model' entry must map names to tensors; got {bad[:3]}")
    try:
        cls = model_class(ckpt["model_config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its 'model_config' is not a fastvae model's ({e})") from None
    try:
        check_settings(ckpt["config"], where="'config'")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'config' entry: {e}") from None
    # a setting added after the format was fixed: a checkpoint without it was written with its default
    ckpt["config"] = {**{k: s.default for k, s in SETTINGS.items() if s.later and s.resume}, **ckpt["config"]}
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n in LATER_VAE_ARGS}
    ckpt["model_config"] = {**{k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()},
                            **ckpt["model_config"]}
    missing = [k for k, s in SETTINGS.items() if s.resume and k not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"{path}: its 'config' entry lacks {', '.join(missing)}")
    info = ckpt["data_info"]
    for name, kind in _DATA_INFO.items():
        entry(name, info.get(name), kind, "its 'data_info'")
    if not info["shape"] or not all(is_kind(s, int) and s >= 1 for s in info["shape"]) or min(
            info["n_train"], info["n_test"], info["n_classes"]) < 0:
        raise CheckpointError(f"{path}: its 'data_info' entry must hold a shape of positive ints and counts >= 0; "
                              f"got {info!r:.200}")
    if ckpt["epoch"] != len(ckpt["metrics"]) or not all(isinstance(m, dict) for m in ckpt["metrics"]):
        raise CheckpointError(f"{path}: its 'epoch' ({ckpt['epoch']}) must count its 'metrics' rows (dicts; "
                              f"{len(ckpt['metrics'])} given)")


# model arguments added after checkpoint format 1 was fixed: a checkpoint's model_config without them had the
# default (of its class: a HierarchicalVAE takes activation, not kernel_scales)
LATER_VAE_ARGS = ("kernel_scales", "activation")
