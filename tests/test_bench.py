"""Smoke test of the benchmark suite: `--quick` runs and writes well-formed CSV, markdown and PNGs. No timing
assertions: the numbers depend on the machine and its load."""
import csv
import math
import subprocess
import sys

import pytest
import torch

import fastvae
from fastvae import bench, reference
from fastvae.bench import report, targets
from fastvae.bench.ops import LATENT, Op, Unavailable
from fastvae.bench.ops.logistic import _logistic_single_op, logistic_plain
from fastvae.bench.ops.gaussian import (VAE_HEAD_MODES, VAE_HEAD_PROBE, _vae_head_op, vae_head_bytes, vae_head_plain,
                                        vae_head_provider)
from fastvae.bench.run import Runner

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert bench.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out, buf.getvalue()


@pytest.mark.slow
def test_quick_writes_wellformed_csv(quick_run):
    out, _ = quick_run
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == report.FIELDS
        rows = list(reader)
    assert rows
    ops = {r["op"] for r in rows}
    assert set(bench.GROUPS["all"]) <= ops  # every op has rows, measured or with a status saying why not
    for r in rows:
        overhead = r["op"] == "call_overhead"  # per-call times at 1x1 inputs, with and without grad; no memory
        assert r["provider"] and r["device"] == "cpu"
        assert r["mode"] in (("no_grad", "forward", "full") if overhead else ("forward", "backward", "full"))
        assert r["status"], r
        if r["op"] in bench.GROUPS["memory"]:  # a training step's peak memory, fresh process: no times
            assert r["status"] != "ok" or (float(r["peak_mem_mib"]) > 0 and r["p50_ms"] == ""), r
            continue
        if r["status"] == "ok":
            p20, p50, p80 = float(r["p20_ms"]), float(r["p50_ms"]), float(r["p80_ms"])
            assert 0 < p20 <= p50 <= p80 and all(math.isfinite(v) for v in (p20, p50, p80))
            assert overhead or float(r["peak_mem_mib"]) >= 0
            assert r["git_commit"] and r["timestamp"]
        else:
            assert r["status"].startswith(("unavailable", "failed", "skipped")), r["status"]
            assert r["p50_ms"] == ""
    # the fused Gaussian ops exist from the foundation on: they must have measured rows
    assert any(r["op"] == "vae_head" and r["provider"] == "fastvae" and r["status"] == "ok" for r in rows)
    # the epoch rows: per-epoch seconds from the step's p50, and the fused ops' share of fastvae's step
    epoch = {r["provider"]: r for r in rows if r["op"] == "vae_train_epoch"}
    for name in ("fastvae", "fastvae-bf16", "eager", "eager-bf16"):
        r = epoch[name]
        assert r["status"] == "ok" and r["size"] == "128", r
        assert float(r["epoch_s"]) == pytest.approx(float(r["p50_ms"]) / 1e3 * 60000 / 128, rel=1e-4)
        assert (0 < float(r["fused_share"]) < 1) if name.startswith("fastvae") else r["fused_share"] == "", r
    assert {"pythae", "pythae-bf16"} <= set(epoch)  # measured, or a row saying pythae is not installed
    logistic = {r["provider"]: r for r in rows if r["op"] == "large_batch_memory_logistic"}
    assert set(logistic) == {"eager", "fastvae"} and all(r["status"] == "ok" for r in logistic.values()), logistic
    assert any(r["provider"] == "compile" and r["status"].startswith("skipped") for r in rows)
    # the fused head in every decoder variance, against the plain and the reference eager forms, and the floor probe
    head = {(r["provider"], r["mode"]): r for r in rows if r["op"] == "vae_head"}
    for mode, *_ in VAE_HEAD_MODES:
        for base in ("fastvae", "eager", "eager (reference)"):
            r = head[(vae_head_provider(base, mode), "full")]
            assert r["status"] == "ok", r
            # each mode's rows carry its own bytes model (the targets' fix-up of report.derive's columns)
            assert int(float(r["bytes_model"])) == vae_head_bytes(mode)(128, 4, "full")
        assert head[(vae_head_provider("eager", mode), "full")]["speedup_vs_eager"] == "1"
    assert head[(VAE_HEAD_PROBE, "full")]["status"] == "ok" and head[(VAE_HEAD_PROBE, "full")]["bytes_model"] == ""


