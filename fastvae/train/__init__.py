"""The training behind `fastvae train`: whole data set on the device, an atomic checkpoint every epoch (resume
continues exactly: model, optimizer, epoch and every RNG stream), metrics as CSV and JSON, PNGs, a NaN/inf stop
that keeps the last good checkpoint, and DistributedDataParallel when launched by torchrun.

A run owns its --out folder: it is locked for the run's lifetime, checked writable before anything is trained, and
a folder that holds another run is refused unless resume (continue it) or overwrite (replace it) is given.

    settings.py      the SETTINGS table (flags, TOML keys, the config dict), each Setting's check and parse
    config.py        resolve_config: defaults <- preset <- given (or the run's own settings on resume)
    rundir.py        the run folder: its files, claiming and locking it, atomic writes
    checkpoint.py    save_checkpoint (the previous one kept), load_checkpoint (verified, every entry checked)
    build.py         a run's model built and checked on the meta device first; model_from_checkpoint
    distributed.py   torchrun's environment, the device, the process group's lifetime, the collectives, rank 0's
                     log
    evaluation.py    evaluate: test ELBO, loss, terms and log-likelihood; refine_posteriors: the amortisation gap
    loop.py          train(): claims the folder, then a run's phases: setup, per epoch training, evaluation and
                     checkpoint, the summary
    resume.py        a run restored from its checkpoint (model, optimizers, epoch, every RNG stream)
    stops.py         why a run stops (TrainingDiverged on NaN/inf, WriteFailed, TrainingInterrupted on Ctrl-C)
    amp.py           the autocast a run's amp setting resolves to on its device
    summary.py       metrics.csv/json, summary.json and the printed summary (pictures: fastvae.plots)

`from fastvae import train as tr` gives every public name below (tr.train, tr.resolve_config, tr.SETTINGS, ...).
"""
from ..plots import save_pictures
from .build import build_checked, model_from_checkpoint
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LATER_VAE_ARGS, CheckpointError, load_checkpoint,
                         load_run_checkpoint, previous_path, save_checkpoint, verify_checkpoint)
from .config import default_out, model_kwargs, resolve_config
from .distributed import gather_with_grad, pick_device
from .evaluation import MAX_REFINE_STEPS, REFINE_EVAL_DRAWS, evaluate, refine_posteriors
from .loop import (VARIANCE_LR_SCALE, TrainingDiverged, TrainingInterrupted, TrainingStopped, TrainResult, WriteFailed,
                   train)
from .rundir import (CHECKPOINT_NAME, LOCK_NAME, PREVIOUS_CHECKPOINT_NAME, RUN_FILES, OutDirError, WriteError,
                     claim_out_dir, describe_os_error, release_out_dir)
from .settings import DEFAULTS, INT_MAX, MODELS, PRESETS, SETTINGS, Setting, check_settings
from .summary import GAUSSIAN_NOTE, PAPER_EVAL_K, final_eval_k

__all__ = [
    "train", "TrainResult", "TrainingStopped", "TrainingDiverged", "WriteFailed", "TrainingInterrupted",
    "VARIANCE_LR_SCALE", "Setting", "SETTINGS", "DEFAULTS", "PRESETS", "MODELS", "INT_MAX", "check_settings",
    "resolve_config", "model_kwargs", "default_out", "CHECKPOINT_NAME", "PREVIOUS_CHECKPOINT_NAME", "LOCK_NAME",
    "RUN_FILES", "OutDirError", "WriteError", "describe_os_error", "claim_out_dir", "release_out_dir",
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LATER_VAE_ARGS", "CheckpointError", "save_checkpoint",
    "load_checkpoint", "load_run_checkpoint", "verify_checkpoint", "previous_path", "GAUSSIAN_NOTE", "PAPER_EVAL_K",
    "final_eval_k", "build_checked", "model_from_checkpoint", "pick_device", "gather_with_grad", "evaluate",
    "refine_posteriors", "MAX_REFINE_STEPS", "REFINE_EVAL_DRAWS", "save_pictures",
]
