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
"""
import argparse
import difflib
import json
import os
import signal
import sys

from . import train as tr
from .models import MAX_LL_SAMPLES

# Samples `fastvae sample` draws at most: a 100 x 100 grid is already a poster (and every sample is in memory).
MAX_SAMPLES = 10_000
SAMPLE_N = tr.Setting("n", int, 64, f"number of samples, at most {MAX_SAMPLES}", lo=1, hi=MAX_SAMPLES)
# eval's own settings: K importance samples per image (at most MAX_LL_SAMPLES = 10^6, 200 times the IWAE paper's
# 5000: the time grows linearly with K), and the first N test images
EVAL_K = tr.Setting("k", int, 1000, f"importance samples per test image of the log-likelihood, at most "
                    f"{MAX_LL_SAMPLES}", lo=1, hi=MAX_LL_SAMPLES)
# image-samples of the log-likelihood from which eval says what it does when it shows no bar (a few seconds)
LONG_EVAL = 10**6
EVAL_LIMIT = tr.Setting("limit", int, None, "evaluate the first N test images only (default: all)", lo=1,
                        hi=tr.INT_MAX)

# posterior refinement (the amortisation gap): per-image steps of Adam on q's statistics, and its learning rate
EVAL_REFINE = tr.Setting("refine", int, None, "also optimise each test image's own posterior for STEPS steps from "
                         "the encoder's and report the refined ELBO (the amortisation gap)", lo=1,
                         hi=tr.MAX_REFINE_STEPS)
EVAL_REFINE_LR = tr.Setting("refine_lr", float, 1e-2, "Adam's learning rate of --refine", lo=0, lo_open=True)


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


def _load(args):
    try:
        device = tr.pick_device(args.device)
        return (*tr.model_from_checkpoint(args.checkpoint, device), device)
    except ValueError as e:
        raise SystemExit(f"fastvae {args.command}: {e}{_previous_hint(args.checkpoint, e)}")


def _previous_hint(path, error):
    """A run's refused checkpoint with an intact previous one beside it: say so."""
    previous = tr.previous_path(os.path.join(path, tr.CHECKPOINT_NAME) if os.path.isdir(path) else path)
    try:
        epoch = tr.load_checkpoint(previous)["epoch"] if isinstance(error, tr.CheckpointError) else None
    except tr.CheckpointError:
        epoch = None
    return "" if epoch is None else f"; the previous checkpoint beside it, {previous} (epoch {epoch}), is intact"


def _eval(args):
    import time
    import torch
    from .data import load_data
    model, ckpt, device = _load(args)
    run, info = ckpt["config"], ckpt["data_info"]
    spec = args.data or run["data"]
    if isinstance(spec, str) and spec.startswith("<"):
        raise SystemExit(f"fastvae eval: {args.checkpoint} was trained on a Python {spec} object; give --data")
    try:
        # the run's binarization: static gives the same fixed binary test set; dynamic a binarization of the test
        # set drawn once with a fixed seed (fastvae.data.BINARIZE_SEED), as the IWAE paper evaluates
        data = load_data(spec, binarize=run["binarize"], device=device)
    except ValueError as e:
        raise SystemExit(f"fastvae eval: {e}")
    _check_eval_data(data, info, model, args.checkpoint)
    n_all = int(data.test_x.shape[0])
    test_x, test_y = data.test_x[:args.limit], None if data.test_y is None else data.test_y[:args.limit]
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.per_image and not os.path.isdir(os.path.dirname(os.path.abspath(args.per_image))):
        raise SystemExit(f"fastvae eval: --per-image {args.per_image}: the folder "
                         f"{os.path.dirname(os.path.abspath(args.per_image))} does not exist")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    per_image = [] if args.per_image else None
    n_eval = int(test_x.shape[0])
    if not progress and n_eval * args.k >= LONG_EVAL:        # minutes, perhaps: say so, on stderr (--json reads stdout)
        print(f"fastvae eval: the log-likelihood of {n_eval} test samples with K={args.k} importance samples each "
              f"(--progress shows a bar)", file=sys.stderr, flush=True)
    res = tr.evaluate(model, test_x, test_y, n_samples=args.k, seed=args.seed, progress=progress,
                      per_image=per_image)
    if per_image is not None:
        import numpy as np
        try:
            np.save(args.per_image, torch.cat(per_image).numpy())
        except OSError as e:
            raise SystemExit(f"fastvae eval: cannot write --per-image {args.per_image} ({e.strerror or e})")
    if args.refine:
        t1 = time.perf_counter()
        res.update(_refine(model, test_x, test_y, args, progress),
                   refine_steps=args.refine, refine_lr=args.refine_lr, refine_time_s=time.perf_counter() - t1)
    res.update(time_s=time.perf_counter() - t0, checkpoint=args.checkpoint, data=data.name,
               n_test=int(test_x.shape[0]), n_test_all=n_all, dim=model.data_dim, binarize=data.binarize,
               epoch=ckpt["epoch"], n_samples=args.k)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    se = "n/a (one image)" if res["nll_se"] is None else f"{res['nll_se']:.4f}"
    bse = "" if res["bits_per_dim_se"] is None else f" (SE {res['bits_per_dim_se']:.5f})"
    which = f"{res['n_test']} samples" if res["n_test"] == n_all else f"the first {res['n_test']} of {n_all} samples"
    print(f"{args.checkpoint} (epoch {res['epoch']}) on the {data.name} test set ({which}"
          f"{', binarized ' + data.binarize if data.binarize else ''}):")
    print(f"  ELBO            {res['elbo']:.4f} nats/sample (recon {res['recon']:.4f}, KL {res['kl']:.4f})")
    if "accuracy" in res:
        print(f"  accuracy        {res['accuracy']:.4f} (the classifier q(y|x) on the test labels)")
    print(f"  log-likelihood  {res['log_likelihood']:.4f} nats/sample (K={args.k} importance samples)")
    print(f"  NLL             {res['nll']:.4f} nats/sample, SE {se} (std of log p(x) over samples / sqrt(n))")
    print(f"  bits/dim        {res['bits_per_dim']:.5f}{bse} (NLL / ({res['dim']} ln 2))")
    if args.refine:
        print(f"  refined ELBO    {res['refined_elbo']:.4f} nats/sample after {args.refine} steps per image "
              f"(amortised {res['amortised_elbo']:.4f} by the same {tr.REFINE_EVAL_DRAWS}-draw estimate: "
              f"amortisation gap {res['amortisation_gap']:.4f})")
    print(f"  time            {res['time_s']:.1f} s")
    if model.config.get("likelihood") == "gaussian":
        print(f"  {tr.GAUSSIAN_NOTE}")
    return 0


