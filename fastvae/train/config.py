"""A run's configuration: DEFAULTS <- the model's preset <- what was given, or, on resume, the run's own recorded
settings <- what was given (checked against the run's); and the VAE arguments it describes."""
import os

from .checkpoint import load_checkpoint
from .rundir import CHECKPOINT_NAME
from .settings import DEFAULTS, PRESETS, SETTINGS, check_settings, recorded


def resolve_config(overrides=None):
    """The run configuration: DEFAULTS <- the model's preset <- overrides (a TOML table, the flags given, a dict;
    None = not given), every value checked against SETTINGS. With resume and a checkpoint in out, the run's own
    configuration replaces DEFAULTS and the preset: a value given that differs from the run's is used and recorded
    (Setting.resume "apply") or refused ("refuse")."""
    given = check_settings(overrides or {})
    if given.get("resume") and given.get("overwrite"):
        raise ValueError("resume and overwrite exclude each other: resume continues the run in out, overwrite "
                         "replaces it")
    out = given.get("out", DEFAULTS["out"])
    run = _run_config(out) if given.get("resume") else None
    if run is not None:
        refused = [f"{k} (the run's {run[k]!r}, given {v!r})" for k, v in given.items()
                   if SETTINGS[k].resume == "refuse" and run[k] != v]
        if refused:
            raise ValueError(f"cannot resume the run in {out!r} with other {', '.join(refused)}: these "
                             f"settings are fixed for a run; leave them out, or start over with overwrite or "
                             f"another out")
        cfg = {**DEFAULTS, **run, **given}
    else:
        cfg = {**DEFAULTS, **PRESETS[given.get("model", DEFAULTS["model"])], **given}
        if cfg["reg_weight"] is None:
            cfg["reg_weight"] = 10.0
        if cfg["binarize"] is None and cfg["likelihood"] == "bernoulli":
            cfg["binarize"] = "dynamic"
    if cfg["amp"] is None:             # the runs recorded before amp "auto" existed hold None for none
        cfg["amp"] = "none"
    return {k: SETTINGS[k].check(v) for k, v in cfg.items()}


def _run_config(out):
    """The recorded settings of the run whose checkpoint is in out (None without one)."""
    path = os.path.join(out, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    return recorded(load_checkpoint(path)["config"])


def model_kwargs(cfg, data):
    """The VAE arguments of a run configuration on its data."""
    return dict(
        input_dim=data.shape if cfg["conv"] else (data.shape[0] if len(data.shape) == 1 else list(data.shape)),
        latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"], likelihood=cfg["likelihood"],
        variance=cfg["variance"], beta=cfg["beta"], divergence=cfg["divergence"], n_samples=cfg["n_samples"],
        posterior=cfg["posterior"], n_classes=data.n_classes if cfg["model"] == "cvae" else 0,
        reg_weight=cfg["reg_weight"], kernel=cfg["kernel"], bandwidth=cfg["bandwidth"],
        kernel_scales=cfg["kernel_scales"], n_projections=cfg["n_projections"], conv=cfg["conv"],
        activation=cfg["activation"], backend=cfg["backend"])
