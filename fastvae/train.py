"""The training loop behind `fastvae train`: whole data set on the device, an atomic checkpoint every epoch
(resume continues exactly: model, optimizer, epoch and every RNG stream), metrics as CSV and JSON, PNGs, a NaN/inf
stop that keeps the last good checkpoint, and DistributedDataParallel when launched by torchrun.

A run owns its --out folder: it is locked for the run's lifetime, checked writable before anything is trained, and
a folder that holds another run is refused unless resume (continue it) or overwrite (replace it) is given.
"""
import csv
import fcntl
import inspect
import json
import math
import numbers
import os
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .data import load_data
from .distances import KERNELS
from .models import BACKENDS, DIVERGENCES, LIKELIHOODS, POSTERIORS, VAE, VARIANCES, build_model

CHECKPOINT_FORMAT = "fastvae-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = "fastvae.lock"
# Every file a run writes into its folder (written atomically: a per-process temporary file, then a rename).
RUN_FILES = (CHECKPOINT_NAME, "config.json", "metrics.csv", "metrics.json", "summary.json", "loss_curve.png",
             "samples.png", "reconstructions.png", "latent.png")
MODELS = ("vae", "beta-vae", "cvae", "iwae", "wae-mmd", "swae")
INT_MAX = 2**31 - 1      # the largest size or count a setting takes: any product of two still fits an int64


# -------------------------------------------------------------------------------------------------------------------
# the settings of a run: one table for the `fastvae train` flags, the TOML keys and the Python config dict


@dataclass(frozen=True)
class Setting:
    """One run setting: the flag --latent-dim and the TOML key latent_dim (or latent-dim).

    kind: bool, int, float, str or list (of ints). Bools are never ints, floats never ints, strings never bools.
    choices (str), pattern (str, a regular expression with its description `expected`), lo/hi (numbers and list
    items, inclusive; lo_open excludes lo). default None: the model's preset (PRESETS) or the VAE's own default.
    resume: what --resume does with a value given that differs from the run's: "apply" (used and recorded) or
    "refuse" (an error naming the key); "" marks the switches of the command itself, which no run records."""
    key: str
    kind: type
    default: object
    help: str
    choices: tuple = ()
    lo: object = None
    hi: object = None
    lo_open: bool = False
    pattern: str = None
    expected: str = None
    resume: str = "refuse"
    also: tuple = ()           # further types a Python caller may pass as they are (data: a torch Dataset)

    def describe(self):
        """What the setting takes, in words."""
        if self.expected:
            return self.expected
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        rng = ""
        if self.lo is not None and self.hi is not None and not self.lo_open:
            rng = f" from {self.lo} to {self.hi}"
        else:
            rng = (f" {'>' if self.lo_open else '>='} {self.lo}" if self.lo is not None else "") + (
                f" and <= {self.hi:g}" if self.hi is not None else "")
        return {bool: "true or false", int: "an int" + rng, float: "a finite number" + rng,
                str: "a non-empty string", list: "a list of ints" + rng}[self.kind]

    def _error(self, cls, found):
        return cls(f"{self.key} must be {self.describe()}; got {found}")

    def check(self, value):
        """A value from TOML or Python -> the value (ints as int, numbers as float, lists as a list); else a
        TypeError (wrong type) or ValueError (out of range) naming the key, the expected and the found."""
        if value is None and self.default is None:
            return None
        if isinstance(value, self.also):
            return value
        found = f"{type(value).__name__} {value!r:.100}"
        if not _is(value, self.kind):
            raise self._error(TypeError, found)
        try:
            value = [int(v) for v in value] if self.kind is list else self.kind(value)
        except OverflowError:                      # an int beyond the float range
            raise self._error(ValueError, found) from None
        if not all(self._allowed(v) for v in (value if self.kind is list else [value])):
            raise self._error(ValueError, found)
        return value

    def _allowed(self, v):
        if self.choices:
            return v in self.choices
        if self.pattern:
            return re.fullmatch(self.pattern, v) is not None
        if isinstance(v, str):
            return v != ""
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi

    def parse(self, text):
        """A command-line string -> the checked value ("512,256" for a list, "" the empty list)."""
        try:
            if self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
            elif self.kind is list:
                value = [int(t) for t in text.split(",")] if text.strip() else []
            else:
                value = text
        except ValueError:
            raise self._error(ValueError, repr(text)) from None
        return self.check(value)


def _is(value, kind):
    if isinstance(value, bool):
        return kind is bool
    if kind is list:
        return isinstance(value, (list, tuple)) and all(_is(v, int) for v in value)
    return isinstance(value, {int: numbers.Integral, float: numbers.Real, str: str, bool: bool}[kind])


