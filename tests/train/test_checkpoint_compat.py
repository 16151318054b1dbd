"""Checkpoints written before fastvae.models and fastvae.train became packages still load, and the same seeds give
the same numbers: tests/fixtures holds a checkpoint of a tiny model of each VAE kind written by main at 92f29c8, a
real run's checkpoint, and the numbers that code computed from them (tests/fixtures/make_main_fixtures.py)."""
import importlib.util
import json
import os
import shutil

import pytest
import torch

from fastvae import train as tr

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
_spec = importlib.util.spec_from_file_location("make_main_fixtures", os.path.join(FIXTURES, "make_main_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
with open(os.path.join(FIXTURES, "main_outputs.json")) as _f:
    RECORD = json.load(_f)

# float32 throughout: the recorded numbers are sums of at most 64 x 7 float32 terms through the same kernels and
# matmuls. On the machine that recorded them they are bitwise equal; elsewhere torch's matmul or the kernels' ISA
# path may round a term differently in its last bit, which moves a sum by far less than 1e-5 relative (about
# 100 ulp). A change in the computation itself (another noise draw, formula or layer order) moves them by > 1e-3.
RTOL, ATOL = 1e-5, 1e-5
# the VAE arguments added since (tr.LATER_VAE_ARGS), at their defaults: main's models were built with these
LATER = dict(kernel_scales=[1.0], activation="silu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same(got, want, where):
    assert got.keys() == want.keys(), where
    for key, w in want.items():
        g = got[key]
        if isinstance(w, dict):
            _assert_same(g, w, f"{where}.{key}")
        elif w is None:
            assert g is None, f"{where}.{key}"
        else:
            torch.testing.assert_close(torch.tensor(g, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                                       rtol=RTOL, atol=ATOL, msg=lambda m: f"{where}.{key}: {m}")


@pytest.mark.parametrize("kind", list(fx.KINDS))
def test_a_checkpoint_written_by_main_loads_and_computes_the_same(kind):
    want = RECORD["kinds"][kind]
    model, ckpt = tr.model_from_checkpoint(os.path.join(FIXTURES, f"main_{kind}.pt"))
    assert model.config == {**LATER, **want["config"]}
    assert list(model.state_dict()) == list(ckpt["model"])             # the same names, in the same order
    _assert_same(fx.outputs(model), want["outputs"], kind)


@pytest.mark.parametrize("kind", list(fx.KINDS))
def test_the_same_seed_builds_the_same_model(kind):
    want = RECORD["kinds"][kind]
    model = fx.make_model(want["kwargs"])
    assert model.config == {**LATER, **want["config"]}
    stored = tr.load_checkpoint(os.path.join(FIXTURES, f"main_{kind}.pt"))["model"]
    assert list(model.state_dict()) == list(stored)
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored[name]), name                   # torch's CPU generator: exact everywhere
    assert [n for n, _ in model.named_parameters()] == list(want["outputs"]["grad_norms"])
    _assert_same(fx.outputs(model), want["outputs"], kind)


def test_a_run_written_by_main_resumes_to_the_same_numbers(tmp_path):
    """main's epoch-1 checkpoint of a real run (Adam with two parameter groups, every random stream) resumes to the
    epoch-2 metrics of main's run straight through."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(FIXTURES, "main_run_epoch1.pt"), out / tr.CHECKPOINT_NAME)
    model, _ = tr.model_from_checkpoint(out)
    assert model.variance == "learned"
    res = tr.train(dict(RECORD["run"]["config"], epochs=2, out=str(out), resume=True))
    got = [{k: v for k, v in m.items() if not k.endswith("_s")} for m in res.metrics]
    _assert_same(dict(enumerate(got)), dict(enumerate(RECORD["run"]["metrics"])), "run")
