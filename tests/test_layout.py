"""The package's layout holds: imports flow one way between its folders, the product never imports the
benchmark, modules stay readable, and the public API is what ``__all__`` says."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "epochgraph"
MAX_LINES = 500


def _unit(module: str) -> str:
    """The layout unit of a module: its folder under the package (``graph``), or the top-level module."""
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return "hydra_plugins"
    return ".".join(parts[:2])


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """Every epochgraph module ``path`` imports, at the top or inside a function (absolute or relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path, src).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.add(node.args[0].value)
    return {m for m in out if m.split(".")[0] == "epochgraph"}


def _known(module: str, modules: set[str]) -> str | None:
    """The longest prefix of ``module`` that is a module of the package (``from x import name``)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def unit_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{unit: the units it imports}`` over every module under ``src``."""
    files = [p for p in src.rglob("*.py") if "egg-info" not in str(p)]
    modules = {_module_name(p, src) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        me = _unit(_module_name(path, src))
        for imported in _imports(path, src):
            target = _known(imported, modules)
            if target is None or target == "epochgraph":
                continue  # the package root re-exports lazily; it is nobody's dependency
            if _unit(target) != me:
                graph.setdefault(me, set()).add(_unit(target))
        graph.setdefault(me, set())
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_folder_imports_one_that_imports_it_back():
    assert circles(unit_graph()) == []


def test_the_checker_sees_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "epochgraph"
    for folder, body in (("a", "from epochgraph.b.y import g\n"),
                         ("b", "def g():\n    from epochgraph.c.z import h\n"),
                         ("c", "from ..a import x\n")):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
        (pkg / folder / {"a": "x.py", "b": "y.py", "c": "z.py"}[folder]).write_text(body)
    (pkg / "__init__.py").write_text("")
    assert circles(unit_graph(tmp_path)) == [["epochgraph.a", "epochgraph.b", "epochgraph.c"]]


def test_the_product_never_imports_the_benchmark():
    bench = "epochgraph.bench"
    offenders = {u for u, deps in unit_graph().items() if u != bench and bench in deps}
    assert offenders == set()


def test_no_module_is_longer_than_about_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_public_api_lists_what_users_call_and_every_name_resolves():
    import epochgraph

    wanted = {"ForecastPruner", "SignaturePruner", "TopKPruner", "FinalAccuracyForecaster", "graph_signature",
              "GraphStage", "read_table"}
    assert wanted <= set(epochgraph.__all__)
    for name in epochgraph.__all__:
        assert getattr(epochgraph, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        epochgraph.no_such_name  # noqa: B018


def test_every_folder_declares_what_it_exports():
    for init in PACKAGE.glob("*/__init__.py"):
        module = __import__(_module_name(init), fromlist=["__all__"])
        assert isinstance(module.__all__, list), init
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{init}: {name}"


def test_importing_the_package_stays_light():
    """``import epochgraph`` loads neither torch nor graph-tool: the API is imported on first use."""
    code = "import sys, epochgraph; print(sorted(m for m in ('torch', 'graph_tool', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