SETTINGS = {s.key: s for s in (
    Setting("model", str, "vae", "the model preset", choices=MODELS),
    Setting("data", str, "digits", "digits, mnist:DIR, fashion:DIR, npz:FILE or npy:FILE", resume="apply",
            also=(torch.utils.data.Dataset,),
            expected="a data spec (digits, mnist:DIR, fashion:DIR, npz:FILE or npy:FILE) or a torch Dataset"),
    Setting("latent_dim", int, 16, "latent dimensions", lo=1, hi=INT_MAX),
    Setting("hidden_dims", list, (512, 256), "encoder widths, comma-separated (a list in TOML); the decoder "
            "mirrors them; '' for linear", lo=1, hi=INT_MAX),
    Setting("batch_size", int, 128, "samples per step and process", lo=1, hi=INT_MAX, resume="apply"),
    Setting("epochs", int, 100, "passes over the training set, in all (a resumed run counts its past ones)",
            lo=0, hi=INT_MAX, resume="apply"),
    # (at most 1e30: Adam's first step, lr / (1 - beta1), and the variance group's 20 lr stay finite in float32)
    Setting("lr", float, 1e-3, "Adam learning rate", lo=0, lo_open=True, hi=1e30, resume="apply"),
    Setting("device", str, "auto", "cpu, cuda, cuda:N or auto (cuda when available)", pattern=r"auto|cpu|cuda(:\d+)?",
            expected="auto, cpu, cuda or cuda:N", resume="apply"),
    Setting("amp", str, None, "bf16 autocast, or none (default none)", choices=("none", "bf16"), resume="apply"),
    Setting("compile", bool, False, "torch.compile the model's training step", resume="apply"),
    Setting("out", str, "out/digits", "output folder: checkpoint, metrics, pictures", resume="apply"),
    Setting("resume", bool, False, "continue the run in --out where it stopped (settings not given are the run's)",
            resume=""),
    Setting("overwrite", bool, False, "replace the run in --out (its checkpoint, metrics and pictures)", resume=""),
    Setting("seed", int, 0, "random seed", lo=0, hi=2**32 - 1),
    Setting("likelihood", str, "gaussian", "the decoder's likelihood", choices=LIKELIHOODS),
    Setting("variance", str, "learned", "the Gaussian likelihood's variance", choices=VARIANCES),
    Setting("beta", float, None, "KL weight (preset: 1; beta-vae 4; wae-mmd/swae 0)", lo=0),
    Setting("n_samples", int, None, "importance samples k of the bound (preset: 1; iwae 5)", lo=1, hi=INT_MAX),
    Setting("posterior", str, "diagonal", "diagonal, or full (Cholesky factor)", choices=POSTERIORS),
    Setting("divergence", str, None, "the regulariser (preset: set by --model)", choices=DIVERGENCES),
    Setting("reg_weight", float, None, "weight of the MMD / sliced-Wasserstein term (preset: wae-mmd 100, swae 10)",
            lo=0),
    Setting("kernel", str, "imq", "MMD kernel", choices=KERNELS),
    Setting("bandwidth", float, None, "MMD kernel bandwidth h (default 1; imq uses C = 2 d h^2)", lo=0, lo_open=True),
    Setting("n_projections", int, 128, "sliced-Wasserstein projections", lo=1, hi=INT_MAX),
    Setting("binarize", str, None, "binarize the pixels (default: dynamic for bernoulli, else none)",
            choices=("none", "static", "dynamic")),
    Setting("conv", bool, False, "a small conv encoder/decoder for image data (else images are flattened)"),
    Setting("backend", str, "fastvae", "fastvae (fused ops) or reference (plain PyTorch ops)", choices=BACKENDS,
            resume="apply"),
    Setting("threads", int, None, "CPU threads of torch (default: torch's choice; 1 is fastest for small models "
            "on a busy box)", lo=1, hi=1024, resume="apply"),
    Setting("eval_k", int, 1000, "importance samples of the final test log-likelihood; 0 skips it", lo=0,
            hi=INT_MAX, resume="apply"),
    Setting("progress", bool, True, "a progress bar (--no-progress: a line every few epochs instead)",
            resume="apply"),
)}
DEFAULTS = {k: s.default for k, s in SETTINGS.items()}
PRESETS = {
    "vae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "beta-vae": dict(beta=4.0, n_samples=1, divergence="kl"),
    "cvae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "iwae": dict(beta=1.0, n_samples=5, divergence="kl"),
    "wae-mmd": dict(beta=0.0, n_samples=1, divergence="mmd", reg_weight=100.0),
    "swae": dict(beta=0.0, n_samples=1, divergence="sliced", reg_weight=10.0),
}


class TrainingDiverged(RuntimeError):
    """The loss, the test metrics or the parameters became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the last checkpoint is."""


class CheckpointError(ValueError):
    """A file is not a fastvae checkpoint, is from a newer format, or belongs to another model."""


class OutDirError(ValueError):
    """The --out folder cannot take this run: not writable, in use by another run, or holding one."""


