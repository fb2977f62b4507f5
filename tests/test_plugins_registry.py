"""Pose-model plugin registry: discovery, lazy loading, error reporting. Runs without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from geomvision import cli
from geomvision.errors import InputError
from geomvision.plugins import registry
from geomvision.plugins.registry import (
    BUILTIN_POSE_MODELS,
    ENTRY_POINT_GROUP,
    INSTALL_HINT,
    PluginInfo,
    PluginUnavailableError,
)

REPO = Path(__file__).resolve().parents[1]
TORCH_MISSING = f"torch not installed: {INSTALL_HINT}"


@pytest.fixture
def no_torch(monkeypatch):
    """Make ``import torch`` fail as on a machine without it, and forget already imported learned modules."""
    for name in ("torch", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("geomvision.plugins.learned.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    """Installed plugins: a working one, one whose module is missing, one that raises on import."""
    (tmp_path / "gv_fake_pose_plugin.py").write_text(
        textwrap.dedent(
            """
            def create(**config):
                return ("fake-model", config)

            NOT_CALLABLE = 3
            """
        )
    )
    (tmp_path / "gv_broken_pose_plugin.py").write_text("raise RuntimeError('bad build\\nof the plugin')\n")
    (tmp_path / "gv_stale_pose_plugin.py").write_text("from gv_fake_pose_plugin import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = [
        EntryPoint("fake", "gv_fake_pose_plugin:create", ENTRY_POINT_GROUP),
        EntryPoint("missing", "gv_no_such_pose_plugin_module:create", ENTRY_POINT_GROUP),
        EntryPoint("broken", "gv_broken_pose_plugin:create", ENTRY_POINT_GROUP),
        EntryPoint("stale", "gv_stale_pose_plugin:create", ENTRY_POINT_GROUP),
        EntryPoint("notcallable", "gv_fake_pose_plugin:NOT_CALLABLE", ENTRY_POINT_GROUP),
        # An installed distribution may override a built-in name.
        EntryPoint("posenet", "gv_fake_pose_plugin:create", ENTRY_POINT_GROUP),
    ]

    def entry_points(*, group):
        assert group == ENTRY_POINT_GROUP
        return installed

    monkeypatch.setattr(registry, "entry_points", entry_points)
    return installed


def test_builtins_mirror_pyproject_entry_points():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILTIN_POSE_MODELS
    assert registry.available_pose_models() == ["posenet", "relpose", "sequence"]


def test_builtins_report_missing_torch(no_torch):
    infos = registry.list_plugins()
    assert [i.name for i in infos] == ["posenet", "relpose", "sequence"]
    for info in infos:
        assert info == PluginInfo(info.name, BUILTIN_POSE_MODELS[info.name], False, TORCH_MISSING)
    with pytest.raises(
        PluginUnavailableError, match=r"torch not installed: pip install geomvision\[learned\]"
    ):
        registry.load_pose_model("posenet")
    with pytest.raises(PluginUnavailableError, match="torch not installed"):
        registry.import_learned("train")


def test_installed_plugins_are_listed_with_reasons(fake_plugins):
    infos = {i.name: i for i in registry.list_plugins()}
    assert sorted(infos) == [
        "broken",
        "fake",
        "missing",
        "notcallable",
        "posenet",
        "relpose",
        "sequence",
        "stale",
    ]
    assert infos["fake"] == PluginInfo("fake", "gv_fake_pose_plugin:create", True, None)
    assert infos["posenet"].module == "gv_fake_pose_plugin:create" and infos["posenet"].loaded
    assert infos["missing"].loaded is False
    assert infos["missing"].error.startswith("module 'gv_no_such_pose_plugin_module' not installed")
    assert infos["broken"].error == "RuntimeError: bad build of the plugin"  # one line
    assert infos["stale"].error.startswith("ImportError: cannot import name 'no_such_name'")
    assert not infos["notcallable"].loaded and "not callable" in infos["notcallable"].error


def test_load_pose_model_calls_the_factory_lazily(fake_plugins):
    sys.modules.pop("gv_fake_pose_plugin", None)
    assert registry.get_pose_model_factory("fake").__module__ == "gv_fake_pose_plugin"
    assert registry.load_pose_model("fake", backbone="small", hidden=8) == (
        "fake-model",
        {"backbone": "small", "hidden": 8},
    )
    with pytest.raises(PluginUnavailableError, match="gv_no_such_pose_plugin_module"):
        registry.load_pose_model("missing")
    with pytest.raises(InputError, match=r"unknown pose model 'nope'; registered: broken, fake"):
        registry.load_pose_model("nope")


def test_plugins_command_lists_status_and_reason(no_torch, capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["posenet", "unavailable", BUILTIN_POSE_MODELS["posenet"]]
    assert out[1].strip() == f"-> {TORCH_MISSING}"
    assert len(out) == 6


def test_plugins_command_json(fake_plugins, capsys):
    import json

    assert cli.main(["plugins", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["fake"] == {
        "name": "fake",
        "module": "gv_fake_pose_plugin:create",
        "loaded": True,
        "error": None,
    }
    assert by_name["missing"]["loaded"] is False


def test_learned_commands_fail_in_one_line_without_torch(no_torch, capsys, tmp_path):
    par = tmp_path / "x_par.txt"
    par.write_text("0\n")
    assert cli.main(["train-pose", str(par)]) == cli.EXIT_FAILURE
    assert capsys.readouterr().err.strip() == f"geomvision: failed: {TORCH_MISSING}"
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert cli.main(["localize", "--model", str(tmp_path / "m.pt"), str(image)]) == cli.EXIT_FAILURE
    assert capsys.readouterr().err.strip() == f"geomvision: failed: {TORCH_MISSING}"


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_plugins_import_torch():
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "geomvision").rglob("*.py"))
        if "plugins" not in path.relative_to(REPO / "geomvision").parts
        and _imported_roots(path) & {"torch", "torchvision"}
    ]
    assert offenders == []


def test_cli_and_registry_do_not_import_torch():
    code = (
        "import sys; import geomvision, geomvision.cli as c; c.build_parser();"
        "from geomvision.plugins import registry; registry.available_pose_models();"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
