"""Derived metrics (GB/s, FLOP/s, speed-ups), and the three outputs: long-format CSV, markdown, PNG plots."""
import csv
import math
import os

FIELDS = ["op", "provider", "mode", "dtype", "size", "shape", "device", "status", "p20_ms", "p50_ms", "p80_ms",
          "reps", "compile_s", "peak_mem_mib", "mem_method", "saved_mib", "saved_extra_mib", "bytes_model", "gbps",
          "loop_copy_gbps", "pct_copy_bw", "spread", "flops_model", "gflops", "pct_matmul", "samples_per_s", "epoch_s",
          "fused_share", "speedup_vs_eager", "speedup_vs_compile", "timestamp", "git_commit", "torch", "machine"]


def derive(rows, env):
    """Adds GB/s and % of copy bandwidth, GFLOP/s and % of matmul rate, speed-ups vs eager and vs compile, and
    the run's context columns to every row (in place)."""
    # (the shape too: the call-overhead rows are all of size 1, one shape per public op)
    by_key = {(r["op"], r["provider"], r["mode"], r["dtype"], r["size"], r.get("shape"), r["device"]): r for r in rows}
    for r in rows:
        r.update(timestamp=env["timestamp"], git_commit=env["git_commit"], torch=env["torch"],
                 machine=env["machine"], mem_method=r.get("mem_method") or env["mem_method"])
        p50 = r.get("p50_ms")
        if p50 is None:
            continue
        if r.get("p20_ms"):
            r["spread"] = r["p80_ms"] / r["p20_ms"]
        if r.get("bytes_model"):
            r["gbps"] = r["bytes_model"] / (p50 / 1e3) / 1e9
            limit = r.get("loop_copy_gbps") or env.get("copy_gbps")
            # A share of the limit only where the op stays below it: an op above a measured limit means the limit
            # was measured wrong (or the bytes model counts what a cache served), not that it was beaten.
            if limit and r["gbps"] <= limit:
                r["pct_copy_bw"] = 100 * r["gbps"] / limit
        if r.get("flops_model"):
            r["gflops"] = r["flops_model"] / (p50 / 1e3) / 1e9
            rate = env.get("matmul_gflops", {}).get(r["dtype"])
            if rate:
                r["pct_matmul"] = 100 * r["gflops"] / rate
        for base in ("eager", "compile"):
            b = by_key.get((r["op"], base, r["mode"], r["dtype"], r["size"], r.get("shape"), r["device"]))
            if b is not None and b.get("p50_ms"):
                r[f"speedup_vs_{base}"] = b["p50_ms"] / p50
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in FIELDS})


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _f(v, fmt="{:.3g}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return fmt.format(v)


def _ms(v):
    if v is None:
        return ""
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def markdown(rows, env, ops, targets_md=""):
    out = [f"# fastvae bench: {env['machine']}", "",
           f"torch {env['torch']}, device `{env['device']}`, commit `{env['git_commit']}`, {env['timestamp']}; "
           f"{'quick' if env.get('quick') else 'full'} run.", ""]
    ceil = []
    if env.get("copy_gbps"):
        ceil.append(f"copy bandwidth {env['copy_gbps']:.1f} GB/s (bytes read + written by a "
                    f"{env['copy_mib']:.0f} MiB tensor copy)")
    for dt, rate in env.get("matmul_gflops", {}).items():
        ceil.append(f"matmul {rate:.0f} GFLOP/s ({dt}, {env['matmul_n']}^3)")
    if ceil:
        out += ["Measured ceilings, this run: " + "; ".join(ceil) + ".", ""]
    load = env.get("loadavg")
    if load:
        out += [f"Machine load (1-minute load average) at the start and end of the run: {load[0]:.2f} and "
                f"{load[-1]:.2f} on {env.get('cpus')} CPUs" + (
                    " -- WARNING: above the CPU count, the machine was busy: read the ratios, not the times, "
                    "and check their spread" if max(load) > (env.get("cpus") or 1) else "") + ".", ""]
    out += ["Providers are timed side by side: after a warm-up each, in rounds of one rep per provider, the order "
            "rotating each round, with one rep of a large copy per round (the copy bandwidth of the % copy column "
            "is that loop's p50; blank where the op would exceed it). spread = p80 / p20.", ""]
    out += [f"Times: p50 [p20-p80] over reps ({env['timer']}), inputs rotated among several sets. "
            f"Peak memory: {env['mem_method']}. ×eager / ×compile: speed-up of the row over that provider "
            "(>1 = faster).", ""]
    if targets_md:
        out += [targets_md, ""]
    doc = {op.name: op.doc for op in ops}
    for op_name in _ordered({r["op"] for r in rows}, [op.name for op in ops]):
        op_rows = [r for r in rows if r["op"] == op_name]
        out += [f"## {op_name}", "", doc.get(op_name, ""), ""]
        e2e = any(r.get("samples_per_s") for r in op_rows) or op_name == "vae_train_step"
        flops = any(r.get("flops_model") for r in op_rows)
        rate_cols = (["samples/s"] if e2e else ["GFLOP/s", "% mm"] if flops else ["GB/s", "% copy"])
        hdr = (["size", "mode", "provider", "p50 ms", "p20-p80 ms", "peak MiB"] +
               ([] if e2e else ["saved MiB (extra)"]) + rate_cols + ["×eager", "×compile", "compile s", "status"])
        out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for r in sorted(op_rows, key=lambda r: (r["dtype"], r["size"], _MODE_ORDER.get(r["mode"], 9))):
            if e2e:
                rate = [_f(r.get("samples_per_s"), "{:.0f}")]
            elif flops:
                rate = [_f(r.get("gflops"), "{:.1f}"), _f(r.get("pct_matmul"), "{:.1f}")]
            else:
                rate = [_f(r.get("gbps"), "{:.1f}"), _f(r.get("pct_copy_bw"), "{:.0f}")]
            saved = []
            if not e2e:
                saved = [f"{r['saved_mib']:.1f} ({r['saved_extra_mib']:.1f})" if r.get("saved_mib") is not None
                         else ""]
            status = r.get("status", "")
            cells = ([f"{r['shape']} {r['dtype']}" if r["dtype"] != "float32" else r["shape"], r["mode"],
                      r["provider"], _ms(r.get("p50_ms")),
                      f"{_ms(r.get('p20_ms'))}-{_ms(r.get('p80_ms'))}" if r.get("p50_ms") is not None else "",
                      _f(r.get("peak_mem_mib"), "{:.1f}")] + saved + rate +
                     [_f(r.get("speedup_vs_eager"), "{:.2f}"), _f(r.get("speedup_vs_compile"), "{:.2f}"),
                      _f(r.get("compile_s"), "{:.1f}"), "" if status == "ok" else status])
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


_MODE_ORDER = {"forward": 0, "backward": 1, "full": 2}


def _ordered(names, order):
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


# one colour per provider in every plot
_COLORS = {"fastvae": "tab:red", "eager": "tab:blue", "compile": "tab:green", "torch.distributions": "tab:purple",
           "nxn-cdist": "tab:orange", "geomloss-tensorized": "tab:brown", "geomloss-online": "tab:pink",
           "eager-matmul-sort": "tab:olive", "pot": "tab:cyan"}


def plots(rows, out_dir, ops):
    """One PNG per op: p50 time (left) and peak memory (right) against size, one line per provider, for the
    'full' mode when measured (else the first measured mode). Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # (no plot for the call-overhead rows: one size, a table says it all)
    for op_name in _ordered({r["op"] for r in rows} - {"call_overhead"}, [op.name for op in ops]):
        ok = [r for r in rows if r["op"] == op_name and r.get("p50_ms") is not None]
        modes = [m for m in ("full", "forward", "backward") if any(r["mode"] == m for r in ok)]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
        title = op_name
        if modes:
            mode = modes[0]
            title += f" ({mode})"
            for dtype in sorted({r["dtype"] for r in ok}):
                for prov in sorted({r["provider"] for r in ok}):
                    pts = sorted((r["size"], r["p50_ms"], r["peak_mem_mib"], r["p20_ms"], r["p80_ms"]) for r in ok
                                 if r["provider"] == prov and r["mode"] == mode and r["dtype"] == dtype)
                    if not pts:
                        continue
                    label = prov if dtype == "float32" else f"{prov} {dtype}"
                    xs = [p[0] for p in pts]
                    style = dict(marker="o", label=label, color=_COLORS.get(prov),
                                 linestyle="-" if dtype == "float32" else "--")
                    ax_t.errorbar(xs, [p[1] for p in pts],
                                  yerr=[[p[1] - p[3] for p in pts], [p[4] - p[1] for p in pts]], capsize=2, **style)
                    ax_m.plot(xs, [max(p[2], 1e-3) for p in pts], **style)
        else:
            ax_t.text(0.5, 0.5, "no provider ran", ha="center", va="center", transform=ax_t.transAxes)
        for ax, yl in ((ax_t, "time p50 [ms] (bars: p20-p80)"), (ax_m, "peak memory above inputs [MiB]")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("size (batch rows, or N samples)")
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
        if ax_t.get_legend_handles_labels()[0]:
            ax_t.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op_name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