def check_settings(values, where="configuration"):
    """A dict of settings (keys with dashes or underscores; None = not given) -> the checked values."""
    given = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in SETTINGS:
            raise ValueError(f"unknown {where} key {key!r}; known: {', '.join(SETTINGS)}")
        if value is not None:
            given[key] = SETTINGS[key].check(value)
    return given


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
    if cfg["amp"] == "none":
        cfg["amp"] = None
    return {k: SETTINGS[k].check(v) for k, v in cfg.items()}


def _run_config(out):
    """The recorded settings of the run whose checkpoint is in out (None without one)."""
    path = os.path.join(out, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    return {k: v for k, v in load_checkpoint(path)["config"].items() if SETTINGS[k].resume}


def _recorded(cfg):
    """The settings a run records (config.json, checkpoints): all but the command's own switches."""
    return {k: v for k, v in cfg.items() if SETTINGS[k].resume}


def model_kwargs(cfg, data):
    """The VAE arguments of a run configuration on its data."""
    return dict(
        input_dim=data.shape if cfg["conv"] else (data.shape[0] if len(data.shape) == 1 else list(data.shape)),
        latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"], likelihood=cfg["likelihood"],
        variance=cfg["variance"], beta=cfg["beta"], divergence=cfg["divergence"], n_samples=cfg["n_samples"],
        posterior=cfg["posterior"], n_classes=data.n_classes if cfg["model"] == "cvae" else 0,
        reg_weight=cfg["reg_weight"], kernel=cfg["kernel"], bandwidth=cfg["bandwidth"],
        n_projections=cfg["n_projections"], conv=cfg["conv"], backend=cfg["backend"])


# Adam moves a parameter by about lr per step: the one learned log-variance of the Gaussian likelihood has to
# travel from 0 to about -5 on [0, 1] pixel data, which at lr 1e-3 takes thousands of steps and holds the whole
# model back (a straight-line loss curve). Its own, larger step size lets it follow the reconstruction error.
VARIANCE_LR_SCALE = 20.0


def _param_groups(model, lr):
    if getattr(model, "variance", None) != "learned":
        return [{"params": list(model.parameters()), "lr": lr}]
    rest = [p for n, p in model.named_parameters() if n != "log_variance"]
    return [{"params": rest, "lr": lr}, {"params": [model.log_variance], "lr": lr * VARIANCE_LR_SCALE}]


def pick_device(name="auto", local_rank=0):
    """A device setting (auto, cpu, cuda, cuda:N, or a torch.device) -> the torch.device, checked to exist here."""
    name = SETTINGS["device"].check(str(name) if isinstance(name, torch.device) else name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise ValueError(f"device {name!r} asked for, but this machine has {count} CUDA GPU(s) (cuda:0 to "
                             f"cuda:{count - 1})")
        torch.cuda.set_device(device)
    return device


# -------------------------------------------------------------------------------------------------------------------
# models: built on the meta device first, so that nothing is allocated for a model that cannot be


def build_checked(config, device, *, state=None, batch_size=0, where="the model"):
    """The VAE that config (VAE arguments, as VAE.config and a checkpoint's model_config hold them) describes, on
    device. It is built on the meta device first (no memory): a state dict whose tensors lack the model's names or
    shapes, or (batch_size > 0: training) a model whose parameters, Adam state and one step's activations exceed the
    device's memory are refused before anything is allocated."""
    sizes = f"latent_dim {config.get('latent_dim')}, hidden_dims {config.get('hidden_dims')}"
    try:
        with torch.device("meta"):
            meta = build_model(config)
    except RuntimeError as e:             # sizes whose tensors cannot even be described (numel overflows)
        raise ValueError(f"{where} cannot be built ({sizes}): {str(e).splitlines()[0]}") from None
    if state is not None:
        _check_state_shapes(meta, state, where)
    if batch_size:
        need, have = _training_bytes(meta, batch_size), _device_memory(device)
        if have is not None and need > have:
            sizes += f", batch_size {batch_size}, n_samples {meta.n_samples}" + (
                f", n_projections {meta.n_projections}" if meta.divergence == "sliced" else "")
            raise ValueError(f"{where} needs about {need / 2**30:.1f} GiB to train ({sizes}), more than the "
                             f"{have / 2**30:.1f} GiB of {device}: lower one of them")
    model = build_model(config).to(device)     # built on the CPU (its generator), like VAE(...).to(device)
    if state is not None:
        model.load_state_dict(state)
    return model


def _check_state_shapes(model, state, where):
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"{k} is missing" for k in want if k not in got]
    problems += [f"{k} is not a parameter of the model" for k in got if k not in want]
    problems += [f"{k} has shape {got[k]}, the model's is {want[k]}" for k in want if k in got and got[k] != want[k]]
    if problems:
        raise CheckpointError(f"{where}: its weights do not fit the model it describes ({'; '.join(problems[:5])}"
                              + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "") + ")")


