"""Evaluate a reconstruction against ground-truth cameras.

Metrics (the definitions benchmark scripts must share, so ``geomvision evaluate`` and benchmarks agree):

* **Relative pose error** for every pair (i, j) of ground-truth images, as in COLMAP's / the Image Matching
  Challenge's evaluation: with ``cam_j_from_cam_i = cam_j_from_world @ world_from_cam_i`` for estimate and
  ground truth, the rotation error is the angle of ``R_est^T R_gt`` and the translation error is the angle
  between the two relative translation directions (both in degrees; independent of the model's scale and
  gauge). The pose error is the larger of the two. A pair with an image that is not registered (or
  absent from the model) gets 180 deg.
* **Pose AUC@T**: area under the recall-vs-error curve from 0 to T degrees divided by T (1.0 = every pair
  exactly right), with the curve built from sorted errors and integrated with the trapezoid rule, as in
  the SuperGlue / glue-factory / COLMAP benchmark scripts.
* **Camera centre error** after the least-squares similarity (Umeyama) that maps the estimated centres onto
  the ground-truth ones: absolute (ground-truth units) and relative to the ground-truth scene size.

Ground truth readers: a COLMAP model, Middlebury ``*_par.txt`` (``P = K [R | t]``), Strecha ``*.camera``
folders (camera-to-world R and centre C, K at full resolution; rescaled to the model's image size), and
projective cameras (the Oxford dinosaur's ``*_Ps.mat``) upgraded to metric by autocalibration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from geomvision.errors import InputError
from geomvision.geometry.autocalibration import AutocalibrationOptions, autocalibrate_cameras
from geomvision.geometry.rigid import (
    Rigid3d,
    angle_between_vectors_deg,
    project_to_so3,
    rotation_angle_deg,
    umeyama_alignment,
)
from geomvision.geometry.triangulation import triangulate_nview
from geomvision.io.colmap import parse_floats
from geomvision.io.images import image_size, list_images
from geomvision.io.tracks import load_dinosaur_tracks
from geomvision.scene.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = [
    "GroundTruthCamera",
    "AUC_THRESHOLDS_DEG",
    "read_gt_colmap",
    "read_middlebury_par",
    "read_strecha_cameras",
    "read_projective_cameras_metric",
    "strecha_rescale_K",
    "load_ground_truth",
    "ground_truth_reconstruction",
    "match_views_by_name",
    "relative_pose_errors",
    "pose_auc",
    "evaluate_reconstruction",
    "evaluate_models",
    "format_per_image_table",
]

AUC_THRESHOLDS_DEG: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)


@dataclass
class GroundTruthCamera:
    """One ground-truth image.

    Attributes:
        name: image file name (matching key).
        cam_from_world: world-to-camera pose.
        K: (3, 3) intrinsics in OpenCV pixels at the resolution of the images used, or None.
        width, height: image size the K refers to (0 when unknown).
    """

    name: str
    cam_from_world: Rigid3d
    K: np.ndarray | None = None
    width: int = 0
    height: int = 0


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------
def read_gt_colmap(folder: str | Path) -> dict[str, GroundTruthCamera]:
    """Registered images of a COLMAP model (text or binary) as ground truth, keyed by image name."""
    from geomvision.io.colmap import read_model

    rec = read_model(folder)
    out = {}
    for image_id in rec.registered_image_ids:
        view = rec.views[image_id]
        cam = rec.cameras[view.camera_id]
        out[view.name] = GroundTruthCamera(view.name, view.cam_from_world, cam.K, cam.width, cam.height)
    return out


def _checked_rotation(R: np.ndarray, where: str) -> np.ndarray:
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
        raise InputError(f"{where}: rotation is not orthonormal (det {np.linalg.det(R):.6f})")
    return project_to_so3(R)  # remove the last digits of print rounding


def read_middlebury_par(path: str | Path) -> dict[str, GroundTruthCamera]:
    """Middlebury multi-view ``*_par.txt``: count, then ``name k11..k33 r11..r33 t1 t2 t3`` per image.

    ``P = K [R | t]`` maps world to pixels (top-left pixel centre at (0, 0)), so ``cam_from_world = (R, t)``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Middlebury parameter file {path} does not exist")
    lines = [(n, ln.split()) for n, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        raise InputError(f"{path}: empty file")
    try:
        expected = int(lines[0][1][0])
    except ValueError as exc:
        raise InputError(f"{path}:1: expected the image count, got {lines[0][1][0]!r}") from exc
    out = {}
    for number, tokens in lines[1:]:
        if len(tokens) != 22:
            raise InputError(f"{path}:{number}: expected 22 values (name, K, R, t), got {len(tokens)}")
        values = parse_floats(tokens[1:], path, number, "numbers")
        K = values[:9].reshape(3, 3)
        R = _checked_rotation(values[9:18].reshape(3, 3), f"{path}:{number}")
        width, height = _size_of_image_next_to(path.parent / tokens[0])
        out[tokens[0]] = GroundTruthCamera(tokens[0], Rigid3d(R, values[18:21]), K, width, height)
    if len(out) != expected:
        raise InputError(f"{path}: header says {expected} images, found {len(out)}")
    return out


def _size_of_image_next_to(image_path: Path) -> tuple[int, int]:
    """(w, h) of an image stored beside the ground-truth file, (0, 0) when it is not there."""
    if not image_path.is_file():
        return 0, 0
    from geomvision.io.images import image_size

    try:
        return image_size(image_path)
    except (InputError, OSError):
        return 0, 0


def strecha_rescale_K(K: np.ndarray, scale: float) -> np.ndarray:
    """K for images resized by ``scale`` with pixel centres at integers: ``K' = S K``.

    ``S = [[s, 0, (s-1)/2], [0, s, (s-1)/2], [0, 0, 1]]``; for s = 1/2 this is the ``-0.25`` shift of a
    2x2 box filter (the shared Strecha README).
    """
    shift = (scale - 1.0) / 2.0
    S = np.array([[scale, 0.0, shift], [0.0, scale, shift], [0.0, 0.0, 1.0]])
    return S @ K


def read_strecha_cameras(
    folder: str | Path, *, image_sizes: dict[str, tuple[int, int]] | None = None
) -> dict[str, GroundTruthCamera]:
    """Strecha et al. ``<image name>.camera`` files (K, distortion, R camera-to-world, centre C, ``w h``).

    Args:
        folder: folder with the ``.camera`` files (or a dataset folder holding ``gt_dense_cameras/``).
        image_sizes: ``{name: (w, h)}`` of the images actually used; when one differs from the file's
            ``w h`` (e.g. the half-resolution copies), K is rescaled with ``strecha_rescale_K``.

    Returns:
        ``{name: GroundTruthCamera}`` with ``cam_from_world = (R^T, -R^T C)``.
    """
    folder = Path(folder)
    if (folder / "gt_dense_cameras").is_dir():
        folder = folder / "gt_dense_cameras"
    files = sorted(folder.glob("*.camera"))
    if not files:
        raise InputError(f"no Strecha *.camera files in {folder}")
    out = {}
    for path in files:
        rows = [(n, ln.split()) for n, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
        if len(rows) < 9:
            raise InputError(f"{path}: expected 9 lines (K, distortion, R, C, w h), got {len(rows)}")
        K = np.array([parse_floats(t, path, n, "numbers") for n, t in rows[0:3]])
        R = np.array([parse_floats(t, path, n, "numbers") for n, t in rows[4:7]])
        C = parse_floats(rows[7][1], path, rows[7][0], "numbers")
        wh = parse_floats(rows[8][1], path, rows[8][0], "numbers")
        if K.shape != (3, 3) or R.shape != (3, 3) or C.shape != (3,) or wh.shape != (2,):
            raise InputError(f"{path}: malformed K/R/C/size block")
        R = _checked_rotation(R, str(path))
        name = path.name[: -len(".camera")]
        width, height = int(wh[0]), int(wh[1])
        size = (image_sizes or {}).get(name)
        if size is not None and size[0] != width:
            scale = size[0] / width
            if abs(size[1] - scale * height) > 1.0:
                raise InputError(f"{path}: image size {size} is not a uniform rescale of {width}x{height}")
            K, width, height = strecha_rescale_K(K, scale), int(size[0]), int(size[1])
        out[name] = GroundTruthCamera(name, Rigid3d(R.T, -R.T @ C), K, width, height)
    return out


def load_ground_truth(
    path: str | Path, *, image_sizes: dict[str, tuple[int, int]] | None = None
) -> dict[str, GroundTruthCamera]:
    """Detect and read ground truth: COLMAP model, Middlebury ``*_par.txt``, or Strecha ``*.camera``.

    ``path`` may be the file/folder itself or a dataset folder holding it, directly or in a sub-folder
    (folders whose name contains "gt" are tried first).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"ground truth {path} does not exist")
    if path.is_file():
        if path.name.endswith("_par.txt"):
            return read_middlebury_par(path)
        raise InputError(
            f"unrecognised ground-truth file {path} (expected *_par.txt, a COLMAP model or "
            f"a Strecha *.camera folder)"
        )
    found = _ground_truth_in(path, image_sizes)
    # A dataset folder holds its ground truth one level down (fountain_small/gt_cameras, .../gt/sparse).
    subfolders = sorted(
        (p for p in path.iterdir() if p.is_dir()), key=lambda p: ("gt" not in p.name.lower(), p.name)
    )
    for folder in subfolders if found is None else ():
        found = _ground_truth_in(folder, image_sizes)
        if found is not None:
            break
    if found is None:
        raise InputError(
            f"no ground truth found in {path} or its sub-folders (COLMAP model, *_par.txt or *.camera files)"
        )
    return found


def read_projective_cameras_metric(
    mat_path: str | Path,
    *,
    image_dir: str | Path | None = None,
    tracks_path: str | Path | None = None,
    options: AutocalibrationOptions | None = None,
) -> dict[str, GroundTruthCamera]:
    """Projective cameras of a MATLAB ``*_Ps.mat`` (variable ``P``, a 1xN cell of 3x4), upgraded to metric.

    The Oxford dinosaur's ``dino_Ps.mat`` is a projective reconstruction (its README): RQ of its P gives no
    meaningful K. Its 36 views share one camera, so ``geometry.autocalibration.autocalibrate_cameras`` (the
    absolute dual quadric, zero skew, unit aspect, principal point near the centre) upgrades them to
    ``P_i H ~ K [R_i | t_i]``; the mirror sign is fixed by the tracks (points in front of the cameras).

    Args:
        mat_path: the ``.mat`` file.
        image_dir: folder of the N images, matched to the cameras in sorted name order; default
            ``<mat folder>/images``.
        tracks_path: Oxford ``pts.txt`` tracks for the cheirality check; default ``<mat folder>/pts.txt``
            when present.
        options: autocalibration options.

    Returns:
        ``{name: GroundTruthCamera}``, K = the shared autocalibrated K (metric frame, arbitrary scale).

    Raises:
        InputError: unreadable file, camera/image count mismatch, or the autocalibration failed.
    """
    mat_path = Path(mat_path)
    try:
        cells = loadmat(str(mat_path))["P"].ravel()
        P = np.array([np.asarray(c, dtype=float) for c in cells])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{mat_path}: not a MATLAB file with a cell array P of 3x4 cameras ({exc})") from exc
    if P.ndim != 3 or P.shape[1:] != (3, 4):
        raise InputError(f"{mat_path}: expected 3x4 cameras, got shape {P.shape}")
    images = list_images(Path(image_dir) if image_dir is not None else mat_path.parent / "images")
    if len(images) != len(P):
        raise InputError(f"{mat_path}: {len(P)} cameras but {len(images)} images")
    width, height = image_size(images[0])
    tracks_path = Path(tracks_path) if tracks_path is not None else mat_path.parent / "pts.txt"
    points = None
    if tracks_path.is_file():
        W, lengths = load_dinosaur_tracks(tracks_path, num_frames=len(P))
        W = W[:, lengths >= 3]
        seen = ~np.isnan(W[0::2])  # (F, P)
        frame, point = np.nonzero(seen)
        xy = np.stack([W[2 * frame, point], W[2 * frame + 1, point]], axis=1)
        xyz = triangulate_nview(P[frame], xy, point, W.shape[1])
        points = np.c_[xyz, np.ones(len(xyz))][np.all(np.isfinite(xyz), axis=1)]
    result = autocalibrate_cameras(P, (width, height), options, points_homogeneous=points)
    if not result.success:
        raise InputError(f"{mat_path}: autocalibration failed: {result.reason}")
    out = {}
    for path, R, t in zip(images, result.cam_from_world_R, result.cam_from_world_t, strict=True):
        out[path.name] = GroundTruthCamera(path.name, Rigid3d(R, t), result.K_shared.copy(), width, height)
    return out


def _ground_truth_in(path: Path, image_sizes) -> dict[str, GroundTruthCamera] | None:
    """Ground truth stored directly in ``path`` (not its sub-folders), or None."""
    from geomvision.io.colmap import find_model_folder

    try:
        return read_gt_colmap(find_model_folder(path))
    except InputError:
        pass
    par = sorted(path.glob("*_par.txt"))
    if par:
        return read_middlebury_par(par[0])
    if any(path.glob("*.camera")) or (path / "gt_dense_cameras").is_dir():
        return read_strecha_cameras(path, image_sizes=image_sizes)
    projective = sorted(path.glob("*_Ps.mat"))
    if projective:
        return read_projective_cameras_metric(projective[0])
    return None


def ground_truth_reconstruction(
    gt: dict[str, GroundTruthCamera], *, default_size: tuple[int, int] | None = None
) -> Reconstruction:
    """The ground-truth cameras as a Reconstruction without points (PINHOLE cameras, shared when K is equal).

    Handy to export ground truth as a COLMAP model, draw it, or seed tests. Images get ids 1..N in
    sorted name order. Cameras without K or size need ``default_size`` and get the 1.2 * max(w, h) focal.
    """
    from geomvision.scene.camera import Camera
    from geomvision.scene.reconstruction import View

    rec = Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, name in enumerate(sorted(gt), start=1):
        cam = gt[name]
        width, height = (cam.width, cam.height) if cam.width and cam.height else (default_size or (0, 0))
        if not width or not height:
            raise InputError(f"ground-truth camera {name} has no image size; pass default_size=(w, h)")
        K = (
            cam.K
            if cam.K is not None
            else np.array(
                [
                    [1.2 * max(width, height), 0, (width - 1) / 2],
                    [0, 1.2 * max(width, height), (height - 1) / 2],
                    [0, 0, 1],
                ]
            )
        )
        key = (width, height, *np.round(K[[0, 1, 0, 1], [0, 1, 2, 2]], 9).tolist())
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            rec.add_camera(Camera.pinhole(camera_ids[key], K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height))
        rec.add_view(View(image_id, name, camera_ids[key], cam.cam_from_world))
    return rec


# --------------------------------------------------------------------------------------------------
# matching and metrics
# --------------------------------------------------------------------------------------------------
def match_views_by_name(rec: Reconstruction, gt_names: list[str]) -> dict[str, int]:
    """``{gt name: image_id}`` for model views with that name (exact match first, else the base name)."""
    by_name = {v.name: i for i, v in rec.views.items()}
    by_base = {}
    for i, v in rec.views.items():
        by_base.setdefault(Path(v.name).name, i)
    out = {}
    for name in gt_names:
        if name in by_name:
            out[name] = by_name[name]
        elif Path(name).name in by_base:
            out[name] = by_base[Path(name).name]
    return out


def relative_pose_errors(est_poses: list[Rigid3d | None], gt_poses: list[Rigid3d]) -> dict[str, np.ndarray]:
    """Rotation and translation-direction errors of all pairs i < j.

    Args:
        est_poses: estimated ``cam_from_world`` per image (None = not registered).
        gt_poses: ground-truth ``cam_from_world``, same order.

    Returns:
        dict with ``pairs`` (M, 2) indices, ``rotation_error_deg``, ``translation_error_deg`` and
        ``pose_error_deg`` (M,) (180 where either image is unregistered).
    """
    n = len(gt_poses)
    if len(est_poses) != n:
        raise InputError(f"{len(est_poses)} estimated poses for {n} ground-truth poses")
    i, j = np.triu_indices(n, k=1)
    registered = np.array([p is not None for p in est_poses], dtype=bool)
    ok = registered[i] & registered[j]
    rot_err = np.full(len(i), 180.0)
    trans_err = np.full(len(i), 180.0)
    if np.any(ok):

        def stack(poses):
            R = np.stack([p.rotation if p is not None else np.eye(3) for p in poses])
            t = np.stack([p.translation if p is not None else np.zeros(3) for p in poses])
            return R, t

        R_e, t_e = stack(est_poses)
        R_g, t_g = stack(gt_poses)
        ii, jj = i[ok], j[ok]

        def relative(R, t):
            # cam_j_from_cam_i = cam_j_from_world @ (cam_i_from_world)^-1
            R_rel = R[jj] @ np.swapaxes(R[ii], 1, 2)
            t_rel = t[jj] - np.einsum("nab,nb->na", R_rel, t[ii])
            return R_rel, t_rel

        R_rel_e, t_rel_e = relative(R_e, t_e)
        R_rel_g, t_rel_g = relative(R_g, t_g)
        rot_err[ok] = rotation_angle_deg(R_rel_e, R_rel_g)
        trans_err[ok] = angle_between_vectors_deg(t_rel_e, t_rel_g)
    return {
        "pairs": np.column_stack([i, j]),
        "rotation_error_deg": rot_err,
        "translation_error_deg": trans_err,
        "pose_error_deg": np.maximum(rot_err, trans_err),
    }


def pose_auc(errors_deg: np.ndarray, thresholds_deg=AUC_THRESHOLDS_DEG) -> list[float]:
    """Normalised area under the recall curve of ``errors_deg`` up to each threshold.

    Recall after sorting is k/N at the k-th error; the curve starts at (0, 0), is linear between
    samples (trapezoid rule) and is held constant from the last error below T up to T.
    """
    errors = np.sort(np.asarray(errors_deg, dtype=np.float64).reshape(-1))
    if errors.size == 0:
        return [0.0 for _ in thresholds_deg]
    errors = np.nan_to_num(errors, nan=180.0)
    recall = np.arange(1, errors.size + 1) / errors.size
    e = np.concatenate([[0.0], errors])
    r = np.concatenate([[0.0], recall])
    aucs = []
    for threshold in thresholds_deg:
        k = int(np.searchsorted(e, threshold, side="left"))  # samples with error < T
        xs = np.concatenate([e[:k], [threshold]])
        ys = np.concatenate([r[:k], [r[k - 1]]])
        area = np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs))
        aucs.append(float(area / threshold))
    return aucs


def _centre_errors(
    est_centers: np.ndarray, gt_centers: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Centre errors after Umeyama alignment of estimated onto ground-truth centres (needs >= 3)."""
    if len(est_centers) < 3:
        return np.full(len(est_centers), np.nan), float("nan"), None
    try:
        sim = umeyama_alignment(est_centers, gt_centers, with_scale=True)
    except InputError as exc:
        logger.warning("centre alignment failed: %s", exc)
        return np.full(len(est_centers), np.nan), float("nan"), None
    aligned = sim.apply(est_centers)
    return np.linalg.norm(aligned - gt_centers, axis=1), sim.scale, sim.rotation


def evaluate_reconstruction(
    rec: Reconstruction,
    gt: dict[str, GroundTruthCamera],
    *,
    thresholds_deg=AUC_THRESHOLDS_DEG,
    include_per_image: bool = True,
) -> dict:
    """Compare ``rec`` with ground truth (matched by image name).

    Args:
        rec: the estimated reconstruction.
        gt: ``{name: GroundTruthCamera}`` from one of the readers / ``load_ground_truth``.
        thresholds_deg: AUC thresholds.
        include_per_image: add the ``per_image`` list (name, registered, centre/rotation/focal errors).

    Returns:
        dict with ``auc@T`` per threshold (T formatted like ``1``, ``2.5``), counts, median pair errors,
        centre-error statistics (``centre_error_*`` in ground-truth units, ``*_rel`` divided by the
        ground-truth scene radius = median distance of the centres from their mean) and ``per_image``.
    """
    if not gt:
        raise InputError("ground truth is empty")
    names = sorted(gt)
    matched = match_views_by_name(rec, names)
    est = [rec.views[matched[n]].cam_from_world if n in matched else None for n in names]
    gt_poses = [gt[n].cam_from_world for n in names]
    rel = relative_pose_errors(est, gt_poses)
    aucs = pose_auc(rel["pose_error_deg"], thresholds_deg)

    reg_idx = [k for k, p in enumerate(est) if p is not None]
    est_centers = np.array([est[k].center for k in reg_idx]).reshape(-1, 3)
    gt_centers_all = np.array([p.center for p in gt_poses])
    gt_centers = gt_centers_all[reg_idx]
    centre_err, align_scale, align_R = _centre_errors(est_centers, gt_centers)
    radius = float(np.median(np.linalg.norm(gt_centers_all - gt_centers_all.mean(0), axis=1)))
    registered = np.array([p is not None for p in est], dtype=bool)
    pair_ok = registered[rel["pairs"][:, 0]] & registered[rel["pairs"][:, 1]]

    result: dict = {f"auc@{t:g}": a for t, a in zip(thresholds_deg, aucs, strict=True)}
    result.update(
        {
            "num_gt_images": len(names),
            "num_matched_images": len(matched),
            "num_registered": len(reg_idx),
            "registration_rate": len(reg_idx) / len(names),
            "num_pairs": int(len(rel["pairs"])),
            "median_rotation_error_deg": _median(rel["rotation_error_deg"][pair_ok]),
            "median_translation_error_deg": _median(rel["translation_error_deg"][pair_ok]),
            "median_pose_error_deg": float(np.median(rel["pose_error_deg"]))
            if len(rel["pairs"])
            else float("nan"),
            "centre_error_mean": _mean(centre_err),
            "centre_error_median": _median(centre_err),
            "centre_error_max": float(np.max(centre_err)) if np.isfinite(centre_err).any() else float("nan"),
            "centre_error_median_rel": _median(centre_err) / radius if radius > 0 else float("nan"),
            "alignment_scale": align_scale,
        }
    )
    if include_per_image:
        result["per_image"] = _per_image(rec, gt, names, est, reg_idx, centre_err, align_R, matched)
    return result


def _median(x: np.ndarray) -> float:
    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else float("nan")


def _per_image(rec, gt, names, est, reg_idx, centre_err, align_R, matched) -> list[dict]:
    centre_by_idx = dict(zip(reg_idx, centre_err.tolist(), strict=True))
    rows = []
    for k, name in enumerate(names):
        row = {
            "name": name,
            "registered": est[k] is not None,
            "centre_error": float("nan"),
            "rotation_error_deg": float("nan"),
            "focal_error_rel": float("nan"),
            "num_points3D": 0,
        }
        if est[k] is not None:
            view = rec.views[matched[name]]
            row["num_points3D"] = view.num_points3D
            row["centre_error"] = centre_by_idx[k]
            if align_R is not None:
                # aligned camera orientation: world_from_cam maps by the alignment rotation
                R_aligned = est[k].rotation @ align_R.T
                row["rotation_error_deg"] = float(
                    rotation_angle_deg(R_aligned, gt[name].cam_from_world.rotation)
                )
            K_gt = gt[name].K
            if K_gt is not None:
                f_est = np.mean(rec.cameras[view.camera_id].focal_xy)
                row["focal_error_rel"] = float(
                    abs(f_est - np.mean([K_gt[0, 0], K_gt[1, 1]])) / np.mean([K_gt[0, 0], K_gt[1, 1]])
                )
        rows.append(row)
    return rows


def format_per_image_table(rows: list[dict]) -> str:
    """Plain-text table of ``evaluate_reconstruction(...)['per_image']``."""
    header = f"{'image':<28} {'reg':>3} {'points':>7} {'centre_err':>11} {'rot_err_deg':>11} {'focal_err':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name'][:28]:<28} {'yes' if r['registered'] else 'no':>3} {r['num_points3D']:>7d} "
            f"{r['centre_error']:>11.4g} {r['rotation_error_deg']:>11.4g} {r['focal_error_rel']:>9.3%}"
        )
    return "\n".join(lines)


def evaluate_models(
    reconstructions: list[Reconstruction],
    gt: dict[str, GroundTruthCamera],
    *,
    thresholds_deg=AUC_THRESHOLDS_DEG,
) -> dict:
    """Score several models of one run: each on its own, and their union after alignment.

    The union puts every model with at least 3 ground-truth-matched cameras into the ground-truth frame
    (Umeyama similarity of its camera centres onto the ground-truth centres), then scores all those
    cameras together with :func:`evaluate_reconstruction`, so pairs *across* models count too and an
    image registered in any model counts as registered. Models with fewer matched cameras cannot be
    aligned and stay out of the union (they are still scored alone). With one model the union is it.

    Returns:
        The union's metrics (as :func:`evaluate_reconstruction`, with ``per_image``) plus ``scored``
        (what the top-level numbers describe), ``num_models``, ``num_models_in_union`` and ``models``:
        per model its index (``sparse/<index>``), ``num_registered_in_model`` and its own metrics.
    """
    if not reconstructions:
        raise InputError("no model to evaluate")
    per_model = []
    for index, rec in enumerate(reconstructions):
        result = evaluate_reconstruction(rec, gt, thresholds_deg=thresholds_deg, include_per_image=False)
        per_model.append({"model": index, "num_registered_in_model": rec.num_registered, **result})
    if len(reconstructions) == 1:
        union, used = reconstructions[0], 1
    else:
        union, used = _aligned_union(reconstructions, gt)
    result = evaluate_reconstruction(union, gt, thresholds_deg=thresholds_deg)
    scored = (
        "the only model"
        if len(reconstructions) == 1
        else f"union of {used} of {len(reconstructions)} models, each aligned to the ground truth by its "
        "camera centres"
    )
    return {
        "scored": scored,
        "num_models": len(reconstructions),
        "num_models_in_union": used,
        **result,
        "models": per_model,
    }


def _aligned_union(reconstructions: list[Reconstruction], gt: dict) -> tuple[Reconstruction, int]:
    """All alignable models' registered views in the ground-truth frame (first model wins a name)."""
    from geomvision.scene.reconstruction import View

    union = Reconstruction()
    seen: set[str] = set()
    used = 0
    for rec in reconstructions:
        names = sorted(gt)
        matched = match_views_by_name(rec, names)
        pairs = [(n, matched[n]) for n in names if n in matched and rec.views[matched[n]].registered]
        if len(pairs) < 3:
            continue
        est = np.array([rec.views[i].cam_from_world.center for _, i in pairs])
        ref = np.array([gt[n].cam_from_world.center for n, _ in pairs])
        try:
            gt_from_model = umeyama_alignment(est, ref, with_scale=True)
        except InputError as exc:
            logger.warning("model with %d images left out of the union: %s", len(pairs), exc)
            continue
        used += 1
        for name, image_id in pairs:
            if name in seen:
                continue
            seen.add(name)
            view = rec.views[image_id]
            camera = rec.cameras[view.camera_id]
            new_id = len(union.views) + 1
            union.add_camera(replace(camera, camera_id=new_id))
            pose = gt_from_model.transform_pose(view.cam_from_world)
            union.add_view(View(new_id, view.name, new_id, pose))
    if not used:
        return reconstructions[0], 1
    return union, used
