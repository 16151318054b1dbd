"""What a run leaves beside its checkpoint: metrics.csv and metrics.json, summary.json and the summary it prints."""
import csv
import json
import os
import time

from ..plots import save_pictures
from .evaluation import evaluate
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


def finish(cfg, model, data, metrics, out_dir, ckpt_path, world, ranks_agree=None, amp=None):
    """The end of a run (rank 0): the final test metrics (and log-likelihood with eval_k > 0), the pictures,
    summary.json and the printed summary; returns the summary. amp: the autocast the run used (what --amp auto
    resolved to), None for float32."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    final = evaluate(model, data.test_x, data.test_y, n_samples=cfg["eval_k"], seed=cfg["seed"]) if metrics else {}
    eval_time = time.perf_counter() - t0
    pictures = save_pictures(model, data, out_dir, metrics, seed=cfg["seed"])
    summary = dict(model=cfg["model"], data=data.name, epochs=len(metrics), world_size=world, device=str(device),
                   backend=cfg["backend"], amp=cfg["amp"], amp_used=amp or "none", checkpoint=ckpt_path,
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
    atomic_write(os.path.join(out_dir, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    lines = [f"fastvae: trained {cfg['model']} on {data.name} for {len(metrics)} epoch(s) "
             f"({world} process(es), {device}, backend {cfg['backend']}"
             + (f", amp {amp}" if amp else "") + ")"]
    if metrics:
        lines.append(f"  test ELBO {summary['test_elbo']:.3f} nats/sample"
                     + (f", log-likelihood (K={cfg['eval_k']}) {summary['test_log_likelihood']:.3f}"
                        if cfg["eval_k"] else "")
                     + f"; {summary['samples_per_s']:.0f} training samples/s")
    lines += [f"  checkpoint: {ckpt_path}", f"  metrics:    {summary['metrics'][0]} (and .json)",
              f"  pictures:   {', '.join(pictures) if pictures else '(none)'}"]
    print("\n".join(lines), flush=True)
    return summary