def _training_bytes(model, batch_size):
    """About what training needs: parameters, gradients and Adam's two moments, and the activations one step keeps
    (each layer's input and output, per sample and importance sample), in float32; the sliced-Wasserstein
    projections besides."""
    params = sum(p.numel() for p in model.parameters())
    pixels = math.prod(model.input_shape[1:]) if model.conv else 1
    per_sample = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            per_sample += m.in_features + m.out_features
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            per_sample += (m.in_channels + m.out_channels) * pixels
    rows = batch_size * model.n_samples
    sliced = model.n_projections * (model.latent_dim + 4 * rows) if model.divergence == "sliced" else 0
    return 4 * (4 * params + 2 * rows * per_sample + sliced)


def _device_memory(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


# -------------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path, state):
    """Writes state to path atomically: a temporary file of this process in the same folder, fsync, rename."""
    _atomic_write(path, lambda f: torch.save(state, f), binary=True)


def _atomic_write(path, write, binary=False):
    """write(f) into a temporary file next to path (unique to this process), then renamed onto path: a reader never
    sees half a file, and nothing is left behind if writing fails or is interrupted."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


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
    missing = sorted({"input_dim", "latent_dim"} - set(ckpt["model_config"]))
    unknown = sorted(set(ckpt["model_config"]) - set(_VAE_ARGS))
    if missing or unknown:
        raise CheckpointError(f"{path}: its 'model_config' is not a fastvae.VAE's (missing {missing}, unknown "
                              f"{unknown}; known: {', '.join(_VAE_ARGS)})")
    try:
        check_settings(ckpt["config"], where="'config'")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'config' entry: {e}") from None
    missing = [k for k, s in SETTINGS.items() if s.resume and k not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"{path}: its 'config' entry lacks {', '.join(missing)}")
    info = ckpt["data_info"]
    for name, kind in _DATA_INFO.items():
        entry(name, info.get(name), kind, "its 'data_info'")
    if not info["shape"] or not all(_is(s, int) and s >= 1 for s in info["shape"]) or min(
            info["n_train"], info["n_test"], info["n_classes"]) < 0:
        raise CheckpointError(f"{path}: its 'data_info' entry must hold a shape of positive ints and counts >= 0; "
                              f"got {info!r:.200}")
    if ckpt["epoch"] != len(ckpt["metrics"]) or not all(isinstance(m, dict) for m in ckpt["metrics"]):
        raise CheckpointError(f"{path}: its 'epoch' ({ckpt['epoch']}) must count its 'metrics' rows (dicts; "
                              f"{len(ckpt['metrics'])} given)")


_VAE_ARGS = [n for n in inspect.signature(VAE.__init__).parameters if n != "self"]


def model_from_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict). The model its model_config describes is checked on the meta device
    against the stored tensors (names and shapes) before anything is allocated, then against its data_info."""
    ckpt = load_checkpoint(path)
    try:
        model = build_checked(ckpt["model_config"], device, state=ckpt["model"], where=os.fspath(path))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'model_config' does not describe a fastvae.VAE ({e})") from None
    shape = ckpt["data_info"]["shape"]
    if math.prod(shape) != model.data_dim or (model.conv and tuple(shape) != model.input_shape):
        raise CheckpointError(f"{path}: its 'data_info' shape {tuple(shape)} is not the model's input "
                              f"{model.input_shape}")
    return model.eval(), ckpt


# -------------------------------------------------------------------------------------------------------------------
# distributed


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums each copy's gradient over ranks (all_reduce, which gloo has
    unlike reduce_scatter) and returns this rank's slice. Every rank computes the same distance of the gathered
    batch; with DDP's averaging the parameters then get the gradient of the global-batch distance."""

    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x):
    return _GatherWithGrad.apply(x)


def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


# -------------------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, x, y=None, *, n_samples=0, batch_size=4096, seed=0):
    """Test metrics: mean ELBO, loss, reconstruction and KL (and the importance-sampled log-likelihood with
    n_samples > 0), per sample, with a fixed noise seed so that evaluations are comparable."""
    was_training, gather = model.training, model.gather
    model.eval()
    model.gather = None      # rank 0 evaluates alone: no collective calls
    device = x.device
    g = torch.Generator(device).manual_seed(seed)
    sums = dict(elbo=0.0, loss=0.0, recon=0.0, kl=0.0)
    ll = 0.0
    n = x.shape[0]
    if n == 0:
        raise ValueError("evaluate: x holds no samples")
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        yb = None if y is None or not model.n_classes else y[i:i + batch_size]
        out = model(xb, yb, generator=g, distance_generator=torch.Generator(device).manual_seed(seed + i))
        b = xb.shape[0]
        sums["elbo"] += out.elbo.sum().item()
        sums["loss"] += out.loss.item() * b
        sums["recon"] += out.recon.sum().item()
        sums["kl"] += out.kl.sum().item()
        if n_samples:
            ll += model.log_likelihood(xb, yb, n_samples=n_samples, generator=g).sum().item()
    model.train(was_training)
    model.gather = gather
    res = {k: v / n for k, v in sums.items()}
    if n_samples:
        res["log_likelihood"] = ll / n
    return res


