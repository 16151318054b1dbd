"""The `fastvae` command (also `python -m fastvae`): train, eval, sample, info, bench.

  fastvae train [--model vae|beta-vae|cvae|iwae|wae-mmd|swae|hvae|m2|vaegan]
                [--data digits|fashion|mnist:DIR|fashion:DIR|npz:FILE]
                [--config run.toml] [--latent-dim N] [--batch-size N] [--epochs N] [--lr X] [--device cpu|cuda]
                [--amp none|bf16|auto] [--compile] [--out DIR] [--resume | --overwrite] [--seed N] ...
  fastvae eval CHECKPOINT [-k 5000] [--limit N] [--refine STEPS [--refine-lr X]] [--json] [--per-image FILE.npy]
                          [--no-progress]
  fastvae sample CHECKPOINT -n 64 [--out samples.png]
  fastvae info
  fastvae bench ...            (forwarded to fastvae.bench.main)

The train flags and the keys of a TOML config are one table, fastvae.train.SETTINGS (latent_dim or latent-dim in
TOML); every value is checked against it; flags given on the command line win.
Under `torchrun --nproc_per_node N -m fastvae train ...` training runs data-parallel (DDP).
This module parses the command line, trains and dispatches; eval, sample and info are in fastvae/commands/.
"""
import argparse
import difflib
import os
import signal
import sys

from . import train as tr
from .commands import evaluate, sample
from .commands.evaluate import EVAL_K, EVAL_LIMIT, EVAL_REFINE, EVAL_REFINE_LR
from .commands.info import info_lines
from .commands.sample import MAX_SAMPLES, SAMPLE_N  # noqa: F401  (MAX_SAMPLES: fastvae.cli's as before)


def _flag_type(setting):
    """argparse's type= of a setting: the checked value, or argparse's one-line error naming the flag."""
    def parse(text):
        try:
            return setting.parse(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = setting.key
    return parse


def _default_text(setting):
    d = setting.default
    if d is None:
        return ""
    if isinstance(d, (list, tuple)):
        d = ",".join(map(str, d))
    elif isinstance(d, bool):
        d = str(d).lower()
    return f" (default {d})"


def _add_setting(parser, setting, *flags, default=None, help=None):
    flags = flags or (f"--{setting.key.replace('_', '-')}",)
    help_ = help or setting.help + _default_text(setting)
    if setting.kind is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=help_)
    else:
        parser.add_argument(*flags, type=_flag_type(setting), default=default, help=help_,
                            metavar="{" + ",".join(setting.choices) + "}" if setting.choices else setting.key.upper())


def _parser():
    p = argparse.ArgumentParser(prog="fastvae", description="Fused-op VAEs: train, evaluate and sample.")
    sub = p.add_subparsers(dest="command", metavar="{train,eval,sample,info,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train a model", description="Train a VAE; writes everything into --out.")
    t.add_argument("--config", help="a TOML file whose keys mirror these flags")
    for setting in tr.SETTINGS.values():
        _add_setting(t, setting)          # default None: "not given", so a TOML value or the run's own applies

    s = tr.SETTINGS
    e = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a checkpoint",
                       description="The test ELBO and the importance-sampled (IWAE-style) log-likelihood of a "
                       "checkpoint: NLL in nats per image, bits per dimension, and its standard error over images.")
    e.add_argument("checkpoint", help="a checkpoint.pt (or the --out folder of a run)")
    _add_setting(e, EVAL_K, "-k", "--k", "--n-samples", default=EVAL_K.default)
    _add_setting(e, EVAL_LIMIT, "--limit")
    _add_setting(e, EVAL_REFINE, "--refine")
    _add_setting(e, EVAL_REFINE_LR, "--refine-lr", default=EVAL_REFINE_LR.default)
    _add_setting(e, s["data"], "--data", help="evaluate on this data instead of the run's (same spec as train --data)")
    _add_setting(e, s["device"], "--device", default=s["device"].default)
    _add_setting(e, s["seed"], "--seed", default=s["seed"].default)
    _add_setting(e, s["progress"], "--progress", help="a progress bar on stderr (default: when stderr is a terminal)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--per-image", metavar="FILE.npy", help="also write the per-image estimates log p(x_i) (float64) "
                   "to this .npy file: models evaluated on the same images compare image by image")

    sm = sub.add_parser("sample", help="a PNG grid of samples from a checkpoint")
    sm.add_argument("checkpoint", help="a checkpoint.pt (or the --out folder of a run)")
    _add_setting(sm, SAMPLE_N, "-n", default=SAMPLE_N.default)
    sm.add_argument("--out", help="PNG path (default: samples-N.png next to the checkpoint)")
    _add_setting(sm, s["device"], "--device", default=s["device"].default)
    _add_setting(sm, s["seed"], "--seed", default=s["seed"].default)

    sub.add_parser("info", help="version, torch, built kernels, device")
    b = sub.add_parser("bench", help="the benchmark suite (fastvae.bench); arguments are forwarded", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _parse(argv):
    """The command line -> args; unknown arguments are refused with the closest flag of the command (difflib:
    --latent_dim -> --latent-dim)."""
    p = _parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        command = p._subparsers._group_actions[0].choices[args.command]
        flags = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        names = [arg.split("=", 1)[0] for arg in extra if arg.startswith("-")]
        hints = [f"{name}: did you mean {match[0]}?" for name in names for match in [difflib.get_close_matches(
            "--" + name.lstrip("-").replace("_", "-"), flags, n=1, cutoff=0.6)] if match]
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else ""))
    return args


