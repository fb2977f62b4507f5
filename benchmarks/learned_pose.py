"""Learned pose models vs classical PnP localisation on Middlebury templeRing (47 views, GT K, R, t).

Split: every third image (name order) is held out for testing (15 images), the other 32 train.

- PoseNet (absolute regression): predicts each test image's pose directly.
- Relative model (siamese): predicts ``cam_test_from_cam_train`` for the two training neighbours of the
  test image; rotation = chordal mean of the two compositions with the GT training poses, centre = the
  midpoint of the two predicted direction rays (two-view translations have no scale).
- Sequence model (LSTM): runs on ``[k-2, k-1, k, k+1]`` (training, training, test, training) and maps the
  test frame's pose relative to the first frame through that frame's GT pose.
- Classical: SIFT at full resolution, training points triangulated with the GT training poses from
  consecutive training pairs, the test image matched to its two training neighbours, then robust PnP —
  geomvision's ``estimate_absolute_pose`` (P3P LO-RANSAC + LM) and OpenCV's ``solvePnPRansac``.

The learned models are trained from scratch (random init; nothing is downloaded) for the same number of
image forward passes: ``--epochs`` PoseNet epochs, the others scaled to match.

Usage (CPU, a few minutes)::

    python benchmarks/learned_pose.py --device cpu --epochs 40 --image-size 128x96 --backbone small

GPU (the lead's or a device machine)::

    python benchmarks/learned_pose.py --device cuda --epochs 400 --image-size 224x168 --backbone resnet18

Each run replaces its device's section of ``benchmarks/results/learned_pose.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from geomvision.geometry.rigid import Rigid3d, project_to_so3, rotation_angle_deg  # noqa: E402
from geomvision.geometry.triangulation import (  # noqa: E402
    depths_in_camera,
    reprojection_errors_px,
    triangulate_dlt,
    triangulate_midpoint,
)
from geomvision.plugins.learned import data, inference, train  # noqa: E402
from geomvision.robust.absolute_pose import estimate_absolute_pose  # noqa: E402
from geomvision.robust.ransac import RansacOptions  # noqa: E402

DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "middlebury_templeRing"
RESULTS = REPO / "benchmarks" / "results" / "learned_pose.md"


# ----------------------------------------------------------------------------------------------------
# split and errors
# ----------------------------------------------------------------------------------------------------
def split(num: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): every third image (index % 3 == 2) is held out."""
    idx = np.arange(num)
    return idx[idx % 3 != 2], idx[idx % 3 == 2]


def pose_errors(est: list[Rigid3d | None], gt: list[Rigid3d]) -> tuple[np.ndarray, np.ndarray]:
    """(centre errors in world units, rotation errors in degrees); inf where no estimate."""
    pos = np.array(
        [np.inf if e is None else np.linalg.norm(e.center - g.center) for e, g in zip(est, gt, strict=True)]
    )
    rot = np.array(
        [
            np.inf if e is None else rotation_angle_deg(e.rotation, g.rotation)
            for e, g in zip(est, gt, strict=True)
        ]
    )
    return pos, rot


# ----------------------------------------------------------------------------------------------------
# classical baseline
# ----------------------------------------------------------------------------------------------------
def sift_all(paths, num_features: int = 4000):
    sift = cv2.SIFT_create(nfeatures=num_features)
    feats = []
    for p in paths:  # one detection per image
        gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        kps, desc = sift.detectAndCompute(gray, None)
        feats.append((np.array([k.pt for k in kps], dtype=np.float64), desc.astype(np.float32)))
    return feats


