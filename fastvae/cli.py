"""The `fastvae` command (also `python -m fastvae`): train, eval, sample, info, bench.

  fastvae train [--model vae|beta-vae|cvae|iwae|wae-mmd|swae] [--data digits|mnist:DIR|fashion:DIR|npz:FILE]
                [--config run.toml] [--latent-dim N] [--batch-size N] [--epochs N] [--lr X] [--device cpu|cuda]
                [--amp bf16] [--compile] [--out DIR] [--resume] [--seed N] ...
  fastvae eval CHECKPOINT [-k 1000]
  fastvae sample CHECKPOINT -n 64 [--out samples.png]
  fastvae info
  fastvae bench ...            (forwarded to fastvae.bench.main)

A TOML config's keys mirror the flags (latent_dim or latent-dim); flags given on the command line win.
Under `torchrun --nproc_per_node N -m fastvae train ...` training runs data-parallel (DDP).
"""
import argparse
import json
import os
import sys

# flag -> (type, help); every one is also a TOML key (dashes or underscores)
_TRAIN_FLAGS = {
    "model": (str, "vae, beta-vae, cvae, iwae, wae-mmd or swae (default vae)"),
    "data": (str, "digits (default), mnist:DIR, fashion:DIR, npz:FILE or npy:FILE"),
    "latent-dim": (int, "latent dimensions (default 16)"),
    "hidden-dims": (str, "encoder widths, comma-separated; the decoder mirrors them; '' for linear (default 512,256)"),
    "batch-size": (int, "samples per step and process (default 128)"),
    "epochs": (int, "passes over the training set (default 100)"),
    "lr": (float, "Adam learning rate (default 1e-3)"),
    "device": (str, "cpu, cuda, cuda:N or auto (default: cuda when available)"),
    "amp": (str, "bf16 autocast, or none (default none)"),
    "out": (str, "output folder: checkpoint, metrics, pictures (default out/digits)"),
    "seed": (int, "random seed (default 0)"),
    "likelihood": (str, "gaussian (default) or bernoulli"),
    "variance": (str, "Gaussian variance: learned (default), fixed or network"),
    "beta": (float, "KL weight (preset: 1; beta-vae 4; wae-mmd/swae 0)"),
    "n-samples": (int, "importance samples k of the bound (preset: 1; iwae 5)"),
    "posterior": (str, "diagonal (default) or full (Cholesky factor)"),
    "divergence": (str, "kl, mmd or sliced (set by --model)"),
    "reg-weight": (float, "weight of the MMD / sliced-Wasserstein term (preset: wae-mmd 100, swae 10)"),
    "kernel": (str, "MMD kernel (default imq)"),
    "bandwidth": (float, "MMD kernel bandwidth h (default 1; imq uses C = 2 d h^2)"),
    "n-projections": (int, "sliced-Wasserstein projections (default 128)"),
    "binarize": (str, "none, static or dynamic (default dynamic for bernoulli)"),
    "backend": (str, "fastvae (fused ops, default) or reference (plain PyTorch ops)"),
    "threads": (int, "CPU threads of torch (default: torch's choice; 1 is fastest for small models on a busy box)"),
    "eval-k": (int, "importance samples of the final test log-likelihood; 0 skips it (default 1000)"),
}
_TRAIN_SWITCHES = {
    "compile": "torch.compile the model's training step",
    "resume": "continue from the checkpoint in --out (exactly where it stopped)",
    "conv": "a small conv encoder/decoder for image data (else images are flattened)",
    "no-progress": "no progress bar (a line every few epochs instead)",
}


