"""sparsekit's imports run one way: no import cycle, and no import climbs the layers of
docs/architecture.md §1 ("Resulting layers", top to bottom):

    cli -> pruning.py -> pruners -> allocation/eval -> pipeline -> hf -> nn -> ops/cuda_backend
        -> backend/triton_kernels -> torch_backend

Every `import` / `from ... import` naming a sparsekit module counts, wherever it stands: at module level,
inside a function, or under `if TYPE_CHECKING:` (a type-only arrow is still an arrow a reader follows).
`triton_kernels/` is scanned too: it installs as `sparsekit.triton_kernels` (setup.py's package_dir).
Run alone: python -m pytest -q tests/test_import_graph.py
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"sparsekit": REPO / "sparsekit", "sparsekit.triton_kernels": REPO / "triton_kernels"}

# Top to bottom. A module may import modules of its own layer or of any layer below it, never above.
# Each entry is a module or a package (covering everything inside it); the longest matching entry wins.
LAYERS = [
    ("cli", ("sparsekit.cli", "sparsekit.cli_preflight", "sparsekit.__main__")),
    ("api", ("sparsekit",)),  # sparsekit/__init__.py, the lazy public facade (the package itself only)
    ("pruning", ("sparsekit.pruning", "sparsekit.presets")),  # PruneConfig + prune: the one module that drives pruners over the pipeline
    ("pruners", ("sparsekit.pruners",)),
    ("allocation/eval", ("sparsekit.allocation", "sparsekit.eval")),
    ("pipeline", ("sparsekit.pipeline",)),
    ("hf", ("sparsekit.hf", "sparsekit.preflight")),  # preflight: checkpoint/model checks before a load
    ("nn", ("sparsekit.nn",)),
    ("ops/cuda_backend", ("sparsekit.ops", "sparsekit.cuda_backend")),
    ("backend/triton_kernels", ("sparsekit.backend", "sparsekit.triton_kernels")),
    ("torch_backend", ("sparsekit.torch_backend",)),
    # below the stack: plumbing every layer may use, which imports none of the layers above
    ("foundation", ("sparsekit._io", "sparsekit.checks", "sparsekit._ext", "sparsekit._version",
                    "sparsekit.data", "sparsekit.dtypes", "sparsekit.m_buckets", "sparsekit.options")),
]

# Upward arrows that stay until a move in a file another change is still editing; each names that move.
# An entry that no longer occurs fails the test, so the list can only shrink.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    files = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]):
    """(imported sparsekit module, line) for every import statement in the file, at any depth."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target != "sparsekit" and not target.startswith("sparsekit."):
                continue
            while target not in known and "." in target:  # `import sparsekit.ops.x.attr` style
                target = target.rpartition(".")[0]
            if target != name:
                yield target, node.lineno


def import_graph():
    files = module_files()
    edges: dict[str, dict[str, int]] = defaultdict(dict)  # importer -> {imported: first line}
    for name, path in files.items():
        for target, line in imported_modules(name, path, set(files)):
            edges[name].setdefault(target, line)
    return files, edges


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "sparsekit" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def where(files, edges, a, b) -> str:
    return f"{a} -> {b} ({files[a].relative_to(REPO)}:{edges[a][b]})"


def find_cycles(edges) -> list[list[str]]:
    """One shortest cycle through each strongly connected component with more than one module."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):  # Tarjan; the graph is small, recursion depth stays far below the limit
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        paths, frontier = {start: [start]}, [start]
        while frontier:  # breadth first inside the component, back to start
            nxt = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w == start:
                        cycles.append(paths[v] + [start])
                        nxt = []
                        break
                    if w in component and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                else:
                    continue
                break
            frontier = nxt
    return cycles


def test_every_module_has_a_layer():
    files, _ = import_graph()
    unplaced = sorted(m for m in files if layer_of(m) is None)
    assert not unplaced, f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


def test_no_import_cycles():
    files, edges = import_graph()
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(
        "  " + "; ".join(where(files, edges, a, b) for a, b in zip(c, c[1:])) for c in cycles)


def test_no_import_climbs_the_layers():
    files, edges = import_graph()
    upward = {}
    for a, targets in edges.items():
        for b in targets:
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb < la:
                upward[(a, b)] = f"{where(files, edges, a, b)}: {LAYERS[la][0]} imports {LAYERS[lb][0]}"
    new = [line for key, line in sorted(upward.items()) if key not in KNOWN_UPWARD]
    assert not new, "imports that run up the layers (architecture.md §1):\n  " + "\n  ".join(new)
    gone = sorted(set(KNOWN_UPWARD) - set(upward))
    assert not gone, f"these KNOWN_UPWARD arrows are gone; delete them from the list: {gone}"


# architecture.md §3: preprocessing both backends share lives in ops/, so no kernel module imports the torch
# backend. Any exception is listed here; the list can only shrink.
KERNELS_IMPORTING_TORCH_BACKEND: set[str] = set()


def test_kernels_never_import_the_torch_backend():
    _, edges = import_graph()
    found = {a for a, targets in edges.items() if a.startswith("sparsekit.triton_kernels.")
             and any(t == "sparsekit.torch_backend" or t.startswith("sparsekit.torch_backend.") for t in targets)}
    assert found <= KERNELS_IMPORTING_TORCH_BACKEND, f"move the shared code into the op (ops/): {sorted(found - KERNELS_IMPORTING_TORCH_BACKEND)}"
    assert found == KERNELS_IMPORTING_TORCH_BACKEND, f"delete from the list: {sorted(KERNELS_IMPORTING_TORCH_BACKEND - found)}"


@pytest.mark.parametrize("source, expected", [
    ("from sparsekit import ops\n", {"sparsekit.ops"}),
    ("from sparsekit import __version__\n", {"sparsekit"}),
    ("from ..hf.layers import x\n", {"sparsekit.hf.layers"}),
    ("def f():\n    import sparsekit.ops.sparse24\n", {"sparsekit.ops.sparse24"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sparsekit.pipeline import block\n",
     {"sparsekit.pipeline.block"}),
    ("import torch\nfrom tqdm import tqdm\n", set()),
])
def test_imports_are_resolved_at_any_depth(tmp_path, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {"sparsekit", "sparsekit.ops", "sparsekit.ops.sparse24", "sparsekit.hf.layers",
             "sparsekit.pipeline.block", "sparsekit.pipeline.x"}
    assert {t for t, _ in imported_modules("sparsekit.pipeline.x", path, known)} == expected


def test_cycle_finder_and_layers_catch_what_they_should():
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycles(edges) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []
    assert LAYERS[layer_of("sparsekit.pruning")][0] == "pruning"
    assert layer_of("sparsekit.pipeline.block") > layer_of("sparsekit.allocation.owl") > layer_of("sparsekit.pruners.wanda")
    assert LAYERS[layer_of("sparsekit.pipeline.capture")][0] == "pipeline"
    assert LAYERS[layer_of("sparsekit")][0] == "api"
    assert layer_of("sparsekit_other") is None
    assert layer_of("sparsekit.hf.layers") > layer_of("sparsekit.pipeline.report")  # hf sits below pipeline
