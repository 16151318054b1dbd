"""The front door stays true: the README's drop-in example runs, its length stays a front door's, every relative
link of the README and docs/ points at a file that exists, and the results index lists every committed run."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
        ROOT / "bench" / "results" / "README.md"]


def test_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines, expected at most 200: move details to docs/"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md: expected a ```python block (the drop-in example), found none"
    import fastvae
    try:
        exec(compile(blocks[0], "README.md", "exec"), {})
        assert not fastvae.is_patched(), "the README example left torch patched after its `with` block"
    finally:
        fastvae.unpatch()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to missing files: {missing}"


def test_results_index_lists_every_run():
    results = ROOT / "bench" / "results"
    index = (results / "README.md").read_text()
    listed = set(re.findall(r"^\| \[([^\]]+)\]", index, flags=re.M))
    present = {p.name for p in results.iterdir() if p.name != "README.md"}
    assert present <= listed, f"bench/results/README.md does not list {sorted(present - listed)}"
    assert listed <= present, f"bench/results/README.md lists missing runs {sorted(listed - present)}"
