"""Learned pose prior as a mapping fallback, tested with oracle priors (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg, rotvec_to_matrix
from geomvision.plugins.learned_prior import apply_learned_pose_prior, learned_prior_fn
from geomvision.scene import Camera, ImageInfo, Reconstruction
from geomvision.scene.reconstruction import View
from geomvision.sfm.pose_prior import PosePriorOptions, register_with_pose_priors
from geomvision.synthetic import look_at

NUM = 10
RADIUS = 3.0


def _ring_poses() -> dict[int, Rigid3d]:
    """``cam_from_world`` of cameras evenly spaced on a half ring (radius 3) looking at the origin."""
    angles = np.linspace(0.0, np.pi, NUM)
    return {
        k + 1: look_at(np.array([RADIUS * np.cos(a), RADIUS * np.sin(a), 0.8]), np.zeros(3))
        for k, a in enumerate(angles)
    }


def _scene(removed: tuple[int, ...]):
    """Reconstruction of the ring with ``removed`` views absent, plus images / paths / truth."""
    truth = _ring_poses()
    camera = Camera.pinhole(1, 100.0, 100.0, 40.0, 30.0, 80, 60)
    rec = Reconstruction()
    rec.add_camera(camera)
    images = {i: ImageInfo(f"img{i:02d}.png", 1, np.zeros((0, 2))) for i in truth}
    for i, pose in truth.items():
        if i not in removed:
            rec.add_view(View(i, images[i].name, 1, pose))
    paths = {i: Path(f"/data/{images[i].name}") for i in truth}
    return rec, images, paths, truth, camera


def _oracle(truth: dict[int, Rigid3d], *, confidence=0.9, noise_deg=0.0, rng=None):
    """Exact (optionally rotation-perturbed) ``cam2_from_cam1`` with unit translation, from file names."""
    ids = {Path(f"/data/img{i:02d}.png"): i for i in truth}
    calls = []

    def prior(path_1: Path, path_2: Path) -> tuple[Rigid3d, float]:
        i, j = ids[path_1], ids[path_2]
        calls.append((i, j))
        rel = truth[j] @ truth[i].inverse()
        R, t = rel.rotation, rel.translation / np.linalg.norm(rel.translation)
        if noise_deg:
            R = rotvec_to_matrix(np.radians(noise_deg) * _unit(rng.normal(size=3))) @ R
            t = rotvec_to_matrix(np.radians(noise_deg) * _unit(rng.normal(size=3))) @ t
        conf = confidence(i, j) if callable(confidence) else confidence
        return Rigid3d(R, t), conf

    prior.calls = calls
    return prior


def _unit(v):
    return v / np.linalg.norm(v)


def _errors(rec, truth, i):
    pose = rec.views[i].cam_from_world
    return (
        float(rotation_angle_deg(pose.rotation, truth[i].rotation)),
        float(np.linalg.norm(pose.center - truth[i].center)),
    )


def test_oracle_prior_places_removed_views_exactly():
    rec, images, paths, truth, _ = _scene(removed=(4, 8))
    pairs = [(i, i + 1) for i in range(1, NUM)]  # sequential pairing, window 1
    report = register_with_pose_priors(rec, images, paths, _oracle(truth), pairs, PosePriorOptions())
    assert report["registered_by_prior"] == [4, 8]
    for i in (4, 8):
        rot_err, pos_err = _errors(rec, truth, i)
        assert rot_err < 1e-6 and pos_err < 1e-9
        assert rec.views[i].num_points3D == 0  # pose only: no verified matches, no points
    placement = {p["image_id"]: p for p in report["placements"]}
    # two neighbours on a ring span ~20 deg: the centre is intersected, no baseline assumption needed
    assert placement[4]["neighbours"] == [3, 5] and placement[4]["scale"] == "ray_intersection"
    assert placement[4]["confidences"] == [0.9, 0.9]
    assert rec.registered_image_ids == list(range(1, NUM + 1))
    # the chord between adjacent ring cameras
    assert report["baseline"] == pytest.approx(2 * RADIUS * np.sin(np.pi / (NUM - 1) / 2))


def test_single_neighbour_uses_the_median_baseline():
    rec, images, paths, truth, _ = _scene(removed=(10,))  # end of the ring: one adjacent neighbour
    pairs = [(i, i + 1) for i in range(1, NUM)]
    report = register_with_pose_priors(rec, images, paths, _oracle(truth), pairs)
    (placement,) = report["placements"]
    assert placement["scale"] == "median_baseline" and placement["neighbours"] == [9]
    rot_err, pos_err = _errors(rec, truth, 10)
    # even spacing: the median baseline is the true distance to the neighbour
    assert rot_err < 1e-6 and pos_err < 1e-9


def test_noisy_prior_places_within_tolerance():
    rng = np.random.default_rng(3)
    rec, images, paths, truth, _ = _scene(removed=(5,))
    pairs = {(i, j): 100 - 10 * (j - i) for i in range(1, NUM) for j in range(i + 1, min(i + 3, NUM + 1))}
    prior = _oracle(truth, noise_deg=2.0, rng=rng)
    report = register_with_pose_priors(rec, images, paths, prior, pairs, PosePriorOptions(max_neighbours=4))
    assert report["registered_by_prior"] == [5]
    assert sorted(report["placements"][0]["neighbours"]) == [3, 4, 6, 7]
    rot_err, pos_err = _errors(rec, truth, 5)
    assert rot_err < 3.0  # averaging four 2-deg perturbations
    assert pos_err < 0.3 * report["baseline"]


def test_neighbours_ranked_by_putative_matches_and_prior_queried_neighbour_first():
    rec, images, paths, truth, _ = _scene(removed=(5,))
    pairs = {(2, 5): 500, (5, 9): 400, (4, 5): 10, (5, 6): 5}
    prior = _oracle(truth)
    report = register_with_pose_priors(rec, images, paths, prior, pairs, PosePriorOptions(max_neighbours=2))
    assert report["placements"][0]["neighbours"] == [2, 9]
    assert prior.calls == [(2, 5), (9, 5)]
    assert _errors(rec, truth, 5)[1] < 1e-9


def test_low_confidence_priors_are_skipped():
    rec, images, paths, truth, _ = _scene(removed=(4, 7))
    pairs = [(i, i + 1) for i in range(1, NUM)]
    # image 4: its prior from 3 is unreliable, the one from 5 is kept; image 7: both unreliable
    conf = {(3, 4): 0.2, (5, 4): 0.8, (6, 7): 0.3, (8, 7): 0.1}
    prior = _oracle(truth, confidence=lambda i, j: conf[(i, j)])
    report = register_with_pose_priors(rec, images, paths, prior, pairs, PosePriorOptions(min_confidence=0.5))
    assert report["registered_by_prior"] == [4]
    assert report["placements"][0]["neighbours"] == [5] and report["placements"][0]["confidence"] == 0.8
    assert _errors(rec, truth, 4)[1] < 1e-9
    (skipped,) = report["not_placed"]
    assert skipped["image_id"] == 7 and "below min_confidence" in skipped["reason"]
    assert "[0.3, 0.1]" in skipped["reason"]
    assert 7 not in rec.views


def test_without_pairs_nearest_images_and_nearest_neighbour_spacing_are_used():
    rec, images, paths, truth, _ = _scene(removed=(10,))
    report = register_with_pose_priors(
        rec, images, paths, _oracle(truth), None, PosePriorOptions(max_neighbours=1)
    )
    assert report["placements"][0]["neighbours"] == [9]
    assert report["baseline"] == pytest.approx(2 * RADIUS * np.sin(np.pi / (NUM - 1) / 2))
    assert _errors(rec, truth, 10)[1] < 1e-9


def test_a_failing_prior_query_is_skipped_not_raised():
    rec, images, paths, truth, _ = _scene(removed=(4,))
    oracle = _oracle(truth)

    def prior(path_1, path_2):
        if path_1.name == "img03.png":
            raise InputError(f"cannot read {path_1}")
        return oracle(path_1, path_2)

    report = register_with_pose_priors(rec, images, paths, prior, [(3, 4), (4, 5)])
    assert report["placements"][0]["neighbours"] == [5] and _errors(rec, truth, 4)[1] < 1e-9
    rec, images, paths, truth, _ = _scene(removed=(4,))
    report = register_with_pose_priors(rec, images, paths, prior, [(3, 4)])
    assert "image 3: cannot read /data/img03.png" in report["not_placed"][0]["reason"]


def test_no_registered_neighbour_leaves_the_image_unregistered():
    rec, images, paths, truth, _ = _scene(removed=(4, 5))
    pairs = [(4, 5)]  # 4 and 5 were only ever paired with each other
    prior = _oracle(truth)
    report = register_with_pose_priors(rec, images, paths, prior, pairs)
    assert report["registered_by_prior"] == []
    assert [s["image_id"] for s in report["not_placed"]] == [4, 5]
    assert all("no registered neighbour" in s["reason"] for s in report["not_placed"])
    assert prior.calls == [] and 4 not in rec.registered_image_ids


def test_missing_camera_is_added_from_cameras_or_reported():
    rec, images, paths, truth, camera = _scene(removed=(3,))
    images[3] = ImageInfo(images[3].name, 2, np.zeros((0, 2)))
    pairs = [(2, 3), (3, 4)]
    report = register_with_pose_priors(rec, images, paths, _oracle(truth), pairs)
    assert report["not_placed"][0]["reason"] == "camera 2 unknown"
    other = Camera.pinhole(2, 90.0, 90.0, 40.0, 30.0, 80, 60)
    report = register_with_pose_priors(rec, images, paths, _oracle(truth), pairs, cameras={2: other})
    assert report["registered_by_prior"] == [3] and rec.views[3].camera_id == 2 and 2 in rec.cameras


def test_pipeline_hook_skips_images_of_other_models():
    rec, images, paths, truth, camera = _scene(removed=(5, 6))
    other = Reconstruction()
    other.add_camera(camera)
    other.add_view(View(6, images[6].name, 1, truth[6]))
    pairs = {(i, i + 1): 50 for i in range(1, NUM)}
    report = apply_learned_pose_prior(
        [rec, other], {1: camera}, images, paths, pairs, "oracle", prior_fn=_oracle(truth)
    )
    assert report["registered_by_prior"] == [5] and report["num_registered_by_prior"] == 1
    assert 6 not in rec.views  # registered (with points) in the second model: left there
    assert _errors(rec, truth, 5)[0] < 1e-6


def test_options_and_checkpoint_errors(tmp_path):
    with pytest.raises(InputError, match="min_confidence"):
        PosePriorOptions(min_confidence=1.5)
    with pytest.raises(InputError, match="max_neighbours"):
        PosePriorOptions(max_neighbours=0)
    rec, images, paths, truth, _ = _scene(removed=(4,))
    del paths[4]
    with pytest.raises(InputError, match=r"no file for image\(s\) \[4\]"):
        register_with_pose_priors(rec, images, paths, _oracle(truth))
    with pytest.raises(InputError, match="checkpoint not found"):
        learned_prior_fn(tmp_path / "missing.pt")


def test_missing_torch_is_a_one_line_input_error(tmp_path, monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.startswith("geomvision.plugins.learned.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    ckpt = tmp_path / "pose.pt"
    ckpt.write_bytes(b"not used")
    with pytest.raises(InputError, match=r"^torch not installed: pip install geomvision\[learned\]$"):
        learned_prior_fn(ckpt)


def test_pipeline_places_an_unmatchable_image_with_the_prior(tmp_path, monkeypatch):
    """reconstruct with a checkpoint: the image that matches nothing gets the prior's pose, marked as such."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from reliability_images import fast_config, write_image, write_set

    from geomvision.pipeline import run_pipeline
    from geomvision.plugins import learned_prior
    from geomvision.synthetic import random_texture

    write_set(tmp_path / "img", 4)
    write_image(tmp_path / "img" / "view_9.png", random_texture(512, 11)[:240, :320])  # unrelated texture
    checkpoint = tmp_path / "prior.pt"
    checkpoint.write_bytes(b"stand-in: the prior function is replaced below")
    queried = []

    def fake_learned_prior_fn(path):
        assert Path(path) == checkpoint

        def prior(path_1, path_2):
            queried.append((Path(path_1).name, Path(path_2).name))
            return Rigid3d(rotvec_to_matrix(np.array([0.0, 0.1, 0.0])), np.array([1.0, 0.0, 0.0])), 0.9

        return prior

    monkeypatch.setattr(learned_prior, "learned_prior_fn", fake_learned_prior_fn)
    monkeypatch.setattr(learned_prior, "check_learned_prior", lambda path: None)  # runs without torch
    config = fast_config(pose_prior_checkpoint=str(checkpoint))
    result = run_pipeline(tmp_path / "img", tmp_path / "out", config)
    report = result.report
    assert report["mapping"]["num_registered"] == 4  # PnP registrations only
    assert report["pose_prior"]["registered_by_prior"] == [5]
    assert {q[1] for q in queried} == {"view_9.png"} and len(queried) == 3  # max_neighbours
    rec = result.reconstruction
    assert rec.registered_image_ids == [1, 2, 3, 4, 5] and rec.views[5].num_points3D == 0
    assert "view_9.png" in (tmp_path / "out" / "sparse" / "0" / "images.txt").read_text()


def test_pipeline_rejects_a_missing_checkpoint_before_any_work(tmp_path):
    from geomvision.config import ReconstructionConfig
    from geomvision.pipeline import run_pipeline

    config = ReconstructionConfig().with_changes(pipeline={"pose_prior_checkpoint": str(tmp_path / "no.pt")})
    with pytest.raises(InputError, match="pose prior checkpoint not found"):
        run_pipeline(tmp_path / "no_images_here", tmp_path / "out", config)


def test_reconstruct_command_pose_prior_flag():
    import argparse

    from geomvision.commands import reconstruct

    parser = argparse.ArgumentParser()
    reconstruct.add_arguments(parser)
    args = parser.parse_args(["imgs", "-o", "out", "--pose-prior", "relpose.pt"])
    assert reconstruct.build_config(args).pipeline.pose_prior_checkpoint == "relpose.pt"
    args = parser.parse_args(["imgs", "-o", "out"])
    assert reconstruct.build_config(args).pipeline.pose_prior_checkpoint is None
