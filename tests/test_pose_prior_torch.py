"""End-to-end smoke test of the learned pose-prior hook with a tiny trained relpose checkpoint."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geomvision.geometry.rigid import Rigid3d  # noqa: E402
from geomvision.plugins.learned import data, train  # noqa: E402
from geomvision.plugins.learned_prior import apply_learned_pose_prior, learned_prior_fn  # noqa: E402
from geomvision.scene import Camera, ImageInfo, Reconstruction  # noqa: E402
from geomvision.scene.reconstruction import View  # noqa: E402
from geomvision.sfm.pose_prior import PosePriorOptions  # noqa: E402
from geomvision.synthetic import look_at  # noqa: E402

NUM = 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def scene(tmp_path):
    """Six textured 80x60 images on a ring, their poses, and a Middlebury-style par file."""
    rng = np.random.default_rng(5)
    poses = [
        look_at(np.array([2 * np.cos(a), 2 * np.sin(a), 0.5]), np.zeros(3))
        for a in np.linspace(0, np.pi, NUM)
    ]
    K = np.array([[60.0, 0, 40], [0, 60, 30], [0, 0, 1]])
    lines = [str(NUM)]
    for k, pose in enumerate(poses):
        texture = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        cv2.imwrite(
            str(tmp_path / f"img{k:02d}.png"), cv2.resize(texture, (80, 60), interpolation=cv2.INTER_NEAREST)
        )
        values = np.concatenate([K.ravel(), pose.rotation.ravel(), pose.translation])
        lines.append(f"img{k:02d}.png " + " ".join(f"{v:.17g}" for v in values))
    (tmp_path / "synth_par.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, poses


def test_trained_relpose_checkpoint_places_an_unregistered_image(scene, tmp_path):
    folder, poses = scene
    posed = data.load_posed_images(folder / "synth_par.txt")
    ckpt = tmp_path / "relpose.pt"
    options = train.TrainOptions(
        model="relpose",
        model_config={"backbone": "small"},
        epochs=2,
        batch_size=4,
        image_size=(48, 36),
        device="cpu",
        seed=3,
        pair_window=1,
    )
    train.train_pose_model(posed, ckpt, options)

    prior = learned_prior_fn(ckpt, device="cpu")
    rel, confidence = prior(folder / "img00.png", folder / "img01.png")
    assert isinstance(rel, Rigid3d) and np.linalg.norm(rel.translation) == pytest.approx(1.0)
    assert 0.0 < confidence <= 1.0

    camera = Camera.pinhole(1, 60.0, 60.0, 40.0, 30.0, 80, 60)
    ids = range(1, NUM + 1)
    images = {i: ImageInfo(f"img{i - 1:02d}.png", 1, np.zeros((0, 2))) for i in ids}
    paths = {i: folder / images[i].name for i in ids}
    rec = Reconstruction()
    rec.add_camera(camera)
    for i in ids:
        if i != 3:  # image 3 "failed" verification
            rec.add_view(View(i, images[i].name, 1, poses[i - 1]))
    pairs = {(i, i + 1): 100 for i in range(1, NUM)}
    # a two-epoch model is not consistent enough for the default gate; accept every prior here
    report = apply_learned_pose_prior(
        [rec], {1: camera}, images, paths, pairs, ckpt, PosePriorOptions(min_confidence=0.0)
    )
    assert report["registered_by_prior"] == [3] and report["num_registered_by_prior"] == 1
    placement = report["placements"][0]
    assert placement["neighbours"] == [2, 4] and len(placement["confidences"]) == 2
    pose = rec.views[3].cam_from_world
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-9)
    assert np.all(np.isfinite(pose.center)) and rec.views[3].num_points3D == 0
    assert rec.registered_image_ids == list(ids)
