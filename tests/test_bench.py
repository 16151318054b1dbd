"""Smoke test of the benchmark suite: `--quick` runs and writes well-formed CSV, markdown and PNGs. No timing
assertions: the numbers depend on the machine and its load."""
import csv
import math

import pytest
import torch

import fastvae
from fastvae import bench
from fastvae.bench import report
from fastvae.bench.ops import Op, Unavailable
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


@pytest.mark.slow
def test_quick_writes_markdown_tables(quick_run):
    out, stdout = quick_run
    md = (out / "results.md").read_text()
    assert md.strip() == stdout.strip()
    assert "## vae_head" in md and "### Target: fused VAE head speed-up" in md
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
