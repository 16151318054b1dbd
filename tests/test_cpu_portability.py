"""The extension loads and runs on a CPU with fewer instruction sets than the one it was built on.

Each kernel file of csrc/cpu is compiled once per instruction set (avx512, avx2, baseline) and the one in use is
picked at run time (csrc/cpu/isa.h). Code of an avx512 or avx2 object that runs when the library is loaded (a dynamic
initialiser of a namespace-scope object) runs before any pick, on every CPU: on one without the instruction set the
import stops with SIGILL. That happened (the kernel tables were built by a function call at load time) and no test
saw it, because every machine here has AVX-512. Two checks:
- the per-instruction-set objects of the build have no initialisers at all (.init_array / .ctors sections);
- under valgrind, whose emulated CPU has no AVX-512, `import fastvae` and one op of every family (forward and
  backward) run, with the avx2 kernels in use."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ISA_OBJECTS = ROOT / "build" / "obj" / "isa"


def _isa_objects():
    return sorted(p for isa in ("avx2", "avx512") for p in (ISA_OBJECTS / isa).rglob("*.o"))


@pytest.mark.skipif(not _isa_objects() or shutil.which("readelf") is None,
                    reason="needs the in-tree build's objects (build/obj/isa) and readelf")
def test_instruction_set_objects_run_no_code_at_load():
    bad = {}
    for obj in _isa_objects():
        sections = subprocess.run(["readelf", "-SW", str(obj)], capture_output=True, text=True, check=True).stdout
        found = [s for s in (".init_array", ".ctors") if s in sections]
        if found:
            bad[str(obj.relative_to(ROOT))] = found
    assert not bad, (f"objects compiled for one instruction set have load-time initialisers {bad}: they run on "
                     f"every CPU, before the run-time dispatch (make the table constexpr, see csrc/cpu/isa.h)")


SCRIPT = r"""
import torch, fastvae
import fastvae.distributions as fvd
torch.set_num_threads(1)
print("ISA", fastvae._C.cpu_isa(), flush=True)
torch.manual_seed(0)
mu = torch.randn(3, 8, requires_grad=True)
lv = torch.randn(3, 8, requires_grad=True)
z, kl = fastvae.reparameterize_kl(mu, lv)                               # gaussian
logits = torch.randn(3, 16, requires_grad=True)
x = (torch.rand(3, 16) < 0.5).float()
rec = fvd.Bernoulli(logits=logits).log_prob(x).sum()                     # dropin
img = torch.randint(0, 256, (2, 3, 4, 4)).float() * (2 / 255) - 1
m = torch.randn(2, 3, 4, 4, requires_grad=True)
s = torch.randn(2, 3, 4, 4, requires_grad=True)
nll = fastvae.discretized_logistic_nll(img, m, s)                        # logistic
d = fastvae.mmd(torch.randn(16, 4, requires_grad=True), torch.randn(16, 4))  # distances
(z.sum() + kl.sum() - rec + nll + d).backward()
assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (mu, lv, logits, m, s))
print("OK", flush=True)
"""


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (its emulated CPU lacks AVX-512)")
def test_loads_and_runs_without_avx512():
    r = subprocess.run(["valgrind", "--tool=none", "--error-exitcode=3", sys.executable, "-c", SCRIPT],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    isa = next((line.split()[1] for line in r.stdout.splitlines() if line.startswith("ISA ")), None)
    if isa == "avx512":
        pytest.skip("this valgrind's emulated CPU reports AVX-512: nothing to check")
    assert r.returncode == 0 and "OK" in r.stdout, (
        f"under valgrind (no AVX-512) the import or an op failed, exit {r.returncode}:\n{r.stdout}\n"
        f"{r.stderr[-3000:]}")
    assert isa in ("avx2", "baseline")
