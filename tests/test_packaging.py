"""The distribution's name and metadata, and the wheel check of scripts/wheel_check.py (which `make wheel-check`
runs on the real wheel) on small made-up wheels: it accepts a good one and names what is wrong with bad ones."""
import importlib.util
import os
import tomllib
import zipfile

import pytest

import fastvae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("wheel_check", os.path.join(ROOT, "scripts", "wheel_check.py"))
wc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wc)

NAME, VERSION = "torch-fastvae", fastvae.__version__
INFO = f"torch_fastvae-{VERSION}.dist-info/"
MODULES = {"fastvae/__init__.py", "fastvae/cli.py", "fastvae/models/__init__.py"}
META = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\nRequires-Dist: torch>=2.4\nRequires-Dist: numpy\n" \
       "Requires-Dist: matplotlib; extra == \"train\"\n\nlong description: Name: other\n"
ENTRY = "[console_scripts]\nfastvae = fastvae.cli:main\n"


def test_names_agree():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["name"] == fastvae.DIST_NAME == NAME
    assert wc.package_constants() == (NAME, VERSION)
    assert {d.split(">")[0].split("=")[0] for d in project["dependencies"]} == wc.RUNTIME_REQUIRES
    assert project["scripts"] == {"fastvae": "fastvae.cli:main"}
    assert "fastvae/cli.py" in wc.package_modules() and "fastvae/models/vae.py" in wc.package_modules()


def _wheel(tmp_path, files=(), meta=META, entry=ENTRY, drop=(), name=f"torch_fastvae-{VERSION}-cp311-linux.whl"):
    content = {m: "" for m in MODULES} | {"fastvae/_C.cpython-311-x86_64-linux-gnu.so": "elf",
                                          INFO + "METADATA": meta, INFO + "entry_points.txt": entry,
                                          INFO + "RECORD": ""} | dict(files)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for n, text in content.items():
            if n not in drop:
                z.writestr(n, text)
    return wc.check_wheel(str(path), NAME, VERSION, MODULES)


def test_a_good_wheel_passes(tmp_path):
    assert _wheel(tmp_path) == []


@pytest.mark.parametrize("files, says", [
    ({"tests/test_x.py": ""}, "tests/test_x.py: outside"),
    ({"fastvae/tests/conftest.py": ""}, "fastvae/tests/conftest.py: tests, sources or build output"),
    ({"csrc/cudasim/sim.h": ""}, "csrc/cudasim/sim.h"),
    ({"fastvae/csrc/cuda/x.cu": ""}, "tests, sources or build output"),
    ({"build/obj/x.o": ""}, "build/obj/x.o: outside"),
    ({"fastvae/old.py": ""}, "modules that the checkout does not have: ['fastvae/old.py']"),
    ({"fastvae/_C.abi3.so": "elf"}, "expected one compiled fastvae/_C"),
])
def test_bad_contents_are_named(tmp_path, files, says):
    problems = _wheel(tmp_path, files)
    assert any(says in p for p in problems), problems


@pytest.mark.parametrize("kw, says", [
    (dict(meta=META.replace(f"Name: {NAME}", "Name: fastvae")), "METADATA Name is ['fastvae'], expected torch-fastvae"),
    (dict(meta=META.replace(f"Version: {VERSION}", "Version: 9.9")), "METADATA Version is ['9.9']"),
    (dict(meta=META.replace("numpy\n", "numpy\nRequires-Dist: tqdm\n")), "runtime requirements"),
    (dict(meta=META.replace("numpy\n", "numpy\nRequires-Dist: nvidia-cublas-cu12\n")), "requires CUDA packages"),
    (dict(entry="[console_scripts]\nvae = fastvae.cli:main\n"), "no console script fastvae"),
    (dict(drop=("fastvae/cli.py",)), "modules of the checkout missing: ['fastvae/cli.py']"),
    (dict(drop=("fastvae/_C.cpython-311-x86_64-linux-gnu.so",)), "expected one compiled fastvae/_C, found []"),
    (dict(drop=(INFO + "METADATA",)), "no " + INFO + "METADATA"),
    (dict(name=f"fastvae-{VERSION}-cp311-linux.whl"), "does not start with torch_fastvae-"),
])
def test_bad_metadata_is_named(tmp_path, kw, says):
    problems = _wheel(tmp_path, **kw)
    assert any(says in p for p in problems), problems


def test_train_refuses_at_once_without_its_extra(monkeypatch, capsys):
    from fastvae import cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit, match=r"fastvae train: needs matplotlib, not installed; "
                                         r"pip install 'torch-fastvae\[train\]'"):
        cli.main(["train", "--epochs", "1", "--out", "never-written"])
    with pytest.raises(SystemExit, match=r"fastvae sample: needs matplotlib"):
        cli.main(["sample", "never-read.pt"])


def test_info_names_the_distribution(capsys):
    from fastvae import cli
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"distribution: {NAME} " in out, out