def _parser():
    p = argparse.ArgumentParser(prog="fastvae", description="Fused-op VAEs: train, evaluate and sample.")
    sub = p.add_subparsers(dest="command", metavar="{train,eval,sample,info,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train a model", description="Train a VAE; writes everything into --out.")
    t.add_argument("--config", help="a TOML file whose keys mirror these flags")
    for flag, (typ, help_) in _TRAIN_FLAGS.items():
        t.add_argument(f"--{flag}", type=typ, default=None, help=help_)
    for flag, help_ in _TRAIN_SWITCHES.items():
        t.add_argument(f"--{flag}", action="store_true", default=None, help=help_)

    e = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint.pt (or the --out folder of a run)")
    e.add_argument("-k", "--n-samples", type=int, default=1000, help="importance samples (default 1000)")
    e.add_argument("--data", help="evaluate on this data instead of the run's (same spec as train --data)")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    s = sub.add_parser("sample", help="a PNG grid of samples from a checkpoint")
    s.add_argument("checkpoint", help="a checkpoint.pt (or the --out folder of a run)")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", help="PNG path (default: samples-N.png next to the checkpoint)")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)

    sub.add_parser("info", help="version, torch, built kernels, device")
    b = sub.add_parser("bench", help="the benchmark suite (fastvae.bench); arguments are forwarded", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def read_config_file(path):
    """A TOML file -> dict of run settings (keys with dashes or underscores; a [train] table also works)."""
    import tomllib
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise SystemExit(f"fastvae: config file {path} not found")
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"fastvae: config file {path} is not valid TOML: {e}")
    if isinstance(cfg.get("train"), dict):
        cfg = {**{k: v for k, v in cfg.items() if k != "train"}, **cfg["train"]}
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _train(args):
    from . import train as tr
    overrides = read_config_file(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}
    if given.pop("no_progress", None):
        given["progress"] = False
    overrides.update(given)
    try:
        cfg = tr.resolve_config(overrides)
    except ValueError as e:
        raise SystemExit(f"fastvae train: {e}")
    try:
        tr.train(cfg)
    except (tr.TrainingDiverged, ValueError, NotImplementedError) as e:
        # bad data files, checkpoints, devices or settings, and a diverged run: a message, not a traceback
        print(f"fastvae train: {e}", file=sys.stderr)
        return 1
    return 0


def _load(args):
    from .train import CheckpointError, model_from_checkpoint, pick_device
    try:
        device = pick_device(args.device)
        return (*model_from_checkpoint(args.checkpoint, device), device)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"fastvae {args.command}: {e}")


def _eval(args):
    import torch
    from .data import load_data
    from .train import evaluate
    model, ckpt, device = _load(args)
    run = ckpt["config"]
    try:
        data = load_data(args.data or run["data"], binarize=run.get("binarize"), device=device)
    except ValueError as e:
        raise SystemExit(f"fastvae eval: {e}")
    torch.manual_seed(args.seed)
    res = evaluate(model, data.test_x, data.test_y, n_samples=args.n_samples, seed=args.seed)
    res.update(checkpoint=args.checkpoint, data=data.name, n_test=int(data.test_x.shape[0]),
               epoch=ckpt.get("epoch"), n_samples=args.n_samples)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.checkpoint} (epoch {res['epoch']}) on the {data.name} test set ({res['n_test']} samples):")
        print(f"  ELBO            {res['elbo']:.4f} nats/sample (recon {res['recon']:.4f}, KL {res['kl']:.4f})")
        if args.n_samples:
            print(f"  log-likelihood  {res['log_likelihood']:.4f} nats/sample (K={args.n_samples})")
    return 0


def _sample(args):
    import torch
    from . import plots
    model, ckpt, device = _load(args)
    if args.n < 1:
        raise SystemExit("fastvae sample: -n must be >= 1")
    shape = ckpt.get("data_info", {}).get("shape") or list(model.input_shape)
    if len(shape) == 1:
        side = int(round(shape[0] ** 0.5))
        if side * side != shape[0]:
            raise SystemExit(f"fastvae sample: samples of shape {tuple(shape)} are not pictures")
        shape = [1, side, side]
    g = torch.Generator(device).manual_seed(args.seed)
    x = model.sample(args.n, generator=g).reshape(args.n, *shape)
    ckpt_path = args.checkpoint if not os.path.isdir(args.checkpoint) else os.path.join(args.checkpoint, "x")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), f"samples-{args.n}.png")
    plots.save_grid(x, out, ncol=10 if model.n_classes else None)
    print(f"wrote {args.n} samples to {out}")
    return 0


def info_lines():
    import torch
    import fastvae
    bi = fastvae._C.build_info()
    lines = [f"fastvae {fastvae.__version__} ({os.path.dirname(fastvae.__file__)})",
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
    args = _parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "sample":
        return _sample(args)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    return _bench(args) or 0


if __name__ == "__main__":
    sys.exit(main())
