"""Registry of pose-model plugins, discovered through the ``geomvision.pose_models`` entry-point group.

A plugin is a distribution that declares, in its ``pyproject.toml``::

    [project.entry-points."geomvision.pose_models"]
    mymodel = "my_package.models:create_my_model"

The value names a *factory*: ``factory(**config) -> torch.nn.Module``. The module it returns carries the
attributes ``model_name`` (the entry-point name), ``kind`` (``"absolute"``, ``"relative"`` or
``"sequence"``) and ``config`` (a JSON-serialisable dict such that ``factory(**config)`` rebuilds the same
architecture, which is how checkpoints are reloaded). The ``forward`` signatures per kind are:

- ``absolute``: images (B, 3, H, W) -> (B, 7) = camera centre (3) + quaternion wxyz (4, unnormalised);
- ``relative``: two image batches (B, 3, H, W) -> (B, 7) = quaternion wxyz (4) + translation direction (3)
  of ``cam2_from_cam1``;
- ``sequence``: images (B, T, 3, H, W) -> (B, T, 7), each frame's pose relative to the first frame.

geomvision's own models (``posenet``, ``relpose``, ``sequence``) are declared the same way in geomvision's
``pyproject.toml``. They are also listed in :data:`BUILTIN_POSE_MODELS` so that an editable install whose
metadata predates the entry points still finds them; entry points of the same name take precedence.

Nothing here imports torch: loading is lazy (a plugin module is imported only when asked for), and a
plugin that fails to import (typically because torch is absent) is reported, not raised, by
:func:`list_plugins`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from geomvision.errors import GeomVisionError, InputError

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_POSE_MODELS",
    "INSTALL_HINT",
    "PluginInfo",
    "PluginUnavailableError",
    "available_pose_models",
    "list_plugins",
    "get_pose_model_factory",
    "load_pose_model",
    "import_learned",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "geomvision.pose_models"
INSTALL_HINT = "pip install geomvision[learned]"

#: Built-in models, mirrored from ``[project.entry-points."geomvision.pose_models"]`` in pyproject.toml
#: (a test checks that both agree).
BUILTIN_POSE_MODELS: dict[str, str] = {
    "posenet": "geomvision.plugins.learned.posenet:create_posenet",
    "relpose": "geomvision.plugins.learned.relpose:create_relpose",
    "sequence": "geomvision.plugins.learned.sequence:create_sequence_model",
}


class PluginUnavailableError(GeomVisionError):
    """A pose-model plugin is unknown to the registry's callers or cannot be imported."""


@dataclass(frozen=True)
class PluginInfo:
    """What :func:`list_plugins` knows about one plugin.

    Attributes:
        name: entry-point name (the value of ``--model`` on the command line).
        module: ``"package.module:factory"`` the entry point points at.
        loaded: True when the factory imported successfully.
        error: why it could not be imported (one line, with an install hint), else None.
    """

    name: str
    module: str
    loaded: bool
    error: str | None = None


def _entry_points() -> list[EntryPoint]:
    """Entry points of the group: built-ins, overridden by installed plugins of the same name."""
    found: dict[str, EntryPoint] = {
        name: EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
        for name, value in BUILTIN_POSE_MODELS.items()
    }
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return [found[name] for name in sorted(found)]


def _describe_import_error(exc: BaseException) -> str:
    """One line saying why a plugin failed to import, with the fix where we know it."""
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing:
        root = missing.split(".")[0]
        if root in ("torch", "torchvision"):
            return f"{root} not installed: {INSTALL_HINT}"
        return f"module {missing!r} not installed ({exc})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _load_entry_point(ep: EntryPoint) -> Callable[..., object]:
    """Import the factory an entry point names (``module:attr``), raising ``PluginUnavailableError``."""
    module_name, _, attr = ep.value.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in attr.strip().split(".") if attr.strip() else []:
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any import-time failure means "plugin unavailable"
        raise PluginUnavailableError(
            f"pose model {ep.name!r} ({ep.value}): {_describe_import_error(exc)}"
        ) from exc
    if not callable(obj):
        raise PluginUnavailableError(f"pose model {ep.name!r} ({ep.value}) is not callable")
    return obj


def available_pose_models() -> list[str]:
    """Names of every registered pose model (importable or not), sorted."""
    return [ep.name for ep in _entry_points()]


def list_plugins() -> list[PluginInfo]:
    """Try to import every registered pose-model plugin and report which ones work.

    Never raises for a broken plugin: its :class:`PluginInfo` carries ``loaded=False`` and the reason.
    """
    infos = []
    for ep in _entry_points():
        try:
            _load_entry_point(ep)
        except PluginUnavailableError as exc:
            cause = exc.__cause__
            reason = _describe_import_error(cause) if cause is not None else str(exc)
            logger.debug("plugin %s unavailable: %s", ep.name, reason)
            infos.append(PluginInfo(ep.name, ep.value, False, reason))
        else:
            infos.append(PluginInfo(ep.name, ep.value, True, None))
    return infos


def get_pose_model_factory(name: str) -> Callable[..., object]:
    """The factory callable of the pose model ``name`` (imports its module now).

    Raises:
        InputError: no plugin of that name is registered.
        PluginUnavailableError: it is registered but cannot be imported (e.g. torch missing).
    """
    by_name = {ep.name: ep for ep in _entry_points()}
    if name not in by_name:
        raise InputError(f"unknown pose model {name!r}; registered: {', '.join(sorted(by_name)) or 'none'}")
    return _load_entry_point(by_name[name])


def load_pose_model(name: str, **config) -> object:
    """Build the pose model ``name`` with ``config`` (keyword arguments of its factory).

    Returns:
        Whatever the factory returns; for geomvision's models a ``torch.nn.Module`` with ``model_name``,
        ``kind`` and ``config`` attributes (see the module docstring).
    """
    return get_pose_model_factory(name)(**config)


def import_learned(module: str):
    """Import ``geomvision.plugins.learned.<module>``, turning a missing torch into a one-line error.

    Raises:
        PluginUnavailableError: e.g. "torch not installed: pip install geomvision[learned]".
    """
    try:
        return importlib.import_module(f"geomvision.plugins.learned.{module}")
    except ImportError as exc:
        raise PluginUnavailableError(_describe_import_error(exc)) from exc
