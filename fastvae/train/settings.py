"""The settings of a run: one table (SETTINGS) for the `fastvae train` flags, the TOML keys and the Python config
dict; each Setting checks a value from TOML or Python and parses one from the command line."""
import difflib
import math
import numbers
import re
from dataclasses import dataclass

import torch

from ..ops.distances import KERNELS
from ..models import ACTIVATIONS, BACKENDS, DIVERGENCES, LIKELIHOODS, MAX_LL_SAMPLES, POSTERIORS, VARIANCES

MODELS = ("vae", "beta-vae", "cvae", "iwae", "wae-mmd", "swae", "hvae", "m2", "vaegan")
LR_SCHEDULES = ("constant", "iwae")
INT_MAX = 2**31 - 1      # the largest size or count a setting takes: any product of two still fits an int64


@dataclass(frozen=True)
class Setting:
    """One run setting: the flag --latent-dim and the TOML key latent_dim (or latent-dim).

    kind: bool, int, float, str or list (of `item`s: ints, or floats). Bools are never ints, floats never ints,
    strings never bools. choices (str), pattern (str, a regular expression with its description `expected`), lo/hi
    (numbers and list items, inclusive; lo_open / hi_open exclude them). default None: the model's preset (PRESETS)
    or the VAE's own default.
    resume: what --resume does with a value given that differs from the run's: "apply" (used and recorded) or
    "refuse" (an error naming the key); "" marks the switches of the command itself, which no run records.
    later: added after checkpoint format 1 was fixed: a checkpoint that lacks it was written with its default."""
    key: str
    kind: type
    default: object
    help: str
    choices: tuple = ()
    lo: object = None
    hi: object = None
    lo_open: bool = False
    hi_open: bool = False
    item: type = int           # the kind of a list's items: int or float
    later: bool = False
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
        if self.lo is not None and self.hi is not None and not self.lo_open and not self.hi_open:
            rng = f" from {self.lo} to {self.hi}"
        else:
            rng = (f" {'>' if self.lo_open else '>='} {self.lo}" if self.lo is not None else "") + (
                f" and {'<' if self.hi_open else '<='} {self.hi:g}" if self.hi is not None else "")
        items = "a list of ints" if self.item is int else "a list of finite numbers"
        return {bool: "true or false", int: "an int" + rng, float: "a finite number" + rng,
                str: "a non-empty string", list: items + rng}[self.kind]

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
        if not is_kind(value, self.kind, self.item):
            raise self._error(TypeError, found)
        try:
            value = [self.item(v) for v in value] if self.kind is list else self.kind(value)
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
        return self.hi is None or v < self.hi or (v == self.hi and not self.hi_open)

    def parse(self, text):
        """A command-line string -> the checked value ("512,256" for a list, "" the empty list)."""
        try:
            if self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
            elif self.kind is list:
                value = [self.item(t) for t in text.split(",")] if text.strip() else []
            else:
                value = text
        except ValueError:
            raise self._error(ValueError, repr(text)) from None
        return self.check(value)


def is_kind(value, kind, item=int):
    """Whether value is of a setting's kind (a list: of `item`s): bools are never ints, floats never ints, strings
    never bools."""
    if isinstance(value, bool):
        return kind is bool
    if kind is list:
        return isinstance(value, (list, tuple)) and all(is_kind(v, item) for v in value)
    return isinstance(value, {int: numbers.Integral, float: numbers.Real, str: str, bool: bool}[kind])



