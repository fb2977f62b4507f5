"""The options tree of the whole pipeline, with named presets and TOML load/save.

Each stage owns a frozen keyword-only options dataclass next to its function, holding its own settings
and nesting the options of the stages it calls (``two_view.ransac``, ``mapper.registration.ransac``,
``mapper.local_ba``, ...). This module composes them into :class:`ReconstructionConfig`, one field per
stage the pipeline calls, plus :class:`PipelineOptions` for the choices that belong to no single stage.
TOML tables mirror the tree exactly (``[mapper.registration.ransac]``); nothing is copied or relayed,
so what the tree says is what runs, and ``to_dict()`` is what report.json records.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import tomllib
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from geomvision.errors import InputError, check_at_least
from geomvision.features.extract import ExtractionOptions
from geomvision.features.match import MatchingOptions
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.runner import BACKENDS
from geomvision.sfm.calibration import SelfCalibrationOptions
from geomvision.sfm.factorization_init import FactorizationInitOptions
from geomvision.sfm.global_mapper import GlobalMapperOptions
from geomvision.sfm.incremental import IncrementalMapperOptions
from geomvision.sfm.merge import AlignmentOptions, MergeOptions
from geomvision.sfm.partition import PartitionOptions
from geomvision.sfm.pose_prior import PosePriorOptions
from geomvision.sfm.trust import TrustOptions
from geomvision.sfm.two_view import TwoViewOptions
from geomvision.sfm.wide_baseline import WideBaselineOptions

logger = logging.getLogger(__name__)

PairingMode = Literal["auto", "exhaustive", "sequential", "retrieval"]
MapperKind = Literal["incremental", "global"]
InitMethod = Literal["two-view", "factorization"]
CameraModelName = Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]
PAIRING_MODES: tuple[str, ...] = get_args(PairingMode)
INIT_METHODS: tuple[str, ...] = get_args(InitMethod)
MAPPERS: tuple[str, ...] = get_args(MapperKind)


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """Choices that belong to no single stage.

    Attributes:
        pairing: which image pairs to match: exhaustive, sequential (video), retrieval (large sets), or auto:
            exhaustive up to ``auto_exhaustive_max_images`` images, retrieval above (exhaustive pairs grow as
            N^2: 4950 pairs at 100 images, most of them of images that share nothing).
        auto_exhaustive_max_images: the largest image count that ``pairing = "auto"`` matches exhaustively.
        mapper: "incremental" (``[mapper]`` options) or "global" (rotation averaging + global
            positioning, ``[global_mapper]`` options).
        global_verification_max_error_px: with ``mapper = "global"``, the pairs are verified (and
            re-verified by self-calibration and the wide-baseline retry) at this E/F/H RANSAC threshold
            instead of ``two_view.ransac.max_error_px``; None: that one. Set it to None (or to the same
            value) to verify a global run at your own ``[two_view.ransac]`` threshold. The global mapper
            checks every track against the whole model (rotation-averaging residuals, reprojection after
            positioning), so it gains from the longer tracks of a looser threshold, where the incremental
            mapper registers images by PnP on tracks that one wrong match can mislead (castle-P19's
            repeated facade, unknown focal, incremental, seeds 0-2: AUC@2 0.843 at 2 px, 0.822 at 3 px).
            Global mapper, 2 -> 3 px, means of seeds 0-2: entry-P10 known K 0.9698 -> 0.9703, castle-P19
            unknown focal 0.9437 -> 0.9475, known K 0.9535 -> 0.9533, templeRing known K 0.8947 ->
            0.8916 (GLOMAP verifies at COLMAP's 4 px).
        sequential_window: neighbours matched per image in sequential mode (also added in retrieval mode).
        retrieval_k: top-k most similar images matched per image in retrieval mode.
        init: initialiser, "two-view" or "factorization".
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
            core count; 1 with the processes backend: in-process, except per-cluster mapping, which runs
            in one worker process as it does on each of several workers). The only worker count: stages
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
            placed from its relative-pose prior (``geomvision.sfm.pose_prior``, options in the
            ``pose_prior`` section; needs torch). None: off.
        strict: abort on the first image file that cannot be decoded, instead of skipping it (and
            listing it in ``report.json`` ``skipped_images``).
    """

    pairing: PairingMode = "auto"
    auto_exhaustive_max_images: int = 50
    sequential_window: int = 8
    retrieval_k: int = 15
    init: InitMethod = "two-view"
    mapper: MapperKind = "incremental"
    global_verification_max_error_px: float | None = 3.0
    intrinsics: tuple[float, float, float, float] | None = None
    intrinsics_convention: Literal["opencv", "colmap"] = "opencv"
    intrinsics_size: tuple[int, int] | None = None
    scale_intrinsics: bool = False
    camera_model: CameraModelName = "SIMPLE_RADIAL"
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
    strict: bool = False

    def __post_init__(self) -> None:
        if self.pairing not in PAIRING_MODES:
            raise InputError(f"pairing must be one of {PAIRING_MODES}, got {self.pairing!r}")
        if self.camera_model not in get_args(CameraModelName):
            raise InputError(
                f"camera_model must be one of {get_args(CameraModelName)}, got {self.camera_model!r}"
            )
        if self.init not in INIT_METHODS:
            raise InputError(f"init must be one of {INIT_METHODS}, got {self.init!r}")
        if self.mapper not in MAPPERS:
            raise InputError(f"mapper must be one of {MAPPERS}, got {self.mapper!r}")
        check_at_least("auto_exhaustive_max_images", self.auto_exhaustive_max_images, 2)
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
        if self.sequential_window < 1 or self.retrieval_k < 1:
            raise InputError("sequential_window and retrieval_k must be >= 1")


#: Where the pipeline's defaults differ from the stage function's own defaults (which follow the
#: underlying library, e.g. OpenCV's plain SIFT), and why:
#: - RootSIFT (COLMAP's default too): Hellinger-kernel matching gives as many verified matches on
#:   overlapping pairs but about a third fewer chance ratio-test matches on non-overlapping ones;
#: - a cap of 0.4 on the L2 distance between unit RootSIFT descriptors (99 % of verified inliers on
#:   templeRing lie below 0.42) cuts them further. Since RANSAC's sample count grows like
#:   (matches / min inliers)^sample_size on a pair without a model, these two make the geometric
#:   verification of templeRing's 1081 pairs ~8x cheaper at the same registrations and accuracy.
def _pipeline_extraction() -> ExtractionOptions:
    return ExtractionOptions(root_sift=True)


def _pipeline_matching() -> MatchingOptions:
    return MatchingOptions(max_distance=0.4)


@dataclass(frozen=True, kw_only=True)
class ReconstructionConfig:
    """Everything ``geomvision reconstruct`` needs besides the image folder: the options tree.

    Attributes:
        pipeline: choices that belong to no single stage (pairing, initialiser, cameras, seed, ...).
        extraction: :func:`geomvision.features.extract.extract_features`.
        matching: :func:`geomvision.features.match.match_pairs`.
        two_view: :func:`geomvision.sfm.two_view.verify_pairs` (nests its ``ransac``).
        wide_baseline: :func:`geomvision.sfm.wide_baseline.densify_wide_baseline_pairs` (affine-feature
            retry of weakly connected images, after verification; idle on well-connected sets).
        calibration: :mod:`geomvision.sfm.calibration` (focal lengths from the view graph before mapping).
        factorization: :func:`geomvision.sfm.factorization_init.initialize_by_factorization`, run when
            ``pipeline.init = "factorization"``.
        mapper: :func:`geomvision.sfm.incremental.incremental_mapping` (nests ``initialization``,
            ``registration``, ``triangulation``, ``local_ba``, ``global_ba``).
        trust: :mod:`geomvision.sfm.trust` (which models are flagged untrusted, and why).
        global_mapper: :func:`geomvision.sfm.global_mapper.global_mapping`, run when ``pipeline.mapper =
            "global"``.
        partition: :mod:`geomvision.sfm.partition` (clusters of the view graph mapped separately).
        merge: :mod:`geomvision.sfm.merge` (Sim(3) merge of the clusters' models).
        pose_prior: :func:`geomvision.sfm.pose_prior.register_with_pose_priors`, run when
            ``pipeline.pose_prior_checkpoint`` is set.
    """

    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    extraction: ExtractionOptions = field(default_factory=_pipeline_extraction)
    matching: MatchingOptions = field(default_factory=_pipeline_matching)
    two_view: TwoViewOptions = field(default_factory=TwoViewOptions)
    wide_baseline: WideBaselineOptions = field(default_factory=WideBaselineOptions)
    calibration: SelfCalibrationOptions = field(default_factory=SelfCalibrationOptions)
    factorization: FactorizationInitOptions = field(default_factory=FactorizationInitOptions)
    trust: TrustOptions = field(default_factory=TrustOptions)
    mapper: IncrementalMapperOptions = field(default_factory=IncrementalMapperOptions)
    global_mapper: GlobalMapperOptions = field(default_factory=GlobalMapperOptions)
    partition: PartitionOptions = field(default_factory=PartitionOptions)
    merge: MergeOptions = field(default_factory=MergeOptions)
    pose_prior: PosePriorOptions = field(default_factory=PosePriorOptions)

    def with_changes(self, **sections: Mapping[str, Any]) -> ReconstructionConfig:
        """Copy with some fields replaced; nested tables update nested options.

        ``cfg.with_changes(pipeline={"seed": 3}, mapper={"local_ba": {"max_iterations": 10}})``.
        Deprecated flat keys (:data:`DEPRECATED_KEYS`) are moved to their places with a warning.
        """
        return _updated(self, _resolve_deprecated(dict(sections)), "")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The whole tree as nested dicts (tuples as lists): what report.json records."""
        return {f.name: _options_to_dict(getattr(self, f.name)) for f in fields(self)}


def _options_to_dict(options) -> dict[str, Any]:
    out = {}
    for f in fields(options):
        value = getattr(options, f.name)
        if isinstance(value, tuple | frozenset | set):
            value = list(value)
        elif is_dataclass(value):
            value = _options_to_dict(value)
        out[f.name] = value
    return out


# --- deprecated flat keys ----------------------------------------------------------------------------
#: Keys of the flat options before the tree (kept one release) -> their places in the tree. A key that
#: used to be relayed to several stages maps to all of them.
DEPRECATED_KEYS: dict[str, tuple[str, ...]] = {
    "two_view.max_error_px": ("two_view.ransac.max_error_px",),
    "two_view.confidence": ("two_view.ransac.confidence",),
    "two_view.max_iterations": ("two_view.ransac.max_iterations",),
    "mapper.min_num_inliers": (
        "mapper.registration.min_num_inliers",
        "mapper.registration.min_num_visible",
    ),
    "mapper.init_min_num_inliers": ("mapper.initialization.min_num_inliers",),
    "mapper.init_min_tri_angle_deg": ("mapper.initialization.min_tri_angle_deg",),
    "mapper.init_max_homography_share": ("mapper.initialization.max_homography_share",),
    "mapper.init_max_pairs_tried": ("mapper.initialization.max_pairs_tried",),
    "mapper.abs_pose_max_error_px": ("mapper.registration.ransac.max_error_px",),
    "mapper.abs_pose_min_inlier_ratio": ("mapper.registration.min_inlier_ratio",),
    "mapper.tri_max_error_px": (
        "mapper.triangulation.max_error_px",
        "mapper.initialization.triangulation.max_error_px",
        "mapper.initialization.triangulation.filter_max_error_px",
    ),
    "mapper.tri_min_angle_deg": ("mapper.triangulation.min_tri_angle_deg",),
    "mapper.filter_max_reproj_error_px": ("mapper.triangulation.filter_max_error_px",),
    "mapper.filter_min_tri_angle_deg": (
        "mapper.triangulation.filter_min_tri_angle_deg",
        "mapper.initialization.triangulation.min_tri_angle_deg",
        "mapper.initialization.triangulation.filter_min_tri_angle_deg",
    ),
    "mapper.local_ba_max_iterations": ("mapper.local_ba.max_iterations",),
    "mapper.global_ba_max_iterations": ("mapper.global_ba.max_iterations",),
    "mapper.refine_focal": ("mapper.global_ba.refine_focal",),
    "mapper.refine_extra_params": ("mapper.global_ba.refine_extra_params",),
    "mapper.ba_backend": (
        "mapper.local_ba.backend",
        "mapper.global_ba.backend",
    ),
    "mapper.ba_loss": (
        "mapper.local_ba.loss",
        "mapper.global_ba.loss",
    ),
    "mapper.ba_loss_scale_px": (
        "mapper.local_ba.loss_scale_px",
        "mapper.global_ba.loss_scale_px",
    ),
    "pipeline.pose_prior_min_confidence": ("pose_prior.min_confidence",),
}
#: Fields since moved into a nested options class of their own class (kept one release): class -> old
#: field -> its place below that class. They apply wherever the class stands in the tree (a
#: RansacOptions, say, under two_view, the mappers and the merge alike).
MOVED_FIELDS: dict[type, dict[str, str]] = {
    MatchingOptions: {
        "ivf_num_cells": "ivf.num_cells",
        "ivf_num_probes": "ivf.num_probes",
        "ivf_min_num_features": "ivf.min_num_features",
        "ivf_descriptors_per_cell": "ivf.descriptors_per_cell",
    },
    TrustOptions: {"drift_max_iterations": "drift_ba.max_iterations"},
    RansacOptions: {
        "local_optimization": "lo.enabled",
        "lo_iterations": "lo.iterations",
        "lo_threshold_multiplier": "lo.threshold_multiplier",
        "lo_max_points": "lo.max_points",
        "bailout_subset": "bailout.subset",
        "bailout_sigma": "bailout.sigma",
    },
    IncrementalMapperOptions: {
        "pair_checked_min_inliers": "pair_checked.min_inliers",
        "pair_checked_min_pair_inliers": "pair_checked.min_pair_inliers",
        "pair_checked_max_rotation_deg": "pair_checked.max_rotation_deg",
    },
    AlignmentOptions: {
        "refine_max_points": "refinement.max_points",
        "huber_scale_px": "refinement.huber_scale_px",
        "refine_max_iterations": "refinement.max_iterations",
    },
}
#: Old values that reach a new place changed: ``mapper.min_num_inliers`` also set the registration's
#: candidate floor to half of it.
DEPRECATED_TRANSFORMS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("mapper.min_num_inliers", "mapper.registration.min_num_visible"): lambda v: max(4, int(v) // 2),
}


def _resolve_deprecated(data: dict[str, Any]) -> dict[str, Any]:
    """Move deprecated flat keys of ``data`` (section -> table) to their places, warning once each."""
    for old, targets in DEPRECATED_KEYS.items():
        section, key = old.split(".")
        table = data.get(section)
        if not isinstance(table, Mapping) or key not in table:
            continue
        table = data[section] = dict(table)
        value = table.pop(key)
        new_names = ", ".join(targets)
        message = f"config key [{section}] {key} is deprecated; set {new_names} instead"
        warnings.warn(message, DeprecationWarning, stacklevel=4)
        logger.warning(message)
        for path in targets:
            transform = DEPRECATED_TRANSFORMS.get((old, path))
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                child = node.get(part, {})
                if not isinstance(child, Mapping):
                    break  # a non-table here is reported by the tree walk
                node[part] = child = dict(child)
                node = child
            else:
                if leaf in node:
                    raise InputError(f"both the deprecated [{section}] {key} and {path} are set; keep {path}")
                node[leaf] = transform(value) if transform is not None else value
    return data


def _resolve_moved_fields(options, changes: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``changes`` of the table ``path`` with the :data:`MOVED_FIELDS` of ``options`` at their new places."""
    moved = MOVED_FIELDS.get(type(options), {})
    if not any(key in moved for key in changes):
        return changes
    changes = dict(changes)
    for old, new in moved.items():
        if old not in changes:
            continue
        value = changes.pop(old)
        message = f"config key [{path}] {old} is deprecated; set {path}.{new} instead"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        logger.warning(message)
        *parents, leaf = new.split(".")
        node = changes
        for part in parents:
            child = node.get(part, {})
            if not isinstance(child, Mapping):
                raise InputError(
                    f"both the deprecated [{path}] {old} and {path}.{part} are set; keep {path}.{part}"
                )
            node[part] = child = dict(child)
            node = child
        if leaf in node:
            raise InputError(
                f"both the deprecated [{path}] {old} and {path}.{new} are set; keep {path}.{new}"
            )
        node[leaf] = value
    return changes


# --- walking the tree ----------------------------------------------------------------------------------
def _check_keys(path: str, options, changes: Mapping[str, Any]) -> None:
    known = [f.name for f in fields(options)]
    unknown = [key for key in changes if key not in known]
    if not unknown:
        return
    if not path:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean [{close[0]}]?" if close else ""
        raise InputError(f"unknown config section [{unknown[0]}]{hint} known: {sorted(known)}")
    hints = [difflib.get_close_matches(key, known, n=1) for key in unknown]
    hint = "; ".join(
        f"did you mean {h[0]!r} for {key!r}?" for key, h in zip(unknown, hints, strict=True) if h
    )
    raise InputError(
        f"unknown option(s) {sorted(unknown)} in [{path}]{'; ' + hint if hint else ''}; known: {sorted(known)}"
    )


def _updated(options, changes: Mapping[str, Any], path: str):
    """``options`` with ``changes`` applied; nested tables update nested options, keys are checked."""
    if not isinstance(changes, Mapping):
        raise InputError(f"[{path}] must be a table, got {type(changes).__name__}")
    changes = _resolve_moved_fields(options, changes, path)
    _check_keys(path, options, changes)
    hints = _type_hints(type(options))
    values = {}
    for key, value in changes.items():
        name = f"{path}.{key}" if path else key
        current = getattr(options, key)
        if current is None and isinstance(value, Mapping) and (cls := _options_class(hints.get(key))):
            current = cls()  # an optional nested options (None = the stage's default): start from it
        if is_dataclass(current):
            if isinstance(value, type(current)):
                values[key] = value
            elif isinstance(value, Mapping):
                values[key] = _updated(current, value, name)
            elif not path:
                raise InputError(f"[{name}] must be a table, got {type(value).__name__}")
            else:
                raise InputError(f"option {name} must be a table, got {value!r}")
            continue
        if isinstance(value, list):
            value = tuple(value)
        hint = hints.get(key)
        if isinstance(value, str) and value.lower() == "none" and _allows_none(hint):
            value = None  # TOML has no null: "none" stands for it where the field admits None
        _check_type(name, current, value, hint)
        values[key] = value
    if not values:
        return options
    try:
        return replace(options, **values)
    except InputError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"bad config value in [{path}]: {' '.join(str(exc).split())}") from None


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: fall back to value kinds
        return {}


def _check_type(name: str, current: Any, value: Any, hint: Any = None) -> None:
    """The value must have the kind of the field's current value (None: any kind), and a closed choice
    (``Literal``) must be one of its values.

    Without this a string for an int option fails deep inside a stage with a TypeError.
    """
    if value is None:
        return
    choices = _literal_choices(hint)
    if choices and value not in choices:
        raise InputError(f"option {name} must be one of {list(choices)}, got {value!r}")
    if current is None:
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
    else:
        return
    if not ok:
        raise InputError(f"option {name} must be {kind}, got {value!r}")


def _options_class(hint: Any) -> type | None:
    """The options dataclass in an ``Options | None`` annotation, if any."""
    for arg in get_args(hint) or (hint,):
        if isinstance(arg, type) and is_dataclass(arg):
            return arg
    return None


def _allows_none(hint: Any) -> bool:
    """Whether an annotation admits None (unknown annotations are assumed to)."""
    if hint is None:
        return True
    return type(None) in get_args(hint) and "none" not in _literal_choices(hint)


def _literal_choices(hint: Any) -> tuple:
    """The allowed values of a ``Literal`` (or ``Literal | None``) annotation; () otherwise."""
    if hint is None:
        return ()
    if get_origin(hint) is Literal:
        return get_args(hint)
    args = get_args(hint)
    literals = [a for a in args if get_origin(a) is Literal]
    return get_args(literals[0]) if literals else ()


# --- presets --------------------------------------------------------------------------------------
#: Named configurations: changes to the default tree (docs/architecture.md "Presets" lists them in one
#: table). Each changes what its name says and nothing else.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # Quicker: fewer, smaller features; pairs from retrieval (each image's top-10 most similar images,
    # plus its 3 neighbours in file order, so a sequence still closes its loops, unlike sequential-only
    # pairing, which split templeRing into four models); shorter bundle adjustments.
    "fast": {
        "pipeline": {"pairing": "retrieval", "retrieval_k": 10},
        "extraction": {"max_num_features": 4000, "max_image_size_px": 1200},
        "mapper": {"local_ba": {"max_iterations": 15}, "global_ba": {"max_iterations": 30}},
    },
    # Slower, for the best model: more features (full resolution, lower SIFT contrast threshold), exact
    # nearest-neighbour matching, more confident RANSACs, longer bundle adjustments.
    "accurate": {
        "extraction": {
            "max_num_features": 16000,
            "max_image_size_px": 4000,
            "sift_contrast_threshold": 0.008,
        },
        "matching": {"method": "bruteforce"},
        "two_view": {"ransac": {"confidence": 0.9999, "min_iterations": 128, "max_iterations": 20000}},
        "mapper": {
            "registration": {"ransac": {"confidence": 0.99999, "max_iterations": 10000}},
            "local_ba": {"max_iterations": 50},
            "global_ba": {"max_iterations": 100, "function_tolerance": 1e-8},
        },
    },
}


def preset(name: str) -> ReconstructionConfig:
    """A named configuration: one of ``PRESETS``."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ReconstructionConfig().with_changes(**PRESETS[name])


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
    """Build a config from nested dicts (the TOML structure); unknown keys are errors with a hint."""
    if not isinstance(data, dict):
        raise InputError(f"config must be a table, got {type(data).__name__}")
    data = dict(data)
    preset_name = data.pop("preset", None)
    if preset_name is not None and not isinstance(preset_name, str):
        raise InputError(f"preset must be a string, got {preset_name!r}")
    config = preset(preset_name) if preset_name else (base or ReconstructionConfig())
    return _updated(config, _resolve_deprecated(data), "")


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