@pytest.mark.slow
def test_quick_writes_markdown_tables(quick_run):
    out, stdout = quick_run
    md = (out / "results.md").read_text()
    assert md.strip() == stdout.strip()
    assert "## vae_head" in md and "### Target: fused VAE head speed-up" in md
    assert "size 4096, mode full not selected" in md  # --quick: the smallest size only
    assert "### Per-call overhead" in md and "| kl_normal | no_grad | float32 |" in md
    assert "### Training epoch on Fashion-MNIST (60000 images)" in md and "| 128 | bf16 autocast |" in md
    assert "### Target: peak memory of a training step at batch 32 (discretized logistic mixture" in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table
    # every table row has as many cells as its header
    width = None
    for ln in md.splitlines():
        if not ln.startswith("|"):
            width = None
            continue
        n = ln.count("|")
        if width is None:
            width = n
        assert n == width, ln


@pytest.mark.slow
def test_quick_writes_pngs(quick_run):
    out, _ = quick_run
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} >= {"vae_head", "reparameterize", "mmd"}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_quick_vae_head_target_reads_every_mode_and_its_floor(quick_run):
    """The target table at the quick size: every decoder variance's rows, the floor of each, and either a share of
    it (at most 100%) or the statement that it was measured wrong."""
    out, _ = quick_run
    with open(out / "results.csv", newline="") as f:
        rows = [_typed(r) for r in csv.DictReader(f)]
    info, md = targets.vae_head_speedup(rows, n=128)
    for mode, *_ in VAE_HEAD_MODES:
        assert f"| {mode} | {vae_head_provider('eager (reference)', mode)} |" in md
        fl = info["floor"][mode]
        assert fl["draws"] == 2 * 128 * LATENT and fl["bytes"] == vae_head_bytes(mode)(128, 4, "full")
        assert fl["pct_floor"] is None or 0 < fl["pct_floor"] <= 100
    assert "| % of floor |" in md


def _typed(r):
    r = {k: (None if v == "" else v) for k, v in r.items()}
    r["size"] = int(r["size"])
    for k in ("p20_ms", "p50_ms", "p80_ms", "saved_mib", "saved_extra_mib", "peak_mem_mib", "loop_copy_gbps"):
        r[k] = None if r.get(k) is None else float(r[k])
    return r


# ---- the fused VAE head's providers and its target table --------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", [m for m, *_ in VAE_HEAD_MODES])
def test_vae_head_providers_compute_the_same_loss(mode):
    """Every provider of a mode computes the same loss and gradients: with a latent variance of e^-40 the draw does
    not matter (z = mu to float32 precision), so the plain form, the reference, torch.distributions and fastvae must
    agree, dec_logvar's gradient included (in float64: the float32 kernels' sums are not the oracle here)."""
    op = _vae_head_op()
    g = torch.Generator().manual_seed(3)
    mu, _, x, feature, element = op.make(16, torch.float32, "cpu", g)
    lv = torch.full_like(mu, -40.0).requires_grad_()
    args = (mu, lv, x, feature, element)
    results = {}
    for base in ("fastvae", "eager", "eager (reference)", "torch.distributions"):
        name = vae_head_provider(base, mode)
        if name not in op.providers:
            continue
        loss = op.providers[name]()(*args)
        grads = torch.autograd.grad(loss, [t for t in args if t.requires_grad], allow_unused=True)
        results[name] = (loss.detach(), grads)
    assert len(results) >= 3
    dec = {"unit": None, "per-feature": feature, "per-element": element}[mode]
    m64, x64 = mu.detach().double(), x.double()
    want = vae_head_plain(m64, lv.detach().double(), x64, None if dec is None else dec.detach().double())
    for name, (loss, grads) in results.items():
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-3, msg=name)
        gmu, gdec = grads[0], {"unit": None, "per-feature": grads[2], "per-element": grads[3]}[mode]
        ref_mu, ref_dec = results[vae_head_provider("eager", mode)][1][0], (
            None if dec is None else results[vae_head_provider("eager", mode)][1][2 if dec is feature else 3])
        torch.testing.assert_close(gmu, ref_mu, rtol=1e-4, atol=1e-6, msg=name)
        if dec is not None:
            torch.testing.assert_close(gdec, ref_dec, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.usefixtures("one_thread")
def test_logistic_single_providers_compute_the_same_loss():
    """The single discretized logistic's providers (fastvae, the plain PixelCNN++ form, the overflow-safe reference,
    torch.compile of the plain form) compute the same per-sample loss and gradients on the bench's inputs, each
    against its own form in float64 (fastvae: the reference's exact bin mass; the plain form: itself, whose midpoint
    fallback is rare there, the mean near x, and moves the loss by ~1e-6 and the gradients by ~3e-3 of their largest).
    Losses: sums of 3072 terms of about 3.5, float32 rounding ~2e-7 relative. Gradients: fastvae's within 1e-5 of the
    largest (measured 5e-7), the float32 plain form's within 1e-3 (its cancellation in the difference of two
    sigmoids: 2e-4 measured); a wrong term would be off by O(1)."""
    op = _logistic_single_op()
    x, m, ls = op.make(8, torch.float32, "cpu", torch.Generator().manual_seed(3))
    m64, ls64 = m.detach().double().requires_grad_(), ls.detach().double().requires_grad_()
    want = {}
    for form, fn in (("plain", logistic_plain), ("exact", lambda *a: reference.discretized_logistic_nll(
            *a, reduction="none"))):
        loss = fn(x.double(), m64, ls64)
        want[form] = (loss.detach(), torch.autograd.grad(loss.sum(), [m64, ls64]))
    torch.testing.assert_close(want["plain"][0], want["exact"][0], rtol=1e-5, atol=0)
    for got, w in zip(want["plain"][1], want["exact"][1]):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-2 * w.abs().max().item())
    for name, form, gtol in (("fastvae", "exact", 1e-5), ("eager (reference)", "exact", 1e-5),
                             ("eager", "plain", 1e-3), ("compile", "plain", 1e-3)):
        loss = op.providers[name]()(x, m, ls)
        torch.testing.assert_close(loss.double(), want[form][0], rtol=1e-5, atol=0, msg=name)
        for got, w in zip(torch.autograd.grad(loss.sum(), [m, ls]), want[form][1]):
            torch.testing.assert_close(got.double(), w, rtol=0, atol=gtol * w.abs().max().item(), msg=name)


