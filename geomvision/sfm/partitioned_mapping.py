"""Partitioned mapping: cut the view graph into clusters, map each on its own, merge the models by Sim(3).

1. the view graph of the verified pairs is partitioned into overlapping clusters
   (:func:`geomvision.sfm.partition.partition_view_graph`);
2. each cluster is one task, a pure function of picklable inputs (:func:`map_cluster` on a
   :class:`ClusterTask`: the cluster's cameras, its images' keypoints, its verified pairs, the mapper
   options and a seed derived from (seed, cluster index)), so serial, process-pool and Dask runs give the
   same models. The tasks go through a ``map``-like callable (the builtin ``map``, ``Executor.map`` or
   the stage runner's map);
3. the clusters' models are merged (:func:`geomvision.sfm.merge.merge_reconstructions`); models that
   cannot be attached stay separate, with the reason in the report.

The result has the shape of :func:`geomvision.sfm.incremental.incremental_mapping`'s, so the pipeline
treats both alike; its report adds the partition, per-cluster counts, times and memory, the merge
residuals and the images dropped at merge.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from geomvision.errors import InputError, check_at_least
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.runtime.worker import thread_budget, thread_limits
from geomvision.scene import Camera, ImageInfo, Reconstruction, TwoViewGeometry
from geomvision.sfm.incremental import IncrementalMapperOptions, MappingResult, incremental_mapping
from geomvision.sfm.merge import MergeOptions, merge_reconstructions
from geomvision.sfm.partition import PartitionOptions, partition_view_graph
from geomvision.sfm.view_graph import build_view_graph

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterResult",
    "ClusterTask",
    "PartitionedMappingOptions",
    "cluster_tasks",
    "map_cluster",
    "partitioned_mapping",
]

#: ``map_fn(function, tasks)``: anything with the builtin ``map``'s contract (results in task order).
MapFunction = Callable[
    [Callable[["ClusterTask"], "ClusterResult"], Iterable["ClusterTask"]], Iterable["ClusterResult"]
]


@dataclass(frozen=True, kw_only=True)
class PartitionedMappingOptions:
    """Options of :func:`partitioned_mapping` (it nests the options of the three stages it calls).

    Attributes:
        partition: how the view graph is cut (and when: ``partition.cluster_size_for``).
        mapper: the incremental mapper each cluster runs.
        merge: how the clusters' models are aligned and joined.
        min_cluster_model_images: cluster models with fewer registered images are not merged.
    """

    partition: PartitionOptions = field(default_factory=PartitionOptions)
    mapper: IncrementalMapperOptions = field(default_factory=IncrementalMapperOptions)
    merge: MergeOptions = field(default_factory=MergeOptions)
    min_cluster_model_images: int = 3

    def __post_init__(self) -> None:
        check_at_least("min_cluster_model_images", self.min_cluster_model_images, 2)


@dataclass(frozen=True)
class ClusterTask:
    """Everything one cluster's mapping needs (picklable; no shared state).

    Attributes:
        index: cluster index (its rank in the partition, largest core first).
        cameras: camera_id -> Camera of the cluster's images.
        images: image_id -> ImageInfo of the cluster's images (core and overlap).
        two_view_geometries: verified pairs with both images in the cluster.
        core_image_ids: the images the cluster owns (the others are overlap).
        options: mapper options.
        seed: seed of the cluster's random choices, derived from (run seed, index).
    """

    index: int
    cameras: dict[int, Camera]
    images: dict[int, ImageInfo]
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry]
    core_image_ids: tuple[int, ...]
    options: IncrementalMapperOptions
    seed: int


@dataclass
class ClusterResult:
    """A cluster's models and how its mapping went.

    Attributes:
        index: the task's index.
        reconstructions: the cluster's models, largest first.
        report: the mapper's report.
        time_s: wall time of the mapping.
        peak_rss_mb: peak resident memory (MiB) of the process that ran it, during the task (sampled every
            50 ms; it includes what the process held before the task, e.g. a pool worker's libraries).
        pid: process that ran it.
        cpu_s: CPU time of that process (all its threads) during the mapping, seconds.
        threads: the OpenCV and BLAS thread limits it ran under (``runtime.worker.thread_limits``).
        started_at: wall-clock time (``time.time()``, seconds) when the mapping started, to place the
            cluster on the stage's timeline (the processes share the clock).
    """

    index: int
    reconstructions: list[Reconstruction]
    report: dict[str, Any]
    time_s: float
    peak_rss_mb: float
    pid: int
    cpu_s: float = float("nan")
    threads: dict[str, int | None] = field(default_factory=dict)
    started_at: float = float("nan")


class _PeakRss:
    """Peak resident memory of this process while the block runs, sampled every ``interval_s`` (MiB).

    Reads ``/proc/self/statm`` (Linux); elsewhere falls back to the process's lifetime high-water mark
    (``ru_maxrss``), which for a pool worker also covers the tasks it ran before.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_mb() -> float | None:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self.current_mb()
            if value is not None:
                self.peak_mb = max(self.peak_mb, value) if self.peak_mb == self.peak_mb else value

    def __enter__(self) -> _PeakRss:
        start = self.current_mb()
        if start is not None:
            self.peak_mb = start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            end = self.current_mb()
            if end is not None:
                self.peak_mb = max(self.peak_mb, end)
            return
        try:
            import resource  # POSIX only: no peak memory on Windows
        except ImportError:
            return
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_mb = (
            peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
        )  # KiB on Linux, bytes on macOS


def map_cluster(task: ClusterTask) -> ClusterResult:
    """Run the incremental mapper on one cluster (a pure function of the task)."""
    t0, cpu0, started_at = time.perf_counter(), time.process_time(), time.time()
    with _PeakRss() as memory:
        result = incremental_mapping(
            task.cameras, task.images, task.two_view_geometries, task.options, rng=task.seed
        )
    return ClusterResult(
        task.index,
        result.reconstructions,
        result.report,
        time.perf_counter() - t0,
        memory.peak_mb,
        os.getpid(),
        cpu_s=time.process_time() - cpu0,
        threads=thread_limits(),
        started_at=started_at,
    )


def cluster_seed(seed: int, index: int) -> int:
    """The seed of cluster ``index`` in a run seeded with ``seed`` (independent of worker and order)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def cluster_tasks(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    clusters: list,
    options: IncrementalMapperOptions,
    seed: int,
) -> Iterator[ClusterTask]:
    """One :class:`ClusterTask` per :class:`~geomvision.sfm.partition.ImageCluster` (lazily built)."""
    for index, cluster in enumerate(clusters):
        members = set(cluster.image_ids)
        cluster_images = {i: images[i] for i in cluster.image_ids}
        yield ClusterTask(
            index=index,
            cameras={c: cameras[c] for c in sorted({info.camera_id for info in cluster_images.values()})},
            images=cluster_images,
            two_view_geometries={
                pair: g
                for pair, g in two_view_geometries.items()
                if pair[0] in members and pair[1] in members
            },
            core_image_ids=tuple(cluster.core_image_ids),
            options=options,
            seed=cluster_seed(seed, index),
        )


def _per_process(results: list[ClusterResult]) -> list[dict[str, Any]]:
    """Per process that mapped clusters: its pid, clusters, and their summed wall and CPU seconds."""
    rows: dict[int, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r.index):
        row = rows.setdefault(r.pid, {"pid": r.pid, "clusters": [], "time_s": 0.0, "cpu_s": 0.0})
        row["clusters"].append(r.index)
        row["time_s"] += r.time_s
        row["cpu_s"] += r.cpu_s
    return [
        {**row, "time_s": round(row["time_s"], 2), "cpu_s": round(row["cpu_s"], 2)} for row in rows.values()
    ]


def partitioned_mapping(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: PartitionedMappingOptions | None = None,
    *,
    map_fn: MapFunction | None = None,
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
    num_threads: int | None = None,
) -> MappingResult:
    """Map a scene cluster by cluster and merge the clusters' models.

    Args:
        cameras: camera_id -> initial intrinsics.
        images: image_id -> ImageInfo.
        two_view_geometries: verified pairs (i, j), i < j.
        options: partition, mapper and merge options.
        map_fn: ``map``-like callable running the cluster tasks (builtin ``map`` = serially in this
            process; ``executor.map`` of a process pool; the stage runner's map). Results must come back
            in task order.
        rng: seed (or generator, from which one seed is drawn) of every random choice.
        progress: ``progress(done, total, message)`` over clusters mapped.
        num_threads: threads of the merge in this process (its bundle adjustments and point refinement)
            unless ``options.merge`` sets them; None: this process's thread budget. The pipeline passes its
            worker count, so that ``--workers N`` maps and merges on N cores (one worker: one core
            throughout, as with the clusters).

    Returns:
        :class:`~geomvision.sfm.incremental.MappingResult`: the merged models (largest first) and a report
        with ``partition``, ``clusters``, ``merge`` and ``dropped_images``.
    """
    options = options or PartitionedMappingOptions()
    if isinstance(rng, np.random.Generator):
        seed = int(rng.integers(2**31))
    elif rng is None or isinstance(rng, int | np.integer):
        seed = int(rng or 0)
    else:
        raise InputError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
    map_fn = map_fn or map
    t0 = time.perf_counter()
    names = {i: info.name for i, info in images.items()}
    graph = build_view_graph(two_view_geometries, names)
    partition = partition_view_graph(graph, options.partition)
    clusters = partition.clusters
    tasks = cluster_tasks(cameras, images, two_view_geometries, clusters, options.mapper, seed)
    t_map, map_started_at = time.perf_counter(), time.time()
    results: list[ClusterResult] = []
    for result in map_fn(map_cluster, tasks):
        results.append(result)
        report_progress(progress, len(results), len(clusters), f"mapped cluster {result.index}")
    time_map = time.perf_counter() - t_map

    models: list[Reconstruction] = []
    cores: list[set[int]] = []
    model_cluster: list[int] = []
    cluster_reports = []
    for result in sorted(results, key=lambda r: r.index):
        cluster = clusters[result.index]
        kept = [r for r in result.reconstructions if r.num_registered >= options.min_cluster_model_images]
        for rec in kept:
            models.append(rec)
            cores.append(set(cluster.core_image_ids))
            model_cluster.append(result.index)
        cluster_reports.append(
            {
                "index": result.index,
                "num_images": len(cluster.image_ids),
                "num_core_images": len(cluster.core_image_ids),
                "num_overlap_images": len(cluster.overlap_image_ids),
                "num_models": len(kept),
                "num_registered": [r.num_registered for r in kept],
                "num_points3D": [len(r.points3D) for r in kept],
                "time_s": round(result.time_s, 4),
                # when it started, seconds after the cluster stage did (tasks wait for a free worker)
                "start_s": round(result.started_at - map_started_at, 3),
                "peak_rss_mb": round(result.peak_rss_mb, 1),
                "pid": result.pid,
                "cpu_s": round(result.cpu_s, 2),
                "threads": result.threads,
                "reason": result.report.get("reason", ""),
            }
        )
    report: dict[str, Any] = {
        "partitioned": True,
        "partition": partition.report,
        "clusters": cluster_reports,
        "num_images": len(images),
        "workers": _per_process(results),
    }
    if not models:
        report.update({"num_models": 0, "num_registered": 0, "reason": "no cluster produced a model"})
        report["timings_s"] = {"clusters": round(time_map, 4), "total": round(time.perf_counter() - t0, 4)}
        return MappingResult([], report)
    # The models list is now the only reference to the clusters' models: the merge frees them once joined.
    del results, result, kept, rec

    merge_options = options.merge
    if num_threads is not None and merge_options.bundle_adjustment.num_threads is None:
        threads = max(1, min(int(num_threads), thread_budget()))
        merge_options = replace(
            merge_options, bundle_adjustment=replace(merge_options.bundle_adjustment, num_threads=threads)
        )
    if set(cameras) <= set(options.mapper.fixed_camera_ids):  # known calibration stays fixed in the final BA
        merge_options = replace(
            merge_options, bundle_adjustment=replace(merge_options.bundle_adjustment, intrinsics="fixed")
        )
    t_merge = time.perf_counter()
    merged = merge_reconstructions(
        models,
        merge_options,
        core_image_ids=cores,
        two_view_geometries=two_view_geometries,
        images=images,
        release_models=True,
        rng=seed,
    )
    time_merge = time.perf_counter() - t_merge
    merged.report["model_cluster"] = model_cluster
    report["merge"] = merged.report
    report["merge"]["num_threads"] = merge_options.bundle_adjustment.num_threads or thread_budget()
    report["dropped_images"] = merged.dropped_images
    report["num_models"] = len(merged.reconstructions)
    report["num_registered"] = sum(r.num_registered for r in merged.reconstructions)
    report["timings_s"] = {
        "partition": round(t_map - t0, 4),
        "clusters": round(time_map, 4),
        "merge": round(time_merge, 4),
        "total": round(time.perf_counter() - t0, 4),
    }
    logger.info(
        "partitioned mapping: %d clusters -> %d models (largest %d images)",
        len(clusters),
        len(merged.reconstructions),
        merged.reconstructions[0].num_registered,
    )
    return MappingResult(merged.reconstructions, report)
