"""results.md and results.json of the recipe runs (run.sh): per recipe the epochs, training time, eval time, test
NLL at K = 5000 with its standard error, and for the IWAE runs the paired difference to k = 1 on the same images.
    python bench/results/recipes-20261201/table.py"""
import json
import math
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["iwae-k1", "iwae-k5", "iwae-k50", "wae-mmd", "swae"]
times = {}
with open(os.path.join(HERE, "times.txt")) as f:
    for line in f:
        w = line.split()
        times[w[0]] = dict(train_s=int(w[2]), eval_s=int(w[4]), limit=int(w[6]))
rows = []
for name in NAMES:
    if name not in times:
        continue
    ev = json.load(open(os.path.join(HERE, f"{name}.json")))
    summ = json.load(open(os.path.join(HERE, f"{name}.summary.json")))
    row = dict(recipe=name, epochs=summ["epochs"], train_s=times[name]["train_s"],
               train_loop_s=summ["train_time_s"], eval_s=times[name]["eval_s"], nll=ev["nll"], nll_se=ev["nll_se"],
               bits_per_dim=ev["bits_per_dim"], elbo=ev["elbo"], n_test=ev["n_test"], k=ev["n_samples"])
    if name.startswith("iwae") and name != "iwae-k1" and "iwae-k1" in times:
        a = np.load(os.path.join(HERE, "iwae-k1.logp.npy"))
        b = np.load(os.path.join(HERE, f"{name}.logp.npy"))
        d = b - a                     # log p under k minus under k = 1: > 0 is a better model
        row.update(gain_vs_k1=float(d.mean()), gain_vs_k1_se=float(d.std(ddof=1) / math.sqrt(d.size)))
    rows.append(row)
json.dump(rows, open(os.path.join(HERE, "results.json"), "w"), indent=1)


def mmss(s):
    return f"{int(s) // 60} min {int(s) % 60:02d} s"


lines = ["| recipe | command | epochs | train (wall, incl. per-epoch test ELBO) | test NLL, K = 5000 (SE) | "
         "bits/dim | gain over k = 1, same images (SE) | images | eval time |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    gain = f"{r['gain_vs_k1']:+.2f} ({r['gain_vs_k1_se']:.2f})" if "gain_vs_k1" in r else ""
    lines.append(f"| {r['recipe']} | `fastvae train --config configs/{r['recipe']}.toml` | {r['epochs']} | "
                 f"{mmss(r['train_s'])} | {r['nll']:.2f} ({r['nll_se']:.2f}) | {r['bits_per_dim']:.4f} | {gain} | "
                 f"first {r['n_test']} of 10000 | {mmss(r['eval_s'])} |")
open(os.path.join(HERE, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
