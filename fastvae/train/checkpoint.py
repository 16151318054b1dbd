"""Checkpoints: written atomically, read without running code from them (weights_only), and every entry that
fastvae reads checked first (model_from_checkpoint, in build.py, builds the model one describes)."""
import os

import torch

from ..models import model_class
from .rundir import CHECKPOINT_NAME, atomic_write
from .settings import SETTINGS, check_settings, is_kind

CHECKPOINT_FORMAT = "fastvae-checkpoint"
CHECKPOINT_VERSION = 1
# Settings added after checkpoints of this version were first written; an older checkpoint lacks them and reads as
# their default, which is how its run ran (n_mix: the logistic_mixture likelihood's components, latent_dims: the
# hierarchical VAE's layers, labelled and alpha: M2's, gamma and feature_variance: the VAE-GAN's; no older run could
# use any of them).
ADDED_SETTINGS = ("n_mix", "latent_dims", "labelled", "alpha", "gamma", "feature_variance")


class CheckpointError(ValueError):
    """A file is not a fastvae checkpoint, is from a newer format, or belongs to another model."""


def save_checkpoint(path, state):
    """Writes state to path atomically: a temporary file of this process in the same folder, fsync, rename."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path, map_location="cpu"):
    """Reads a fastvae checkpoint without running code from it (weights_only=True) and checks every entry that
    fastvae reads (a CheckpointError naming the file and the entry otherwise)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
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
        model_class(ckpt["model_config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its 'model_config' is not a fastvae model's ({e})") from None
    try:
        check_settings(ckpt["config"], where="'config'")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'config' entry: {e}") from None
    for k in ADDED_SETTINGS:  # a checkpoint written before the setting existed: its run used the default
        ckpt["config"].setdefault(k, SETTINGS[k].default)
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
