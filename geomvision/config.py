"""Composed configuration of the whole pipeline, with named presets and TOML load/save.

Each stage owns a frozen keyword-only options dataclass next to its function; this module only composes
them into :class:`ReconstructionConfig` (one TOML table per stage) and adds the pipeline-level choices.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from geomvision.errors import InputError
from geomvision.runtime.runner import BACKENDS

#: TOML table name -> (module, options class) of the stage it configures.
STAGE_OPTIONS: dict[str, tuple[str, str]] = {
    "extraction": ("geomvision.features.extract", "ExtractionOptions"),
    "matching": ("geomvision.features.match", "MatchingOptions"),
    "two_view": ("geomvision.sfm.two_view", "TwoViewOptions"),
    "calibration": ("geomvision.sfm.calibration", "SelfCalibrationOptions"),
    "trust": ("geomvision.sfm.trust", "TrustOptions"),
    "mapper": ("geomvision.sfm.incremental", "IncrementalMapperOptions"),
    "partition": ("geomvision.sfm.partition", "PartitionOptions"),
    "merge": ("geomvision.sfm.merge", "MergeOptions"),
    "global_mapper": ("geomvision.sfm.global_mapper", "GlobalMapperOptions"),
}

PAIRING_MODES = ("auto", "exhaustive", "sequential", "retrieval")
INIT_METHODS = ("two-view", "factorization")
MAPPERS = ("incremental", "global")


def _stage_class(section: str) -> type:
    module, name = STAGE_OPTIONS[section]
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """Choices that belong to no single stage.

    Attributes:
        pairing: which image pairs to match: exhaustive, sequential (video), retrieval (large sets), or auto:
            exhaustive up to ``auto_exhaustive_max_images`` images, retrieval above (exhaustive pairs grow as
            N^2: 4950 pairs at 100 images, most of them of images that share nothing).
        auto_exhaustive_max_images: the largest image count that ``pairing = "auto"`` matches exhaustively.
        sequential_window: neighbours matched per image in sequential mode (also added in retrieval mode).
        retrieval_k: top-k most similar images matched per image in retrieval mode.
        init: initialiser of the incremental mapper, "two-view" or "factorization".
        mapper: "incremental" (``[mapper]`` options) or "global" (rotation averaging + global
            positioning, ``[global_mapper]`` options).
        intrinsics: known pinhole (fx, fy, cx, cy) in pixels shared by all images; None to estimate.
        intrinsics_convention: origin of the principal point in ``intrinsics``: "opencv" (centre of
            the top-left pixel, geomvision's own) or "colmap" (its corner, as in COLMAP's cameras.txt;
            ``cx_opencv = cx_colmap - 0.5``).
        intrinsics_size: (width, height) the intrinsics belong to; None = the size of the images when
            they all have one (several sizes are then an error).
        scale_intrinsics: rescale ``intrinsics`` for images of another size (resized, same aspect
            ratio); without it such images are an error. See ``geomvision.io.camera_setup``.
        camera_model: model used when intrinsics are estimated (SIMPLE_RADIAL refines f and k).
        single_camera: one shared camera (True), one per image (False), or None = shared when all
            images have the same size.
        num_workers: worker processes for per-image, per-pair and per-cluster work (None: the usable
            core count; 1 with the processes backend: in-process). The only worker count: stages
            take a runner, never a count (``geomvision.runtime.runner``).
        backend: where that work runs: "serial" (in process), "processes" (a local pool) or "dask".
        scheduler: dask only, and setting it selects dask: "local" starts a LocalCluster of
            ``num_workers`` processes listening on 127.0.0.1; "tcp://HOST:PORT" (or "tls://...")
            connects to a running scheduler. None with backend "dask" means "local".
        images_visible_to_workers: dask: the workers can open the image paths (shared filesystem);
            otherwise the client reads every image and ships its bytes.
        tls_ca_file, tls_cert_file, tls_key_file: dask: TLS files for a secured scheduler (all three
            or none; none leaves the dask config's TLS settings in charge).
        seed: seed of every random choice; the same seed gives the same model.
        html_report: also write OUT/report.html.
        pose_prior_checkpoint: learned pose-model checkpoint; images the mapper cannot register are then
            placed from its relative-pose prior (``geomvision.sfm.pose_prior``; needs torch). None: off.
        pose_prior_min_confidence: priors below this confidence are ignored.
        strict: abort on the first image file that cannot be decoded, instead of skipping it (and
            listing it in ``report.json`` ``skipped_images``).
    """

    pairing: str = "auto"
    auto_exhaustive_max_images: int = 50
    sequential_window: int = 8
    retrieval_k: int = 15
    init: str = "two-view"
    mapper: Literal["incremental", "global"] = "incremental"
    intrinsics: tuple[float, float, float, float] | None = None
    intrinsics_convention: Literal["opencv", "colmap"] = "opencv"
    intrinsics_size: tuple[int, int] | None = None
    scale_intrinsics: bool = False
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool | None = None
    num_workers: int | None = None
    backend: Literal["serial", "processes", "dask"] = "processes"
    scheduler: str | None = None
    images_visible_to_workers: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    seed: int = 0
    html_report: bool = True
    pose_prior_checkpoint: str | None = None
    pose_prior_min_confidence: float = 0.5
    strict: bool = False

    def __post_init__(self) -> None:
        if self.pairing not in PAIRING_MODES:
            raise InputError(f"pairing must be one of {PAIRING_MODES}, got {self.pairing!r}")
        if self.init not in INIT_METHODS:
            raise InputError(f"init must be one of {INIT_METHODS}, got {self.init!r}")
        if self.mapper not in MAPPERS:
            raise InputError(f"mapper must be one of {MAPPERS}, got {self.mapper!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.intrinsics is not None:
            try:
                values = tuple(float(v) for v in self.intrinsics)
            except (TypeError, ValueError):
                raise InputError(
                    f"intrinsics must be 4 finite numbers fx,fy,cx,cy, got {self.intrinsics!r}"
                ) from None
            if len(values) != 4 or not all(v == v and abs(v) != float("inf") for v in values):
                raise InputError(f"intrinsics must be 4 finite numbers fx,fy,cx,cy, got {self.intrinsics}")
            if values[0] <= 0 or values[1] <= 0:
                raise InputError(
                    f"intrinsics focal lengths must be positive, got fx={values[0]} fy={values[1]}"
                )
            object.__setattr__(self, "intrinsics", values)
        if self.intrinsics_convention not in ("opencv", "colmap"):
            raise InputError(
                f"intrinsics_convention must be 'opencv' or 'colmap', got {self.intrinsics_convention!r}"
            )
        if self.intrinsics_size is not None:
            size = tuple(self.intrinsics_size)
            if len(size) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
            ):
                raise InputError(
                    f"intrinsics_size must be two positive integers (w, h), got {self.intrinsics_size!r}"
                )
            object.__setattr__(self, "intrinsics_size", size)
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int)
            or isinstance(self.num_workers, bool)
            or self.num_workers < 1
        ):
            raise InputError(f"num_workers must be an integer >= 1 or none, got {self.num_workers!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.scheduler is not None and (
            not isinstance(self.scheduler, str) or (self.scheduler != "local" and "://" not in self.scheduler)
        ):
            raise InputError(
                f"scheduler must be 'local' or an address like tcp://HOST:PORT, got {self.scheduler!r}"
            )
        if self.auto_exhaustive_max_images < 2:
            raise InputError(
                f"auto_exhaustive_max_images must be >= 2, got {self.auto_exhaustive_max_images}"
            )
        if self.sequential_window < 1 or self.retrieval_k < 1:
            raise InputError("sequential_window and retrieval_k must be >= 1")
        if not 0.0 <= self.pose_prior_min_confidence <= 1.0:
            raise InputError(
                f"pose_prior_min_confidence must be in [0, 1], got {self.pose_prior_min_confidence}"
            )


#: Where the pipeline's defaults differ from the stage function's own defaults (which follow the
#: underlying library, e.g. OpenCV's plain SIFT), and why:
#: - RootSIFT (COLMAP's default too): Hellinger-kernel matching gives as many verified matches on
#:   overlapping pairs but about a third fewer chance ratio-test matches on non-overlapping ones;
#: - a cap of 0.4 on the L2 distance between unit RootSIFT descriptors (99 % of verified inliers on
#:   templeRing lie below 0.42) cuts them further. Since RANSAC's sample count grows like
#:   (matches / min inliers)^sample_size on a pair without a model, these two make the geometric
#:   verification of templeRing's 1081 pairs ~8x cheaper at the same registrations and accuracy.
PIPELINE_STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "extraction": {"root_sift": True},
    "matching": {"max_distance": 0.4},
}


def _default_stage(section: str):
    return _stage_class(section)(**PIPELINE_STAGE_DEFAULTS.get(section, {}))


@dataclass(frozen=True, kw_only=True)
class ReconstructionConfig:
    """Everything ``geomvision reconstruct`` needs besides the image folder."""

    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    extraction: Any = field(default_factory=lambda: _default_stage("extraction"))
    matching: Any = field(default_factory=lambda: _default_stage("matching"))
    two_view: Any = field(default_factory=lambda: _default_stage("two_view"))
    calibration: Any = field(default_factory=lambda: _default_stage("calibration"))
    trust: Any = field(default_factory=lambda: _default_stage("trust"))
    mapper: Any = field(default_factory=lambda: _default_stage("mapper"))
    partition: Any = field(default_factory=lambda: _default_stage("partition"))
    merge: Any = field(default_factory=lambda: _default_stage("merge"))
    global_mapper: Any = field(default_factory=lambda: _default_stage("global_mapper"))

    def with_changes(self, **sections: dict[str, Any]) -> ReconstructionConfig:
        """Copy with some fields of some sections replaced: ``cfg.with_changes(pipeline={"seed": 3})``."""
        updated = {}
        for name, changes in sections.items():
            current = getattr(self, name, None)
            if current is None or not is_dataclass(current):
                raise InputError(f"unknown config section {name!r}")
            _check_keys(name, current, changes)
            updated[name] = replace(current, **changes)
        return replace(self, **updated)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: _options_to_dict(getattr(self, f.name)) for f in fields(self)}


def _options_to_dict(options) -> dict[str, Any]:
    out = {}
    for f in fields(options):
        value = getattr(options, f.name)
        if isinstance(value, tuple | frozenset | set):
            value = list(value)
        elif is_dataclass(value):  # nested options (e.g. TwoViewOptions.ransac) must serialise too
            value = _options_to_dict(value)
        out[f.name] = value
    return out


def _check_keys(section: str, options, changes: dict[str, Any]) -> None:
    known = {f.name for f in fields(options)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} in [{section}]; known: {sorted(known)}")


def _coerce(options, changes: dict[str, Any], section: str = "") -> dict[str, Any]:
    """TOML has no tuples/None: turn lists into tuples and the string "none" into None.

    A table given for a field holding a nested options dataclass updates that dataclass.
    """
    out = {}
    for key, value in changes.items():
        current = getattr(options, key)
        if is_dataclass(current) and isinstance(value, dict):
            _check_keys(f"{section}.{key}", current, value)
            out[key] = replace(current, **_coerce(current, value, f"{section}.{key}"))
            continue
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, str) and value.lower() == "none":
            value = None
        _check_type(f"{section}.{key}" if section else key, current, value)
        out[key] = value
    return out


def _check_type(name: str, current: Any, value: Any) -> None:
    """The value read from TOML must have the kind of the field's current value (None: any kind).

    Without this a string for an int option fails deep inside a stage with a TypeError.
    """
    if value is None or current is None:
        return
    if isinstance(current, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(current, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(current, float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(current, str):
        ok, kind = isinstance(value, str), "a string"
    elif isinstance(current, tuple | frozenset | set):
        ok, kind = isinstance(value, tuple), "a list"
    elif is_dataclass(current):  # a table would have been merged already
        ok, kind = False, "a table"
    else:
        return
    if not ok:
        raise InputError(f"option {name} must be {kind}, got {value!r}")


# --- presets --------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # Fewer, smaller features and sequential pairs: quick looks at video-like sets.
    "fast": {
        "pipeline": {"pairing": "sequential", "sequential_window": 5},
        "extraction": {"max_num_features": 4000, "max_image_size_px": 1200},
    },
    # More features at full resolution.
    "accurate": {
        "extraction": {"max_num_features": 16000, "max_image_size_px": 4000},
    },
}


def preset(name: str) -> ReconstructionConfig:
    """A named configuration: one of ``PRESETS``."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = ReconstructionConfig()
    changes = {}
    for section, values in PRESETS[name].items():
        current = getattr(config, section)
        known = {f.name for f in fields(current)}
        changes[section] = {k: v for k, v in values.items() if k in known}
    return config.with_changes(**changes)


# --- TOML -----------------------------------------------------------------------------------------
def load_config(path: str | Path, base: ReconstructionConfig | None = None) -> ReconstructionConfig:
    """Read a TOML file (tables named like the config sections; an optional top-level ``preset``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"config file {path} is a folder") from None
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_dict(data, base)


def config_from_dict(data: dict[str, Any], base: ReconstructionConfig | None = None) -> ReconstructionConfig:
    """Build a config from nested dicts (the TOML structure); unknown keys are errors."""
    if not isinstance(data, dict):
        raise InputError(f"config must be a table, got {type(data).__name__}")
    data = dict(data)
    preset_name = data.pop("preset", None)
    if preset_name is not None and not isinstance(preset_name, str):
        raise InputError(f"preset must be a string, got {preset_name!r}")
    config = preset(preset_name) if preset_name else (base or ReconstructionConfig())
    section_names = {f.name for f in fields(ReconstructionConfig)}
    changes = {}
    for section, values in data.items():
        if section not in section_names:
            raise InputError(f"unknown config section [{section}]; known: {sorted(section_names)}")
        if not isinstance(values, dict):
            raise InputError(f"[{section}] must be a table, got {type(values).__name__}")
        current = getattr(config, section)
        _check_keys(section, current, values)
        changes[section] = _coerce(current, values, section)
    try:
        return config.with_changes(**changes)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"bad config value: {' '.join(str(exc).split())}") from None


def dump_config_toml(config: ReconstructionConfig) -> str:
    """TOML text for ``config`` (round-trips through :func:`load_config`)."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        _toml_table(lines, section, values)
    return "\n".join(lines)


def _toml_table(lines: list[str], name: str, values: dict[str, Any]) -> None:
    lines.append(f"[{name}]")
    nested = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if key not in nested:
            lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    for key, value in nested.items():
        _toml_table(lines, f"{name}.{key}", value)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        raise InputError("nested option dataclasses are not supported in TOML")
    return _toml_value(str(value))
