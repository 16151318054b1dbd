"""elbo.md and throughput.md from run.sh's outputs.   python bench/results/amp-20261201/table.py"""
import csv
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
runs = {}
with open(os.path.join(HERE, "elbo.txt")) as f:
    for line in f:
        amp, seed, summary = line.split(" ", 2)
        runs[(amp, int(seed))] = json.loads(summary)
lines = ["| amp | seed | test ELBO after 5 epochs | training samples/s (last epochs) | amp_used |",
         "|---|---|---|---|---|"]
for (amp, seed), s in sorted(runs.items()):
    lines.append(f"| {amp} | {seed} | {s['test_elbo']:.3f} | {s['samples_per_s']:.0f} | {s.get('amp_used')} |")
seeds = sorted({k[1] for k in runs})
amp_gap = [runs[("bf16", s)]["test_elbo"] - runs[("none", s)]["test_elbo"] for s in seeds]
seed_gap = [runs[(a, seeds[1])]["test_elbo"] - runs[(a, seeds[0])]["test_elbo"] for a in ("none", "bf16")]
lines += ["", f"bf16 minus float32, same seed: {', '.join(f'{g:+.3f}' for g in amp_gap)} nats; seed 1 minus seed 0, "
          f"same amp: {', '.join(f'{g:+.3f}' for g in seed_gap)} nats."]
open(os.path.join(HERE, "elbo.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

def throughput(folder):
    rate = {}
    with open(os.path.join(HERE, folder, "results.csv"), newline="") as f:
        for r in csv.DictReader(f):
            if r["op"] == "vae_train_amp" and r["status"] == "ok":
                rate[(int(r["size"]), r["provider"])] = float(r["samples_per_s"])
    provs = ["fastvae", "fastvae-bf16", "eager", "eager-bf16", "pythae", "pythae-bf16"]
    out = ["| batch | " + " | ".join(provs) + " | fastvae bf16 / fp32 | fastvae / pythae (fp32, bf16) |",
           "|---" * (len(provs) + 3) + "|"]
    for n in sorted({k[0] for k in rate}):
        cells = [f"{rate[(n, p)]:.0f}" if (n, p) in rate else "-" for p in provs]

        def ratio(a, b):
            return f"{rate[(n, a)] / rate[(n, b)]:.2f}" if (n, a) in rate and (n, b) in rate else "-"
        out.append(f"| {n} | " + " | ".join(cells) + f" | {ratio('fastvae-bf16', 'fastvae')} | "
                   f"{ratio('fastvae', 'pythae')}, {ratio('fastvae-bf16', 'pythae-bf16')} |")
    env = json.load(open(os.path.join(HERE, folder, "env.json")))
    head = (f"{folder}: {env['machine']}; matmul {', '.join(f'{k} {v:.0f}' for k, v in env['matmul_gflops'].items())} "
            f"GFLOP/s measured in the run; samples/s of one training step (forward, loss, backward, Adam step), "
            f"p50 of the reps")
    return head + "\n\n" + "\n".join(out) + "\n"


md = "\n".join(throughput(f) for f in ("throughput-1thread", "throughput"))
open(os.path.join(HERE, "throughput.md"), "w").write(md)
print(md)