# -------------------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    model: VAE
    config: dict
    metrics: list
    out: str
    summary: dict = field(default_factory=dict)


def _log(msg, rank=0):
    if rank == 0:
        print(msg, flush=True)


def train(config=None, *, data=None):
    """Trains a model as `config` (see DEFAULTS; resolve_config fills it) describes; returns a TrainResult.
    data: an already loaded fastvae.data.Data (else config["data"] is loaded).
    Under torchrun, train() sets up the process group and destroys it before returning; a group the caller set up
    is used and left open (`import torch.distributed.nn` before creating it, for the reason given below)."""
    cfg = resolve_config(config)
    distributed, rank, world, local_rank = _dist_env()
    threads_before = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(cfg["device"], local_rank)
    created = distributed and not dist.is_initialized()
    if created:
        # torch.distributed.nn binds `group=group.WORLD` as default arguments when it is first imported, and DDP
        # imports it (through torch._dynamo): imported after the group exists, it would pin the group for the
        # life of the process, so that destroy_process_group could not join the group's gloo worker threads.
        # One of those threads then frees a finished collective (holding Python objects) during interpreter
        # shutdown and the process aborts ("terminate called without an active exception") after a good run.
        import torch.distributed.nn as _  # noqa: F401  (binds no local `torch`)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, data, device, distributed, rank, world)
    finally:
        if created and dist.is_initialized():     # a group the caller set up stays theirs
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)


def _train(cfg, data, device, distributed, rank, world):
    """Claims the run folder (rank 0 alone writes; every rank learns whether it may), then trains."""
    lock, refused = None, None
    if rank == 0:
        try:
            lock = claim_out_dir(cfg["out"], resume=cfg["resume"], overwrite=cfg["overwrite"])
        except OutDirError as e:
            refused = str(e)
    refused = _from_rank0(refused, distributed)
    if refused:
        raise OutDirError(refused)
    try:
        return _run(cfg, data, device, distributed, rank, world)
    finally:
        if lock is not None:
            release_out_dir(lock)


def claim_out_dir(out, *, resume=False, overwrite=False):
    """Takes the folder `out` for this process before anything is trained: creates it, locks it (flock on
    LOCK_NAME, which holds this pid: a second run into it is refused, naming the first one's pid; the kernel
    drops the lock when the process ends, crash included), proves that files can be written there, and checks
    that none of RUN_FILES is a folder. A folder that holds a run is refused unless resume (continue it) or
    overwrite (its run files are deleted). Returns the lock; release_out_dir(lock) gives it back."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutDirError(f"out {out!r} is a file; give a folder")
    try:
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, LOCK_NAME), "a+")
    except OSError as e:
        raise OutDirError(f"out: cannot write into {out!r} ({e.strerror or e})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        pid = lock.read().strip() or "unknown"
        lock.close()
        raise OutDirError(f"{out} is in use by another fastvae run (pid {pid}); wait for it to end, or give "
                          f"another --out") from None
    try:
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        with tempfile.TemporaryFile(dir=out):
            pass
        paths = {name: os.path.join(out, name) for name in RUN_FILES}
        blocked = [p for p in paths.values() if os.path.lexists(p) and not os.path.isfile(p)]
        if blocked:
            raise OutDirError(f"{blocked[0]} is a folder (or not a regular file) where the run writes a file; move "
                              f"it away, or give another --out")
        held = [name for name, p in paths.items() if os.path.isfile(p)]
        if held and not (resume or overwrite):
            raise OutDirError(f"{out} holds a run ({', '.join(held)}); give --resume to continue it, or --overwrite "
                              f"to replace it (or another --out)")
        if overwrite:
            for name in held:
                os.remove(paths[name])
    except OSError as e:
        release_out_dir(lock)
        raise OutDirError(f"out: cannot write into {out!r} ({e.strerror or e})") from None
    except BaseException:
        release_out_dir(lock)
        raise
    return lock


def release_out_dir(lock):
    """Gives the folder back (the pid is cleared first, so that no stale one is ever reported)."""
    lock.truncate(0)
    lock.close()


def _from_rank0(value, distributed):
    """Rank 0's value (picklable) on every rank."""
    if distributed:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _run_data(cfg, data, device, world):
    if data is None:
        data = load_data(cfg["data"], binarize=cfg["binarize"], device=device)
    elif cfg["binarize"] and data.binarize != cfg["binarize"]:
        raise ValueError(f"the data given is binarized {data.binarize!r}, the config asks {cfg['binarize']!r}")
    if cfg["model"] == "cvae" and not data.n_classes:
        raise ValueError(f"model cvae needs labelled data; {data.name} has no labels")
    n_train, n_test = data.train_x.shape[0], data.test_x.shape[0]
    if n_train < world or n_test < 1:
        raise ValueError(f"data {data.name} has {n_train} training and {n_test} test samples; training needs at "
                         f"least {world} (one per process) and 1")
    return data


