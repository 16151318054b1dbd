"""Runs the ops x sizes x providers x modes grid and returns long-format rows (dicts), one per measurement; a
provider that is unavailable or fails gets rows whose `status` says so."""
import math
import os
import time
import traceback

import torch

from . import measure
from .ops import Unavailable

MODES = ("forward", "backward", "full")

# One call of a provider compiled or JIT-built on first use: its first-call time less a steady call is reported
# as compile_s.
COMPILING = ("compile", "geomloss-online")


def _llc_bytes(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1], 1)
        return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return 32 * 2**20


def _free_memory_bytes(device):
    """Memory a provider may use: 40% of MemAvailable on CPU (the machine is shared), 80% of the free GPU memory."""
    if torch.device(device).type == "cuda":
        return int(0.8 * torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(0.4 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 4 * 2**30


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


def _short(e):
    msg = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return msg[:200]


class Runner:
    def __init__(self, device, modes, quick, budget_s=None, log=print, skip_compiling=False, pairwise_modes=None):
        self.device, self.modes, self.quick, self.log = device, modes, quick, log
        self.pairwise_modes = pairwise_modes or modes
        self.budget_s = budget_s if budget_s is not None else (0.05 if quick else 0.5)
        self.warmup_s = 0.0 if quick else 0.2
        self.min_reps = 3 if quick else 5
        self.skip_compiling = skip_compiling
        self.llc = _llc_bytes(device)

    # -- one op ---------------------------------------------------------------------------------------------------
    def run_op(self, op, sizes, dtypes, providers=None):
        rows = []
        for dtype in dtypes:
            for n in sizes:
                gen = torch.Generator().manual_seed(1234 + n)
                first = op.make(n, dtype, self.device, gen)
                set_bytes = sum(t.numel() * t.element_size() for t in _tensors(first))
                k = int(min(8, max(2, math.ceil(2 * self.llc / max(set_bytes, 1)))))
                sets = [first] + [op.make(n, dtype, self.device, gen) for _ in range(k - 1)]
                for name, builder in op.providers.items():
                    if providers and name not in providers:
                        continue
                    rows += self._run_provider(op, n, dtype, sets, name, builder)
                    if torch.device(self.device).type == "cuda":
                        torch.cuda.empty_cache()   # a provider that ran out of memory must not starve the next
                del sets, first
        return rows

    def skip_op(self, op, sizes, dtypes, reason):
        """Rows for an op that is not run (e.g. the time limit was reached), so that it is not dropped silently."""
        return [dict(self._base(op, n, dtype, name, m), status=f"skipped: {reason}")
                for dtype in dtypes for n in sizes for name in op.providers for m in self._modes_for(op)]

    def _base(self, op, n, dtype, provider, mode):
        return dict(op=op.name, provider=provider, mode=mode, dtype=str(dtype).replace("torch.", ""),
                    size=n, shape=op.size_label(n), device=self.device)

    def _modes_for(self, op):
        if op.kind == "e2e":
            return ("full",)
        return self.pairwise_modes if op.kind == "pairwise" else self.modes

    def _run_provider(self, op, n, dtype, sets, name, builder):
        modes = self._modes_for(op)
        need = op.mem_model.get(name)
        if need is not None:
            need = need(n, torch.empty((), dtype=dtype).element_size())
            free = _free_memory_bytes(self.device)
            if need > free:
                why = f"skipped: needs ~{need / 2**30:.1f} GiB (N x N), more than the {free / 2**30:.1f} GiB allowed"
                self.log(f"  {op.name} {op.size_label(n)} {name}: {why}")
                return [dict(self._base(op, n, dtype, name, m), status=why) for m in modes]
        if self.skip_compiling and name in COMPILING:
            why = "skipped: --quick does not compile (torch.compile / KeOps JIT); run without --quick"
            return [dict(self._base(op, n, dtype, name, m), status=why) for m in modes]
        try:
            if name == "compile":
                torch._dynamo.reset()
            fn = builder(self.device, dtype) if op.kind == "e2e" else builder()
        except Unavailable as e:
            self.log(f"  {op.name} {op.size_label(n)} {name}: unavailable ({e})")
            return [dict(self._base(op, n, dtype, name, m), status=f"unavailable: {e}") for m in modes]
        except Exception as e:  # a provider that breaks while being built is reported, not dropped
            self.log(f"  {op.name} {op.size_label(n)} {name}: failed ({_short(e)})")
            return [dict(self._base(op, n, dtype, name, m), status=f"failed: {_short(e)}") for m in modes]

        k = len(sets)
        e2e = op.kind == "e2e"
        grad_inputs = [[t for t in _tensors(s) if t.requires_grad] for s in sets]

        def zero_grads(i):
            for t in grad_inputs[i % k]:
                t.grad = None

        # First call (compiles / JIT-builds where the provider does that): a full forward+backward, timed on the
        # wall clock; it also gives the outputs' structure for the backward's grad_outputs.
        try:
            t0 = time.perf_counter()
            out = fn(*sets[0])
            outs = [t for t in _tensors(out) if t.requires_grad]
            if not e2e and not outs:
                raise RuntimeError("no output requires grad")
            g = torch.Generator().manual_seed(99)
            grads = [torch.ones_like(t) if t.dim() == 0 else
                     torch.randn(t.shape, generator=g).to(device=t.device, dtype=t.dtype) for t in outs]
            if not e2e:
                torch.autograd.backward(outs, grads)
            if torch.device(self.device).type == "cuda":
                torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            del out, outs
            zero_grads(0)
        except Exception as e:
            self.log(f"  {op.name} {op.size_label(n)} {name}: failed on first call ({_short(e)})")
            if os.environ.get("FASTVAE_BENCH_DEBUG"):
                traceback.print_exc()
            return [dict(self._base(op, n, dtype, name, m), status=f"failed: {_short(e)}") for m in modes]

        saved = (None, None)
        if not e2e:
            try:
                saved = measure.saved_tensor_bytes(lambda: fn(*sets[0]), sets[0])
            except Exception:
                saved = (None, None)
            zero_grads(0)

        rows = []
        holder = {}
        slow = first_s > 2.0

        def cleanup(i):
            holder.clear()
            zero_grads(i)

        for mode in modes:
            row = self._base(op, n, dtype, name, mode)
            if e2e:
                def call(i, _):
                    holder["out"] = fn(*sets[i % k])
                prepare = None
            elif mode == "forward":
                def call(i, _):
                    holder["out"] = fn(*sets[i % k])
                prepare = None
            elif mode == "backward":
                def prepare(i):
                    o = [t for t in _tensors(fn(*sets[i % k])) if t.requires_grad]
                    if torch.device(self.device).type == "cuda":
                        torch.cuda.synchronize()
                    return o

                def call(i, o):
                    torch.autograd.backward(o, grads)
            else:
                def call(i, _):
                    o = [t for t in _tensors(fn(*sets[i % k])) if t.requires_grad]
                    torch.autograd.backward(o, grads)
                prepare = None
            try:
                # a call of seconds: the first call was its warm-up, and 3 reps will do
                r = measure.bench(call, self.device, prepare=prepare, cleanup=cleanup,
                                  warmup_s=0.0 if slow else self.warmup_s, budget_s=self.budget_s * op.budget_scale,
                                  min_reps=3 if slow else self.min_reps, min_warmup=0 if slow else 1)
                state = prepare(0) if prepare is not None else None
                peak = measure.peak_memory_bytes(lambda: call(0, state), self.device)  # noqa: F821 (del below)
                del state
                cleanup(0)
            except Exception as e:
                self.log(f"  {op.name} {op.size_label(n)} {name} {mode}: failed ({_short(e)})")
                holder.clear()
                rows.append(dict(row, status=f"failed: {_short(e)}"))
                continue
            row.update(status="ok", p20_ms=r["p20"], p50_ms=r["p50"], p80_ms=r["p80"], reps=r["reps"],
                       peak_mem_mib=peak / 2**20)
            if mode in ("forward", "full") and saved[0] is not None:
                row.update(saved_mib=saved[0] / 2**20, saved_extra_mib=saved[1] / 2**20)
            if e2e:
                row["samples_per_s"] = n / (r["p50"] / 1e3)
            if op.bytes_model is not None:
                row["bytes_model"] = op.bytes_model(n, torch.empty((), dtype=dtype).element_size(), mode)
            if op.flops_model is not None:
                row["flops_model"] = op.flops_model(n, mode)
            rows.append(row)
            self.log(f"  {op.name} {op.size_label(n)} {name} {mode}: p50 {r['p50']:.3f} ms "
                     f"[{r['p20']:.3f}, {r['p80']:.3f}] x{r['reps']}, peak {peak / 2**20:.1f} MiB")
        if name in COMPILING:
            steady = next((rw["p50_ms"] for rw in rows if rw.get("mode") == "full" and "p50_ms" in rw), None)
            compile_s = max(0.0, first_s - (steady or 0.0) / 1e3)
            for rw in rows:
                rw["compile_s"] = compile_s
        return rows
