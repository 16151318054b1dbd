"""Runs the ops x sizes x providers x modes grid and returns long-format rows (dicts), one per measurement; a
provider that is unavailable or fails gets rows whose `status` says so."""
import math
import os
import time
import traceback
import types

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
        cuda = torch.device(device).type == "cuda"
        self.copy_probe = measure.CopyProbe(device, max(256 * 2**20, 4 * self.llc) if cuda else
                                            min(256 * 2**20, max(16 * 2**20, 2 * self.llc)))

    # -- one op ---------------------------------------------------------------------------------------------------
    def run_op(self, op, sizes, dtypes, providers=None):
        """Every provider of `op` at each size and dtype, measured side by side: all are built and called once,
        then each mode is timed in interleaved rounds (measure.bench_interleaved), with the copy probe's rep in
        every round. Rows come out per provider, in the op's provider order."""
        rows = []
        for dtype in dtypes:
            for n in sizes:
                gen = torch.Generator().manual_seed(1234 + n)
                first = op.make(n, dtype, self.device, gen)
                set_bytes = sum(t.numel() * t.element_size() for t in _tensors(first))
                k = int(min(8, max(2, math.ceil(2 * self.llc / max(set_bytes, 1)))))
                sets = [first] + [op.make(n, dtype, self.device, gen) for _ in range(k - 1)]
                ready, out = {}, {}
                for name, builder in op.providers.items():
                    if providers and name not in providers:
                        continue
                    p = self._prepare(op, n, dtype, sets, name, builder)
                    if isinstance(p, list):
                        out[name] = p
                    else:
                        ready[name] = p
                out.update(self._measure(op, n, dtype, ready))
                rows += [r for name in op.providers if name in out for r in out[name]]
                del sets, first, ready
                if torch.device(self.device).type == "cuda":
                    torch.cuda.empty_cache()   # a provider that ran out of memory must not starve the next
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

    def _prepare(self, op, n, dtype, sets, name, builder):
        """The provider built and called once (forward + backward: compiles, JIT builds, gives the outputs'
        structure), its saved-for-backward bytes measured; or its status rows if it is skipped, unavailable or
        fails."""
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
        return _Prepared(name=name, fn=fn, sets=sets, grads=grads, zero_grads=zero_grads, first_s=first_s,
                         saved=saved, holder={})

    def _calls(self, op, p, mode):
        """(call, prepare, cleanup) of one rep of provider p in `mode` (see measure.bench)."""
        k, sets, holder, grads, fn = len(p.sets), p.sets, p.holder, p.grads, p.fn
        cuda = torch.device(self.device).type == "cuda"

        def cleanup(i):
            holder.clear()
            p.zero_grads(i)

        prepare = None
        if op.kind == "e2e" or mode == "forward":
            def call(i, _):
                holder["out"] = fn(*sets[i % k])
        elif mode == "backward":
            def prepare(i):
                o = [t for t in _tensors(fn(*sets[i % k])) if t.requires_grad]
                if cuda:
                    torch.cuda.synchronize()
                return o

            def call(i, o):
                torch.autograd.backward(o, grads)
        else:
            def call(i, _):
                o = [t for t in _tensors(fn(*sets[i % k])) if t.requires_grad]
                torch.autograd.backward(o, grads)
        return call, prepare, cleanup

    def _measure(self, op, n, dtype, ready):
        """Rows of the prepared providers, each mode timed in interleaved rounds; {provider: rows}."""
        out = {name: [] for name in ready}
        if not ready:
            return out
        e2e = op.kind == "e2e"
        slow = any(p.first_s > 2.0 for p in ready.values())  # calls of seconds: the first was the warm-up
        for mode in self._modes_for(op):
            calls = {name: self._calls(op, p, mode) for name, p in ready.items()}
            try:
                results, copy_bps = measure.bench_interleaved(
                    calls, self.device, warmup_s=0.0 if slow else self.warmup_s,
                    budget_s=self.budget_s * op.budget_scale, min_reps=3 if slow else self.min_reps,
                    min_warmup=0 if slow else 1, copy=self.copy_probe)
            except Exception as e:  # (the rounds themselves broke: every provider gets the failure)
                results, copy_bps = {name: e for name in ready}, []
            loop_copy = measure.percentile(copy_bps, 50) / 1e9 if copy_bps else None
            for name, p in ready.items():
                row = self._base(op, n, dtype, name, mode)
                r = results[name]
                call, prepare, cleanup = calls[name]
                try:
                    if isinstance(r, Exception):
                        raise r
                    state = prepare(0) if prepare is not None else None
                    peak = measure.peak_memory_bytes(lambda: call(0, state), self.device)  # noqa: F821 (del below)
                    del state
                    cleanup(0)
                except Exception as e:
                    self.log(f"  {op.name} {op.size_label(n)} {name} {mode}: failed ({_short(e)})")
                    p.holder.clear()
                    out[name].append(dict(row, status=f"failed: {_short(e)}"))
                    continue
                row.update(status="ok", p20_ms=r["p20"], p50_ms=r["p50"], p80_ms=r["p80"], reps=r["reps"],
                           peak_mem_mib=peak / 2**20, loop_copy_gbps=loop_copy)
                if mode in ("forward", "full") and p.saved[0] is not None:
                    row.update(saved_mib=p.saved[0] / 2**20, saved_extra_mib=p.saved[1] / 2**20)
                if e2e:
                    row["samples_per_s"] = n / (r["p50"] / 1e3)
                    if op.annotate is not None:
                        try:
                            row.update(op.annotate(name, p.fn, p.sets, row))
                        except Exception as e:  # the row keeps its times; the log says what is missing
                            self.log(f"  {op.name} {op.size_label(n)} {name}: annotate failed ({_short(e)})")
                if op.bytes_model is not None:
                    row["bytes_model"] = op.bytes_model(n, torch.empty((), dtype=dtype).element_size(), mode)
                if op.flops_model is not None:
                    row["flops_model"] = op.flops_model(n, mode)
                out[name].append(row)
                self.log(f"  {op.name} {op.size_label(n)} {name} {mode}: p50 {r['p50']:.3f} ms "
                         f"[{r['p20']:.3f}, {r['p80']:.3f}] x{r['reps']}, peak {peak / 2**20:.1f} MiB")
        for name, p in ready.items():
            if name in COMPILING:
                steady = next((rw["p50_ms"] for rw in out[name] if rw.get("mode") == "full" and "p50_ms" in rw),
                              None)
                compile_s = max(0.0, p.first_s - (steady or 0.0) / 1e3)
                for rw in out[name]:
                    rw["compile_s"] = compile_s
        return out


class _Prepared(types.SimpleNamespace):
    """A provider ready to be timed: fn, the input sets, the backward's grad_outputs, its first-call seconds and
    saved-for-backward bytes (all, beyond the inputs)."""