def _resume(path, cfg, model, opt, data, data_gen, noise_gen, rank, world):
    """Restores a run from its checkpoint into model, opt and the generators; applies the settings that may
    change (Setting.resume "apply"; the others were refused by resolve_config). Returns (epoch, step, metrics)."""
    ckpt = load_checkpoint(path)
    # the op backend may change between runs (same model, same parameters); nothing else may
    diff = {k: (ckpt["model_config"].get(k), v) for k, v in model.config.items()
            if k != "backend" and ckpt["model_config"].get(k) != v}
    if diff:
        raise CheckpointError(f"{path} holds another model than the one configured (checkpoint vs config: "
                              f"{diff}); use another --out or the checkpoint's settings")
    run_info, info = ckpt["data_info"], data.info()
    changed = [f"{k} {run_info.get(k)!r} -> {info[k]!r}" for k in ("shape", "n_train", "n_test", "n_classes",
                                                                   "binarize") if run_info.get(k) != info[k]]
    if changed:
        raise ValueError(f"data {data.name!r} is not the data of the run in {path} ({', '.join(changed)}); "
                         f"resume with the run's data")
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng, step = ckpt["rng"], ckpt["step"]
        torch.set_rng_state(rng["torch"])
        data_gen.set_state(rng["data"])
        noise = list(rng["noise"])
        if not _is(step, int) or step < 0:
            raise TypeError(f"its step must be an int >= 0; got {step!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot resume from it ({type(e).__name__}: {e})") from None
    for group, fresh in zip(opt.param_groups, _param_groups(model, cfg["lr"])):
        group["lr"] = fresh["lr"]
    if len(noise) == world and isinstance(noise[rank], torch.Tensor) and (
            noise[rank].shape == noise_gen.get_state().shape):
        noise_gen.set_state(noise[rank])
    else:
        _log(f"note: {path} was written by {len(noise)} process(es) on {ckpt['config']['device']}, this run has "
             f"{world} on {noise_gen.device}: the posterior noise streams are re-seeded", rank)
    run = ckpt["config"]
    applied = [f"{k} {run[k]!r} -> {v!r}" for k, v in _recorded(cfg).items()
               if SETTINGS[k].resume == "apply" and k != "data" and run[k] != v]
    _log(f"resuming from {path} at epoch {ckpt['epoch']}" + (f" with {', '.join(applied)}" if applied else ""), rank)
    return ckpt["epoch"], step, list(ckpt["metrics"])