def _head_rows(n, fastvae_ms, eager_ms, ns_per_normal, copy_gbps):
    """Synthetic measured rows of vae_head in full mode at size n (p20 = p80 = p50: a tight spread)."""
    def row(provider, ms):
        return dict(op="vae_head", provider=provider, mode="full", dtype="float32", size=n, device="cpu",
                    status="ok", p20_ms=ms, p50_ms=ms, p80_ms=ms, loop_copy_gbps=copy_gbps,
                    speedup_vs_eager=123.0, speedup_vs_compile=4.0, bytes_model=1.0, gbps=9.0)
    rows = [row(VAE_HEAD_PROBE, 2 * n * LATENT * ns_per_normal / 1e6)]
    for mode, *_ in VAE_HEAD_MODES:
        rows += [row(vae_head_provider("fastvae", mode), fastvae_ms), row(vae_head_provider("eager", mode), eager_ms)]
    return rows


def test_vae_head_floor_is_bytes_over_copy_plus_draws_times_normal():
    n = 4096
    rows = _head_rows(n, fastvae_ms=100.0, eager_ms=900.0, ns_per_normal=2.0, copy_gbps=10.0)
    info, md = targets.vae_head_speedup(rows)
    for mode, *_, fwd, bwd in VAE_HEAD_MODES:
        fl = info["floor"][mode]
        floor = (fwd + bwd) * n * LATENT * 4 / 10e9 * 1e3 + 2 * n * LATENT * 2.0 / 1e6
        assert fl["floor_ms"] == pytest.approx(floor)
        assert fl["pct_floor"] == pytest.approx(100 * floor / 100.0)
        assert fl["ceiling"] == pytest.approx(900.0 / floor)
        assert info[vae_head_provider("fastvae", mode)]["p50_ms"] == 100.0
    # unit: 21.8 ms of bytes + 16.8 ms of draws, a ceiling of 23x; per element 43.6 ms, 21x: reachable
    assert "unreachable" not in md and "9.00x (meets >= 8.0x)" in md
    # each mode's rows now carry their mode's bytes and their mode's eager; the probe none of the derived columns
    by = {r["provider"]: r for r in rows}
    assert by[vae_head_provider("fastvae", "per-element")]["bytes_model"] == vae_head_bytes("per-element")(n, 4, "full")
    assert by[vae_head_provider("fastvae", "per-element")]["speedup_vs_eager"] == pytest.approx(9.0)
    assert "speedup_vs_compile" not in by[vae_head_provider("fastvae", "per-feature")]
    assert not {"bytes_model", "gbps", "speedup_vs_eager"} & set(by[VAE_HEAD_PROBE])


