"""What a run leaves beside its checkpoint: metrics.csv and metrics.json, summary.json and the summary it prints."""
import csv
import json
import os
import time

from ..plots import save_pictures
from .config import semi_supervised_labels
from .evaluation import evaluate, supervised_baseline
from .rundir import atomic_write


def write_metrics(out_dir, metrics):
    keys = []
    for m in metrics:
        keys += [k for k in m if k not in keys]

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(metrics)
    atomic_write(os.path.join(out_dir, "metrics.csv"), write_csv)
    atomic_write(os.path.join(out_dir, "metrics.json"), lambda f: json.dump(metrics, f, indent=1))


def fastvae_version():
    from .. import __version__
    return __version__


# The default final log-likelihood (eval_k not given): K importance samples per test image, K at most
# DEFAULT_EVAL_K and K * images at most DEFAULT_EVAL_BUDGET (digits' 359 images: K = 1000; 10,000 images: K = 100),
# seconds rather than minutes after a short run. The paper-grade estimate (K = PAPER_EVAL_K) is `fastvae eval`'s.
DEFAULT_EVAL_K = 1000
DEFAULT_EVAL_BUDGET = 10**6
PAPER_EVAL_K = 5000


def final_eval_k(eval_k, n_test):
    """The K of a run's final log-likelihood: eval_k when given, else the proportionate default."""
    if eval_k is not None:
        return eval_k
    return max(1, min(DEFAULT_EVAL_K, DEFAULT_EVAL_BUDGET // max(1, n_test)))


# What the summary says under the numbers of a density on continuous data.
GAUSSIAN_NOTE = ("note: the Gaussian likelihood is a density on continuous pixels: its loss, NLL and bits/dim can "
                 "be negative, and compare only with other continuous-density results")


def finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree=None, amp=None):
    """The end of a run (rank 0): the final test metrics (and log-likelihood, final_eval_k(cfg["eval_k"]) > 0),
    the pictures, summary.json and the printed summary; returns the summary. A run with no epoch (--epochs 0, no
    run resumed) writes nothing and says so. amp: the autocast the run used (what --amp auto resolved to), None for
    float32. Every phase that may take more than a few seconds says so first (and shows a progress bar with
    cfg["progress"])."""
    device = next(model.parameters()).device
    if not metrics:
        print(f"fastvae: nothing trained (--epochs {cfg['epochs']}, no run to resume in {out_dir}): no checkpoint, "
              f"metrics or pictures written", flush=True)
        return {}
    n_test = int(data.test_x.shape[0])
    k = final_eval_k(cfg["eval_k"], n_test)
    if k:
        print(f"final evaluation: the log-likelihood of the {n_test} test samples with K={k} importance samples "
              f"each (--eval-k; `fastvae eval` for the paper-grade K={PAPER_EVAL_K})", flush=True)
    t0 = time.perf_counter()
    final = evaluate(model, data.test_x, data.test_y, n_samples=k, seed=cfg["seed"], progress=cfg["progress"])
    eval_time = time.perf_counter() - t0
    run = f"{cfg['model']} on {data.name}"
    pictures = save_pictures(model, data, out_dir, metrics, seed=cfg["seed"], run=run)
    summary = dict(model=cfg["model"], data=data.name, epochs=len(metrics), world_size=world, device=str(device),
                   backend=cfg["backend"], amp=cfg["amp"], amp_used=amp or "none", checkpoint=ckpt_path,
                   metrics=[os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "metrics.json")],
                   pictures=pictures)
    if ranks_agree is not None:
        summary["ranks_agree"] = ranks_agree
    last = metrics[-1]
    summary.update(test_elbo=final["elbo"], train_loss=last["train_loss"],
                   samples_per_s=sum(m["samples_per_s"] for m in metrics[-5:]) / len(metrics[-5:]),
                   train_time_s=sum(m["epoch_time_s"] for m in metrics))
    if k:
        summary.update(test_log_likelihood=final["log_likelihood"], test_bits_per_dim=final["bits_per_dim"],
                       eval_k=k, eval_time_s=eval_time)
    if model.semi_supervised:
        summary.update(test_accuracy=final["accuracy"], labelled=cfg["labelled"])
        if cfg["labelled"] is not None:     # the same network trained on the kept labels alone
            print(f"the supervised baseline: q(y|x)'s network trained on the {cfg['labelled']} labels alone",
                  flush=True)
            _, kept = semi_supervised_labels(cfg, data)
            kept = kept.to(data.train_x.device)
            summary["baseline_accuracy"] = supervised_baseline(
                model, data.train_x[kept].to(device), data.train_y[kept].to(device), data.test_x.to(device),
                data.test_y.to(device), seed=cfg["seed"])
    atomic_write(os.path.join(out_dir, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    lines = [f"fastvae: trained {run} for {len(metrics)} epoch(s) "
             f"({world} process(es), {device}, backend {cfg['backend']}"
             + (f", amp {amp}" if amp else "") + ")"]
    lines.append(f"  test ELBO {summary['test_elbo']:.3f} nats/sample"
                 + (f", log-likelihood (K={k}) {summary['test_log_likelihood']:.3f} "
                    f"({summary['test_bits_per_dim']:.4f} bits/dim)" if k else "")
                 + f"; {summary['samples_per_s']:.0f} training samples/s")
    if k and k < PAPER_EVAL_K:
        lines.append(f"  (K={k} is a quick estimate; `fastvae eval {out_dir} -k {PAPER_EVAL_K}` gives the "
                     f"paper-grade one)")
    if model.semi_supervised:
        lines.append(f"  test accuracy of q(y|x) {summary['test_accuracy']:.4f}"
                     + (f" with {cfg['labelled']} labels; the same network trained on them alone: "
                        f"{summary['baseline_accuracy']:.4f}" if cfg["labelled"] is not None else ""))
    if model.config.get("likelihood") == "gaussian":
        lines.append(f"  {GAUSSIAN_NOTE}")
    lines += [f"  checkpoint: {ckpt_path}", f"  metrics:    {summary['metrics'][0]} (and .json)",
              f"  pictures:   {', '.join(pictures) if pictures else '(none)'}"]
    print("\n".join(lines), flush=True)
    return summary
