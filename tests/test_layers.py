"""Imports run downward: no module imports a layer above its own (function-level imports too).

The layers, each with the layers it builds on directly (what it may import is those and
everything they may import, transitively). Execution (training runs: sweeps, comparison) and
reports (after-the-fact analysis, figures, HTML) are siblings: neither imports the other, both
read and write results through :mod:`mtl_lab.results`. Regimes and measures are siblings too: a
regime receives its monitors from the caller instead of importing the analyzers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mtl_lab", "tasks")

# layer: (modules and packages in it, the layers it builds on directly)
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tasks": (("tasks",), ()),
    "core": (("mtl_lab.errors", "mtl_lab.regime_specs", "mtl_lab.config", "mtl_lab.interrupts",
              "mtl_lab.progress"), ("tasks",)),
    "models": (("mtl_lab.models", "mtl_lab.checkpoints"), ("core",)),
    "engine": (("mtl_lab.engine", "mtl_lab.data"), ("models",)),
    "regimes": (("mtl_lab.regimes", "mtl_lab.modules"), ("engine", "symmetry")),
    "measures": (("mtl_lab.analysis.features", "mtl_lab.analysis.representation",
                  "mtl_lab.analysis.symmetry", "mtl_lab.analysis.weights",
                  "mtl_lab.analysis.penalties", "mtl_lab.analysis.callbacks",
                  "mtl_lab.analysis.summary", "mtl_lab.analysis.layers"), ("models",)),
    "symmetry": (("mtl_lab.symmetry",), ("core",)),  # rescalings, conservation-law counts (§6)
    "theory": (("mtl_lab.theory",), ("measures",)),  # the penalties' minimisers (SCIENCE.md §4)
    "results": (("mtl_lab.results", "mtl_lab.flags", "mtl_lab.tables", "mtl_lab.plots",
                 "mtl_lab.tracking", "mtl_lab.reproduce"), ("core",)),
    "execution": (("mtl_lab.sweeps", "mtl_lab.comparison"), ("regimes", "measures", "results")),
    "reports": (("mtl_lab.analysis", "mtl_lab.sweeps.report", "mtl_lab.sweeps.deep_figures"),
                ("regimes", "measures", "results", "theory")),
    "interface": (("mtl_lab", "mtl_lab.cli"), ("execution", "reports")),
}
EXACT_ONLY = {"mtl_lab"}  # the package's own __init__ (a façade), not everything under it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES
            for p in sorted((ROOT / package).rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of the longest table entry that is the module or a package above it."""
    best, length = None, -1
    for layer, (members, _) in LAYERS.items():
        for member in members:
            inside = module == member or (member not in EXACT_ONLY
                                          and module.startswith(f"{member}."))
            if inside and len(member) > length:
                best, length = layer, len(member)
    return best


def may_import(layer: str) -> set[str]:
    """The layer itself and every layer below it."""
    allowed, todo = {layer}, list(LAYERS[layer][1])
    while todo:
        below = todo.pop()
        if below not in allowed:
            allowed.add(below)
            todo.extend(LAYERS[below][1])
    return allowed


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of the lab's own modules, at any depth in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from pkg import module` imports the module
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in known else base))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def violations() -> list[str]:
    modules = all_modules()
    out = []
    for module, path in modules.items():
        layer = layer_of(module)
        allowed = may_import(layer)
        for line, target in imports_of(module, path, set(modules)):
            target_layer = layer_of(target)
            if target_layer not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line}: {module} ({layer}) imports "
                           f"{target} ({target_layer})")
    return out


def test_layer_table_is_acyclic_and_names_known_layers():
    for layer, (_, below) in LAYERS.items():
        assert set(below) <= set(LAYERS), layer
        assert all(layer not in may_import(b) for b in below), f"{layer} is in a cycle"


@pytest.mark.parametrize("module", sorted(all_modules()))
def test_every_module_has_a_layer(module):
    assert layer_of(module) is not None, f"{module}: add it to LAYERS in tests/test_layers.py"


def test_imports_run_downward():
    found = violations()
    assert not found, "imports of a higher layer:\n" + "\n".join(found)
