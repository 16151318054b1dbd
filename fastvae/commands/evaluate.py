"""`fastvae eval CHECKPOINT`: the test ELBO and the importance-sampled log-likelihood of a checkpoint (NLL in nats
per image, bits per dimension, their standard errors), optionally after refining each image's posterior."""
import json
import os
import sys

from .. import train as tr
from ..models import MAX_LL_SAMPLES
from .checkpoint import load

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


def run(args):
    import time
    import torch
    from ..data import load_data
    model, ckpt, device = load(args)
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