SETTINGS = {s.key: s for s in (
    Setting("model", str, "vae", "the model preset", choices=MODELS),
    Setting("data", str, "digits", "digits, fashion (the system's Fashion-MNIST), mnist, mnist:DIR, fashion:DIR, "
            "npz:FILE or npy:FILE", resume="apply", also=(torch.utils.data.Dataset,),
            expected="a data spec (digits, fashion, mnist, mnist:DIR, fashion:DIR, npz:FILE or npy:FILE) or a "
                     "torch Dataset"),
    Setting("latent_dim", int, 16, "latent dimensions", lo=1, hi=INT_MAX),
    Setting("latent_dims", list, None, "hvae: the latent dimensions of its stochastic layers, the lowest (next "
            "to x) first, comma-separated, at least 2 (preset: hvae 32,16)", lo=1, hi=INT_MAX, later=True),
    Setting("hidden_dims", list, (512, 256), "encoder widths, comma-separated (a list in TOML); the decoder "
            "mirrors them; '' for linear", lo=1, hi=INT_MAX),
    Setting("batch_size", int, 128, "samples per step and process", lo=1, hi=INT_MAX, resume="apply"),
    Setting("epochs", int, 100, "passes over the training set, in all (a resumed run counts its past ones)",
            lo=0, hi=INT_MAX, resume="apply"),
    # (at most 1e30: Adam's first step, lr / (1 - beta1), and the variance group's 20 lr stay finite in float32)
    Setting("lr", float, 1e-3, "learning rate (Adam; vaegan: its three RMSProp optimisers, preset 3e-4)", lo=0,
            lo_open=True, hi=1e30, resume="apply"),
    Setting("adam_beta1", float, 0.9, "Adam's beta1 (the IWAE paper 0.99, WAE 0.5)", lo=0, hi=1, hi_open=True,
            resume="apply", later=True),
    Setting("adam_beta2", float, 0.999, "Adam's beta2", lo=0, hi=1, hi_open=True, resume="apply", later=True),
    Setting("adam_eps", float, 1e-8, "Adam's epsilon (the IWAE paper 1e-4)", lo=0, lo_open=True, resume="apply",
            later=True),
    Setting("lr_schedule", str, "constant", "constant, or iwae: the IWAE paper's lr * 10^(-i/7) in stages i = 0..7 "
            "of 3^i epochs (3280 in all; a shorter run follows its first epochs)", choices=LR_SCHEDULES,
            resume="apply", later=True),
    Setting("device", str, "auto", "cpu, cuda, cuda:N or auto (cuda when available)", pattern=r"auto|cpu|cuda(:\d+)?",
            expected="auto, cpu, cuda or cuda:N", resume="apply"),
    Setting("amp", str, "auto", "bf16 autocast; auto: bf16 where the device has native bf16 matmuls (a CPU with "
            "AMX-BF16 or AVX512-BF16, a GPU that supports bf16), else none; none: float32 throughout",
            choices=("none", "bf16", "auto"), resume="apply"),
    Setting("compile", bool, False, "torch.compile the model's training step", resume="apply"),
    Setting("out", str, None, "output folder: checkpoint, metrics, pictures (default: out/DATA for --model vae, "
            "out/DATA-MODEL otherwise: out/digits, out/fashion-iwae)", resume="apply"),
    Setting("resume", bool, False, "continue the run in --out where it stopped (settings not given are the run's)",
            resume=""),
    Setting("overwrite", bool, False, "replace the run in --out (its checkpoint, metrics and pictures)", resume=""),
    Setting("seed", int, 0, "random seed", lo=0, hi=2**32 - 1),
    Setting("likelihood", str, "gaussian", "the decoder's likelihood", choices=LIKELIHOODS),
    Setting("variance", str, "learned", "the Gaussian likelihood's variance", choices=VARIANCES),
    Setting("n_mix", int, 10, "components of the logistic_mixture likelihood", lo=1, hi=1024, later=True),
    Setting("beta", float, None, "KL weight (preset: 1; beta-vae 4; wae-mmd/swae 0)", lo=0),
    Setting("n_samples", int, None, "importance samples k of the bound (preset: 1; iwae 5)", lo=1, hi=INT_MAX),
    Setting("posterior", str, "diagonal", "diagonal, or full (Cholesky factor)", choices=POSTERIORS),
    Setting("divergence", str, None, "the regulariser (preset: set by --model)", choices=DIVERGENCES),
    Setting("reg_weight", float, None, "weight of the MMD / sliced-Wasserstein term (preset: wae-mmd 100, swae 10)",
            lo=0),
    Setting("kernel", str, "imq", "MMD kernel", choices=KERNELS),
    Setting("bandwidth", float, None, "MMD kernel bandwidth h (default 1; imq uses C = 2 d h^2)", lo=0, lo_open=True),
    Setting("kernel_scales", list, (1.0,), "the MMD kernel summed over scales s of the bandwidth's h^2, "
            "comma-separated (imq: C = 2 d h^2 s; the WAE paper's .1,.2,.5,1,2,5,10)", lo=0, lo_open=True,
            item=float, later=True),
    Setting("n_projections", int, 128, "sliced-Wasserstein projections", lo=1, hi=INT_MAX),
    Setting("labelled", int, None, "m2: training labels kept, balanced over the classes and fixed by the seed "
            "(default: all)", lo=1, hi=INT_MAX, later=True),
    Setting("alpha", float, 50.0, "m2: weight of the labelled inputs' classification loss -log q(y|x)", lo=0,
            later=True),
    Setting("gamma", float, 1e-2, "vaegan: weight of the discriminator-feature reconstruction term against the GAN "
            "loss in the decoder's objective", lo=0, later=True),
    Setting("feature_variance", str, "learned", "vaegan: the variance of the Gaussian on the discriminator's "
            "features: learned (one log-variance) or fixed (the paper's identity)", choices=("learned", "fixed"),
            later=True),
    Setting("binarize", str, None, "binarize the pixels: static (one fixed draw), dynamic (train set redrawn every "
            "batch) (default: dynamic for bernoulli, else none)",
            choices=("none", "static", "dynamic")),
    Setting("activation", str, "silu", "the activation between the layers", choices=tuple(ACTIVATIONS), later=True),
    Setting("conv", bool, False, "a small conv encoder/decoder for image data (else images are flattened)"),
    Setting("backend", str, "fastvae", "fastvae (fused ops) or reference (plain PyTorch ops)", choices=BACKENDS,
            resume="apply"),
    Setting("threads", int, None, "CPU threads of torch (default: torch's choice; 1 is fastest for small models "
            "on a busy box)", lo=1, hi=1024, resume="apply"),
    Setting("eval_k", int, None, f"importance samples per test image of the final log-likelihood, at most "
            f"{MAX_LL_SAMPLES}; 0 skips it (default: 1000, and at most 10^6 over the test set: 100 for 10,000 "
            f"images; `fastvae eval -k 5000` gives the paper-grade estimate)", lo=0, hi=MAX_LL_SAMPLES,
            resume="apply"),
    Setting("progress", bool, True, "a progress bar (--no-progress: a line every few epochs instead)",
            resume="apply"),
)}
DEFAULTS = {k: s.default for k, s in SETTINGS.items()}
PRESETS = {
    "vae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "beta-vae": dict(beta=4.0, n_samples=1, divergence="kl"),
    "cvae": dict(beta=1.0, n_samples=1, divergence="kl"),
    "m2": dict(beta=1.0, n_samples=1, divergence="kl"),
    "iwae": dict(beta=1.0, n_samples=5, divergence="kl"),
    "wae-mmd": dict(beta=0.0, n_samples=1, divergence="mmd", reg_weight=100.0),
    "swae": dict(beta=0.0, n_samples=1, divergence="sliced", reg_weight=10.0),
    "hvae": dict(beta=1.0, n_samples=1, divergence="kl", latent_dims=[32, 16]),
    "vaegan": dict(beta=1.0, n_samples=1, divergence="kl", lr=3e-4),
}


def check_settings(values, where="configuration"):
    """A dict of settings (keys with dashes or underscores; None = not given) -> the checked values."""
    given = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in SETTINGS:
            raise ValueError(f"unknown {where} key {key!r}; {closest(key, SETTINGS)}")
        if value is not None:
            given[key] = SETTINGS[key].check(value)
    return given


def closest(name, known):
    """A hint for a misspelt key: the closest of known (difflib), or where to find them all."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else "the keys are the flags of `fastvae train --help` (_ for -)"


def recorded(cfg):
    """The settings a run records (config.json, checkpoints): all but the command's own switches."""
    return {k: v for k, v in cfg.items() if SETTINGS[k].resume}
