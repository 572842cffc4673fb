"""The package layering: every import inside massact points down, and no two packages import each other.

Imports are read from the source with `ast` (module level, inside functions and under TYPE_CHECKING alike: an
import deferred to call time is still an arrow), so nothing is imported to check them. A package (or a
top-level module) may import only packages of a lower layer; one that no layer names fails, so a new package
gets its place here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "massact"

# Bottom to top. Within a layer nothing imports anything else of the same layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"errors"}),
    ("primitives", {"validate", "detect", "format", "defaults", "progress", "fakequant", "rotations"}),
    ("files", {"outputs"}),
    ("models", {"models"}),
    ("inputs", {"data", "tokens"}),
    ("capture", {"capture"}),
    ("measures and views", {"precision", "perplexity", "residual", "report", "html"}),
    ("first analyses", {"scan", "tasks", "attention"}),
    ("analyses on those", {"interventions", "trace", "vision", "train"}),
    ("corpus statistics", {"corpus"}),
    ("quantization and its files", {"quant", "export"}),
    ("built on quant", {"rewrite", "stream"}),
    ("across analyses and models", {"atlas"}),
    ("commands", {"commands"}),
    ("command line", {"cli"}),
    ("entry points", {"__main__", "__init__"}),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def _package(path: Path, root: Path = SRC) -> str:
    """`capture/hooks.py` -> `capture`; `perplexity.py` -> `perplexity`; `__init__.py` -> `__init__`."""
    return path.relative_to(root).with_suffix("").parts[0]


def _imported(path: Path, root: Path) -> list[tuple[str, int]]:
    """(dotted massact module or package, line) for every import in the file, relative ones resolved."""
    found = []
    package = ["massact", *path.relative_to(root).parent.parts]  # what a relative import starts from
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if module == "massact":  # `from massact import scan`: the names are the packages
                found += [(f"massact.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((module, node.lineno))
    return [(name, line) for name, line in found if name.startswith("massact.")]


def import_graph(root: Path = SRC) -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the `file:line` places that import it (imports within a package left out)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        source = _package(path, root)
        for name, line in _imported(path, root):
            target = name.split(".")[1]
            if target != source:
                where = f"{path.relative_to(root)}:{line}"
                graph.setdefault(source, {}).setdefault(target, []).append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The package-level loops (each strongly connected set of two or more packages), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_every_package_has_a_layer():
    packages = {_package(path) for path in SRC.rglob("*.py")}
    assert packages - set(RANK) == set(), "give the new package a layer in LAYERS"
    assert set(RANK) - packages == set(), "LAYERS names a package that is gone"


def test_every_import_points_down():
    upward = [
        f"{source} ({LAYERS[RANK[source]][0]}) imports {target} ({LAYERS[RANK[target]][0]}) at {', '.join(places)}"
        for source, targets in import_graph().items()
        for target, places in targets.items()
        if RANK[target] >= RANK[source]
    ]
    assert upward == []


def test_no_package_level_loop():
    assert cycles(import_graph()) == []


def test_the_checks_see_an_arrow_back_up(tmp_path):
    """The graph resolves every form of import, and a loop and an upward arrow are caught."""
    for name, text in {
        "quant/advice.py": "def f():\n    from massact.rewrite.suggest import command\n",
        "quant/run.py": "from ..residual import support\nfrom . import config\n",
        "rewrite/run.py": "import massact.quant.simulate\nfrom massact import rotations\n",
        "residual/__init__.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert {s: sorted(t) for s, t in graph.items()} == {
        "quant": ["residual", "rewrite"],
        "rewrite": ["quant", "rotations"],
    }
    assert graph["quant"]["rewrite"] == ["quant/advice.py:2"]
    assert cycles(graph) == [["quant", "rewrite"]]
    assert RANK["rewrite"] > RANK["quant"]  # so quant -> rewrite is the arrow back up


@pytest.mark.parametrize(
    ("low", "high"),
    [("residual", "quant"), ("residual", "rewrite"), ("rotations", "quant"), ("fakequant", "capture")],
)
def test_shared_mechanisms_sit_below_their_users(low, high):
    assert RANK[low] < RANK[high]
