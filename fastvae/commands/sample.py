"""`fastvae sample CHECKPOINT -n N`: a PNG grid of N samples of a checkpoint's model."""
import os

from .. import train as tr
from .checkpoint import load

# Samples `fastvae sample` draws at most: a 100 x 100 grid is already a poster (and every sample is in memory).
MAX_SAMPLES = 10_000
SAMPLE_N = tr.Setting("n", int, 64, f"number of samples, at most {MAX_SAMPLES}", lo=1, hi=MAX_SAMPLES)


def run(args):
    import torch
    from .. import plots
    ckpt_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(os.path.abspath(args.checkpoint))
    out = args.out or os.path.join(ckpt_dir, f"samples-{args.n}.png")
    if os.path.isdir(out):
        raise SystemExit(f"fastvae sample: --out {out} is a folder; give a .png file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise SystemExit(f"fastvae sample: --out {out}: the folder {os.path.dirname(os.path.abspath(out))} does "
                         f"not exist")
    model, ckpt, device = load(args)
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