def _run(cfg, data, device, distributed, rank, world):
    out_dir = cfg["out"]
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    torch.manual_seed(cfg["seed"])
    data = _run_data(cfg, data, device, world)
    model = build_checked(model_kwargs(cfg, data), device, batch_size=cfg["batch_size"])
    opt = torch.optim.Adam(_param_groups(model, cfg["lr"]), lr=cfg["lr"])
    noise_gen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + 7919 * rank + 1)
    data_gen = torch.Generator().manual_seed(cfg["seed"] + 17)
    start_epoch, global_step, metrics = 0, 0, []
    if cfg["resume"] and os.path.isfile(ckpt_path):
        start_epoch, global_step, metrics = _resume(ckpt_path, cfg, model, opt, data, data_gen, noise_gen, rank,
                                                    world)
    elif cfg["resume"]:
        _log(f"note: --resume given but {ckpt_path} does not exist; starting from scratch", rank)
    saved_epoch = start_epoch        # the epoch of the checkpoint on disk (0: none)

    step_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model.gather = gather_with_grad
        step_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        step_model = torch.compile(step_model)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg["amp"] == "bf16" else nullcontext

    if not isinstance(cfg["data"], str):           # a Dataset object: recorded by name (checkpoints hold no code)
        cfg = {**cfg, "data": f"<{type(cfg['data']).__name__}>"}
    if rank == 0:
        _atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(_recorded(cfg), f, indent=2))

    n_train = data.train_x.shape[0]
    per_rank = n_train // world
    bs = cfg["batch_size"]
    steps_per_epoch = math.ceil(per_rank / bs)
    use_labels = model.n_classes > 0
    bar = _progress(cfg, rank, total=global_step + (cfg["epochs"] - start_epoch) * steps_per_epoch,
                    initial=global_step)
    reg_name = {"kl": "kl", "mmd": "mmd", "sliced": "sw"}[model.divergence]
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            perm = torch.randperm(n_train, generator=data_gen)[:per_rank * world][rank::world].to(data.train_x.device)
            sums = torch.zeros(5, device=device, dtype=torch.float64)   # loss, recon, kl, elbo, distance
            t0 = time.perf_counter()
            seen = 0
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                xb = data.train_x[idx].to(device, non_blocking=True)
                yb = data.train_y[idx].to(device, non_blocking=True) if use_labels else None
                if data.binarize == "dynamic":
                    xb = torch.bernoulli(xb.clamp(0, 1), generator=noise_gen)
                dgen = None
                if model.divergence != "kl":
                    # the same projections / prior samples on every rank (seeded by the global step only)
                    dgen = torch.Generator(device).manual_seed(cfg["seed"] * 1_000_003 + global_step)
                with autocast():
                    out = step_model(xb, yb, generator=noise_gen, distance_generator=dgen)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                b = xb.shape[0]
                with torch.no_grad():
                    sums += torch.stack([out.loss.detach().double() * b, out.recon.detach().double().sum(),
                                         out.kl.detach().double().sum(), out.elbo.detach().double().sum(),
                                         (out.distance.detach().double() if out.distance is not None
                                          else out.loss.new_zeros((), dtype=torch.float64)) * b])
                seen += b
                global_step += 1
                if bar is not None:
                    bar.update(1)
                    if s % 10 == 0 or s == steps_per_epoch - 1:
                        loss = out.loss.item()
                        post = dict(epoch=epoch + 1, loss=f"{loss:.3g}", recon=f"{out.recon.mean().item():.3g}")
                        post[reg_name] = f"{out.regulariser.mean().item():.3g}"
                        post["samples/s"] = f"{seen * world / (time.perf_counter() - t0):.0f}"
                        bar.set_postfix(post, refresh=False)
                if s % 50 == 49 or s == steps_per_epoch - 1:
                    if not _finite_everywhere(sums, distributed):
                        raise _diverged("the loss", epoch, global_step, ckpt_path, saved_epoch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            if distributed:
                dist.all_reduce(sums)
            n_seen = per_rank * world
            row = dict(epoch=epoch + 1, step=global_step, train_loss=sums[0].item() / n_seen,
                       train_recon=sums[1].item() / n_seen, train_kl=sums[2].item() / n_seen,
                       train_elbo=sums[3].item() / n_seen)
            if model.divergence != "kl":
                row[f"train_{reg_name}"] = sums[4].item() / n_seen
            row["samples_per_s"] = n_seen / train_time
            row["epoch_time_s"] = train_time
            rng_noise = [noise_gen.get_state()]
            if distributed:
                rng_noise = [None] * world
                dist.all_gather_object(rng_noise, noise_gen.get_state())
            test, bad = None, None
            if rank == 0:
                test = evaluate(model, data.test_x, data.test_y, seed=cfg["seed"])
                bad = _nonfinite(model, test)
            bad = _from_rank0(bad, distributed)      # only a finite state is ever saved
            if bad:
                raise _diverged(bad, epoch, global_step, ckpt_path, saved_epoch)
            if rank == 0:
                row.update({f"test_{k}": v for k, v in test.items()})
                metrics.append(row)
                save_checkpoint(ckpt_path, dict(
                    format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, fastvae_version=_version(),
                    model_config=model.config, model=model.state_dict(), optimizer=opt.state_dict(),
                    epoch=epoch + 1, step=global_step, config=_recorded(cfg), data_info=data.info(),
                    metrics=metrics, rng=dict(torch=torch.get_rng_state(), data=data_gen.get_state(),
                                              noise=[t.cpu() for t in rng_noise])))
                saved_epoch = epoch + 1
                _write_metrics(out_dir, metrics)
                if bar is None:
                    every = max(1, cfg["epochs"] // 10)
                    if (epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"]:
                        _log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.3f}, "
                             f"test ELBO {row['test_elbo']:.3f}, {row['samples_per_s']:.0f} samples/s")
            else:
                metrics.append(row)
            if distributed:
                dist.barrier()
        if bar is not None:
            bar.close()
            bar = None
        ranks_agree = _ranks_agree(model) if distributed else None
        summary = {}
        if rank == 0:
            summary = _finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree)
    except KeyboardInterrupt:
        kept = (f"the last checkpoint is {ckpt_path} (epoch {saved_epoch}); continue with --resume"
                if saved_epoch else "no checkpoint was written")
        raise TrainingInterrupted(f"interrupted in epoch {epoch + 1}; {kept}") from None
    finally:
        if bar is not None:
            bar.close()
    if distributed:
        dist.barrier()
    return TrainResult(model=model, config=cfg, metrics=metrics, out=out_dir, summary=summary)


