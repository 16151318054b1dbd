"""`fastvae bench`: every fastvae op against eager PyTorch (fastvae.reference), torch.compile of it,
torch.distributions, and the libraries users would pick (geomloss, KeOps, POT, the plain N x N form), with the
machine's copy bandwidth and matmul rate measured in the same run.

    python -m fastvae.bench --quick --out /tmp/bench        # under a minute on CPU
    fastvae bench --out bench/results/cpu-YYYYMMDD          # the full run

Writes under --out: results.csv (long format, one row per op x provider x mode x dtype x size), results.md
(the markdown printed on stdout), one PNG per op, env.json (machine, torch, ceilings). Progress goes to stderr.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

__all__ = ["main"]

GROUPS = {
    "gaussian": ["reparameterize", "reparameterize_kl", "reparameterize_tril", "gaussian_nll", "bernoulli_nll",
                 "kl_normal", "vae_head"],
    "distances": ["mmd", "energy_distance", "sliced_wasserstein"],
    "logistic": ["discretized_logistic_nll", "discretized_logistic_mixture_nll"],
    "e2e": ["vae_train_step", "vae_train_amp", "vae_train_epoch"],
    "epoch": ["vae_train_epoch"],
    "dropin": ["td_vae_loss", "gaussian_nll_loss", "bce_with_logits"],
    "overhead": ["call_overhead", "vae_head_small"],
    "memory": ["large_batch_memory", "large_batch_memory_logistic"],
}
LARGE_BATCH = GROUPS["memory"]
GROUPS["all"] = (GROUPS["gaussian"] + GROUPS["logistic"] + GROUPS["distances"] + GROUPS["dropin"] + GROUPS["e2e"] +
                 GROUPS["overhead"] + GROUPS["memory"])


def _parser():
    p = argparse.ArgumentParser(prog="fastvae bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="all",
                   help="comma list of ops or groups (gaussian, logistic, distances, dropin, e2e, epoch, overhead, "
                        "memory, all); ops: " + ", ".join(GROUPS["all"]))
    p.add_argument("--sizes", default=None,
                   help="comma list of sizes for every selected op (batch rows for the Gaussian ops, N for the "
                        "distances, the batch for the e2e and memory ops); default: each op's own sweep")
    p.add_argument("--dtype", default="float32", help="comma list: float32, float64, float16, bfloat16")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--mode", default=None,
                   help="comma list of forward, backward, full (forward+backward); default all three, except the "
                        "distances on CPU: full only (an N x N baseline call takes seconds there)")
    p.add_argument("--providers", default=None, help="comma list to restrict providers (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="one small size per op, short budgets, no compiling providers (torch.compile, KeOps) unless "
                        "--providers names them: a smoke run (< 1 min on CPU)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed reps per measurement "
                                                             "(default 0.5, quick 0.05)")
    p.add_argument("--out", default=None, help="output folder (default bench-out/<device>-<date>)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: ops not started by then get rows 'skipped: time limit' (results are written "
                        "after every op, so a killed run leaves what it measured)")
    p.add_argument("--no-targets", action="store_true",
                   help="skip the distance memory measurements (mmd and sliced_wasserstein at N = 65536)")
    return p


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _machine(device):
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    isa = ""
    try:
        import fastvae
        isa = f", fastvae ISA {fastvae._C.build_info().get('cpu_isa')}"
    except Exception:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{isa}"


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None):
    args = _parser().parse_args(argv)
    out = sys.stdout
    # libraries print while they load or compile (KeOps says it found no CUDA): keep stdout for the table
    with contextlib.redirect_stdout(sys.stderr):
        md, wrote = _run(args, argv)
    print(md, file=out)
    _log(wrote)
    return 0


def _run(args, argv):
    from . import measure, report, targets
    from .e2e import vae_amp_op, vae_train_op
    from .epoch import epoch_table, vae_epoch_op
    from .ops import all_ops
    from .dropin import dropin_ops, speedup_targets as dropin_targets
    from .overhead import overhead_rows, overhead_table, small_batch_targets, small_head_op
    from .run import MODES, Runner

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    modes = [m.strip() for m in (args.mode or ",".join(MODES)).split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--mode must be a comma list of {', '.join(MODES)}; got {m!r}")
    dtypes = []
    for name in args.dtype.split(","):
        dt = getattr(torch, name.strip(), None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise SystemExit(f"--dtype must name float dtypes (float32, float64, float16, bfloat16); got {name!r}")
        dtypes.append(dt)
    wanted = []
    for name in args.ops.split(","):
        name = name.strip()
        names = GROUPS.get(name, [name])
        for nm in names:
            if nm not in GROUPS["all"]:
                raise SystemExit(f"--ops: unknown op or group {nm!r}; ops: {', '.join(GROUPS['all'])}; "
                                 f"groups: {', '.join(GROUPS)}")
            if nm not in wanted:
                wanted.append(nm)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None

    stamp = datetime.datetime.now(datetime.timezone.utc)
    out_dir = args.out or os.path.join("bench-out", f"{torch.device(device).type}-{stamp:%Y%m%d-%H%M}")
    os.makedirs(out_dir, exist_ok=True)
    cuda = torch.device(device).type == "cuda"

    env = dict(timestamp=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), git_commit=_git_commit(), torch=torch.__version__,
               device=device, machine=_machine(device), quick=args.quick, python=platform.python_version(),
               timer="CUDA events" if cuda else "time.perf_counter around each call",
               mem_method=("CUDA max_memory_allocated above the region's start" if cuda else
                           "allocator hook: the profiler's allocation events of torch's CPU allocator, peak of "
                           "their running sum over the region (memory outside torch's allocator, e.g. KeOps "
                           "buffers, is not seen)"),
               argv=sys.argv[1:] if argv is None else list(argv))
    t_run = time.perf_counter()
    env["cpus"], env["loadavg"] = os.cpu_count(), [os.getloadavg()[0]]
    _log(f"fastvae bench: {env['machine']}, torch {env['torch']}, out {out_dir}")
    if env["loadavg"][0] > env["cpus"]:
        _log(f"  WARNING: load average {env['loadavg'][0]:.1f} on {env['cpus']} CPUs: the machine is busy; times "
             f"will be slow and spread, ratios (measured side by side) less so")

    # the machine's ceilings, measured in this run
    copy_mib = (4096 if cuda else 256) if not args.quick else (1024 if cuda else 64)
    env["copy_mib"] = copy_mib
    env["copy_gbps"] = measure.copy_bandwidth(device, copy_mib * 2**20, budget_s=0.3 if args.quick else 1.0) / 1e9
    env["matmul_n"] = (8192 if cuda else 2048) if not args.quick else (4096 if cuda else 512)
    env["matmul_gflops"] = {}
    for dt in dtypes:
        name = str(dt).replace("torch.", "")
        try:
            env["matmul_gflops"][name] = measure.matmul_rate(device, dt, env["matmul_n"],
                                                             budget_s=0.3 if args.quick else 1.0) / 1e9
        except RuntimeError as e:
            _log(f"  matmul rate for {name}: failed ({e})")
    _log(f"  copy {env['copy_gbps']:.1f} GB/s; matmul " +
         ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in env["matmul_gflops"].items()))

    ops = {op.name: op for op in all_ops() + dropin_ops() + [vae_train_op(), vae_amp_op(), vae_epoch_op(),
                                                              small_head_op()]}
    # --quick skips the providers that compile on first use (seconds each), unless --providers names them
    skip = args.quick and not providers
    runner = Runner(device, modes, args.quick, budget_s=args.budget, log=_log, skip_compiling=skip,
                    pairwise_modes=modes if (args.mode or cuda) else ["full"])
    def write(rows, mem_target=None):
        report.derive(rows, env)
        info2, md2 = targets.vae_head_speedup(rows)
        md3 = targets.distance_speedups(rows, mem_target, cuda=cuda)
        info4, md4 = targets.logistic_mixture_speedup(rows, cuda=cuda)
        info4s, md4s = targets.logistic_single_speedup(rows, cuda=cuda)
        md4 = md4s + "\n\n" + md4
        env["vae_head_target"] = info2
        env["logistic_mixture_target"] = info4
        env["logistic_single_target"] = info4s
        env["seconds"] = time.perf_counter() - t_run
        env["loadavg"] = env["loadavg"][:1] + [os.getloadavg()[0]]
        if cuda:
            md2 += "\n\n" + targets.copy_bandwidth_fraction(rows)
        md5 = dropin_targets(rows)
        if any(r["op"] == "vae_train_epoch" for r in rows):
            md5 += "\n\n" + epoch_table(rows)
        md6 = small_batch_targets(rows) + "\n\n" + overhead_table(rows)
        for md_mem in env.get("large_batch_memory", {}).values():
            md6 += "\n\n" + md_mem
        md = report.markdown(rows, env, list(ops.values()),
                             targets_md=md2 + "\n\n" + md4 + "\n\n" + md3 + "\n\n" + md5 + "\n\n" + md6)
        report.write_csv(rows, os.path.join(out_dir, "results.csv"))
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(md + "\n")
        with open(os.path.join(out_dir, "env.json"), "w") as f:
            json.dump(env, f, indent=1, default=str)
        return md

    rows = []
    for name in wanted:
        if name in LARGE_BATCH:  # a whole training step's peak memory, each provider in a fresh process
            from . import large_batch
            w = large_batch.WORKLOADS[name]
            if sizes or args.quick or not w.sized:
                batch, note = sizes[0] if sizes else w.quick_batch if args.quick else large_batch.MAX_BATCH, ""
            else:  # the largest batch whose eager step fits the memory this run allows itself
                batch, note = large_batch.pick_batch(device, log=_log, workload=name)
            provs = providers or (("eager", "fastvae") if args.quick else large_batch.PROVIDERS)
            _log(f"{name}: batch {batch}, {', '.join(provs)}")
            peaks = large_batch.step_peaks(batch, device, provs, log=_log, workload=name)
            env.setdefault("large_batch_memory", {})[name] = large_batch.table(peaks, batch, device, name, note)
            rows += [dict(op=name, provider=p, mode="full", dtype="float32", size=batch, shape=f"batch {batch}",
                          device=device, mem_method="fresh-process peak RSS above setup" if device == "cpu" else
                          "max_memory_allocated above the start",
                          **(dict(status="ok", peak_mem_mib=v / 2**20) if isinstance(v, int) else dict(status=v)))
                     for p, v in peaks.items()]
            write(rows)
            continue
        if name == "call_overhead":  # the fixed cost of a call: 1x1 inputs, every public op (bench/overhead.py)
            _log(f"{name}: 1x1 inputs, every public op")
            t_op = time.perf_counter()
            for dt in dtypes:
                rows += overhead_rows(device, dt, quick=args.quick, log=_log)
            _log(f"{name}: {time.perf_counter() - t_op:.1f} s")
            write(rows)
            continue
        op = ops[name]
        op_sizes = sizes or (op.quick_sizes if args.quick else op.cuda_sizes if cuda else op.sizes)
        if args.time_limit is not None and time.perf_counter() - t_run > args.time_limit:
            _log(f"{name}: skipped (--time-limit {args.time_limit:.0f} s reached)")
            rows += runner.skip_op(op, op_sizes, dtypes, f"--time-limit {args.time_limit:.0f} s reached")
            continue
        _log(f"{name}: sizes {op_sizes}")
        t_op = time.perf_counter()
        rows += runner.run_op(op, op_sizes, dtypes, providers)
        _log(f"{name}: {time.perf_counter() - t_op:.1f} s")
        write(rows)

    mem_target = None
    mem_ops = [op for op in ("mmd", "sliced_wasserstein") if op in wanted]
    if (mem_ops and not args.quick and not args.no_targets and (not providers or "fastvae" in providers)
            and (args.time_limit is None or time.perf_counter() - t_run < args.time_limit)):
        mem_target = targets.distance_memory(device, log=_log, ops=mem_ops)
    md = write(rows, mem_target)
    pngs = report.plots(rows, out_dir, list(ops.values()))
    return md, f"wrote {out_dir}/results.csv, results.md, env.json and {len(pngs)} plots in {env['seconds']:.0f} s"
