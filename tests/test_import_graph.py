"""cdp's import graph: no cycles, and imports only in the documented direction.

The graph: a node per ``.py`` file under ``cdp/`` (a package is its ``__init__.py``); an edge for every
``import`` / ``from … import`` anywhere in the file (module level, functions, ``try``, ``TYPE_CHECKING``),
relative imports resolved, ``from P import n`` pointing to ``P.n`` when that is a module and to ``P``
otherwise.  Direction: cli → predict/train/evaluate/export/data/importers/… → core ← plugins; plugin
families never import each other; the core never imports a plugin or anything above it; ``cdp.io`` never
imports torch.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cdp"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def _graph():
    """{module: {imported cdp modules}} and the external top-level packages per module."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    packages = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    edges, external = {m: set() for m in files}, {m: set() for m in files}

    def resolve(target: str) -> str:
        while target and target not in files:  # cdp.x.y.name → the module that defines it
            target = target.rpartition(".")[0]
        return target

    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        base = mod if mod in packages else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    pkg = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    pkg = node.module or ""
                names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in files else pkg for a in node.names]
            else:
                continue
            for name in names:
                if name == "cdp" or name.startswith("cdp."):
                    target = resolve(name)
                    if target and target != mod:
                        edges[mod].add(target)
                else:
                    external[mod].add(name.split(".")[0])
    return edges, external


def import_graph():
    """Fresh copies of the cached graph: ({module: imported cdp modules}, {module: external top-level packages})."""
    edges, external = _graph()
    return {k: set(v) for k, v in edges.items()}, {k: set(v) for k, v in external.items()}


def _cycles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _family(mod: str):
    parts = mod.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["cdp", "plugins"] and len(parts) >= 3 else None


def test_no_import_cycles():
    edges, _ = import_graph()
    assert _cycles(edges) == []


def test_graph_sees_function_level_and_relative_imports():
    # the rule counts imports inside functions: cdp.data loads its datasets module lazily
    edges, _ = import_graph()
    assert "cdp.data.datasets" in edges["cdp.data"]
    assert "cdp.export.runtime" in edges["cdp.predict"]
    assert "cdp.core.errors" in edges["cdp.core.types"]


def test_a_planted_cycle_is_found():
    edges, _ = import_graph()
    edges = {k: set(v) for k, v in edges.items()}
    edges["cdp.core.errors"].add("cdp.core.types")
    assert any({"cdp.core.errors", "cdp.core.types"} <= set(c) for c in _cycles(edges))


def test_imports_follow_the_documented_direction():
    edges, _ = import_graph()
    core_ok = ("cdp.core", "cdp._version", "cdp.nn")
    bad = []
    for mod, targets in edges.items():
        for t in targets:
            if mod.startswith("cdp.core") and not t.startswith(core_ok):
                bad.append(f"core imports {t}: {mod}")
            if mod.startswith("cdp.nn") and not t.startswith(("cdp.core", "cdp.nn")):
                bad.append(f"cdp.nn imports {t}: {mod}")
            fam = _family(mod)
            if fam is not None:
                if t.startswith("cdp.plugins") and _family(t) != fam:
                    bad.append(f"plugin family {fam} imports {t}")
                if not t.startswith(("cdp.core", "cdp.nn", "cdp.plugins", "cdp._version")):
                    bad.append(f"plugin {mod} imports {t}")
            if mod.startswith("cdp.io") and not t.startswith(("cdp.io", "cdp.core.errors", "cdp.core.grid", "cdp.core.atomic", "cdp.core.validate", "cdp.core.system")):
                if not (mod == "cdp.io.stream"):  # stream writes predictions: it drives a predictor
                    bad.append(f"cdp.io imports {t}: {mod}")
            if t.startswith("cdp.cli") and not mod.startswith(("cdp.cli", "cdp.__main__")):
                bad.append(f"{mod} imports the CLI ({t})")
    assert bad == []


def test_io_imports_no_torch():
    _, external = import_graph()
    users = sorted(m for m, ext in external.items() if m.startswith("cdp.io") and m != "cdp.io.stream" and "torch" in ext)
    assert users == []
    code = "import sys, cdp.io, cdp.io.chgcar, cdp.io.cube, cdp.io.compression; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mod", ["cdp.plugins.readouts.mlp", "cdp.plugins.backbones.painn"])
def test_shared_blocks_come_from_cdp_nn(mod):
    edges, _ = import_graph()
    assert "cdp.nn.blocks" in edges[mod]


def test_entry_points_import_no_torch():
    """`cdp --help`, `import cdp` and the lazy packages stay quick: torch loads when a command or model needs it."""
    code = ("import sys, cdp, cdp.cli.main, cdp.data, cdp.export, cdp.train, cdp.io, cdp.io.chgcar, cdp.io.cube; "
            "print(sorted(m for m in ('torch', 'e3nn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "[]"


def test_function_level_imports_say_why():
    """An import inside a function is there for an optional dependency or start-up time, and says so."""
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = lines[node.lineno - 1 : node.end_lineno]
                    around = lines[node.lineno - 2] + lines[min(node.end_lineno, len(lines) - 1)]
                    if not any("#" in line for line in here) and "#" not in around:
                        missing.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert sorted(set(missing)) == []
