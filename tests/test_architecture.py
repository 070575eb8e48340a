"""The package's shape, checked from its source: imports only go down the layers, and no module uses
another's private names.

Layers, top to bottom: the CLI; the use cases (``commands``), the Python API and the simulation; the
strategies and training; the I/O shell and the pure core (with the config, errors and reporting).
"""

from __future__ import annotations

import ast
from pathlib import Path

import alloop

ROOT = Path(alloop.__file__).parent
LAYER = {
    "cli": 4,
    "__main__": 4,
    "api": 3,
    "commands": 3,
    "sim": 3,
    "strategies": 2,
    "training": 2,
    "io": 1,
    "core": 1,
    "config": 1,
    "errors": 1,
    "reporting": 1,
    "__init__": 4,  # the package's front door: alloop.open_run and friends, loaded lazily from the API
}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        yield rel, ast.parse(path.read_text(), str(path))


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "alloop" and len(parts) > 1 else None


def _imports(tree):
    """(module imported, names taken from it) for every import of an alloop module, lazy ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alloop"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("alloop"):
                    yield a.name, []


def test_every_module_has_a_layer():
    for rel, _ in _modules():
        assert rel.parts[0].removesuffix(".py") in LAYER, rel


def test_imports_only_go_down_the_layers():
    ups = []
    for rel, tree in _modules():
        own = rel.parts[0].removesuffix(".py")
        for module, names in _imports(tree):
            targets = (
                [_top(module)] if _top(module) else [n for n in names if n in LAYER]
            )  # `from alloop import x`
            ups += [
                f"{rel} imports alloop.{t}"
                for t in targets
                if t and t != own and LAYER[t] > LAYER[own]
            ]
    assert not ups, "\n".join(ups)


def test_io_never_imports_jax_typer_or_rich():
    for rel, tree in _modules():
        if rel.parts[0] in ("io", "config.py", "errors.py", "reporting.py"):
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not [
                    n for n in names if n.split(".")[0] in ("jax", "typer", "rich", "optax")
                ], rel


def test_only_the_cli_imports_typer_and_rich():
    for rel, tree in _modules():
        if rel.name != "cli.py":
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module or ""]
                    )
                    assert not [n for n in names if n.split(".")[0] in ("typer", "rich")], rel


def test_no_module_imports_another_modules_private_names():
    private = []
    for rel, tree in _modules():
        for module, names in _imports(tree):
            private += [f"{rel}: from {module} import {n}" for n in names if n.startswith("_")]
        ours = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alloop")
            for a in node.names
        }
        for node in ast.walk(tree):  # module._name, for a module imported from alloop
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                if isinstance(node.value, ast.Name) and node.value.id in ours:
                    private.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    assert not private, "\n".join(private)
