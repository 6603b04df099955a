"""The documentation holds: every public name has a reference page, every Python block in the docs and the README
runs (or is an example file the tests run), the README stays short with links that resolve, and the tables it
copies from the benchmark's results equal those results. The site itself is built by ``make docs`` (``--strict``)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import epochgraph

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
README_MAX_LINES = 250

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<rest>[^"]*))?"\s*$')
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
RESULTS_TABLE = re.compile(r"^<!-- table from (?P<path>\S+) -->\n(?P<table>(?:\|.*\|\n)+)", re.M)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(lang: str) -> list[tuple[str, str]]:
    """``(where, body)`` of every fenced block of ``lang`` in the docs' pages and the README."""
    out = []
    for path in [*PAGES, README]:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group("lang") == lang:
                line = text[: m.start()].count("\n") + 1
                body = "\n".join(s[len(m.group("indent")):] for s in m.group("body").splitlines())
                out.append((f"{_rel(path)}:{line}", body))
    return out


def _python_blocks() -> dict[str, list[str]]:
    """Each distinct Python block, with where it appears (the README and a guide may show the same one)."""
    seen: dict[str, list[str]] = {}
    for where, body in _blocks("python"):
        seen.setdefault(body, []).append(where)
    return seen


PYTHON_BLOCKS = _python_blocks()


def _is_include(body: str) -> bool:
    lines = [s for s in body.splitlines() if s.strip()]
    return bool(lines) and all(SNIPPET.match(s) for s in lines)


def test_every_public_name_has_a_reference_page():
    documented = set()
    for path in PAGES:
        documented |= set(re.findall(r"^::: epochgraph\.(\w+)\s*$", path.read_text(), re.M))
    public = set(epochgraph.__all__)
    assert public <= documented, f"no '::: epochgraph.<name>' in docs/ for {sorted(public - documented)}"
    assert documented <= public, f"documented as epochgraph.<name> but not in __all__: {sorted(documented - public)}"


def test_the_docs_have_python_blocks_to_check():
    assert len(PYTHON_BLOCKS) >= 3 and any(_is_include(b) for b in PYTHON_BLOCKS)


@pytest.mark.parametrize("body", [b for b in PYTHON_BLOCKS if _is_include(b)],
                         ids=lambda b: b.strip().split('"')[1])
def test_an_included_python_block_is_an_example_the_tests_run(body):
    """A block that only includes files includes scripts under examples/ that tests/test_examples.py runs."""
    ran = (ROOT / "tests" / "test_examples.py").read_text()
    for line in filter(str.strip, body.splitlines()):
        m = SNIPPET.match(line)
        path = ROOT / m.group("path")
        assert path.parent == ROOT / "examples" and path.is_file(), f"{m.group('path')}: not a script in examples/"
        assert f'"{path.name}"' in ran, f"{path.name} is not run by tests/test_examples.py"
        section = m.group("rest")
        if section and not section[0].isdigit():
            text = path.read_text()
            assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text, (path.name, section)


@pytest.mark.parametrize("body", [b for b in PYTHON_BLOCKS if not _is_include(b)],
                         ids=lambda b: PYTHON_BLOCKS[b][0])
def test_a_python_block_runs(body, tmp_path):
    """Every other Python block is a whole program that runs as it is shown, in an empty folder, in seconds."""
    script = tmp_path / "block.py"
    script.write_text(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{PYTHON_BLOCKS[body]}:\n{out.stderr[-3000:]}"


def test_every_include_in_the_docs_exists():
    for path in PAGES:
        for line in path.read_text().splitlines():
            m = SNIPPET.match(line)
            if m:
                assert (ROOT / m.group("path")).is_file(), f"{_rel(path)}: {line.strip()}"


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make setup" in text and "make test" in text  # the set-up and test commands CI runs
    targets = [m.group("target") for m in LINK.finditer(text)]
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = ROOT / target.split("#")[0]
        assert path.exists(), f"README links {target}, which does not exist"


def test_the_readme_copies_results_tables_exactly():
    """A table the README shows from a results file (marked ``<!-- table from PATH -->``) is that file's table."""
    text = README.read_text()
    tables = list(RESULTS_TABLE.finditer(text))
    assert tables, "the README shows no results table"
    for m in tables:
        source = (ROOT / m.group("path")).read_text()
        found = re.findall(r"^(?:\|.*\|\n)+", source, re.M)
        assert m.group("table") in found, f"the README's table differs from {m.group('path')}: rerun the copy"
