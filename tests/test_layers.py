"""The package's layers, enforced: every import (inside functions too) goes down or sideways,
never up, and no two modules import each other in a circle.

The layers, lowest first, are listed in ``LAYERS``; docs/architecture.md explains them. A
module may import its own layer and the layers before it. The graph layer never imports
TensorFlow, and an import placed inside a function must say why on its line (a comment):
deferring a heavy runtime (TensorFlow, ONNX, LiteRT, matplotlib, pycocotools ...) so that a
light command answers without it is the reason it exists.
"""
import ast
from pathlib import Path

import networkx as nx
import pytest
from conftest import ROOT

# (layer, path prefixes relative to the repository), lowest first.
LAYERS = (
    ("base", ("edetgraph/resources/", "edetgraph/cli.py", "edetgraph/limits.py",
              "edetgraph/files.py")),
    ("graph", ("edetgraph/graph/",)),
    ("nn", ("edetgraph/nn/",)),
    ("checkpoints", ("edetgraph/checkpoints/",)),
    ("data", ("edetgraph/data/",)),
    ("task", ("edetgraph/task/",)),
    ("training", ("edetgraph/training/",)),
    ("verify", ("edetgraph/verify/",)),
    ("nas", ("edetgraph/nas/",)),
    ("commands", ("edetgraph/__init__.py", "edetgraph/inspect.py", "edetgraph/train.py",
                  "edetgraph/eval.py", "edetgraph/infer.py", "edetgraph/search.py")),
    ("exporters", ("exporters/",)),
    ("bench", ("bench/",)),
    ("apps", ("edetgraph/demo.py", "tools/")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
PACKAGES = ("edetgraph", "exporters", "bench")
HEAVY = ("tensorflow", "keras", "tf_keras")


def layer_of(rel: str) -> str:
    for name, prefixes in LAYERS:
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return name
    raise AssertionError(f"{rel}: in no layer; add it to LAYERS (and docs/architecture.md)")


def module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(root: Path = ROOT) -> dict:
    """{module name: relative path} of every Python file of the project."""
    out = {}
    for top in PACKAGES + ("tools",):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            out[module_name(rel)] = rel
    return out


def imports(path: Path, known: set) -> list:
    """``(line, target module, inside a function, line text)`` for every import of a project
    module or of TensorFlow in ``path``, and every import inside a function; ``from a.b
    import c`` counts as ``a.b.c`` when that is a module."""
    text = path.read_text()
    tree, lines = ast.parse(text), text.splitlines()
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                        ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known
                           else child.module for a in child.names]
            for t in targets:     # project modules and TensorFlow; inside functions, any
                if in_function or t.split(".")[0] in PACKAGES + HEAVY:
                    found.append((child.lineno, t, in_function, lines[child.lineno - 1]))
            visit(child, inside)

    visit(tree, False)
    return found


def project_module(target: str, known: set) -> str | None:
    """The project module an import names (``edetgraph.graph.spec.load_spec`` -> its module)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(root: Path = ROOT) -> tuple:
    files = source_files(root)
    known = set(files)
    g = nx.DiGraph()
    details = []
    for mod, rel in files.items():
        g.add_node(mod)
        for line, target, in_function, text in imports(root / rel, known):
            dst = project_module(target, known)
            details.append((rel, line, target, dst, in_function, text))
            if dst is not None and dst != mod:
                g.add_edge(mod, dst, where=f"{rel}:{line}")
    return files, g, details


def upward_imports(root: Path = ROOT) -> list:
    files, g, _ = import_graph(root)
    bad = []
    for src, dst, d in g.edges(data=True):
        if dst == "edetgraph":      # the package itself: its __init__ is the public API
            bad.append(f"{d['where']}: imports the package root 'edetgraph' (import the module"
                       " that defines the name)")
            continue
        a, b = layer_of(files[src]), layer_of(files[dst])
        if RANK[b] > RANK[a]:
            bad.append(f"{d['where']}: {src} ({a}) imports {dst} ({b}), a higher layer")
    return sorted(bad)


def test_every_module_sits_in_a_layer():
    for rel in source_files().values():
        layer_of(rel)


def test_no_upward_import():
    assert upward_imports() == []


def test_no_import_cycle():
    _, g, _ = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_the_graph_layer_never_imports_tensorflow():
    _, _, details = import_graph()
    tf = [f"{rel}:{line} {target}" for rel, line, target, _, _, _ in details
          if rel.startswith("edetgraph/graph/") and target.split(".")[0] in HEAVY]
    assert tf == []


def test_an_import_inside_a_function_says_why():
    _, _, details = import_graph()
    silent = [f"{rel}:{line}: {text.strip()}" for rel, line, _, _, inside, text in details
              if inside and "#" not in text]
    assert silent == []


def test_the_check_finds_a_planted_upward_import(tmp_path):
    """The rule refuses what is wrong: a graph module importing the TF lowering is caught,
    inside a function as well as at the top."""
    for top in PACKAGES + ("tools",):          # a copy of the project's Python files
        for path in (ROOT / top).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    pkg = tmp_path / "edetgraph"
    assert upward_imports(tmp_path) == []
    (pkg / "graph" / "planted.py").write_text(
        "def f():\n    from edetgraph.nn.model import build_model  # planted\n")
    (pkg / "graph" / "planted_top.py").write_text("from exporters import pipeline\n")
    bad = upward_imports(tmp_path)
    assert len(bad) == 2
    assert "edetgraph/graph/planted.py:2: edetgraph.graph.planted (graph) imports " \
           "edetgraph.nn.model (nn), a higher layer" in bad
    assert any(b.startswith("edetgraph/graph/planted_top.py:1:") for b in bad)


@pytest.mark.parametrize("module", sorted(m for m, rel in source_files().items()
                                          if rel.startswith("edetgraph/graph/")))
def test_every_graph_module_imports_without_tensorflow(module):
    from conftest import run_py
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):\n"
             "            raise ImportError('tensorflow is blocked in this test')\n"
             "sys.meta_path.insert(0, Block())\n"
             f"import {module}\n"
             "print('tensorflow' in sys.modules)\n")
    r = run_py(block)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