def test_vae_head_floor_says_when_the_target_is_unreachable_or_the_floor_wrong():
    # a slow RNG: the draws alone take 8 x 2 x 4M ns = 67 ms (floors 89-94 ms); eager at 300 ms: a ceiling under 8x
    info, md = targets.vae_head_speedup(_head_rows(4096, fastvae_ms=150.0, eager_ms=300.0, ns_per_normal=8.0,
                                                   copy_gbps=10.0))
    assert all(info["floor"][m]["ceiling"] < 8 for m, *_ in VAE_HEAD_MODES)
    assert "the 8x target is unreachable on this machine" in md
    # a floor above the measured time: no share above 100%, a statement instead
    info, md = targets.vae_head_speedup(_head_rows(4096, fastvae_ms=20.0, eager_ms=300.0, ns_per_normal=8.0,
                                                   copy_gbps=10.0))
    assert all(info["floor"][m]["pct_floor"] is None for m, *_ in VAE_HEAD_MODES)
    assert md.count("the floor was measured wrong") == 3 and "unreachable" not in md
    # no probe row: the floor says why it is missing
    rows = [r for r in _head_rows(4096, 80.0, 300.0, 8.0, 10.0) if r["provider"] != VAE_HEAD_PROBE]
    info, md = targets.vae_head_speedup(rows)
    assert info["floor"]["unit"] == f"{VAE_HEAD_PROBE} not measured (not run)"
    assert targets.vae_head_speedup([])[0] is None


def _toy_op(providers):
    def make(n, dtype, device, gen):
        return (torch.randn(n, 8, generator=gen, dtype=dtype).requires_grad_(),)
    return Op("toy", "elementwise", [4], [4], make, providers, lambda n: f"{n}x8",
              bytes_model=lambda n, s, mode: 2 * n * 8 * s)


def test_unavailable_and_failing_providers_get_rows():
    def missing():
        raise Unavailable("not installed")

    def broken():
        def f(x):
            raise RuntimeError("boom")
        return f

    op = _toy_op({"good": lambda: (lambda x: (x * 2).sum()), "missing": missing, "broken": broken})
    rows = Runner("cpu", ("forward", "full"), quick=True, log=lambda m: None).run_op(op, [4], [torch.float32])
    by = {(r["provider"], r["mode"]): r for r in rows}
    assert len(rows) == 6
    assert by[("good", "full")]["status"] == "ok" and by[("good", "full")]["p50_ms"] > 0
    assert by[("missing", "forward")]["status"] == "unavailable: not installed"
    assert by[("broken", "full")]["status"].startswith("failed: RuntimeError: boom")


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench.main(["--ops", "nonsense", "--quick"])
    with pytest.raises(SystemExit):
        bench.main(["--mode", "sideways", "--quick"])


# ---- the bf16 step and pythae as a provider ---------------------------------------------------------------------


def _x(n=16):
    return torch.bernoulli(torch.rand(n, 784, generator=torch.Generator().manual_seed(0)))


@pytest.mark.usefixtures("one_thread")
def test_the_bf16_step_keeps_the_loss_in_float32():
    """Under bf16 autocast the matmuls run in bf16 and the loss ops (Bernoulli NLL, reparameterisation + KL) in
    float32: the loss and its terms come back float32."""
    model = fastvae.VAE(784, 4, [16], likelihood="bernoulli")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_x())
        assert model.decoder(out.z).dtype == torch.bfloat16          # the network does run in bf16
    assert out.loss.dtype == out.recon.dtype == out.kl.dtype == torch.float32


def test_pythae_providers_without_pythae_get_rows_saying_so(monkeypatch):
    from fastvae.bench import e2e, pythae_provider

    def missing():
        raise Unavailable("pythae is not installed or not importable (ImportError: No module named 'pythae'); "
                          "pip install pythae")
    monkeypatch.setattr(pythae_provider, "_pythae", missing)
    rows = Runner("cpu", ("full",), quick=True, log=lambda m: None).run_op(
        e2e.vae_amp_op(), [8], [torch.float32], providers=["pythae", "pythae-bf16"])
    assert [r["provider"] for r in rows] == ["pythae", "pythae-bf16"]
    assert all(r["status"].startswith("unavailable: pythae is not installed") for r in rows)
    with pytest.raises(Unavailable, match="pip install pythae"):
        pythae_provider.main(["--out", "unused"])


