"""How the suite measures: times (percentiles over many reps, inputs rotated), peak memory, saved-for-backward
bytes, and the machine's two ceilings (copy bandwidth and matmul rate) measured in the same run.

Timing: on CUDA each rep is bracketed by CUDA events (the host enqueues, the device times); on CPU by
time.perf_counter around the call (CPU ops are synchronous). A rep uses the next of several input sets, so a
small working set does not sit in the cache between reps. Warm-up reps come first and are not counted.

Peak memory: on CUDA, torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated
before the measured region. On CPU, the same quantity from an allocator hook: the profiler's allocation events
(c10's CPU allocator reports every allocation and free with its size), summed in time order; the peak of that
running sum is the memory the region allocated above its inputs. Memory that a library allocates outside
torch's allocator (KeOps' C++ buffers, say) is not seen by the hook; `rss_peak_above` measures the peak RSS of
a fresh process instead, for the named memory targets.
"""
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import torch


class Timer:
    """Times `call(i)` (i = rep index, used to pick the input set) with the device's clock."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, call, i, prepare=None):
        """One timed rep in milliseconds; `prepare(i)` runs first, untimed (e.g. the forward of a backward rep)."""
        state = prepare(i) if prepare is not None else None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(i, state)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        call(i, state)
        return (time.perf_counter() - t0) * 1e3


def percentile(values, q):
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def bench(call, device, *, prepare=None, cleanup=None, warmup_s=0.2, budget_s=1.0, min_reps=5, max_reps=200,
          min_warmup=2):
    """Warm up for at least `warmup_s` of wall time (`min_warmup` reps at least), then repeat until `budget_s` of
    wall time has passed (between min_reps and max_reps reps; the wall time includes the untimed `prepare` and
    `cleanup`, so a backward rep's forward counts against the budget). Returns dict(p20, p50, p80 in ms, reps)."""
    timer = Timer(device)
    i = 0

    def loop(min_n, seconds, max_n, record):
        nonlocal i
        t_start = time.perf_counter()
        n = 0
        while n < min_n or (time.perf_counter() - t_start < seconds and n < max_n):
            t = timer.once(call, i, prepare)
            if cleanup is not None:
                cleanup(i)
            if record is not None:
                record.append(t)
            i += 1
            n += 1

    loop(min_warmup, warmup_s, max_reps, None)
    times = []
    loop(min_reps, budget_s, max_reps, times)
    return dict(p20=percentile(times, 20), p50=percentile(times, 50), p80=percentile(times, 80), reps=len(times))


def bench_interleaved(calls, device, *, warmup_s=0.2, budget_s=1.0, min_reps=5, max_reps=200, min_warmup=2,
                      copy=None):
    """Several providers timed side by side. calls: {name: (call, prepare, cleanup)} as for `bench`. Each is warmed
    up in turn (as `bench`), then timed in rounds: a round times one rep of every provider, in an order that
    rotates by one each round (ABC, BCA, CAB, ...), so load that comes and goes falls on all providers alike and
    none always runs right after the same one; a round ends with one rep of `copy` (a CopyProbe: bytes per second)
    when given, the copy bandwidth measured in the same loop. Rounds go on until at least `min_reps` and the wall
    time passed budget_s per provider, or `max_reps`. A provider that raises is dropped from the rounds.
    Returns ({name: dict(p20, p50, p80 in ms, reps) or the exception}, [copy bytes/s per round])."""
    timer = Timer(device)
    names = list(calls)
    times = {name: [] for name in names}
    errors = {}
    i = 0

    def rep(name):
        nonlocal i
        call, prepare, cleanup = calls[name]
        t = timer.once(call, i, prepare)
        if cleanup is not None:
            cleanup(i)
        i += 1
        return t

    for name in names:
        t0, n = time.perf_counter(), 0
        try:
            while n < min_warmup or (time.perf_counter() - t0 < warmup_s and n < max_reps):
                rep(name)
                n += 1
        except Exception as e:
            errors[name] = e
    live = [name for name in names if name not in errors]
    copies = []
    t0, rounds = time.perf_counter(), 0
    while live and (rounds < min_reps or (time.perf_counter() - t0 < budget_s * len(live) and rounds < max_reps)):
        shift = rounds % len(live)
        for name in live[shift:] + live[:shift]:
            try:
                times[name].append(rep(name))
            except Exception as e:
                errors[name] = e
        live = [name for name in live if name not in errors]
        if copy is not None:
            copies.append(copy())
        rounds += 1
    out = {}
    for name in names:
        v = times[name]
        out[name] = errors[name] if name in errors else dict(
            p20=percentile(v, 20), p50=percentile(v, 50), p80=percentile(v, 80), reps=len(v))
    return out, copies


class CopyProbe:
    """One rep of a tensor copy of `nbytes` (larger than the last-level cache), as bytes read + written per
    second: the copy bandwidth, measured inside a timing loop."""

    def __init__(self, device, nbytes):
        self.device, self.n = device, max(1, nbytes // 4)
        self.src, self.dst = None, None
        self.timer = Timer(device)

    def __call__(self):
        if self.src is None:
            self.src, self.dst = torch.rand(self.n, device=self.device), torch.empty(self.n, device=self.device)
            self.dst.copy_(self.src)  # first touch
        ms = self.timer.once(lambda i, _: self.dst.copy_(self.src), 0)
        return 2 * self.n * 4 / (ms / 1e3)

    def release(self):
        self.src = self.dst = None


# ---- memory ------------------------------------------------------------------------------------------------

def peak_memory_bytes(region, device):
    """Peak bytes allocated by `region()` above what was allocated when it started (see the module doc)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        region()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _cpu_peak_via_profiler(region)


# What torch's profiler writes to the process's stderr (file descriptor 2, from C++) whenever it starts and stops,
# which no log level turns off: "USDT:<date> <pid>:<tid> SyncActivityProfilerHandler.cpp:52] profiler_start",
# "STAGE:... Completed Stage: Warm Up", and c10's warning that a block was allocated before profiling started.
_CHATTER = re.compile(r"^(USDT|STAGE):\d{4}-\d\d-\d\d "
                      r"|^\[W\S* [\d:.]+ (\d+ )?CPUAllocator\.cpp:\d+\] Memory block of unknown size")


@contextlib.contextmanager
def quiet_profiler():
    """While torch.profiler runs inside: file descriptor 2 goes to a temporary file, and on exit what was written
    there, less the profiler's own chatter (_CHATTER), goes on to stderr: the suite's output stays a table and its
    progress lines, warnings and errors included."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not _CHATTER.match(line)]
            if rest:
                sys.stderr.write("".join(rest))
                sys.stderr.flush()


def _cpu_peak_via_profiler(region):
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        region()
    allocs = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    allocs.sort(key=lambda a: a[0])
    cur = peak = 0
    for _, size in allocs:
        cur += size
        peak = max(peak, cur)
    return peak


def saved_tensor_bytes(forward, inputs):
    """Bytes that autograd saves for backward during `forward()`: (all saved storages, those that are not the
    inputs' own storages). Each storage is counted once, however many times or views of it are saved."""
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    seen = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    total = sum(seen.values())
    extra = sum(n for p, n in seen.items() if p not in input_ptrs)
    del out
    return total, extra


_RSS_PROBE = r"""
import sys, torch
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
setup = {setup!r}
body = {body!r}
g = {{}}
exec(setup, g)
base = status('VmRSS:')
reset = True
try:
    open('/proc/self/clear_refs', 'w').write('5')   # resets VmHWM to the current RSS (Linux >= 4.0)
except OSError:
    reset = False
exec(body, g)
print('RSS', status('VmHWM:') - base, int(reset))
"""


def rss_peak_above(setup, body, timeout=900):
    """Peak RSS above the RSS after `setup` of a fresh Python process running `setup` then `body` (code strings).
    Returns bytes, or raises RuntimeError with the process's error."""
    code = _RSS_PROBE.format(setup=setup, body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RSS "):
            _, peak, reset = line.split()
            if reset != "1":
                raise RuntimeError("could not reset the process's peak RSS (/proc/self/clear_refs)")
            return int(peak)
    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout)
                       else f"probe exited with {proc.returncode}")


# ---- the machine's ceilings -----------------------------------------------------------------------------------

def copy_bandwidth(device, nbytes, budget_s=1.0):
    """Bytes read + written per second by a large tensor copy (dst.copy_(src)), p50 over reps."""
    n = nbytes // 4
    srcs = [torch.rand(n, device=device) for _ in range(2)]
    dst = torch.empty(n, device=device)
    r = bench(lambda i, _: dst.copy_(srcs[i % 2]), device, warmup_s=0.1, budget_s=budget_s,  # noqa: F821 (del below)
              min_reps=5)
    del srcs, dst
    return 2 * n * 4 / (r["p50"] / 1e3)


def matmul_rate(device, dtype, n, budget_s=1.0):
    """FLOP/s of an n x n x n matrix product (2 n^3 flops), p50 over reps, random operands."""
    a = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
    b = torch.randn(n, n, device=device, dtype=dtype)
    r = bench(lambda i, _: torch.mm(a[i % 2], b), device, warmup_s=0.1, budget_s=budget_s,  # noqa: F821 (del below)
              min_reps=3)
    del a, b
    return 2 * n ** 3 / (r["p50"] / 1e3)
