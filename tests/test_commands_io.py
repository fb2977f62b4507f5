"""CLI: ``geomvision evaluate``, ``export`` and ``view`` on a synthetic output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.cli import main
from geomvision.io.colmap import read_model, write_model


@pytest.fixture
def out_dir(tmp_path):
    rec = ring_reconstruction(num_views=6, num_points=40)
    write_model(rec, tmp_path / "out" / "sparse" / "0")
    write_model(rec, tmp_path / "gt")
    return tmp_path / "out"


def test_evaluate_prints_one_json_line(out_dir, capsys):
    assert main(["evaluate", str(out_dir), "--gt", str(out_dir.parent / "gt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("auc@1", "auc@2", "auc@5", "auc@10"):
        assert result[key] == pytest.approx(1.0)
    assert result["num_registered"] == 6 and result["num_pairs"] == 15


def test_evaluate_table_and_errors(out_dir, capsys):
    assert (
        main(["evaluate", str(out_dir), "--gt", str(out_dir.parent / "gt"), "--table", "--thresholds", "3"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert "auc@3" in json.loads(lines[0]) and lines[1].startswith("image")
    assert len(lines) == 1 + 2 + 6  # json, header, rule, 6 images
    assert main(["evaluate", str(out_dir), "--gt", str(out_dir.parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["colmap-text", "colmap-bin", "ply", "nerfstudio", "json"])
def test_export_formats(out_dir, fmt, capsys):
    extra = ["--no-images"] if fmt == "nerfstudio" else []
    assert main(["export", str(out_dir), "--format", fmt, *extra]) == 0
    assert "wrote" in capsys.readouterr().out
    rec = read_model(out_dir)
    if fmt.startswith("colmap"):
        back = read_model(out_dir / "export" / fmt.replace("-", "_"))
        assert len(back.points3D) == 40 and back.registered_image_ids == rec.registered_image_ids
    elif fmt == "ply":
        from geomvision.io.ply import read_point_cloud

        xyz, _ = read_point_cloud(out_dir / "export" / "scene.ply")
        assert len(xyz) == 40 + 6 * 5
    elif fmt == "nerfstudio":
        from geomvision.io.nerfstudio import read_transforms_json

        back = read_transforms_json(out_dir / "export" / "nerfstudio")
        np.testing.assert_allclose(
            back.views[1].cam_from_world.matrix(), rec.views[1].cam_from_world.matrix(), atol=1e-12
        )
    else:
        data = json.loads((out_dir / "export" / "reconstruction.json").read_text())
        assert len(data["points3D"]) == 40 and len(data["images"]) == 6
        np.testing.assert_allclose(
            data["images"][0]["center"], rec.views[1].cam_from_world.center, atol=1e-12
        )


def test_export_custom_destination(out_dir, tmp_path):
    assert (
        main(["export", str(out_dir), "--format", "ply", "--no-cameras", "-o", str(tmp_path / "p.ply")]) == 0
    )
    from geomvision.io.ply import read_point_cloud

    assert len(read_point_cloud(tmp_path / "p.ply")[0]) == 40


def test_view_screenshot(out_dir, tmp_path, capsys):
    png = tmp_path / "shot.png"
    args = [
        "view",
        str(out_dir),
        "--screenshot",
        str(png),
        "--width",
        "160",
        "--height",
        "120",
        "--show-graph",
    ]
    assert main(args + ["--renderer", "software"]) == 0
    assert "software renderer" in capsys.readouterr().out
    import cv2

    assert cv2.imread(str(png)).shape == (120, 160, 3)


def test_view_bad_model(tmp_path, capsys):
    assert main(["view", str(tmp_path), "--screenshot", str(tmp_path / "x.png")]) == 2
    assert "no COLMAP model" in capsys.readouterr().err


def test_covisibility_graph():
    from geomvision.viz.geometry import covisibility_graph

    rec = ring_reconstruction(num_views=5, num_points=20)
    graph = covisibility_graph(rec, min_shared=15)
    assert graph.number_of_edges() == 10 and all(d["weight"] == 20 for *_, d in graph.edges(data=True))
    # views 1-2 share only the first 10 points after removing observations
    for pid in list(rec.points3D)[10:]:
        for image_id, kp in list(rec.points3D[pid].track):
            if image_id == 2:
                rec.points3D[pid].track.remove((image_id, kp))
                rec.views[2].point3D_ids[kp] = -1
    graph = covisibility_graph(rec, min_shared=15)
    assert graph.number_of_edges() == 6 and not graph.has_edge(1, 2)
    assert covisibility_graph(rec, min_shared=10)[1][2]["weight"] == 10


def test_cli_numbers_equal_library_numbers(tmp_path, capsys):
    """Benchmarks call evaluate_reconstruction; the CLI must print exactly the same values."""
    import copy

    from geomvision.evaluation import evaluate_reconstruction, load_ground_truth
    from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix

    gt_rec = ring_reconstruction(num_views=7, num_points=30, rng=4)
    write_model(gt_rec, tmp_path / "gt")
    est = copy.deepcopy(gt_rec)
    gen = np.random.default_rng(1)
    for view in est.views.values():  # perturb every pose by ~1-3 degrees
        R = rotvec_to_matrix(np.radians(gen.uniform(0.5, 3.0)) * gen.normal(size=3) / np.sqrt(3))
        view.cam_from_world = Rigid3d(R @ view.cam_from_world.rotation, view.cam_from_world.translation)
    est.views[7].cam_from_world = None
    write_model(est, tmp_path / "out" / "sparse" / "0")
    assert main(["evaluate", str(tmp_path / "out"), "--gt", str(tmp_path / "gt")]) == 0
    printed = json.loads(capsys.readouterr().out)
    library = evaluate_reconstruction(read_model(tmp_path / "out"), load_ground_truth(tmp_path / "gt"))
    for key in ("auc@1", "auc@2", "auc@5", "auc@10", "num_registered", "median_rotation_error_deg"):
        assert printed[key] == library[key]
    assert 0 < printed["auc@5"] < 1 and printed["num_registered"] == 6


def test_view_uses_saved_view_graph(out_dir):
    import networkx as nx

    from geomvision.commands.view import _load_graph
    from geomvision.sfm.view_graph import save_view_graph

    rec = read_model(out_dir)
    assert _load_graph(rec, out_dir, 15).number_of_edges() == 15  # co-visibility: all 6 views share 40 points
    saved = nx.Graph()
    saved.add_edge(1, 3, weight=120)
    save_view_graph(saved, out_dir / "view_graph.json")
    graph = _load_graph(rec, out_dir, 15)
    assert list(graph.edges(data="weight")) == [(1, 3, 120)]


def test_evaluate_only_counts_input_images(out_dir, capsys):
    """A run on a subset (report.json lists its inputs) is scored on that subset unless --all-gt."""
    gt = out_dir.parent / "gt"
    report = {"features": {"per_image": {f"img_{i:03d}.png": 100 for i in (1, 2, 3)}}}
    (out_dir / "report.json").write_text(json.dumps(report))
    assert main(["evaluate", str(out_dir), "--gt", str(gt)]) == 0
    subset = json.loads(capsys.readouterr().out)
    assert subset["gt_restricted_to_inputs"] and subset["num_gt_images"] == 3 and subset["num_pairs"] == 3
    assert main(["evaluate", str(out_dir), "--gt", str(gt), "--all-gt"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert not everything["gt_restricted_to_inputs"] and everything["num_pairs"] == 15
