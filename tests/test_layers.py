"""The layer order of the house rules, checked on the source: no module imports a layer above its own.

Every ``import`` / ``from ... import`` in every module under src/tritium counts, the lazy ones inside
functions included, since a lazy import is still a dependency (it only moves the cost).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tritium"

# Lowest first. Layers of one rank are peers (models and data; export and integrations) and may use each other.
RANKS = {
    "utils": 0,
    "quant": 1,
    "pack": 2,
    "kernels": 3,
    "nn": 4,
    "runtime": 5,
    "models": 6, "data": 6,
    "eval": 7,
    "calib": 8,
    "methods": 9,
    "train": 10,
    # recipes describe jobs (method, grid, eval, calib settings); they sit with the other front ends of the library
    "recipes": 11, "export": 11, "integrations": 11,
    # the Spectra analysis reads finished models' eval results and feeds the suite job: above train, so no library
    # layer reaches for report code, and below jobs, which call it
    "spectra": 11,
    "jobs": 12,
    "cli": 13,
    # the package's own __init__: the public facade, allowed to re-export from anything (lazily)
    "": 14,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path) -> set[str]:
    """Absolute names of the tritium modules (or module members) ``path`` imports, anywhere in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tritium")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "tritium":
                continue
            if name == "tritium":  # ``from tritium import quant`` / ``from .. import x``: the member is the layer
                found.update(f"tritium.{alias.name}" for alias in node.names)
            else:
                found.add(name)
    return found


def layer_of(module: str) -> str:
    """The layer a module belongs to: its first sub-package; top-level runner belongs to jobs, cli to cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    top = parts[1]
    return {"runner": "jobs"}.get(top, top)


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = layer_of(module)
        if own not in RANKS:
            found.append(f"{module}: its layer {own!r} has no rank in the table")
            continue
        for target in sorted(_imported(path)):
            other = layer_of(target)
            if other not in RANKS:
                # ``from tritium import __version__`` and the like name no layer
                if other.startswith("__"):
                    continue
                found.append(f"{module} imports {target}, whose layer {other!r} has no rank in the table")
            elif RANKS[other] > RANKS[own]:
                found.append(f"{module} ({own}) imports {target} ({other}), a layer above it")
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


def _module_exists(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _resolves(target: str) -> bool:
    if _module_exists(target):
        return True
    parent = target.rpartition(".")[0]
    return parent != "tritium" and _module_exists(parent)  # ``from pkg.mod import name``: a member of a module


def test_every_imported_tritium_module_exists():
    # a lazy import of a module that moved fails only when its function runs: catch it here
    missing = [f"{_module_name(path)} imports {target}, which does not exist"
               for path in sorted(PACKAGE.rglob("*.py")) for target in sorted(_imported(path)) if not _resolves(target)]
    assert missing == []


def test_every_package_has_a_rank():
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert layers <= set(RANKS), f"packages without a rank: {sorted(layers - set(RANKS))}"


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    # The checker itself must be able to fail: a quant module importing train, lazily inside a function.
    fake_src = tmp_path / "src"
    (fake_src / "tritium" / "quant").mkdir(parents=True)
    (fake_src / "tritium" / "__init__.py").write_text("")
    (fake_src / "tritium" / "quant" / "__init__.py").write_text("")
    (fake_src / "tritium" / "quant" / "bad.py").write_text("def f():\n    from ..train import trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_src / "tritium")
    assert violations() == ["tritium.quant.bad (quant) imports tritium.train (train), a layer above it"]


@pytest.mark.parametrize("module", ["tritium.quant", "tritium.utils.errors"])
def test_low_layers_import_neither_transformers_nor_the_trainer(module):
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'transformers' or m.startswith('tritium.train'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout


def layer_edges() -> dict[str, set[str]]:
    """Each layer and the other layers its modules import."""
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(_module_name(path))
        edges.setdefault(own, set()).update(other for other in map(layer_of, _imported(path))
                                            if other != own and other in RANKS)
    return edges


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The cycles among the layers (peers of one rank may import each other, but not both ways round)."""
    cycles, done = [], set()

    def visit(layer, path):
        if layer in path:
            cycles.append(path[path.index(layer):] + [layer])
            return
        if layer in done:
            return
        for other in sorted(edges.get(layer, ())):
            visit(other, path + [layer])
        done.add(layer)

    for layer in sorted(edges):
        visit(layer, [])
    return cycles


def test_no_two_layers_import_each_other():
    assert import_cycles(layer_edges()) == []
    assert import_cycles({"export": {"integrations"}, "integrations": {"export"}}) == [
        ["export", "integrations", "export"]]  # the check can fail
