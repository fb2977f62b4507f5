"""Learned pose models: labels, decoding (exact, with oracle networks), training, checkpoints, CLI.

Tiny CPU smoke tests; skipped when torch is absent (``pip install geomvision[learned]``).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geomvision import cli  # noqa: E402
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg  # noqa: E402
from geomvision.plugins.learned import common, data, inference, train  # noqa: E402
from geomvision.plugins.registry import load_pose_model  # noqa: E402

SIZE = (48, 36)  # network input used throughout: tiny, so every test runs in about a second
NUM = 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _look_at_poses(num: int) -> list[Rigid3d]:
    """``cam_from_world`` of cameras on a tilted ring of radius 2 looking at the origin."""
    poses = []
    for a in np.linspace(0, np.pi, num):
        centre = np.array([2 * np.cos(a), 2 * np.sin(a), 0.5 + 0.2 * np.sin(3 * a)])
        z = -centre / np.linalg.norm(centre)
        x = np.cross([0.0, 0.0, 1.0], z)
        x /= np.linalg.norm(x)
        R_wc = np.stack([x, np.cross(z, x), z], axis=1)
        poses.append(Rigid3d(R_wc.T, -R_wc.T @ centre))
    return poses


def _constant_image(k: int) -> np.ndarray:
    """A flat image whose grey level encodes its index (decoded by the oracle networks)."""
    return np.full((60, 80, 3), 10 + 20 * k, dtype=np.uint8)


def _decode(x: torch.Tensor) -> torch.Tensor:
    """Image index from standardised constant images (B, 3, H, W) -> (B,)."""
    v = (x[:, 0].mean(dim=(1, 2)) * common.RGB_STD[0] + common.RGB_MEAN[0]) * 255.0
    return torch.round((v - 10.0) / 20.0).long()


@pytest.fixture
def posed(tmp_path) -> data.PosedImages:
    """Six textured 80x60 images with a Middlebury-style ``synth_par.txt`` beside them."""
    rng = np.random.default_rng(7)
    poses = _look_at_poses(NUM)
    lines = [str(NUM)]
    K = np.array([[60.0, 0, 40], [0, 60, 30], [0, 0, 1]])
    for k, pose in enumerate(poses):
        name = f"img{k:02d}.png"
        texture = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / name), cv2.resize(texture, (80, 60), interpolation=cv2.INTER_NEAREST))
        values = np.concatenate([K.ravel(), pose.rotation.ravel(), pose.translation])
        lines.append(name + " " + " ".join(f"{v:.17g}" for v in values))
    (tmp_path / "synth_par.txt").write_text("\n".join(lines) + "\n")
    return data.load_posed_images(tmp_path / "synth_par.txt")


def _assert_pose_close(a: Rigid3d, b: Rigid3d, atol=1e-5):
    assert rotation_angle_deg(a.rotation, b.rotation) < 1e-3
    np.testing.assert_allclose(a.translation, b.translation, atol=atol)


# --- labels and losses ------------------------------------------------------------------------------
def test_posed_images_from_par_file(posed, tmp_path):
    assert posed.names == tuple(f"img{k:02d}.png" for k in range(NUM))
    for got, want in zip(posed.cam_from_world, _look_at_poses(NUM), strict=True):
        _assert_pose_close(got, want, atol=1e-12)
    assert posed.subset([3, 1]).names == ("img03.png", "img01.png")
    with pytest.raises(data.InputError, match="posed images missing"):
        data.load_posed_images(tmp_path / "synth_par.txt", tmp_path / "elsewhere")


def test_posed_images_from_colmap_model(posed, tmp_path):
    from geomvision.io.colmap import write_model
    from geomvision.scene.camera import Camera
    from geomvision.scene.reconstruction import Reconstruction, View

    rec = Reconstruction()
    rec.add_camera(Camera.pinhole(1, 60, 60, 40, 30, 80, 60))
    for k in (4, 0, 2):  # ids out of name order; one image unregistered
        rec.add_view(View(k + 1, posed.names[k], 1, posed.cam_from_world[k]))
    rec.add_view(View(9, posed.names[5], 1, None))
    write_model(rec, tmp_path / "out" / "sparse" / "0")
    loaded = data.load_posed_images(tmp_path / "out", tmp_path)
    assert loaded.names == (posed.names[0], posed.names[2], posed.names[4])
    for got, k in zip(loaded.cam_from_world, (0, 2, 4), strict=True):
        _assert_pose_close(got, posed.cam_from_world[k], atol=1e-9)


def test_labels_follow_the_relative_pose_conventions(posed):
    poses = posed.cam_from_world
    scale = data.translation_scale(poses, poses[0])
    centres = np.stack([p.center for p in poses])
    assert scale == pytest.approx(np.median(np.linalg.norm(centres[1:] - centres[0], axis=1)))
    absolute = data.absolute_labels(poses, poses[0], scale)
    np.testing.assert_allclose(absolute[0], [0, 0, 0, 1, 0, 0, 0], atol=1e-12)
    for k, pose in enumerate(poses):
        ref_from_cam = poses[0] @ pose.inverse()  # camera k expressed in the reference camera
        np.testing.assert_allclose(absolute[k, :3] * scale, ref_from_cam.translation, atol=1e-12)
        np.testing.assert_allclose(absolute[k, 3:], ref_from_cam.quat_wxyz, atol=1e-12)
    pairs = np.array([[0, 3], [4, 1]])
    rel = data.relative_labels(poses, pairs)
    for (i, j), row in zip(pairs, rel, strict=True):
        j_from_i = poses[j] @ poses[i].inverse()
        np.testing.assert_allclose(row[:4], j_from_i.quat_wxyz, atol=1e-12)
        np.testing.assert_allclose(
            row[4:], j_from_i.translation / np.linalg.norm(j_from_i.translation), atol=1e-12
        )
    windows = np.array([[2, 3, 5], [5, 3, 2]])
    seq = data.sequence_labels(poses, windows, scale)
    for w, labels in zip(windows, seq, strict=True):
        np.testing.assert_allclose(
            labels, data.absolute_labels([poses[i] for i in w], poses[w[0]], scale), atol=1e-12
        )


def test_pairs_and_windows():
    assert data.neighbour_pairs(3, 1).tolist() == [[0, 1], [1, 0], [1, 2], [2, 1]]
    assert data.sequence_windows(5, 3, 2, reverse=False).tolist() == [
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],
        [0, 2, 4],
    ]
    assert data.sequence_windows(2, 3, 1).tolist() == [[0, 1], [1, 0]]


def test_losses_are_sign_invariant_and_exact():
    q = common.canonical_quaternion(torch.tensor([[-0.5, 0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 2.0]]))
    np.testing.assert_allclose(q.numpy(), [[0.5, -0.5, 0.5, -0.5], [0, 0, 0, 1]], atol=1e-7)
    assert common.quaternion_distance(-3 * q, q).abs().max() < 1e-6
    target = torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0]])
    pred = torch.tensor([[4.0, 6.0, 3.0, 0.0, 1.0, 0.0, 0.0]])  # 5 units off, quaternion distance sqrt(2)
    assert float(common.pose_regression_loss(pred, target, beta=2.0)) == pytest.approx(
        5 + 2 * np.sqrt(2), rel=1e-6
    )
    rel_pred = torch.tensor([[-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0]])
    rel_target = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    assert float(common.pose_regression_loss(rel_pred, rel_target, beta=3.0, position_first=False)) < 1e-6


def test_batch_crops_and_standardisation():
    stack = torch.arange(60, dtype=torch.uint8).expand(2, 3, 40, 60).contiguous()  # value = column index
    centre = data.batch_to_tensor(stack, (50, 40))
    assert centre.shape == (2, 3, 40, 50)
    first_col = centre[:, 0, 0, 0] * common.RGB_STD[0] + common.RGB_MEAN[0]
    np.testing.assert_allclose(first_col.numpy() * 255, [5, 5], atol=1e-4)  # (60 - 50) // 2
    rng = np.random.default_rng(0)
    crops = data.batch_to_tensor(stack, (50, 40), rng=rng)
    x0 = np.round((crops[:, 0, 0, 0] * common.RGB_STD[0] + common.RGB_MEAN[0]).numpy() * 255)
    np.testing.assert_array_equal(x0, np.random.default_rng(0).integers(0, 11, size=2))
    step = (crops[:, 0, 0, 1:] - crops[:, 0, 0, :-1]) * common.RGB_STD[0] * 255
    np.testing.assert_allclose(step.numpy(), 1.0, atol=1e-4)  # a contiguous window of columns


# --- exact decoding with oracle networks -------------------------------------------------------------
class _Oracle(torch.nn.Module):
    """Returns the ground-truth labels of the images it is shown (identified by their grey level)."""

    def __init__(self, kind, table):
        super().__init__()
        self.kind, self.model_name, self.table = (
            kind,
            f"oracle-{kind}",
            torch.as_tensor(table, dtype=torch.float32),
        )

    def forward(self, x, x2=None):
        if self.kind == "relative":
            return self.table[_decode(x), _decode(x2)]
        if self.kind == "sequence":
            b, t = x.shape[:2]
            k = _decode(x.flatten(0, 1)).view(b, t)
            return torch.stack([self.table[k[i, 0], k[i]] for i in range(b)])
        return self.table[_decode(x)]


def _loaded(kind, table, posed, scale):
    return inference.LoadedPoseModel(
        _Oracle(kind, table),
        f"oracle-{kind}",
        kind,
        SIZE,
        0.1,
        scale,
        posed.cam_from_world[0],
        torch.device("cpu"),
    )


def test_absolute_predictions_decode_to_world_poses(posed):
    poses = posed.cam_from_world
    scale = data.translation_scale(poses, poses[0])
    loaded = _loaded("absolute", data.absolute_labels(poses, poses[0], scale), posed, scale)
    images = [_constant_image(k) for k in range(NUM)]
    for got, want in zip(inference.predict_absolute_poses(loaded, images), poses, strict=True):
        _assert_pose_close(got, want)
    pose, confidence = inference.relative_pose_prior(loaded, images[1], images[4])
    want = poses[4] @ poses[1].inverse()
    _assert_pose_close(pose, Rigid3d(want.rotation, want.translation / np.linalg.norm(want.translation)))
    assert confidence > 0.999  # a constant image predicts the same pose from a shifted crop
    out = inference.localize(loaded, images[:2], names=["a.png", "b.png"])
    assert out[1]["image"] == "b.png" and out[1]["frame"] == "world"
    np.testing.assert_allclose(out[1]["center"], poses[1].center, atol=1e-5)


def test_relative_prior_is_exact_and_confident_for_an_oracle(posed):
    poses = posed.cam_from_world
    n = len(poses)
    table = data.relative_labels(poses, np.indices((n, n)).reshape(2, -1).T).reshape(n, n, 7)
    loaded = _loaded("relative", table, posed, 1.0)
    pose, confidence = inference.relative_pose_prior(loaded, _constant_image(1), _constant_image(4))
    want = poses[4] @ poses[1].inverse()
    _assert_pose_close(pose, Rigid3d(want.rotation, want.translation / np.linalg.norm(want.translation)))
    assert 0.999 < confidence <= 1.0


def test_sequence_predictions_are_relative_to_the_first_frame(posed):
    poses = posed.cam_from_world
    n = len(poses)
    scale = data.translation_scale(poses, poses[0])
    table = np.stack([data.absolute_labels(poses, poses[i], scale) for i in range(n)])  # (first, frame, 7)
    loaded = _loaded("sequence", table, posed, scale)
    order = [2, 0, 5]
    got = inference.predict_sequence_poses(loaded, [_constant_image(k) for k in order])
    for pose, k in zip(got, order, strict=True):
        _assert_pose_close(pose, poses[k] @ poses[2].inverse())
    pose, confidence = inference.relative_pose_prior(loaded, _constant_image(3), _constant_image(1))
    want = poses[1] @ poses[3].inverse()
    np.testing.assert_allclose(
        pose.translation, want.translation / np.linalg.norm(want.translation), atol=1e-5
    )
    assert confidence > 0.999


def test_wrong_kind_is_an_input_error(posed):
    loaded = _loaded("absolute", np.zeros((NUM, 7)), posed, 1.0)
    with pytest.raises(data.InputError, match="is absolute; this needs a relative model"):
        inference.predict_relative_poses(loaded, [_constant_image(0)], [_constant_image(1)])


# --- real networks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "inputs", "shape"),
    [
        ("posenet", lambda: (torch.zeros(2, 3, 36, 48),), (2, 7)),
        ("relpose", lambda: (torch.zeros(2, 3, 36, 48), torch.ones(2, 3, 36, 48)), (2, 7)),
        ("sequence", lambda: (torch.zeros(2, 3, 3, 36, 48),), (2, 3, 7)),
    ],
)
def test_models_from_the_registry(name, inputs, shape):
    model = load_pose_model(name, backbone="small").eval()
    assert model.model_name == name and model.config["backbone"] == "small"
    with torch.no_grad():
        out = model(*inputs())
    assert out.shape == shape
    if name == "relpose":
        np.testing.assert_allclose(out[:, 4:].norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_torchvision_backbone_when_available():
    if not common.torchvision_available():
        pytest.skip("torchvision not importable")
    assert common.resolve_backbone("auto") == "resnet18"
    net, channels = common.make_backbone("resnet18")
    assert channels == 512 and net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def _options(**changes):
    base = dict(
        model="posenet",
        model_config={"backbone": "small"},
        epochs=3,
        batch_size=3,
        image_size=SIZE,
        device="cpu",
        seed=3,
        checkpoint_every=1,
    )
    base.update(changes)
    return train.TrainOptions(**base)


def test_resumed_training_matches_uninterrupted(posed, tmp_path):
    straight = train.train_pose_model(posed, tmp_path / "a.pt", _options(epochs=3))

    def interrupt_after_two(done, total, message):
        if done == 2:
            raise KeyboardInterrupt  # as if the run were killed after its epoch-2 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train.train_pose_model(posed, tmp_path / "b.pt", _options(epochs=3), progress=interrupt_after_two)
    assert train.read_checkpoint(tmp_path / "b.pt")["epoch"] == 2
    resumed = train.train_pose_model(posed, tmp_path / "b.pt", _options(epochs=3))
    assert (resumed.start_epoch, resumed.epochs_run) == (2, 1)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    state = train.read_checkpoint(tmp_path / "b.pt")
    assert state["epoch"] == 3 and state["train_images"] == list(posed.names)
    with pytest.raises(data.InputError, match="different model"):
        train.train_pose_model(posed, tmp_path / "b.pt", _options(model="relpose"))


def test_training_fits_the_training_images(posed, tmp_path):
    result = train.train_pose_model(posed, tmp_path / "p.pt", _options(epochs=15, batch_size=6, jitter=0.0))
    assert result.losses[-1] < 0.5 * result.losses[0]


@pytest.mark.parametrize("model", ["relpose", "sequence"])
def test_relative_and_sequence_models_train_and_give_priors(posed, tmp_path, model):
    result = train.train_pose_model(
        posed,
        tmp_path / f"{model}.pt",
        _options(
            model=model, epochs=2, batch_size=4, pair_window=1, sequence_length=3, sequence_max_stride=1
        ),
    )
    assert len(result.losses) == 2 and np.all(np.isfinite(result.losses))
    pose, confidence = inference.relative_pose_prior(tmp_path / f"{model}.pt", posed.paths[0], posed.paths[2])
    assert np.linalg.norm(pose.translation) == pytest.approx(1.0)
    assert 0.0 < confidence <= 1.0


def test_train_and_localize_commands(posed, tmp_path, capsys):
    par = tmp_path / "synth_par.txt"
    args = [
        "train-pose",
        str(par),
        "--model",
        "posenet",
        "--epochs",
        "1",
        "--image-size",
        "48x36",
        "--backbone",
        "small",
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "--no-progress",
        "--threads",
        "1",
        "-o",
        str(tmp_path / "m.pt"),
    ]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == NUM and summary["epochs_run"] == 1 and summary["device"] == "cpu"
    images = [str(p) for p in posed.paths[:2]]
    assert cli.main(["localize", "--model", str(tmp_path / "m.pt"), "--device", "cpu", *images]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "absolute" and [p["image"] for p in out["poses"]] == images
    for p in out["poses"]:
        assert np.linalg.norm(p["quat_wxyz"]) == pytest.approx(1.0, abs=1e-6)
    assert cli.main(["localize", "--model", str(par), images[0]]) == cli.EXIT_INPUT_ERROR
    assert "cannot read checkpoint" in capsys.readouterr().err
