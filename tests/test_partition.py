"""View-graph partitioning and partitioned mapping on synthetic scenes with exact answers."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.sfm.incremental import IncrementalMapperOptions
from geomvision.sfm.partition import PartitionOptions, metis_available, partition_view_graph
from geomvision.sfm.partitioned_mapping import (
    PartitionedMappingOptions,
    cluster_tasks,
    map_cluster,
    partitioned_mapping,
)
from geomvision.synthetic import random_scene
from tests.mapper_fixtures import mapper_inputs, pose_errors

METHODS = [
    "spectral",
    pytest.param("metis", marks=pytest.mark.skipif(not metis_available(), reason="no pymetis")),
]


def ring_graph(num_images: int = 60, reach: int = 3) -> nx.Graph:
    """Images on a ring, each matched to its ``reach`` neighbours on both sides (weight falls with distance)."""
    graph = nx.Graph()
    for i in range(1, num_images + 1):
        graph.add_node(i, name=f"{i}")
        for d in range(1, reach + 1):
            j = (i - 1 + d) % num_images + 1
            graph.add_edge(i, j, weight=400 // d)
    return graph


@pytest.mark.parametrize("method", METHODS)
def test_partition_covers_every_image_once_in_connected_clusters(method):
    graph = ring_graph(60)
    result = partition_view_graph(
        graph, PartitionOptions(method=method, overlap_ratio=0.0), max_cluster_images=20
    )
    cores = [set(c.core_image_ids) for c in result.clusters]
    assert sorted(i for core in cores for i in core) == list(range(1, 61))
    assert all(len(core) <= 20 for core in cores)
    assert len(cores) == 3  # 60 images / 20: a ring cuts into three arcs
    assert all(nx.is_connected(graph.subgraph(core)) for core in cores)
    # Each arc is cut twice, each cut through the 6 edges crossing one point of the ring.
    assert result.cut_weight == 3 * 2 * (400 + 200 + 200 + 133 + 133 + 133) // 2
    assert result.method == method


@pytest.mark.parametrize("method", METHODS)
def test_overlap_borrows_the_most_strongly_connected_neighbours(method):
    graph = ring_graph(60)
    options = PartitionOptions(method=method, overlap_ratio=0.0, min_overlap_images=3)
    result = partition_view_graph(graph, options, max_cluster_images=20)
    for cluster in result.clusters:
        core = set(cluster.core_image_ids)
        overlap = set(cluster.overlap_image_ids)
        assert len(overlap) == 6  # 3 from each of the two neighbouring arcs
        # The borrowed images are the 3 ring neighbours just past each end of the arc.
        for end in (i for i in core if sum(((i + d - 1) % 60 + 1) in core for d in (-1, 1)) == 1):
            outward = next(d for d in (-1, 1) if ((end + d - 1) % 60 + 1) not in core)
            assert {(end + outward * k - 1) % 60 + 1 for k in (1, 2, 3)} <= overlap
        assert nx.is_connected(graph.subgraph(cluster.image_ids))


def test_small_components_and_sizes():
    graph = ring_graph(30)
    graph.add_edge(100, 101, weight=50)  # a second component of two images
    result = partition_view_graph(graph, PartitionOptions(method="spectral"), max_cluster_images=10)
    cores = [set(c.core_image_ids) for c in result.clusters]
    assert {100, 101} in cores
    assert sum(len(c) for c in cores) == 32
    assert partition_view_graph(graph, max_cluster_images=0).report["num_clusters"] == 2  # one per component


def test_cluster_size_rule():
    options = PartitionOptions()
    assert options.cluster_size_for(500) == 0  # automatic: whole up to 500 images
    assert options.cluster_size_for(501) == 250
    assert PartitionOptions(max_cluster_images=0).cluster_size_for(10_000) == 0
    assert PartitionOptions(max_cluster_images=16).cluster_size_for(47) == 16
    assert PartitionOptions(max_cluster_images=50).cluster_size_for(47) == 0  # one cluster holds them all
    with pytest.raises(InputError, match="got 1"):
        PartitionOptions(max_cluster_images=1)
    with pytest.raises(InputError, match="'kmeans'"):
        PartitionOptions(method="kmeans")


def _synthetic_mapping_inputs(num_cameras=24, seed=3):
    scene = random_scene(500, num_cameras, layout="ring", rng=seed)
    cameras, images, geometries, _ = mapper_inputs(scene, noise_px=0.3, rng=seed, min_shared=30)
    return scene, cameras, images, geometries


def test_partitioned_mapping_registers_every_image_in_one_model():
    scene, cameras, images, geometries = _synthetic_mapping_inputs()
    options = PartitionedMappingOptions(
        partition=PartitionOptions(max_cluster_images=8),
        mapper=IncrementalMapperOptions(fixed_camera_ids=(1,)),
    )
    result = partitioned_mapping(cameras, images, geometries, options, rng=0)
    report = result.report
    assert report["partition"]["num_clusters"] >= 3
    assert len(result.reconstructions) == 1, report["merge"]["groups"]
    rec = result.reconstructions[0]
    assert rec.num_registered == scene.num_cameras
    rot_err, centre_err, _ = pose_errors(rec, scene)
    assert np.median(rot_err) < 0.05 and centre_err.max() < 0.02
    assert report["dropped_images"] == []
    assert all(c["time_s"] > 0 and c["num_registered"] for c in report["clusters"])


@pytest.mark.parametrize("workers", [1, 2])
def test_pipeline_maps_clusters_in_worker_processes_with_one_thread(workers):
    """The pipeline's cluster map function: with one worker as with two, every cluster is mapped in a worker
    process (not this one) limited to one OpenCV/BLAS thread, so "a worker" is the same unit in both; the
    report has each process's clusters and CPU time, and the engine counts the bytes moved both ways. The
    merge then runs on one thread per worker."""
    import os

    from geomvision.pipeline import _cluster_map_function
    from geomvision.runtime.runner import open_runner
    from geomvision.runtime.worker import thread_budget

    scene, cameras, images, geometries = _synthetic_mapping_inputs(num_cameras=16, seed=5)
    options = PartitionedMappingOptions(
        partition=PartitionOptions(max_cluster_images=6),
        mapper=IncrementalMapperOptions(fixed_camera_ids=(1,)),
    )
    with open_runner("processes", workers) as runner:
        result = partitioned_mapping(
            cameras,
            images,
            geometries,
            options,
            map_fn=_cluster_map_function(runner),
            rng=0,
            num_threads=runner.backend.num_workers,
        )
        engine = runner.report()
    report = result.report
    clusters = report["clusters"]
    assert len(clusters) >= 3 and result.reconstructions[0].num_registered == scene.num_cameras
    assert all(
        c["pid"] != os.getpid() and c["threads"] == {"opencv": 1, "blas": 1, "pools": 1} for c in clusters
    )
    assert len({c["pid"] for c in clusters}) <= workers
    # the merge in this process runs on as many threads as there are workers (one worker: one core)
    assert report["merge"]["num_threads"] == min(workers, thread_budget())
    per_process = report["workers"]
    assert sorted(i for w in per_process for i in w["clusters"]) == list(range(len(clusters)))
    assert all(w["cpu_s"] > 0 for w in per_process)
    assert sum(w["cpu_s"] for w in per_process) == pytest.approx(sum(c["cpu_s"] for c in clusters), abs=0.1)
    stage = engine["stages"]["mapping"]
    assert engine["workers"] == workers and stage["items"] == len(clusters)
    assert stage["bytes_sent"] > 0 and stage["bytes_received"] > 0


def test_cluster_tasks_are_independent_of_how_they_are_run():
    """A task is a pure function of its inputs: running it twice, or in another order, gives the same model."""
    _, cameras, images, geometries = _synthetic_mapping_inputs(num_cameras=16, seed=5)
    from geomvision.sfm.partition import partition_view_graph as cut
    from geomvision.sfm.view_graph import build_view_graph

    clusters = cut(build_view_graph(geometries), max_cluster_images=6).clusters
    tasks = list(cluster_tasks(cameras, images, geometries, clusters, IncrementalMapperOptions(), seed=7))
    forward = [map_cluster(t) for t in tasks]
    backward = [map_cluster(t) for t in reversed(tasks)][::-1]
    for a, b in zip(forward, backward, strict=True):
        pa = {
            i: a.reconstructions[0].views[i].cam_from_world.matrix()
            for i in a.reconstructions[0].registered_image_ids
        }
        pb = {
            i: b.reconstructions[0].views[i].cam_from_world.matrix()
            for i in b.reconstructions[0].registered_image_ids
        }
        assert pa.keys() == pb.keys()
        assert all(np.array_equal(pa[i], pb[i]) for i in pa)
    assert len({t.seed for t in tasks}) == len(tasks)


def test_cli_flag_and_toml_keys_reach_the_partition_options(tmp_path):
    import argparse

    from geomvision.commands import reconstruct as command
    from geomvision.config import load_config

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = command.build_config(parser.parse_args(["imgs", "-o", "out", "--max-cluster-images", "16"]))
    assert config.partition.max_cluster_images == 16
    assert config.partition.cluster_size_for(47) == 16
    toml = tmp_path / "c.toml"
    toml.write_text(
        "[partition]\nmax_cluster_images = 0\nmethod = 'spectral'\n[merge.alignment.ransac]\nmax_error_px = 3.0\n"
    )
    config = load_config(toml)
    assert config.partition.cluster_size_for(10_000) == 0
    assert config.partition.method == "spectral"
    assert config.merge.alignment.ransac.max_error_px == 3.0
    assert "partition" in config.to_dict() and "merge" in config.to_dict()


@pytest.mark.slow
def test_pipeline_partitioned_on_fountain_small(tmp_path):
    """The real pipeline with --max-cluster-images: every image in one model, near the unpartitioned accuracy."""
    import json
    from pathlib import Path

    from geomvision.config import ReconstructionConfig
    from geomvision.evaluation import evaluate_reconstruction, load_ground_truth
    from geomvision.pipeline import run_pipeline

    dataset = Path(__file__).resolve().parents[1] / "datasets" / "fountain_small"
    config = ReconstructionConfig().with_changes(
        pipeline={"num_workers": 2, "html_report": False}, partition={"max_cluster_images": 6}
    )
    result = run_pipeline(dataset / "images", tmp_path / "out", config)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mapping = report["mapping"]
    assert mapping["partition"]["num_clusters"] == 2
    # two clusters on two workers start together: the view graph was drawn before, not on a worker
    assert (tmp_path / "out" / "view_graph.png").is_file()
    assert all(0 <= c["start_s"] < 3.0 for c in mapping["clusters"])
    assert len(result.reconstructions) == 1 and result.reconstruction.num_registered == 11
    assert all(a["success"] for a in mapping["merge"]["alignments"])
    gt = load_ground_truth(dataset / "gt_cameras")
    metrics = evaluate_reconstruction(result.reconstruction, gt, include_per_image=False)
    assert metrics["auc@5"] > 0.8
