"""The import graph of ebmtool: no cycle, and no arrow from a lower layer to a higher one.

The layers, lowest first, are the ones docs/design.md ("Layers") names; a module may import its own layer (no
cycle) or any lower one. Every import counts, also one inside a function. The package root ``ebmtool`` is the
package's face and the top layer: it may import any module (it re-exports the Python API of ``ebmtool.stages.api``,
lazily), and no module of the package imports it (``ebmtool._version``, at the ground floor, holds the version).
``import ebmtool`` stays light all the same: it loads ``ebmtool._version`` and nothing else, not torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ebmtool"

LAYERS = [
    ["ebmtool._version", "ebmtool.errors", "ebmtool.files", "ebmtool.registry"],
    ["ebmtool.config", "ebmtool.distributed", "ebmtool.progress"],
    ["ebmtool.runtime", "ebmtool.artifacts"],
    ["ebmtool.images", "ebmtool.data", "ebmtool.nets"],
    ["ebmtool.sampling"],
    ["ebmtool.priors"],
    ["ebmtool.models"],
    ["ebmtool.checkpoint", "ebmtool.training"],
    ["ebmtool.methods"],
    ["ebmtool.eval", "ebmtool.tensorboard"],
    ["ebmtool.stages"],
    ["ebmtool.cli", "ebmtool.demo", "ebmtool.__main__"],
    ["ebmtool"],  # the root alone (its submodules have their own layers above): the face, importing any layer
]
ROOT = "ebmtool"


def layer_of(module: str) -> int:
    best, level = "", None
    for i, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or (name != ROOT and module.startswith(name + "."))
            if inside and len(name) > len(best):
                best, level = name, i
    assert level is not None, f"{module} is in no layer: add it to LAYERS here and in docs/design.md"
    return level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def known(name: str, modules: set[str]) -> str:
    """``ebmtool.models.LatentModel`` -> ``ebmtool.models`` (the longest prefix that is a module)."""
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t == "ebmtool" or t.startswith("ebmtool."):
                    dst = known(t, modules)
                    if dst != mod:
                        graph[mod].add(dst)
    return graph


def test_every_module_has_a_layer_and_no_arrow_runs_up():
    up = sorted(f"{src} (layer {layer_of(src)}) -> {dst} (layer {layer_of(dst)})"
                for src, dsts in import_graph().items() for dst in dsts if layer_of(dst) > layer_of(src))
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(up)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path + [m, d]
            if d not in state and (c := visit(d, path + [m])):
                return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_checks_see_an_upward_arrow_and_a_cycle():
    """The two checks above can fail: a lower layer importing a higher one, and a two-module cycle."""
    assert layer_of("ebmtool.priors.joint") < layer_of("ebmtool.methods.joint")
    assert layer_of("ebmtool.eval.plots") < layer_of("ebmtool.stages.evaluate")
    graph = import_graph()
    assert "ebmtool.priors.base" in graph["ebmtool.priors.joint"]  # imports are found (also inside functions)
    assert "ebmtool.eval.plots" in graph["ebmtool.stages.report"]


def test_the_root_is_the_face_no_module_imports_it_and_it_loads_light():
    """The root sits above every layer: an import of it from inside the package (``from ebmtool import
    __version__`` in artifacts.py was one) is an upward arrow; the root itself may import anything. A plain
    ``import ebmtool`` loads ``ebmtool._version`` alone of the package, and not torch (the CLI imports it first)."""
    import subprocess
    import sys

    assert all(layer_of(m) < layer_of(ROOT) for m in import_graph() if m != ROOT)
    assert layer_of("ebmtool.cli.app") < layer_of(ROOT) and layer_of("ebmtool._version") == 0
    importers = sorted(src for src, dsts in import_graph().items() if ROOT in dsts)
    assert not importers, f"modules that import the package root: {importers}"
    assert "ebmtool.stages.api" in import_graph()[ROOT]  # the root's lazy re-exports count as arrows, all downward
    code = ("import sys, ebmtool; print(sorted(m for m in sys.modules if m.startswith('ebmtool.') "
            "or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ebmtool._version']", out