def read_config_file(path):
    """A TOML file -> dict of checked run settings (keys with dashes or underscores; a [train] table also works)."""
    import tomllib
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise SystemExit(f"fastvae: config file {path} not found")
    except OSError as e:
        raise SystemExit(f"fastvae: config file {path} cannot be read ({e.strerror or e})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"fastvae: config file {path} is not valid TOML: {e}")
    if isinstance(cfg.get("train"), dict):
        cfg = {**{k: v for k, v in cfg.items() if k != "train"}, **cfg["train"]}
    try:
        return tr.check_settings(cfg)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"fastvae: config file {path}: {e}")


def _train(args):
    overrides = read_config_file(args.config) if args.config else {}
    overrides.update({k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None})
    try:
        cfg = tr.resolve_config(overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"fastvae train: {e}")
    try:
        tr.train(cfg)
    except (tr.TrainingStopped, ValueError, NotImplementedError) as e:
        # bad data files, checkpoints, devices or folders, a diverged run, a failed write: a message, no traceback
        print(f"fastvae train: {e}", file=sys.stderr)
        return 1
    return 0


# What a command imports beyond torch and numpy: the `train` extra of the distribution (pyproject.toml)
_EXTRAS = {"train": ("matplotlib", "tqdm"), "sample": ("matplotlib",)}


def _need_extras(command):
    """Refuses a command at once, not after training, where a module of the `train` extra is missing."""
    import importlib.util
    from . import DIST_NAME
    missing = [m for m in _EXTRAS.get(command, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"fastvae {command}: needs {', '.join(missing)}, not installed; "
                         f"pip install '{DIST_NAME}[train]' installs them")


def _bench(args):
    try:
        from . import bench
    except ImportError as e:
        if getattr(e, "name", None) not in ("fastvae.bench", None) and "bench" not in str(e):
            raise
        raise SystemExit(f"fastvae bench: the benchmark suite (fastvae.bench) is not installed in this checkout ({e})")
    if not hasattr(bench, "main"):
        raise SystemExit("fastvae bench: fastvae.bench has no main(argv)")
    return bench.main(list(args.args))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":       # everything after `bench` belongs to the suite, --help included
        return _bench(argparse.Namespace(args=argv[1:])) or 0
    args = _parse(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    _need_extras(args.command)
    command = {"train": _train, "eval": evaluate.run, "sample": sample.run}.get(args.command)
    if command is None:
        return _bench(args) or 0
    terminated = []
    installed, previous = _on_sigterm(terminated)
    try:
        return command(args)
    except KeyboardInterrupt as e:        # Ctrl-C or SIGTERM: where things stand, not a traceback (128 + signal)
        print(f"fastvae {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except OSError as e:                  # a file the command reads or writes: its name and the reason, one line
        print(f"fastvae {args.command}: {tr.describe_os_error(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        import torch
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        print(f"fastvae {args.command}: out of memory ({str(e).splitlines()[0]}); lower --batch-size, --n-samples, "
              f"--hidden-dims or -n", file=sys.stderr)
        return 1
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(terminated):
    """SIGTERM (a scheduler's or `kill`'s stop) is handled as Ctrl-C is: a KeyboardInterrupt("terminated by
    SIGTERM"), so that training says where its last checkpoint is and frees its folder. Returns (whether it was
    installed: not outside the main thread nor under torchrun, the handler it replaced)."""
    def handler(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt("terminated by SIGTERM")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False, None          # under torchrun its agent stops the workers; a handler would only delay them
    try:
        return True, signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return False, None


if __name__ == "__main__":
    sys.exit(main())
