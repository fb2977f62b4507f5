"""Layers point one way: every import inside geomvision/ goes to its own layer or one below it.

The table is the one in docs/architecture.md ("Layers"); change both together. Heavy optional packages
have their own rules: open3d only in ``viz/`` and ``io/ply.py``, torch only in ``plugins/``, dask only in
the stage runner's dask backend (``geomvision/runtime/*dask*``).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geomvision"

#: (layer, top-level names under geomvision/), lowest first. A module may import its own layer
#: (siblings on one floor may use each other) and every layer below; never a layer above.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("errors", "progress", "runtime")),
    (1, ("geometry",)),
    (2, ("robust",)),
    (3, ("scene",)),
    (4, ("io",)),
    (5, ("features", "sfm", "viz", "synthetic", "synthetic_scenes", "evaluation")),
    (6, ("plugins",)),
    (7, ("config",)),
    (8, ("pipeline",)),
    (9, ("commands", "cli", "__main__", "__init__")),
]

#: third-party top-level package -> predicate on the importing module's dotted name.
RESTRICTED = {
    "open3d": lambda m: m.startswith("geomvision.viz.") or m == "geomvision.io.ply",
    "torch": lambda m: m == "geomvision.plugins" or m.startswith("geomvision.plugins."),
    "torchvision": lambda m: m == "geomvision.plugins" or m.startswith("geomvision.plugins."),
    "dask": lambda m: m.startswith("geomvision.runtime.") and "dask" in m.rsplit(".", 1)[-1],
    "distributed": lambda m: m.startswith("geomvision.runtime.") and "dask" in m.rsplit(".", 1)[-1],
}


def layer_of(module: str) -> int | None:
    """Layer of a dotted geomvision module name (``geomvision`` itself is the top: it exports reconstruct)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for layer, names in LAYERS:
        if top in names:
            return layer
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from geomvision import errors`` imports geomvision.errors
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def layer_violations(root: Path) -> list[str]:
    """Every upward import, unknown module and misplaced heavy import under the package ``root``."""
    files = sorted(root.rglob("*.py"))
    modules = {_module_name(p, root): p for p in files}
    problems = []
    for module, path in modules.items():
        own = layer_of(module)
        if own is None:
            problems.append(f"{module}: not in the layer table (tests/test_layers.py, docs/architecture.md)")
            continue
        for target, line in _imports(path, module, set(modules)):
            top = target.split(".")[0]
            where = f"{path.relative_to(root.parent)}:{line}"
            if top == root.name:
                other = layer_of(target)
                if other is not None and other > own:
                    problems.append(f"{where}: {module} (layer {own}) imports {target} (layer {other})")
            elif top in RESTRICTED and not RESTRICTED[top](module):
                problems.append(f"{where}: {module} imports {top}, which only its own corner may")
    return problems


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of the package to break on purpose (each test restores what it changed)."""
    copy = tmp_path_factory.mktemp("layers") / "geomvision"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_imports_point_down_the_layers():
    problems = layer_violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_top_level_name_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    names.discard("__pycache__")
    missing = [n for n in names if layer_of(f"geomvision.{n}") is None]
    assert not missing, missing


@pytest.mark.parametrize(
    ("file", "line", "expected"),
    [
        (
            "geometry/rigid.py",
            "from geomvision.sfm import tracks",
            "geomvision.geometry.rigid (layer 1) imports",
        ),
        ("io/colmap.py", "from ..viz import geometry", "imports geomvision.viz.geometry (layer 5)"),
        ("sfm/tracks.py", "import open3d", "imports open3d"),
        ("features/pairs.py", "import torch", "imports torch"),
        ("config.py", "from geomvision import pipeline", "imports geomvision.pipeline (layer 8)"),
    ],
)
def test_the_check_fails_on_a_deliberate_upward_import(package_copy, file, line, expected):
    target = package_copy / file
    original = target.read_text(encoding="utf-8")
    target.write_text(original + f"\n{line}\n", encoding="utf-8")
    try:
        problems = layer_violations(package_copy)
    finally:
        target.write_text(original, encoding="utf-8")
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_module_outside_the_table_is_reported(package_copy):
    extra = package_copy / "partition.py"
    extra.write_text('"""new top-level module"""\n', encoding="utf-8")
    try:
        assert any(
            "geomvision.partition: not in the layer table" in p for p in layer_violations(package_copy)
        )
    finally:
        extra.unlink()
