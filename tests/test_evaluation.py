"""Evaluation against ground truth: readers, relative pose errors, pose AUC, centre alignment."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.errors import InputError
from geomvision.evaluation import (
    GroundTruthCamera,
    evaluate_reconstruction,
    format_per_image_table,
    load_ground_truth,
    pose_auc,
    read_middlebury_par,
    read_strecha_cameras,
    relative_pose_errors,
    strecha_rescale_K,
)
from geomvision.geometry.rigid import Rigid3d, Sim3d, rotvec_to_matrix
from geomvision.io.colmap import write_model


def _gt_from(rec) -> dict[str, GroundTruthCamera]:
    return {
        v.name: GroundTruthCamera(v.name, v.cam_from_world, rec.cameras[v.camera_id].K)
        for v in rec.views.values()
        if v.registered
    }


def _similar(rec, rng_seed: int = 1):
    """The same model in another gauge (rotation, translation, scale 0.37)."""
    moved = copy.deepcopy(rec)
    R = rotvec_to_matrix(np.random.default_rng(rng_seed).normal(size=3))
    moved.transform(Sim3d(0.37, R, np.array([3.0, -1.0, 2.0])))
    return moved


def test_pose_auc_exact_values():
    # hand-integrated recall curves for errors 0.5, 1.5, 3, 20 (recall 1/4 .. 1)
    np.testing.assert_allclose(pose_auc([20, 0.5, 3, 1.5], (1, 2, 5, 10)), [0.1875, 0.34375, 0.575, 0.6625])
    assert pose_auc(np.zeros(7)) == [1.0, 1.0, 1.0, 1.0]
    assert pose_auc(np.full(3, 180.0)) == [0.0, 0.0, 0.0, 0.0]
    assert pose_auc([]) == [0.0, 0.0, 0.0, 0.0]
    # uniform errors on [0, T]: recall grows linearly, AUC@T = 1/2
    assert abs(pose_auc(np.linspace(0, 10, 100001)[1:], (10,))[0] - 0.5) < 1e-4


def test_perfect_model_in_other_gauge():
    rec = ring_reconstruction(num_views=10, num_points=20)
    result = evaluate_reconstruction(_similar(rec), _gt_from(rec))
    for key in ("auc@1", "auc@2", "auc@5", "auc@10"):
        assert result[key] == pytest.approx(1.0, abs=1e-9)
    assert result["num_pairs"] == 45 and result["num_registered"] == 10
    assert result["centre_error_max"] < 1e-9
    assert result["alignment_scale"] == pytest.approx(1 / 0.37)
    assert all(row["rotation_error_deg"] < 1e-6 for row in result["per_image"])


def test_rotated_camera_and_unregistered_image():
    rec = ring_reconstruction(num_views=8, num_points=20)
    gt = _gt_from(rec)
    est = _similar(rec)
    # rotate camera 3 by exactly 3 deg about its own centre
    view = est.views[3]
    R = rotvec_to_matrix(np.radians(3.0) * np.array([0.0, 0.6, 0.8])) @ view.cam_from_world.rotation
    view.cam_from_world = Rigid3d(R, -R @ view.cam_from_world.center)
    est.views[6].cam_from_world = None  # unregistered -> 180 deg for its 7 pairs
    names = sorted(gt)
    rel = relative_pose_errors(
        [est.view_by_name(n).cam_from_world for n in names], [gt[n].cam_from_world for n in names]
    )
    pairs = rel["pairs"]
    involves = lambda k: (pairs[:, 0] == k) | (pairs[:, 1] == k)  # noqa: E731
    with_3, with_6 = involves(2), involves(5)
    np.testing.assert_allclose(rel["pose_error_deg"][with_6], 180.0)
    only_3 = with_3 & ~with_6
    np.testing.assert_allclose(rel["rotation_error_deg"][only_3], 3.0, atol=1e-9)
    assert np.all(rel["translation_error_deg"][only_3] <= 3.0 + 1e-9)
    np.testing.assert_allclose(rel["pose_error_deg"][~with_3 & ~with_6], 0.0, atol=1e-6)

    result = evaluate_reconstruction(est, gt)
    expected = np.concatenate([np.zeros(28 - 7 - 6), np.full(6, 3.0), np.full(7, 180.0)])
    for t, auc in zip((1, 2, 5, 10), pose_auc(expected), strict=True):
        assert result[f"auc@{t}"] == pytest.approx(auc, abs=1e-6)
    assert result["num_registered"] == 7 and result["registration_rate"] == pytest.approx(7 / 8)
    row = {r["name"]: r for r in result["per_image"]}
    assert not row["img_006.png"]["registered"]
    assert row["img_003.png"]["rotation_error_deg"] == pytest.approx(3.0, abs=0.05)
    assert "img_006.png" in format_per_image_table(result["per_image"])


def test_names_match_by_basename():
    rec = ring_reconstruction(num_views=5, num_points=10)
    gt = {f"some/dir/{k}": v for k, v in _gt_from(rec).items()}
    result = evaluate_reconstruction(rec, gt)
    assert result["num_matched_images"] == 5 and result["auc@1"] == pytest.approx(1.0)


def test_colmap_ground_truth(tmp_path):
    rec = ring_reconstruction(num_views=6, num_points=10)
    write_model(rec, tmp_path / "gt" / "sparse" / "0", binary=True)
    gt = load_ground_truth(tmp_path / "gt")
    assert sorted(gt) == sorted(v.name for v in rec.views.values())
    result = evaluate_reconstruction(_similar(rec, 5), gt)
    assert result["auc@1"] == pytest.approx(1.0) and result["centre_error_max"] < 1e-9


def test_middlebury_par_synthetic(tmp_path):
    rec = ring_reconstruction(num_views=3, num_points=5)
    lines = ["3"]
    for v in rec.views.values():
        vals = np.concatenate(
            [rec.cameras[1].K.ravel(), v.cam_from_world.rotation.ravel(), v.cam_from_world.translation]
        )
        lines.append(v.name + " " + " ".join(f"{x:.17g}" for x in vals))
    (tmp_path / "x_par.txt").write_text("\n".join(lines) + "\n")
    gt = load_ground_truth(tmp_path)
    for v in rec.views.values():
        np.testing.assert_allclose(gt[v.name].cam_from_world.matrix(), v.cam_from_world.matrix(), atol=1e-12)
        np.testing.assert_allclose(gt[v.name].K, rec.cameras[1].K)
    (tmp_path / "x_par.txt").write_text("\n".join(lines[:-1] + [lines[-1] + " 7"]) + "\n")
    with pytest.raises(InputError, match=r"x_par\.txt:4: expected 22 values"):
        read_middlebury_par(tmp_path / "x_par.txt")


def test_strecha_rescale_matches_readme():
    K = np.array([[2759.48, 0, 1520.69], [0, 2764.16, 1006.81], [0, 0, 1]])
    S = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])
    np.testing.assert_allclose(strecha_rescale_K(K, 0.5), S @ K)
    np.testing.assert_allclose(strecha_rescale_K(K, 1.0), K)


def test_real_middlebury_templering():
    from conftest import shared_dataset

    gt = load_ground_truth(shared_dataset("middlebury_templeRing"))
    assert len(gt) == 47
    np.testing.assert_allclose(np.diag(gt["templeR0001.png"].K)[:2], [1520.40, 1525.90], atol=0.01)
    centres = np.array([g.cam_from_world.center for g in gt.values()])
    # the gantry ring: every centre at nearly the same distance from the object box centre
    box_centre = np.array(
        [(-0.023121 + 0.078626) / 2, (-0.038009 + 0.121636) / 2, (-0.091940 - 0.017395) / 2]
    )
    dist = np.linalg.norm(centres - box_centre, axis=1)
    assert dist.std() / dist.mean() < 0.05


def test_real_strecha_fountain():
    from conftest import shared_dataset

    folder = shared_dataset("strecha_fountain-P11")
    full = read_strecha_cameras(folder)
    half = load_ground_truth(folder, image_sizes={n: (1536, 1024) for n in full})
    assert len(full) == 11 and sorted(full) == sorted(half)
    np.testing.assert_allclose(full["0000.jpg"].K[0, 2], 1520.69, atol=0.01)
    np.testing.assert_allclose(half["0000.jpg"].K[0, 2], 1520.69 / 2 - 0.25, atol=0.01)
    raw = np.loadtxt(
        folder / "gt_dense_cameras" / "0000.jpg.camera", max_rows=8, skiprows=0, usecols=(0, 1, 2)
    )
    np.testing.assert_allclose(full["0000.jpg"].cam_from_world.center, raw[7], atol=1e-9)
    with pytest.raises(InputError, match="not a uniform rescale"):
        read_strecha_cameras(folder, image_sizes={"0000.jpg": (1536, 900)})


def test_missing_ground_truth(tmp_path):
    with pytest.raises(InputError, match="no ground truth found"):
        load_ground_truth(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_ground_truth(tmp_path / "nope")


def test_ground_truth_reconstruction_round_trip(tmp_path):
    from conftest import shared_dataset

    from geomvision.evaluation import ground_truth_reconstruction
    from geomvision.io.colmap import read_model

    gt = load_ground_truth(shared_dataset("middlebury_templeRing"))
    assert (gt["templeR0001.png"].width, gt["templeR0001.png"].height) == (640, 480)  # from the PNG beside it
    rec = ground_truth_reconstruction(gt)
    assert len(rec.cameras) == 1 and rec.num_registered == 47
    write_model(rec, tmp_path)
    result = evaluate_reconstruction(read_model(tmp_path), load_ground_truth(tmp_path))
    assert result["auc@1"] == pytest.approx(1.0) and result["centre_error_max"] < 1e-9


def test_strecha_half_resolution_model_via_cli(tmp_path, capsys):
    """A model at the stored half resolution is scored against full-resolution Strecha files: K rescaled."""
    from conftest import shared_dataset

    from geomvision.cli import main
    from geomvision.evaluation import ground_truth_reconstruction

    folder = shared_dataset("strecha_entry-P10")
    half = read_strecha_cameras(folder, image_sizes={f"{i:04d}.jpg": (1536, 1024) for i in range(10)})
    rec = ground_truth_reconstruction(half)
    assert rec.cameras[1].width == 1536
    write_model(_similar(rec), tmp_path / "sparse" / "0")
    assert main(["evaluate", str(tmp_path), "--gt", str(folder), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    import json

    result = json.loads(lines[0])
    assert result["auc@1"] == pytest.approx(1.0) and result["num_registered"] == 10
    # focal error column: 0.000% because K was rescaled to the model's 1536 px width
    assert all(line.rstrip().endswith("0.000%") for line in lines[3:])
