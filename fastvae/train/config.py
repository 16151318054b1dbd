"""A run's configuration: DEFAULTS <- the model's preset <- what was given, or, on resume, the run's own recorded
settings <- what was given (checked against the run's); and the VAE arguments it describes."""
import os

from ..data import resolve_spec, spec_name
from .checkpoint import load_run_checkpoint
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
    if "data" in given:
        given["data"] = resolve_spec(given["data"])      # recorded as found, so that eval finds it from anywhere
    out = given["out"] = given.get("out") or default_out(given.get("model", DEFAULTS["model"]),
                                                          given.get("data", DEFAULTS["data"]))
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
    _check_layers(cfg, given)
    _check_vaegan(cfg)
    return {k: SETTINGS[k].check(v) for k, v in cfg.items()}


def default_out(model, data):
    """The folder a run writes into when out is not given, named after what it trains: out/DATA for the default
    model (out/digits), out/DATA-MODEL for the others (out/fashion-iwae)."""
    name = spec_name(data)
    return os.path.join("out", name if model == DEFAULTS["model"] else f"{name}-{model}")


def _check_layers(cfg, given):
    """latent_dims belongs to --model hvae (at least 2 sizes; its latent_dim is latent_dims[0], the size the decoder
    reads), whose layers are diagonal Gaussians under the KL bound with a hidden layer for the ladder."""
    if cfg["model"] != "hvae":
        if cfg["latent_dims"] is not None:
            raise ValueError(f"latent_dims is the layer sizes of --model hvae; --model {cfg['model']} takes "
                             f"latent_dim (got latent_dims {cfg['latent_dims']!r})")
        return
    problems = [f"{k} {cfg[k]!r} (it takes {want})" for k, want, ok in (
        ("latent_dims", "at least 2 sizes, the lowest layer first", len(cfg["latent_dims"]) >= 2),
        ("hidden_dims", "at least one width: its ladder layers have width hidden_dims[-1]", cfg["hidden_dims"]),
        ("posterior", "diagonal", cfg["posterior"] == "diagonal"),
        ("divergence", "kl", cfg["divergence"] == "kl")) if not ok]
    lowest = cfg["latent_dims"][0] if cfg["latent_dims"] else None
    if given.get("latent_dim", lowest) != lowest:
        problems.append(f"latent_dim {given['latent_dim']!r} (it is latent_dims[0], the lowest layer's size)")
    if problems:
        raise ValueError(f"--model hvae cannot take {'; '.join(problems)}")
    cfg["latent_dim"] = lowest


def _check_vaegan(cfg):
    """--model vaegan: a diagonal posterior, one sample, the KL, a Gaussian (learned or fixed variance) or
    Bernoulli likelihood, at least one hidden width (its discriminator's features) and no compile."""
    if cfg["model"] != "vaegan":
        return
    problems = [f"{k} {cfg[k]!r} (it takes {want})" for k, want, ok in (
        ("hidden_dims", "at least one width: its discriminator's features are the last hidden layer",
         cfg["hidden_dims"]),
        ("posterior", "diagonal", cfg["posterior"] == "diagonal"),
        ("divergence", "kl", cfg["divergence"] == "kl"),
        ("n_samples", "1", cfg["n_samples"] == 1),
        ("likelihood", "gaussian or bernoulli", cfg["likelihood"] in ("gaussian", "bernoulli")),
        ("variance", "learned or fixed", cfg["likelihood"] != "gaussian" or cfg["variance"] != "network"),
        ("compile", "false: its step is three optimisers' steps, not one compiled loss", not cfg["compile"]))
        if not ok]
    if problems:
        raise ValueError(f"--model vaegan cannot take {'; '.join(problems)}")


def _run_config(out):
    """The recorded settings of the run whose checkpoint is in out (None without one; its previous checkpoint where
    the last is missing or damaged)."""
    found = load_run_checkpoint(out)
    return None if found is None else recorded(found[1]["config"])


def semi_supervised_labels(cfg, data):
    """M2's training labels: (the labels with -1 where hidden, the kept indices), `labelled` of them kept, balanced
    and fixed by the seed (None: all)."""
    import torch
    from ..data import keep_labels
    if cfg["labelled"] is None:
        return data.train_y, torch.arange(data.train_y.shape[0])
    return keep_labels(data.train_y, cfg["labelled"], data.n_classes, cfg["seed"])


def model_kwargs(cfg, data):
    """The model arguments (VAE's, HierarchicalVAE's for hvae, VAEGAN's for vaegan) of a run configuration on its
    data."""
    input_dim = data.shape if cfg["conv"] else (data.shape[0] if len(data.shape) == 1 else list(data.shape))
    if cfg["model"] == "hvae":
        return dict(input_dim=input_dim, latent_dims=cfg["latent_dims"], hidden_dims=cfg["hidden_dims"],
                    likelihood=cfg["likelihood"], variance=cfg["variance"], beta=cfg["beta"],
                    n_samples=cfg["n_samples"], conv=cfg["conv"], backend=cfg["backend"])
    if cfg["model"] == "vaegan":
        return dict(input_dim=input_dim, latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"],
                    likelihood=cfg["likelihood"], variance=cfg["variance"], beta=cfg["beta"], gamma=cfg["gamma"],
                    feature_variance=cfg["feature_variance"], conv=cfg["conv"], backend=cfg["backend"])
    return dict(
        input_dim=input_dim,
        latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"], likelihood=cfg["likelihood"],
        variance=cfg["variance"], beta=cfg["beta"], divergence=cfg["divergence"], n_samples=cfg["n_samples"],
        posterior=cfg["posterior"], n_classes=data.n_classes if cfg["model"] in ("cvae", "m2") else 0,
        semi_supervised=cfg["model"] == "m2", alpha=cfg["alpha"],
        reg_weight=cfg["reg_weight"], kernel=cfg["kernel"], bandwidth=cfg["bandwidth"],
        kernel_scales=cfg["kernel_scales"], n_projections=cfg["n_projections"], conv=cfg["conv"],
        activation=cfg["activation"], backend=cfg["backend"], n_mix=cfg["n_mix"])
