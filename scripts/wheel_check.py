"""Checks of the built wheel (`make wheel-check` runs both through scripts/wheel_smoke.sh):

  python scripts/wheel_check.py contents WHEEL
      what the wheel holds: the fastvae package (every module of the checkout's, nothing else), one compiled _C,
      its dist-info; no tests (the CUDA execution model tests/cudasim included), csrc, build folders or C/CUDA
      sources; METADATA names the distribution DIST_NAME at fastvae.__version__, requires torch and numpy only; the
      `fastvae` console script.
  VENV/bin/python -I scripts/wheel_check.py smoke CHECKOUT
      run from a temporary folder in a virtualenv that holds the installed wheel, torch and numpy: fastvae is
      imported from that install (not from CHECKOUT), ops agree with fastvae.reference forward and backward, and
      `fastvae info` (the installed console script) runs.

It reads the expected name and version from the checkout's sources (fastvae/__init__.py, without importing it).
"""
import ast
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN_PARTS = {"tests", "csrc", "cudasim", "build", "__pycache__", "bench-out", "out"}
FORBIDDEN_SUFFIXES = (".cu", ".cuh", ".cpp", ".cc", ".h", ".o", ".ninja", ".pyc")
RUNTIME_REQUIRES = {"torch", "numpy"}


def package_constants(checkout=ROOT):
    """fastvae.__version__ and fastvae.DIST_NAME, read from the source (importing would need the extension)."""
    with open(os.path.join(checkout, "fastvae", "__init__.py")) as f:
        tree = ast.parse(f.read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("__version__", "DIST_NAME"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["DIST_NAME"], found["__version__"]


def package_modules(checkout=ROOT):
    """Every .py file of the checkout's fastvae package, as wheel paths (fastvae/...)."""
    out = set()
    for d, dirs, files in os.walk(os.path.join(checkout, "fastvae")):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        out |= {os.path.relpath(os.path.join(d, f), checkout).replace(os.sep, "/") for f in files if f.endswith(".py")}
    return out


def _metadata_fields(text):
    """METADATA's header (up to the first blank line) -> {field: [values]}."""
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line and not line.startswith((" ", "\t")):
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), []).append(v.strip())
    return fields


def check_wheel(path, dist_name, version, modules):
    """The list of what is wrong with the wheel at `path` (empty: nothing)."""
    problems = []
    norm = re.sub(r"[-_.]+", "_", dist_name).lower()
    info = f"{norm}-{version}.dist-info/"
    if not os.path.basename(path).startswith(f"{norm}-{version}-"):
        problems.append(f"file name {os.path.basename(path)} does not start with {norm}-{version}-")
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        for n in names:
            parts = n.split("/")
            if not (n.startswith("fastvae/") or n.startswith(info)):
                problems.append(f"{n}: outside the fastvae package and {info}")
            if FORBIDDEN_PARTS & set(parts[:-1]) or n.endswith(FORBIDDEN_SUFFIXES):
                problems.append(f"{n}: tests, sources or build output do not belong in the wheel")
        ext = [n for n in names if re.fullmatch(r"fastvae/_C(\..*)?\.(so|pyd)", n)]
        if len(ext) != 1:
            problems.append(f"expected one compiled fastvae/_C, found {ext}")
        py = {n for n in names if n.endswith(".py")}
        if py - modules:
            problems.append(f"modules that the checkout does not have: {sorted(py - modules)}")
        if modules - py:
            problems.append(f"modules of the checkout missing: {sorted(modules - py)}")
        missing = [info + f for f in ("METADATA", "entry_points.txt") if info + f not in names]
        if missing:
            return problems + [f"no {m}" for m in missing]
        meta = _metadata_fields(z.read(info + "METADATA").decode())
        entry = z.read(info + "entry_points.txt").decode()
    if meta.get("Name") != [dist_name]:
        problems.append(f"METADATA Name is {meta.get('Name')}, expected {dist_name}")
    if meta.get("Version") != [version]:
        problems.append(f"METADATA Version is {meta.get('Version')}, expected {version}")
    required = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in meta.get("Requires-Dist", [])
                if "extra ==" not in r}
    if required != RUNTIME_REQUIRES:
        problems.append(f"runtime requirements {sorted(required)}, expected {sorted(RUNTIME_REQUIRES)}")
    cuda = [r for r in meta.get("Requires-Dist", []) if "nvidia" in r.lower() or "cuda" in r.lower()]
    if cuda:
        problems.append(f"requires CUDA packages: {cuda}")
    if not re.search(r"^\[console_scripts\]\s*\nfastvae\s*=\s*fastvae\.cli:main\s*$", entry, re.M):
        problems.append(f"no console script fastvae = fastvae.cli:main in entry_points.txt:\n{entry}")
    return problems


def contents(wheel):
    dist_name, version = package_constants()
    problems = check_wheel(wheel, dist_name, version, package_modules())
    if problems:
        sys.exit(f"wheel check: {wheel}\n  " + "\n  ".join(problems))
    print(f"wheel check: {os.path.basename(wheel)}: {dist_name} {version}, contents and metadata as expected")


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def smoke(checkout):
    from importlib import metadata
    import torch
    import fastvae
    from fastvae import reference

    dist_name, version = package_constants(checkout)
    where = fastvae.__file__
    src = os.path.join(checkout, "fastvae")
    assert _inside(where, sys.prefix) and not _inside(where, src), \
        f"fastvae was imported from {where}: expected the install in {sys.prefix}, not the checkout's {src}"
    assert fastvae.DIST_NAME == dist_name and fastvae.__version__ == version, (fastvae.DIST_NAME, fastvae.__version__)
    assert metadata.version(dist_name) == version, metadata.version(dist_name)

    # two ops, forward and backward in float64 against the plain-PyTorch references (same math, another order of
    # operations: agreement to ~1e-12 relative)
    g = torch.Generator().manual_seed(0)
    mu, lv, x = (torch.randn(16, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    for name, args in (("kl_normal", (mu, lv)), ("gaussian_nll", (x, mu, lv))):
        got = getattr(fastvae, name)(*args, reduction="sum")
        want = getattr(reference, name)(*args, reduction="sum")
        g_got = torch.autograd.grad(got, args)
        g_want = torch.autograd.grad(want, args)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    exe = os.path.join(os.path.dirname(sys.executable), "fastvae")
    r = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"fastvae info exited {r.returncode}:\n{r.stdout}{r.stderr}"
    assert f"distribution: {dist_name} {version}" in r.stdout and "kernels: CPU (" in r.stdout, r.stdout
    print(r.stdout, end="")
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:   # the runtime requirements only: train refuses at once
        r = subprocess.run([exe, "train", "--out", "run"], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and f"pip install '{dist_name}[train]'" in r.stderr, (r.returncode, r.stderr)
        print(f"fastvae train without the train extra: {r.stderr.strip()}")
    print(f"wheel smoke: {dist_name} {version} from {os.path.dirname(where)}: ops and `fastvae info` work")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("contents", "smoke"):
        sys.exit(__doc__)
    {"contents": contents, "smoke": smoke}[sys.argv[1]](sys.argv[2])
