"""End-to-end reconstruction: images -> features -> matches -> verified pairs -> incremental mapping.

Every per-item stage caches its results under ``OUT/cache`` (keyed by content and options), so a rerun
after an interruption resumes where the previous run stopped; all outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geomvision.config import PipelineOptions, ReconstructionConfig
from geomvision.errors import InputError, ReconstructionError
from geomvision.progress import ProgressCallback
from geomvision.runtime.allocator import release_free_memory
from geomvision.runtime.atomic import atomic_write_text, replace_folder
from geomvision.runtime.runner import DaskSettings, StageRunner, open_runner
from geomvision.scene import Camera, ImageInfo, Reconstruction, TwoViewGeometry
from geomvision.sfm.two_view import TwoViewOptions

logger = logging.getLogger(__name__)

#: ``progress_factory(stage_name)`` returns a context manager yielding a progress callback.
ProgressFactory = Callable[[str], contextlib.AbstractContextManager[ProgressCallback]]

MIN_IMAGES = 2


@dataclass
class PipelineResult:
    """All models found (largest first) and the report written to ``report.json``."""

    reconstructions: list[Reconstruction]
    report: dict[str, Any]
    output_dir: Path | None = None
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry] = field(default_factory=dict)

    @property
    def reconstruction(self) -> Reconstruction:
        return self.reconstructions[0]


def reconstruct(
    image_dir: str | Path, output_dir: str | Path | None = None, config: ReconstructionConfig | None = None
) -> Reconstruction:
    """Reconstruct the largest model from a folder of images.

    Args:
        image_dir: folder of images (searched non-recursively, sorted by name).
        output_dir: where to write ``sparse/0`` (COLMAP text), ``points.ply``, ``report.json`` and caches;
            None keeps everything in memory (no caching).
        config: a :class:`ReconstructionConfig`; defaults if None.

    Returns:
        The largest reconstruction (others are in ``OUT/sparse/1..``).

    Raises:
        InputError: bad input (missing/empty folder, unreadable images, bad options).
        ReconstructionError: no model could be built (e.g. no overlapping pair).
    """
    return run_pipeline(image_dir, output_dir, config).reconstruction


def run_pipeline(
    image_dir: str | Path,
    output_dir: str | Path | None = None,
    config: ReconstructionConfig | None = None,
    *,
    progress_factory: ProgressFactory | None = None,
) -> PipelineResult:
    """Run every stage and write the outputs; see :func:`reconstruct`.

    ``OUT/report.json`` is written on success and on failure (including Ctrl-C): a failed run records
    ``status`` ("failed" / "interrupted"), ``failed_stage``, ``error`` and whatever the finished stages
    reported, and keeps their caches so a rerun resumes from them. When ``report.json`` already
    describes a successful run (whose model is still in ``sparse/``), the failure goes to
    ``report.failed.json`` instead, which the next successful run removes.
    """
    config = config or ReconstructionConfig()
    run = _Run(
        image_dir=Path(image_dir),
        out=_prepare_output_dir(output_dir),
        config=config,
        progress_factory=progress_factory or _no_progress,
    )
    if run.out is not None:
        _remove_stale_temp_files(run.out)
    try:
        result = _run_stages(run)
    except (Exception, KeyboardInterrupt) as exc:  # record any failure, then let the caller see it
        _write_failure_report(run, exc)
        raise
    return result


@dataclass
class _Run:
    """State of one pipeline run shared by the stages (what the failure report needs to see)."""

    image_dir: Path
    out: Path | None
    config: ReconstructionConfig
    progress_factory: ProgressFactory
    stage: str = "setup"
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    runner: StageRunner | None = None

    @property
    def cache(self) -> Path | None:
        return self.out / "cache" if self.out else None


def _run_stages(run: _Run) -> PipelineResult:
    from geomvision.io.images import scan_images

    config, out, cache, progress_factory = run.config, run.out, run.cache, run.progress_factory
    report, timings = run.report, run.timings
    report.update({"status": "running", "image_dir": str(run.image_dir), "config": config.to_dict()})
    report["image_dir_absolute"] = str(run.image_dir.resolve())  # for exports run from another folder
    if out and config.pipeline.html_report:
        _warn_about_system_libraries()

    if (
        config.pipeline.pose_prior_checkpoint
    ):  # a bad checkpoint or missing torch fails now, not after mapping
        from geomvision.plugins.learned_prior import check_learned_prior

        check_learned_prior(config.pipeline.pose_prior_checkpoint)
    scan = scan_images(run.image_dir, strict=config.pipeline.strict)
    report["skipped_images"] = [{"name": s.name, "reason": s.reason} for s in scan.skipped]
    report["ignored_files"] = scan.ignored
    paths = scan.paths
    if len(paths) < MIN_IMAGES:
        raise InputError(
            f"need at least {MIN_IMAGES} usable images in {run.image_dir}, found {len(paths)}"
            + (
                f" ({len(scan.skipped)} skipped: {', '.join(s.name for s in scan.skipped[:5])})"
                if scan.skipped
                else ""
            )
        )
    image_ids = list(range(1, len(paths) + 1))
    names = {i: p.name for i, p in zip(image_ids, paths, strict=True)}
    report["num_images"] = len(paths)

    with open_pipeline_runner(config.pipeline, cache) as runner:
        run.runner = runner
        t = time.perf_counter()
        run.stage = "cameras"  # reads every image header: unreadable files fail here, before any work
        cameras, camera_of_image = setup_cameras(paths, image_ids, config)
        if config.pipeline.intrinsics is not None:  # known calibration: no mapper refines it (recorded)
            config = run.config = _with_fixed_cameras(config, sorted(cameras))
            report["config"] = config.to_dict()
        run.stage = "features"
        features = _run_features(paths, image_ids, config, runner, progress_factory)
        timings["features"] = time.perf_counter() - t
        report["features"] = _feature_counts(features, names)
        _check_enough_features(features, names)

        t = time.perf_counter()
        run.stage = "matching"
        pairs = select_pairs(image_ids, features, config)
        matches = _run_matching(features, pairs, config, runner, progress_factory)
        timings["matching"] = time.perf_counter() - t
        report["matching"] = {
            "pairing": resolve_pairing(len(image_ids), config.pipeline),
            "num_pairs": len(pairs),
            "num_matches_total": int(sum(len(m) for m in matches.values())),
        }

        t = time.perf_counter()
        run.stage = "verification"
        cameras_by_image = {i: cameras[camera_of_image[i]] for i in image_ids}
        two_view = _run_verification(features, matches, cameras_by_image, config, runner, progress_factory)
        match_counts = {pair: len(m) for pair, m in matches.items()}
        del matches  # raw matches (~24 bytes a match) are not needed once verified: their counts are
        timings["verification"] = time.perf_counter() - t
        verified = {pair: g for pair, g in two_view.items() if g.success}
        report["verification"] = {
            **_verification_counts(two_view, verified),
            "max_error_px": verification_options(config).ransac.max_error_px,
        }
        if config.wide_baseline.enabled:  # weakly connected images: retry their pairs (affine features)
            run.stage = "wide_baseline"
            features, verified, report["wide_baseline"] = _run_wide_baseline(
                paths, features, match_counts, verified, cameras_by_image, config, progress_factory
            )
            timings["wide_baseline"] = report["wide_baseline"]["time_s"]
        if config.wide_baseline.guided.enabled:  # weak images: more inliers from guided matching
            from geomvision.sfm.guided_matching import densify_weak_pairs

            run.stage = "guided_matching"
            verified, report["guided_matching"] = densify_weak_pairs(
                features, verified, cameras_by_image, config.wide_baseline.guided
            )
            timings["guided_matching"] = report["guided_matching"]["time_s"]
        if not verified:
            run.stage = "verification"  # the wide-baseline retry found nothing either: verification failed
            raise ReconstructionError(
                f"no image pair could be verified among {len(image_ids)} images "
                f"({len(match_counts)} pairs matched): the images do not overlap enough"
            )
        if config.pipeline.intrinsics is None:  # unknown focal: calibrate it from the view graph
            run.stage = "calibration"
            t = time.perf_counter()
            cameras, verified, report["calibration"] = _run_calibration(
                cameras, camera_of_image, verified, features, paths, config, runner, progress_factory
            )
            timings["calibration"] = time.perf_counter() - t
        # The mapper runs in this process only: a pool worker writes the view graph meanwhile. The front end's
        # workers end first (their grown heaps would count beside the mapper); fresh ones start for it. This
        # process hands back the heap the front end freed (matches, verification results): at 2000 images it
        # holds the clusters' returning models beside two cluster workers, the tree's peak.
        runner.release_workers()
        release_free_memory()
        # A partitioned mapping keeps every worker busy with clusters: the view graph is drawn here first
        # (on a worker it held up the second cluster by ~4 s at 1000 images, ~10 s at 2000).
        view_graph_written = _start_view_graph_output(
            out, verified, names, runner, in_process=_maps_in_clusters(config, len(image_ids))
        )

        t = time.perf_counter()
        run.stage = "mapping"
        images = {
            i: ImageInfo(names[i], camera_of_image[i], features[i].keypoints_px, features[i].colors)
            for i in image_ids
        }
        del features  # descriptors (float32, ~0.8 GB at 300 images) are not needed by mapping or later
        mapping = _run_mapping(cameras, images, verified, config, progress_factory, runner)
        timings["mapping"] = time.perf_counter() - t
        if view_graph_written is not None:
            view_graph_written.result()
        report["engine"] = runner.report()
    report["mapping"] = mapping.report
    reconstructions = [r for r in mapping.reconstructions if r.num_registered >= 2]

    if len(reconstructions) > 1 and config.wide_baseline.bridge.enabled:  # join separate models
        from geomvision.sfm.wide_baseline import bridge_and_merge_models

        t = time.perf_counter()
        run.stage = "model_bridge"
        reconstructions, report["model_bridge"] = bridge_and_merge_models(
            reconstructions, verified, config.wide_baseline.bridge, rng=config.pipeline.seed
        )
        timings["model_bridge"] = time.perf_counter() - t
    from geomvision.sfm.wide_baseline import needs_global_fallback

    if needs_global_fallback(  # most images left out (a sparse ring): try the global mapper
        reconstructions, len(image_ids), config.wide_baseline.global_fallback, mapper=config.pipeline.mapper
    ):
        t = time.perf_counter()
        run.stage = "global_fallback"
        reconstructions, report["global_fallback"] = _run_global_fallback(
            reconstructions, cameras, images, verified, config, progress_factory
        )
        timings["global_fallback"] = time.perf_counter() - t
    if not reconstructions:
        run.stage = "mapping"  # the fallback is part of mapping: a failure is the mapping stage's
        raise ReconstructionError(
            f"mapping failed: {mapping.report.get('reason', 'no model with 2+ images')}"
        )

    if config.pipeline.intrinsics is None and config.calibration.enabled:  # unknown K: principal point
        t = time.perf_counter()
        run.stage = "principal_point"
        from geomvision.sfm.calibration import refine_principal_points

        report["principal_point"] = refine_principal_points(
            reconstructions, config.calibration, rng=config.pipeline.seed
        )
        timings["principal_point"] = time.perf_counter() - t

    t = time.perf_counter()
    run.stage = "trust"  # measured signals; sparse/0 becomes the largest trusted model
    from geomvision.sfm.calibration import trusted_focal_estimates
    from geomvision.sfm.trust import assess_models_trust

    focal_estimates = trusted_focal_estimates(report.get("calibration"))
    fixed = tuple(cameras) if config.pipeline.intrinsics is not None else ()
    reconstructions, verdicts = assess_models_trust(
        reconstructions,
        config.trust,
        calibrated_focal_px=focal_estimates,
        fixed_camera_ids=fixed,
        two_view_geometries=verified,
        rng=config.pipeline.seed,
    )
    timings["trust"] = time.perf_counter() - t

    if config.pipeline.pose_prior_checkpoint:  # learned fallback for images PnP could not register
        t = time.perf_counter()
        run.stage = "pose_prior"
        report["pose_prior"] = _run_pose_prior(reconstructions, cameras, images, paths, match_counts, config)
        timings["pose_prior"] = time.perf_counter() - t

    t = time.perf_counter()
    run.stage = "export"
    if out:
        _write_models(out, reconstructions, run.image_dir)
    timings["export"] = time.perf_counter() - t
    report.update(_model_summary(reconstructions))
    for model, verdict in zip(report["models"], verdicts, strict=True):
        model.update(trusted=verdict.trusted, trust_reasons=verdict.reasons, trust_signals=verdict.signals)
    report["trusted"] = verdicts[0].trusted
    report["status"] = "success"
    _write_report(out, report, timings, run.t_start)
    if out and config.pipeline.html_report:
        _write_html_report(out, reconstructions[0], report, verified, names)
    return PipelineResult(reconstructions, report, out, two_view)


def _write_failure_report(run: _Run, exc: BaseException) -> None:
    """Record a failed or interrupted run in ``report.json``; never masks the original error."""
    if run.out is None:
        return
    interrupted = isinstance(exc, KeyboardInterrupt)
    run.report["status"] = "interrupted" if interrupted else "failed"
    if interrupted:  # Ctrl-C is a plain KeyboardInterrupt; the CLI raises Terminated for SIGTERM
        run.report["signal"] = getattr(exc, "signal_name", "SIGINT")
    run.report["failed_stage"] = run.stage
    run.report["error"] = "interrupted" if interrupted else " ".join(str(exc).split()) or type(exc).__name__
    run.report["error_type"] = type(exc).__name__
    if run.runner is not None:
        run.report["engine"] = run.runner.report()
    try:
        _write_report(run.out, run.report, run.timings, run.t_start, name=_failure_report_name(run.out))
    except Exception as write_exc:  # e.g. the disk is full: the first error is the one to report
        logger.warning("could not write report.json after the failure: %s", write_exc)


def _failure_report_name(out: Path) -> str:
    """``report.json``, or ``report.failed.json`` when ``report.json`` describes a successful run.

    A failed rerun must not make the model of an earlier successful run look failed: that model is
    still in ``sparse/``, so its report stays and the failure goes next to it.
    """
    try:
        previous = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return "report.json"
    return (
        "report.failed.json"
        if isinstance(previous, dict) and previous.get("status") == "success"
        else "report.json"
    )


#: Temporary names of :mod:`geomvision.runtime.atomic` (``.<stem>.<8 random chars><suffix>``).
_ATOMIC_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def _remove_stale_temp_files(out: Path) -> None:
    """Delete temporary files an earlier run left when it was killed mid-write (SIGKILL, power loss).

    Atomic writes rename their temporary file onto the target, so such a file is never a finished
    output; removing it keeps the folder holding only complete files.
    """
    sparse = out / "sparse"
    if sparse.is_dir():  # half-swapped model folders (see _replace_folder)
        for path in sparse.iterdir():
            if path.is_dir() and re.fullmatch(r"\.(tmp|old)-\d+", path.name):
                shutil.rmtree(path, ignore_errors=True)
    for path in out.rglob(".*"):
        if path.is_file() and _ATOMIC_TEMP.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                logger.info("removed temporary file %s left by an interrupted run", path)


# --- setup ----------------------------------------------------------------------------------------
def _warn_about_system_libraries() -> None:
    """Say before any work, in one line, which Debian packages Open3D lacks (report.html's renderer).

    Nothing else of a run needs Open3D (points.ply is written with numpy), so the run goes on.
    """
    from geomvision.io.system_libraries import open3d_library_problem

    problem = open3d_library_problem()
    if problem:
        logger.warning("%s; going on: report.html uses the software renderer", problem)


def _prepare_output_dir(output_dir: str | Path | None) -> Path | None:
    if output_dir is None:
        return None
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror}") from None
    return out


def _no_progress(stage: str) -> contextlib.AbstractContextManager[ProgressCallback]:
    return contextlib.nullcontext(lambda done, total, message="": None)


def open_pipeline_runner(options: PipelineOptions, cache: Path | None) -> StageRunner:
    """The stage runner of a run: ``backend``/``scheduler``/``num_workers`` of ``[pipeline]``.

    A ``scheduler`` (``local`` or ``tcp://HOST:PORT``) selects the dask backend.
    """
    backend = "dask" if options.scheduler is not None else options.backend
    dask = DaskSettings(
        scheduler=options.scheduler or "local",
        images_visible_to_workers=options.images_visible_to_workers,
        tls_ca_file=options.tls_ca_file,
        tls_cert_file=options.tls_cert_file,
        tls_key_file=options.tls_key_file,
    )
    return open_runner(backend, options.num_workers, cache_dir=cache, dask=dask)


def setup_cameras(
    paths: list[Path], image_ids: list[int], config: ReconstructionConfig
) -> tuple[dict[int, Camera], dict[int, int]]:
    """Initial intrinsics (see :func:`geomvision.io.camera_setup.setup_cameras`).

    Returns:
        (cameras by camera_id, camera_id of each image_id).
    """
    from geomvision.io.camera_setup import setup_cameras as setup

    o = config.pipeline
    return setup(
        paths,
        image_ids,
        camera_model=o.camera_model,
        single_camera=o.single_camera,
        intrinsics=o.intrinsics,
        intrinsics_convention=o.intrinsics_convention,
        intrinsics_size_px=o.intrinsics_size,
        scale_intrinsics=o.scale_intrinsics,
    )


def resolve_pairing(num_images: int, options) -> str:
    """The pairing mode a run uses: ``options.pairing``, with ``auto`` resolved by the number of images."""
    if options.pairing != "auto":
        return options.pairing
    return "exhaustive" if num_images <= options.auto_exhaustive_max_images else "retrieval"


def select_pairs(image_ids: list[int], features: dict, config: ReconstructionConfig) -> list[tuple[int, int]]:
    """Image pairs to match, by the configured pairing mode (sorted (i, j) with i < j)."""
    from geomvision.features import pairs as pairing

    options = config.pipeline
    mode = resolve_pairing(len(image_ids), options)
    if mode == "exhaustive":
        return pairing.exhaustive_pairs(image_ids)
    if mode == "sequential":
        return pairing.sequential_pairs(image_ids, options.sequential_window)
    retrieved = pairing.retrieval_pairs(features, options.retrieval_k, rng=options.seed)
    sequential = pairing.sequential_pairs(image_ids, min(options.sequential_window, 3))
    return sorted(set(retrieved) | set(sequential))


# --- stages ---------------------------------------------------------------------------------------
def _run_features(paths, image_ids, config, runner, progress_factory) -> dict:
    from geomvision.features.extract import extract_features

    with progress_factory("features") as progress:
        try:
            # descriptors stay in the cache (read back per matching task): memory does not grow with them
            features = extract_features(
                paths, config.extraction, runner=runner, progress=progress, descriptors_on_disk=True
            )
        except OSError as exc:
            # An image that cannot be opened (permissions, vanished, a folder) is bad input; a failed
            # cache write (e.g. a full disk) is not, and keeps its OSError.
            if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR) and exc.filename:
                raise InputError(f"cannot read image {str(exc.filename)!r}: {exc.strerror}") from None
            raise
    return dict(zip(image_ids, features, strict=True))


def _run_matching(features, pairs, config, runner, progress_factory) -> dict:
    from geomvision.features.match import match_pairs

    with progress_factory("matching") as progress:
        return match_pairs(features, pairs, config.matching, runner=runner, progress=progress)


def verification_options(config: ReconstructionConfig) -> TwoViewOptions:
    """The two-view options the run verifies with: ``[two_view]``, at
    ``pipeline.global_verification_max_error_px`` when the global mapper maps."""
    max_error_px = config.pipeline.global_verification_max_error_px
    if config.pipeline.mapper != "global" or max_error_px is None:
        return config.two_view
    return replace(config.two_view, ransac=replace(config.two_view.ransac, max_error_px=max_error_px))


def _run_verification(features, matches, cameras_by_image, config, runner, progress_factory) -> dict:
    from geomvision.sfm.two_view import verify_pairs

    with progress_factory("verification") as progress:
        return verify_pairs(
            features,
            matches,
            cameras_by_image,
            verification_options(config),
            rng=config.pipeline.seed,
            runner=runner,
            progress=progress,
        )


def _run_wide_baseline(paths, features, match_counts, verified, cameras_by_image, config, progress_factory):
    from geomvision.sfm.wide_baseline import densify_wide_baseline_pairs

    with progress_factory("wide_baseline") as progress:
        result = densify_wide_baseline_pairs(
            dict(zip(sorted(features), paths, strict=True)),
            features,
            match_counts,
            verified,
            cameras_by_image,
            config.wide_baseline,
            two_view_options=verification_options(config),
            rng=config.pipeline.seed,
            progress=progress,
        )
    return result.features, result.two_view_geometries, result.report


def _run_calibration(cameras, camera_of_image, verified, features, paths, config, runner, progress_factory):
    from geomvision.sfm.calibration import exif_focal_camera_ids, self_calibrate

    exif = exif_focal_camera_ids(dict(zip(sorted(features), paths, strict=True)), camera_of_image)
    with progress_factory("calibration") as progress:
        result = self_calibrate(
            cameras,
            camera_of_image,
            verified,
            features,
            config.calibration,
            exif_camera_ids=exif,
            two_view_options=verification_options(config),
            rng=config.pipeline.seed,
            runner=runner,
            progress=progress,
        )
    return result.cameras, result.two_view_geometries, result.report


def _maps_in_clusters(config: ReconstructionConfig, num_images: int) -> bool:
    """Whether the mapping stage maps the scene cluster by cluster (large scenes, incremental mapper)."""
    return config.pipeline.mapper != "global" and bool(config.partition.cluster_size_for(num_images))


def _run_mapping(cameras, images, verified, config, progress_factory, runner=None):
    from geomvision.sfm.incremental import incremental_mapping

    if config.pipeline.mapper == "global":
        return _run_global_mapping(cameras, images, verified, config, progress_factory)
    mapper_options = config.mapper
    if _maps_in_clusters(config, len(images)):  # large scenes: cluster by cluster, then merge
        from geomvision.sfm.partitioned_mapping import PartitionedMappingOptions, partitioned_mapping

        options = PartitionedMappingOptions(
            partition=config.partition, mapper=mapper_options, merge=config.merge
        )
        with progress_factory("mapping") as progress:
            return partitioned_mapping(
                cameras,
                images,
                verified,
                options,
                map_fn=_cluster_map_function(runner) if runner is not None else None,
                rng=config.pipeline.seed,
                progress=progress,
                num_threads=runner.backend.num_workers if runner is not None else None,
            )
    init_reconstruction = None
    if config.pipeline.init == "factorization":
        init_reconstruction = _factorization_init(cameras, images, verified, config)
    with progress_factory("mapping") as progress:
        return incremental_mapping(
            cameras,
            images,
            verified,
            mapper_options,
            init_reconstruction=init_reconstruction,
            rng=config.pipeline.seed,
            progress=progress,
        )


def _cluster_map_function(runner: StageRunner):
    """Clusters mapped on the runner's workers (worker processes even with one worker: an isolated stage),
    which end once all are mapped: the merge's final bundle adjustment then runs in this process without the
    workers' grown heaps beside it."""
    map_clusters = runner.map_function("mapping", isolated=True)

    def map_then_release(fn, tasks):
        results = map_clusters(fn, tasks)
        runner.release_workers()
        return results

    return map_then_release


def _run_global_fallback(reconstructions, cameras, images, verified, config, progress_factory):
    """The global mapper's models instead of the incremental ones when its largest registers more images."""
    before = max((r.num_registered for r in reconstructions), default=0)
    try:
        result = _run_global_mapping(cameras, images, verified, config, progress_factory)
        models = sorted(
            (r for r in result.reconstructions if r.num_registered >= 2), key=lambda r: -r.num_registered
        )
        reason, mapper_report = result.report.get("reason", ""), result.report
    except ReconstructionError as exc:  # the global mapper failed too: keep the incremental models
        models, reason, mapper_report = [], str(exc), {}
    after = models[0].num_registered if models else 0
    used = after > before
    logger.info(
        "global fallback: largest model %d -> %d images (%s)", before, after, "kept" if used else "not kept"
    )
    fallback_report = {
        "registered_incremental": before,
        "registered_global": after,
        "used": used,
        "global_mapper": mapper_report,
    }
    if reason:
        fallback_report["reason"] = reason
    return (models if used else reconstructions), fallback_report


def _run_global_mapping(cameras, images, verified, config, progress_factory):
    from geomvision.sfm.global_mapper import global_mapping

    options = config.global_mapper
    with progress_factory("mapping") as progress:
        return global_mapping(cameras, images, verified, options, rng=config.pipeline.seed, progress=progress)


def _with_fixed_cameras(config: ReconstructionConfig, camera_ids: list[int]) -> ReconstructionConfig:
    """Known calibration: both mappers hold these cameras (so report.json's config says what ran)."""
    return config.with_changes(
        mapper={"fixed_camera_ids": camera_ids},
        global_mapper={"fixed_camera_ids": camera_ids},
        wide_baseline={"bridge": {"merge": {"bundle_adjustment": {"intrinsics": "fixed"}}}},
    )


def _run_pose_prior(reconstructions, cameras, images, paths, match_counts, config) -> dict[str, Any]:
    from geomvision.plugins.learned_prior import apply_learned_pose_prior

    return apply_learned_pose_prior(
        reconstructions,
        cameras,
        images,
        dict(zip(sorted(images), paths, strict=True)),
        match_counts,
        config.pipeline.pose_prior_checkpoint,
        config.pose_prior,
    )


def _factorization_init(cameras, images, verified, config) -> Reconstruction:
    from geomvision.sfm.factorization_init import initialize_by_factorization
    from geomvision.sfm.tracks import build_tracks

    tracks = build_tracks({pair: g.inlier_matches for pair, g in verified.items()})
    result = initialize_by_factorization(
        cameras, images, tracks, config.factorization, rng=config.pipeline.seed
    )
    if not result.success:
        raise ReconstructionError(f"factorization initialisation failed: {result.reason}")
    return result.reconstruction


# --- outputs --------------------------------------------------------------------------------------
def _write_models(out: Path, reconstructions: list[Reconstruction], image_dir: Path) -> None:
    from geomvision.io.colmap import write_model
    from geomvision.io.ply import write_point_cloud

    sparse = out / "sparse"
    for index, rec in enumerate(reconstructions):
        _replace_folder(sparse / str(index), lambda tmp, rec=rec: write_model(rec, tmp))
    # Drop models left by an earlier run that found more of them.
    for stale in sparse.iterdir():
        if stale.is_dir() and stale.name.isdigit() and int(stale.name) >= len(reconstructions):
            shutil.rmtree(stale)
    # Exports (OUT/export/...) were made from the previous model: a new model makes them stale.
    shutil.rmtree(out / "export", ignore_errors=True)
    best = reconstructions[0]
    point_ids = sorted(best.points3D)
    xyz = np.array([best.points3D[p].xyz for p in point_ids]).reshape(-1, 3)
    rgb = np.array([best.points3D[p].color for p in point_ids], dtype=np.uint8).reshape(-1, 3)
    write_point_cloud(out / "points.ply", xyz, rgb)


def _replace_folder(folder: Path, write: Callable[[Path], Any]) -> None:
    """Write a whole folder next to ``folder`` and swap it in, so the three model files always match.

    A kill leaves either the old model, or no ``folder`` plus hidden ``.tmp-``/``.old-`` folders that
    the next run removes.
    """
    tmp = folder.with_name(f".tmp-{folder.name}")
    replace_folder(folder, write, tmp=tmp, old=folder.with_name(f".old-{folder.name}"))


def _model_summary(reconstructions: list[Reconstruction]) -> dict[str, Any]:
    # summary() reprojects every observation: compute it once per model and reuse the largest's.
    models = [r.summary() for r in reconstructions]
    best = models[0]
    return {
        "num_registered": best["num_registered"],
        "num_points3D": best["num_points3D"],
        "num_observations": best["num_observations"],
        "mean_track_length": best["mean_track_length"],
        "mean_reprojection_error_px": best["mean_reprojection_error_px"],
        "num_models": len(reconstructions),
        # images registered in any model (each image is in at most one)
        "num_registered_all_models": len(
            {v.name for r in reconstructions for v in r.views.values() if v.registered}
        ),
        "models": models,
        "registered_images": [
            reconstructions[0].views[i].name for i in reconstructions[0].registered_image_ids
        ],
    }


#: Fewest keypoints an image needs to take part in two-view geometry (the 8-point minimal sample).
MIN_FEATURES_PER_IMAGE = 8


def _check_enough_features(features: dict, names: dict[int, str]) -> None:
    """Fail early, with the right reason, when blank or textureless images leave nothing to match."""
    usable = [i for i, f in features.items() if len(f) >= MIN_FEATURES_PER_IMAGE]
    if len(usable) < MIN_IMAGES:
        most = max(features, key=lambda i: len(features[i]))
        raise ReconstructionError(
            f"only {len(usable)} of {len(features)} images have >= {MIN_FEATURES_PER_IMAGE} features "
            f"(most: {len(features[most])} in {names[most]}): the images are blank or textureless"
        )


def _feature_counts(features: dict, names: dict[int, str]) -> dict[str, Any]:
    counts = {names[i]: len(f) for i, f in features.items()}
    values = list(counts.values())
    return {"per_image": counts, "mean": float(np.mean(values)), "min": int(min(values))}


def _verification_counts(two_view: dict, verified: dict) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for g in two_view.values():
        if not g.success:
            key = g.reason.split(":")[0][:60] or "rejected"
            reasons[key] = reasons.get(key, 0) + 1
    configs: dict[str, int] = {}
    for g in verified.values():
        configs[g.config] = configs.get(g.config, 0) + 1
    inliers = [g.num_inliers for g in verified.values()]
    return {
        "num_pairs": len(two_view),
        "num_verified": len(verified),
        "median_inliers": float(np.median(inliers)) if inliers else 0.0,
        "configs": configs,
        "rejections": reasons,
    }


def _start_view_graph_output(
    out: Path | None, verified: dict, names: dict[int, str], runner: StageRunner, *, in_process: bool = False
):
    """Write OUT/view_graph.{json,png}: in a local pool or LocalCluster worker when there is one (returns
    its future), else (or with ``in_process``) now, in this process.

    Drawing with matplotlib takes ~1.5 s at 100 images (import included), which a worker hides behind a
    mapper running in this process; a mapper that needs every worker (clusters) would wait for it.
    """
    if not out:
        return None
    if in_process:
        _write_view_graph(out.resolve(), verified, names)
        return None
    return runner.submit_background(_write_view_graph, out.resolve(), verified, names)


def _write_view_graph(out: Path, verified: dict, names: dict[int, str]) -> None:
    from geomvision.sfm.view_graph import build_view_graph, draw_view_graph, save_view_graph

    graph = build_view_graph(verified, names)
    save_view_graph(graph, out / "view_graph.json")
    try:
        draw_view_graph(graph, out / "view_graph.png")
    except Exception as exc:  # a drawing is a nicety: never lose a reconstruction over it
        logger.warning("could not draw the view graph: %s", exc)


def _write_report(
    out: Path | None, report: dict, timings: dict, t_start: float, *, name: str = "report.json"
) -> None:
    timings = {k: timings.get(k, 0.0) for k in ("features", "matching", "verification", "mapping")} | timings
    timings["total"] = time.perf_counter() - t_start
    report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    report.setdefault("num_registered", 0)
    report.setdefault("num_points3D", 0)
    report.setdefault("mean_reprojection_error_px", None)
    if out is not None:
        atomic_write_text(out / name, json.dumps(_jsonable(report), indent=2) + "\n")
        if report.get("status") == "success":  # a failure of an earlier run is no longer news
            (out / "report.failed.json").unlink(missing_ok=True)


def _write_html_report(out: Path, rec: Reconstruction, report: dict, verified: dict, names) -> None:
    try:
        from geomvision.sfm.view_graph import build_view_graph
        from geomvision.viz.report import write_report_html

        write_report_html(out, rec, report, view_graph=build_view_graph(verified, names))
    except Exception as exc:  # the HTML report must never cost the user the model
        logger.warning("could not write report.html: %s", exc)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Path):
        return str(value)
    return value