def _refine(model, x, y, args, progress):
    """refine_posteriors with a progress bar of the images refined (or, without one, a line saying what runs)."""
    n = int(x.shape[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=f"refining ({args.refine} steps)", unit="sample", dynamic_ncols=True,
                   mininterval=0.5, file=sys.stderr)
    else:
        print(f"fastvae eval: refining the posteriors of {n} test samples, {args.refine} steps each "
              f"(--progress shows a bar)", file=sys.stderr, flush=True)
    try:
        return tr.refine_posteriors(model, x, y, steps=args.refine, lr=args.refine_lr, seed=args.seed,
                                    progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()


def _check_eval_data(data, info, model, checkpoint):
    """The data eval reads must be what the model takes: the samples' shape, a test set, labels for a CVAE."""
    def refuse(what):
        raise SystemExit(f"fastvae eval: --data {data.name}: {what}")
    if tuple(data.shape) != tuple(info["shape"]):
        refuse(f"its samples have shape {tuple(data.shape)}; {checkpoint} was trained on shape {tuple(info['shape'])}")
    if data.test_x.shape[0] == 0:
        refuse("its test set is empty")
    if model.n_classes:
        if data.test_y is None:
            refuse(f"it has no labels; {checkpoint} is a cvae of {model.n_classes} classes")
        lo, hi = int(data.test_y.min()), int(data.test_y.max())
        if lo < 0 or hi >= model.n_classes:
            refuse(f"its labels run from {lo} to {hi}; {checkpoint} is a cvae of classes 0 to {model.n_classes - 1}")


def _sample(args):
    import torch
    from . import plots
    ckpt_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(os.path.abspath(args.checkpoint))
    out = args.out or os.path.join(ckpt_dir, f"samples-{args.n}.png")
    if os.path.isdir(out):
        raise SystemExit(f"fastvae sample: --out {out} is a folder; give a .png file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise SystemExit(f"fastvae sample: --out {out}: the folder {os.path.dirname(os.path.abspath(out))} does "
                         f"not exist")
    model, ckpt, device = _load(args)
    shape = ckpt["data_info"]["shape"]
    if len(shape) == 1:
        side = int(round(shape[0] ** 0.5))
        if side * side != shape[0]:
            raise SystemExit(f"fastvae sample: samples of shape {tuple(shape)} are not pictures")
        shape = [1, side, side]
    g = torch.Generator(device).manual_seed(args.seed)
    x = model.sample(args.n, generator=g).reshape(args.n, *shape)
    try:
        plots.save_grid(x, out, ncol=10 if model.n_classes else None)
    except OSError as e:
        raise SystemExit(f"fastvae sample: cannot write --out {out} ({e.strerror or e})")
    print(f"wrote {args.n} samples to {out}")
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


def _distribution(name):
    """'<name> <version>' as installed, or a note that this fastvae is not an installed distribution."""
    from importlib import metadata
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} not installed (a source checkout)"


def info_lines():
    import torch
    import fastvae
    bi = fastvae._C.build_info()
    lines = [f"fastvae {fastvae.__version__} ({os.path.dirname(fastvae.__file__)})",
             f"distribution: {_distribution(fastvae.DIST_NAME)}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             f"kernels: CPU ({fastvae._C.cpu_isa()} in use; built {bi.get('cpu_isa')}), "
             + (f"CUDA for archs {bi.get('cuda_archs') or '?'}" if bi.get("cuda") else "CUDA not built")]
    lines.append("build: " + ", ".join(f"{k}={v}" for k, v in bi.items()))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"device cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads); no CUDA GPU visible")
    extra = [n for n in ("mmd", "sliced_wasserstein") if hasattr(fastvae, n)]
    lines.append(f"distance ops: {', '.join(extra) if extra else 'none in this build'}")
    return lines


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
    command = {"train": _train, "eval": _eval, "sample": _sample}.get(args.command)
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