def _ranks_agree(model):
    """Whether every rank holds exactly the same parameters (DDP keeps them in lockstep; this checks it)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    return all(torch.equal(parts[0], q) for q in parts[1:])


def _progress(cfg, rank, total, initial):
    if rank != 0 or not cfg["progress"]:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def _finite_everywhere(sums, distributed):
    ok = torch.isfinite(sums[:4]).all().to(torch.int32)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _nonfinite(model, test):
    """None when the test metrics and every parameter are finite, else what is not."""
    bad = [f"the test {k} ({v})" for k, v in test.items() if not math.isfinite(v)]
    bad += [f"parameter {n}" for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    return ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") if bad else None


def _diverged(what, epoch, step, ckpt_path, saved_epoch):
    kept = (f"the last good checkpoint, {ckpt_path} (epoch {saved_epoch}), is kept" if saved_epoch
            else "no checkpoint was written")
    return TrainingDiverged(f"{what} became NaN or inf in epoch {epoch + 1} (by step {step}); training stopped and "
                            f"{kept}. Try a lower --lr, --variance fixed, or --amp none.")


def _write_metrics(out_dir, metrics):
    keys = []
    for m in metrics:
        keys += [k for k in m if k not in keys]

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(metrics)
    _atomic_write(os.path.join(out_dir, "metrics.csv"), write_csv)
    _atomic_write(os.path.join(out_dir, "metrics.json"), lambda f: json.dump(metrics, f, indent=1))


def _version():
    from . import __version__
    return __version__


def save_pictures(model, data, out_dir, metrics=None, seed=0):
    """loss_curve.png, samples.png, reconstructions.png (pictures only) and latent.png (latent_dim 2); returns
    the paths written."""
    from . import plots
    written = []
    if metrics:
        p = os.path.join(out_dir, "loss_curve.png")
        plots.save_loss_curve(metrics, p)
        written.append(p)
    shape = data.image_shape
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    if shape is not None:
        n = 100 if model.n_classes else 64
        s = model.sample(n, generator=g).reshape(n, *shape)
        p = os.path.join(out_dir, "samples.png")
        plots.save_grid(s, p, ncol=10 if model.n_classes else 8)
        written.append(p)
        x = data.test_x[:16].to(device)
        y = data.test_y[:16].to(device) if model.n_classes else None
        r = model.reconstruct(x, y)
        p = os.path.join(out_dir, "reconstructions.png")
        plots.save_reconstructions(x.reshape(-1, *shape), r.reshape(-1, *shape), p)
        written.append(p)
    if model.latent_dim == 2:
        x = data.test_x.to(device)
        y = data.test_y.to(device) if model.n_classes else None
        with torch.no_grad():
            mu, _ = model.encode(x, y)
        p = os.path.join(out_dir, "latent.png")
        plots.save_latent_scatter(mu, data.test_y, p)
        written.append(p)
    return written


def _finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree=None):
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    final = evaluate(model, data.test_x, data.test_y, n_samples=cfg["eval_k"], seed=cfg["seed"]) if metrics else {}
    eval_time = time.perf_counter() - t0
    pictures = save_pictures(model, data, out_dir, metrics, seed=cfg["seed"])
    summary = dict(model=cfg["model"], data=data.name, epochs=len(metrics), world_size=world, device=str(device),
                   backend=cfg["backend"], checkpoint=ckpt_path,
                   metrics=[os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "metrics.json")],
                   pictures=pictures)
    if ranks_agree is not None:
        summary["ranks_agree"] = ranks_agree
    if metrics:
        last = metrics[-1]
        summary.update(test_elbo=final["elbo"], train_loss=last["train_loss"],
                       samples_per_s=sum(m["samples_per_s"] for m in metrics[-5:]) / len(metrics[-5:]),
                       train_time_s=sum(m["epoch_time_s"] for m in metrics))
        if cfg["eval_k"]:
            summary.update(test_log_likelihood=final["log_likelihood"], eval_k=cfg["eval_k"], eval_time_s=eval_time)
    _atomic_write(os.path.join(out_dir, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    lines = [f"fastvae: trained {cfg['model']} on {data.name} for {len(metrics)} epoch(s) "
             f"({world} process(es), {device}, backend {cfg['backend']})"]
    if metrics:
        lines.append(f"  test ELBO {summary['test_elbo']:.3f} nats/sample"
                     + (f", log-likelihood (K={cfg['eval_k']}) {summary['test_log_likelihood']:.3f}"
                        if cfg["eval_k"] else "")
                     + f"; {summary['samples_per_s']:.0f} training samples/s")
    lines += [f"  checkpoint: {ckpt_path}", f"  metrics:    {summary['metrics'][0]} (and .json)",
              f"  pictures:   {', '.join(pictures) if pictures else '(none)'}"]
    print("\n".join(lines), flush=True)
    return summary