@pytest.mark.usefixtures("one_thread")
def test_a_pythae_model_is_evaluated_by_fastvaes_estimator_on_the_same_networks():
    pytest.importorskip("pythae")
    from fastvae.bench import pythae_provider as pp
    torch.manual_seed(0)
    for kind in ("vae", "iwae"):
        py = pp.build(kind, latent_dim=3, hidden_dims=(16, 8), activation="tanh", n_samples=2)
        fv = pp.to_fastvae(py, activation="tanh")
        x = _x(5)
        mu, logvar = fv.encode(x)
        enc = py.encoder(x)
        torch.testing.assert_close(mu, enc.embedding, rtol=0, atol=0)       # the same layers, the same weights
        torch.testing.assert_close(logvar, enc.log_covariance, rtol=0, atol=0)
        logits, _ = fv.decode(mu)
        torch.testing.assert_close(torch.sigmoid(logits), py.decoder(mu).reconstruction, rtol=0, atol=0)
        assert fv.likelihood == "bernoulli"
    step = pp.pythae_step("wae-mmd", "cpu", latent_dim=3, hidden_dims=(16,))
    assert torch.isfinite(step(_x()))


# ---- the epoch rows and the logistic memory workload --------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_fused_share_counts_the_fastvae_ops_only():
    from fastvae.bench.epoch import fused_share
    w = torch.randn(256, 256)
    mu, logvar = torch.randn(64, 256, requires_grad=True), torch.randn(64, 256, requires_grad=True)

    def plain(x):
        return (x @ w @ w).sum()

    def fused(x):
        (fastvae.kl_normal(mu, logvar).sum() + plain(x)).backward()

    x = torch.randn(64, 256)
    assert fused_share(plain, [(x,)]) == 0
    share = fused_share(fused, [(x,)])
    assert 0 < share < 1


def test_epoch_table_has_a_cell_for_every_provider():
    from fastvae.bench.epoch import epoch_table
    base = dict(op="vae_train_epoch", mode="full", dtype="float32", device="cpu")
    rows = [dict(base, provider="fastvae", size=1024, p50_ms=20.0, epoch_s=20e-3 * 60000 / 1024, fused_share=0.05),
            dict(base, provider="eager", size=1024, p50_ms=30.0, epoch_s=30e-3 * 60000 / 1024),
            dict(base, provider="pythae", size=1024, status="unavailable: pythae is not installed or not importable "
                 "(ImportError: x | y); pip install pythae")]
    md = epoch_table(rows)
    assert "| 1024 | float32 | 1.17 | 1.76 | unavailable: pythae is not installed or not importable | 1.50x |  " \
           "| 5.0% |" in md, md
    assert "bf16 autocast" not in md   # no -bf16 rows: no line for them
    widths = {ln.count("|") for ln in md.splitlines() if ln.startswith("|")}
    assert len(widths) == 1


def test_the_logistic_workload_batch_is_the_largest_that_fits(monkeypatch):
    from fastvae.bench import large_batch, run
    per_image = 4 * 2**20
    monkeypatch.setattr(large_batch, "_peak", lambda w, b, device, p: b * per_image)
    monkeypatch.setattr(run, "_free_memory_bytes", lambda device: 9 * 2**30)   # 2304 images' worth
    batch, note = large_batch.pick_batch(log=lambda m: None)
    assert batch == 2048 and "batch 65536 would need ~256 GiB" in note and "measured at batch 2048" in note
    monkeypatch.setattr(run, "_free_memory_bytes", lambda device: 300 * 2**30)
    assert large_batch.pick_batch(log=lambda m: None) == (65536, "")


CHATTER_SAMPLES = [
    "USDT:2026-12-08 01:05:54 31858:31858 SyncActivityProfilerHandler.cpp:52] profiler_start",
    "STAGE:2026-12-08 01:07:20 32344:32344 SyncActivityProfilerHandler.cpp:51] Completed Stage: Warm Up",
    "[W1208 01:05:54.453239480 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the profiling "
    "started, profiler results will not include the deallocation event",
]


def test_profiler_chatter_is_dropped_and_everything_else_kept():
    """torch's profiler writes lines to fd 2 at each start and stop (1000+ lines in a --quick run before): the suite
    drops exactly those and passes on what else the measured region writes."""
    from fastvae.bench.measure import _CHATTER
    assert all(_CHATTER.match(s) for s in CHATTER_SAMPLES)
    assert not _CHATTER.match("UserWarning: USDT:2026-12-08 something") and not _CHATTER.match("RuntimeError: x")
    script = ("import sys, warnings, torch\n"
              "from fastvae.bench.measure import _cpu_peak_via_profiler\n"
              "def region():\n"
              "    torch.ones(1000).sum()\n"
              "    print('KEEP this line', file=sys.stderr)\n"
              "    warnings.warn('KEEP this warning')\n"
              "assert _cpu_peak_via_profiler(region) >= 0\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "KEEP this line" in r.stderr and "KEEP this warning" in r.stderr
    assert not [line for line in r.stderr.splitlines() if _CHATTER.match(line)], r.stderr
