"""DistributedDataParallel on 2 CPU processes (gloo), launched as torchrun launches them."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastvae

pytestmark = pytest.mark.slow  # two processes each: torch's start-up and gloo's rendezvous

WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from fastvae import train as tr

    def os_threads():   # gloo's worker threads are C++ threads, which the threading module does not list
        return len(os.listdir("/proc/self/task"))

    out, model, group = sys.argv[1], sys.argv[2], sys.argv[3]
    before = os_threads()
    if group == "caller":
        import torch.distributed.nn  # before the group exists, so that it does not pin it (fastvae.train.distributed)
        dist.init_process_group("gloo")       # set up by the caller: train() uses it and leaves it open
    res = tr.train(dict(model=model, hidden_dims=[32], latent_dim=2, batch_size=128, epochs=2, eval_k=0,
                        progress=False, out=out, threads=1))
    rank = int(os.environ["RANK"])
    torch.save(res.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    if group == "train":
        # train() set its group up and destroyed it: nothing of it is left running at interpreter exit (a gloo
        # worker thread still alive then can free a collective's Python objects during shutdown: SIGABRT)
        assert not dist.is_initialized()
        assert os_threads() == before, f"{os_threads() - before} thread(s) of the destroyed group still run"
        sys.exit(0)

    # the differentiable all-gather: every rank differentiates the same function of the global batch; the
    # gradient each rank gets back for its own rows is the sum over ranks (DDP's mean then gives the true one)
    x = torch.full((3, 2), float(rank + 1), requires_grad=True)
    g = tr.gather_with_grad(x)
    assert g.shape == (6, 2) and torch.equal(g[3:], torch.full((3, 2), 2.0))
    (g ** 2).sum().backward()
    assert torch.allclose(x.grad, 2 * 2 * x.detach()), x.grad
    dist.barrier()  # no rank tears its gloo pairs down while the other still reads from them
    dist.destroy_process_group()
    assert os_threads() == before, f"{os_threads() - before} thread(s) of the destroyed group still run"
""")


def _torchrun(args, tmp_path, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastvae.__file__)), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


# "caller": the worker sets the group up (and tears it down); "train": train() does, as under `torchrun -m fastvae`
@pytest.mark.parametrize("model,group", [("vae", "caller"), ("wae-mmd", "train")])
def test_two_process_gloo_run_completes_and_ranks_agree(tmp_path, model, group):
    if model == "wae-mmd" and not hasattr(fastvae, "mmd"):
        pytest.skip("fastvae.mmd not in this build yet")
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "out"
    _torchrun(["worker.py", str(out), model, group], tmp_path)
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 2 and metrics[-1]["train_loss"] < metrics[0]["train_loss"] + 5


def test_torchrun_dash_m_fastvae_train(tmp_path):
    if not hasattr(fastvae, "sliced_wasserstein"):
        pytest.skip("fastvae.sliced_wasserstein not in this build yet")
    out = tmp_path / "swae"
    _torchrun(["-m", "fastvae", "train", "--model", "swae", "--epochs", "1", "--hidden-dims", "32",
               "--latent-dim", "2", "--eval-k", "0", "--no-progress", "--out", str(out)], tmp_path)
    assert json.loads((out / "summary.json").read_text())["ranks_agree"] is True