def ratio_matches(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """(M, 2) indices of Lowe-ratio matches from d1 to d2."""
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [
        (m.queryIdx, m.trainIdx)
        for m, n in (p for p in knn if len(p) == 2)
        if m.distance < ratio * n.distance
    ]
    return np.array(good, dtype=np.int64).reshape(-1, 2)


def classical_localisation(posed: data.PosedImages, K: np.ndarray, train_idx, test_idx, seed: int):
    """Return (geomvision PnP poses, OpenCV PnP poses, seconds) for the test images."""
    t0 = time.perf_counter()
    feats = sift_all(posed.paths)
    P = {i: K @ posed.cam_from_world[i].matrix() for i in train_idx}
    # 3D points per training image keypoint, from consecutive training pairs (GT poses, DLT).
    points: dict[int, dict[int, np.ndarray]] = {i: {} for i in train_idx}
    for a, b in zip(train_idx[:-1], train_idx[1:], strict=True):
        m = ratio_matches(feats[a][1], feats[b][1])
        if len(m) < 8:
            continue
        xa, xb = feats[a][0][m[:, 0]], feats[b][0][m[:, 1]]
        X = triangulate_dlt(P[a], P[b], xa, xb)
        pa, pb = posed.cam_from_world[a], posed.cam_from_world[b]
        ok = (
            (reprojection_errors_px(P[a], X, xa) < 1.5)
            & (reprojection_errors_px(P[b], X, xb) < 1.5)
            & (depths_in_camera(pa.rotation, pa.translation, X) > 0)
            & (depths_in_camera(pb.rotation, pb.translation, X) > 0)
        )
        for (ka, kb), x in zip(m[ok], X[ok], strict=True):
            points[a][int(ka)] = x
            points[b][int(kb)] = x
    ours, opencv = [], []
    train_set = set(train_idx.tolist())
    for k in test_idx:
        X_list, x_list = [], []
        for n in (k - 1, k + 1):
            if n not in train_set or not points[n]:
                continue
            kp_ids = np.array(sorted(points[n]))
            m = ratio_matches(feats[k][1], feats[n][1][kp_ids])
            X_list.append(
                np.stack([points[n][int(kp_ids[j])] for j in m[:, 1]]) if len(m) else np.zeros((0, 3))
            )
            x_list.append(feats[k][0][m[:, 0]])
        X, x = np.concatenate(X_list), np.concatenate(x_list)
        if len(X) < 6:
            ours.append(None)
            opencv.append(None)
            continue
        try:
            res = estimate_absolute_pose(X, x, K, RansacOptions(max_error_px=4.0), rng=seed)
            ours.append(res.cam_from_world if res.success else None)
        except Exception as exc:  # noqa: BLE001 - report the failure in the table, keep the benchmark going
            print(f"geomvision PnP failed on image {k}: {exc}", file=sys.stderr)
            ours.append(None)
        ok, rvec, tvec, _ = cv2.solvePnPRansac(X, x, K, None, reprojectionError=4.0, iterationsCount=1000)
        opencv.append(Rigid3d.from_rotvec(rvec.ravel(), tvec.ravel()) if ok else None)
    return ours, opencv, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# learned models
# ----------------------------------------------------------------------------------------------------
def image_passes_per_epoch(model: str, num_train: int, opts: train.TrainOptions) -> int:
    if model == "posenet":
        return num_train
    if model == "relpose":
        return 2 * len(data.neighbour_pairs(num_train, opts.pair_window))
    windows = data.sequence_windows(num_train, opts.sequence_length, opts.sequence_max_stride)
    return windows.size


def train_model(model: str, posed_train: data.PosedImages, args, ckpt: Path) -> tuple[Path, float, int]:
    base = train.TrainOptions(
        model=model,
        model_config={"backbone": args.backbone},
        image_size=args.image_size,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        pair_window=2,
        sequence_length=4,
        sequence_max_stride=1,
        resume=False,
        checkpoint_every=10**9,
    )
    budget = args.epochs * len(posed_train)
    epochs = max(1, round(budget / image_passes_per_epoch(model, len(posed_train), base)))
    opts = train.TrainOptions(**{**base.__dict__, "epochs": epochs})
    result = train.train_pose_model(posed_train, ckpt, opts)
    return ckpt, result.train_time_s, epochs


def localise_posenet(ckpt, posed, test_idx, device):
    loaded = inference.load_checkpoint(ckpt, device=device)
    return inference.predict_absolute_poses(loaded, [posed.paths[k] for k in test_idx])


def localise_relpose(ckpt, posed, test_idx, device):
    loaded = inference.load_checkpoint(ckpt, device=device)
    gt = posed.cam_from_world
    firsts = [n for k in test_idx for n in (k - 1, k + 1)]
    rel = inference.predict_relative_poses(
        loaded, [posed.paths[n] for n in firsts], [posed.paths[k] for k in test_idx for _ in (0, 1)]
    )
    rotations, centres, directions = [], [], []
    for j, n in enumerate(firsts):
        k_from_n = rel[j]
        rotations.append((k_from_n @ gt[n]).rotation)
        # Centre of camera k seen from camera n: -R^T t (unit), rotated into the world frame.
        directions.append(gt[n].rotation.T @ (-k_from_n.rotation.T @ k_from_n.translation))
        centres.append(gt[n].center)
    index = np.repeat(np.arange(len(test_idx)), 2)
    C = triangulate_midpoint(np.array(centres), np.array(directions), index, len(test_idx))
    R = np.array(rotations).reshape(len(test_idx), 2, 3, 3)
    out = []
    for c, pair in zip(C, R, strict=True):
        r = project_to_so3(pair.sum(axis=0))  # chordal L2 mean of the two estimates
        out.append(Rigid3d(r, -r @ c))
    return out


def localise_sequence(ckpt, posed, test_idx, device):
    loaded = inference.load_checkpoint(ckpt, device=device)
    out = []
    for k in test_idx:
        frames = [k - 2, k - 1, k, k + 1]
        rel = inference.predict_sequence_poses(loaded, [posed.paths[f] for f in frames])
        out.append(rel[2] @ posed.cam_from_world[frames[0]])
    return out


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
def device_label(device: str) -> str:
    if device.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or add) the ``## heading`` section of the results file."""
    text = path.read_text() if path.exists() else ""
    header = (
        "# Learned pose models vs classical PnP (Middlebury templeRing)\n\n"
        "32 training / 15 test images (every third held out); errors are medians over the test images;\n"
        "positions in dataset units (the camera ring has radius ~0.56). Produced by "
        "`benchmarks/learned_pose.py`.\n\n"
        "The relative and sequence localisers are anchored to the ground-truth poses of the test image's\n"
        "training neighbours; the two reference rows show what that anchoring alone gives (test views lie\n"
        "half-way between their neighbours on the ring, so interpolation is nearly exact here). The learned\n"
        "models are trained from scratch on 32 images, so they are far from classical PnP accuracy.\n"
    )
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    sections[heading] = body.rstrip() + "\n\n"
    out = header + "\n" + "".join(f"## {h}\n{b}" for h, b in sorted(sections.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=40, help="PoseNet epochs (others: same image passes)")
    parser.add_argument("--image-size", default="128x96")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--models", default="posenet,relpose,sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/geomvision_learned_pose"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.image_size = tuple(int(v) for v in args.image_size.split("x"))
    args.device = str(train.resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)

    posed = data.load_posed_images(args.dataset / "templeR_par.txt")
    K = data_K(args.dataset / "templeR_par.txt")
    train_idx, test_idx = split(len(posed))
    gt_test = [posed.cam_from_world[k] for k in test_idx]
    rows = []

    ours, opencv, t_classic = classical_localisation(posed, K, train_idx, test_idx, args.seed)
    for name, est in (
        ("classical: SIFT + geomvision PnP (LO-RANSAC)", ours),
        ("classical: SIFT + OpenCV solvePnPRansac", opencv),
    ):
        pos, rot = pose_errors(est, gt_test)
        rows.append((name, pos, rot, t_classic, "-", "full 640x480"))

    # Trivial reference: the pose of the previous (training) image, which is ~7.7 deg around the ring.
    prev = [posed.cam_from_world[k - 1] for k in test_idx]
    pos, rot = pose_errors(prev, gt_test)
    rows.append(("reference: pose of the previous training image", pos, rot, 0.0, "-", "-"))
    # Interpolation reference: chordal-mean rotation and mid centre of the two training neighbours (what the
    # relative / sequence localisers would give if their networks predicted no motion at all).
    interp = []
    for k in test_idx:
        a, b = posed.cam_from_world[k - 1], posed.cam_from_world[k + 1]
        r = project_to_so3(a.rotation + b.rotation)
        interp.append(Rigid3d(r, -r @ (0.5 * (a.center + b.center))))
    pos, rot = pose_errors(interp, gt_test)
    rows.append(("reference: interpolation of the two training neighbours", pos, rot, 0.0, "-", "-"))

    localisers = {"posenet": localise_posenet, "relpose": localise_relpose, "sequence": localise_sequence}
    args.work.mkdir(parents=True, exist_ok=True)
    posed_train = posed.subset(train_idx)
    for model in args.models.split(","):
        ckpt, seconds, epochs = train_model(model, posed_train, args, args.work / f"{model}.pt")
        est = localisers[model](ckpt, posed, test_idx, args.device)
        pos, rot = pose_errors(est, gt_test)
        rows.append(
            (
                f"learned: {model} ({args.backbone})",
                pos,
                rot,
                seconds,
                str(epochs),
                "x".join(map(str, args.image_size)),
            )
        )

        report(rows, args)


def report(rows, args) -> None:
    """Print the table and write it to the results file (after every model, so partial runs keep results)."""
    classical_pos = np.median(rows[0][1])
    classical_rot = np.median(rows[0][2])
    lines = [
        "| method | median position error | median rotation error (deg) | vs classical (pos / rot) | "
        "localised | time (s) | epochs | input |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, pos, rot, seconds, epochs, size in rows:
        mp, mr = float(np.median(pos)), float(np.median(rot))
        lines.append(
            f"| {name} | {mp:.4f} | {mr:.2f} | {mp / classical_pos:.0f}x / {mr / classical_rot:.0f}x | "
            f"{int(np.isfinite(pos).sum())}/{len(pos)} | {seconds:.1f} | {epochs} | {size} |"
        )
    body = (
        f"\nCommand: `python benchmarks/learned_pose.py --device {args.device} --epochs {args.epochs} "
        f"--image-size {'x'.join(map(str, args.image_size))} --backbone {args.backbone}"
        f"{' --threads ' + str(args.threads) if args.threads else ''}`. Time = training time for the learned "
        "models (training loop only), SIFT + triangulation + PnP for the classical ones.\n\n"
        + "\n".join(lines)
    )
    print("\n".join(lines), flush=True)
    print(json.dumps({"device": device_label(args.device), "torch": torch.__version__}), flush=True)
    heading = (
        f"{device_label(args.device)}: {args.backbone}, {'x'.join(map(str, args.image_size))}, "
        f"{args.epochs} PoseNet epochs"
    )
    write_section(args.output, heading, body)


def data_K(par: Path) -> np.ndarray:
    from geomvision.evaluation import read_middlebury_par

    cams = read_middlebury_par(par)
    return np.asarray(next(iter(cams.values())).K, dtype=np.float64)


if __name__ == "__main__":
    sys.exit(main())
