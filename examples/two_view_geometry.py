"""Two-view geometry from two images: SIFT, matching, RANSAC essential matrix, epipolar lines drawn.

Usage::

    python examples/two_view_geometry.py [IMAGE1 IMAGE2] [-o epipolar_lines.png]

Without arguments it uses two images of the sample set in ``datasets/fountain_small``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from geomvision.features.extract import ExtractionOptions, extract_features
from geomvision.features.match import MatchingOptions, match_pairs
from geomvision.geometry.camera_models import default_focal_px
from geomvision.geometry.rigid import rotation_angle_deg
from geomvision.io.images import image_size, read_image
from geomvision.sfm.two_view import TwoViewOptions, verify_pair

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "fountain_small" / "images"


def epipolar_lines_image(img1, img2, x1, x2, F, num_lines=25, rng=0) -> np.ndarray:
    """Side-by-side image with epipolar lines of some inliers drawn in the second image (and points in both).

    Args:
        img1, img2: (H, W, 3) uint8 RGB.
        x1, x2: (N, 2) inlier pixels; F: (3, 3) with x2^T F x1 = 0.
    """
    rng = np.random.default_rng(rng)
    pick = rng.choice(len(x1), size=min(num_lines, len(x1)), replace=False)
    canvas1, canvas2 = img1.copy(), img2.copy()
    width2 = img2.shape[1]
    for k in pick:
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        a, b, c = F @ np.array([x1[k, 0], x1[k, 1], 1.0])  # line a x + b y + c = 0 in image 2
        if abs(b) > 1e-12:
            p0, p1 = (0, int(round(-c / b))), (width2 - 1, int(round(-(c + a * (width2 - 1)) / b)))
            cv2.line(canvas2, p0, p1, color, 1, cv2.LINE_AA)
        cv2.circle(canvas1, tuple(int(round(v)) for v in x1[k]), 4, color, -1)
        cv2.circle(canvas2, tuple(int(round(v)) for v in x2[k]), 4, color, -1)
    height = max(img1.shape[0], img2.shape[0])
    pad = lambda im: np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.hstack([pad(canvas1), pad(canvas2)])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", default=[str(SAMPLE / "0004.jpg"), str(SAMPLE / "0005.jpg")])
    parser.add_argument("-o", "--output", default="epipolar_lines.png")
    args = parser.parse_args()
    paths = [Path(p) for p in args.images]

    # 1. features (keypoints in original-image pixels) and 2. ratio-test + mutual matches
    features = extract_features(paths, ExtractionOptions(max_num_features=4000))
    feats = {1: features[0], 2: features[1]}
    matches = match_pairs(feats, [(1, 2)], MatchingOptions())[(1, 2)]
    print(f"{len(features[0])} and {len(features[1])} features, {len(matches)} putative matches")

    # 3. calibrated verification with the default focal guess 1.2*max(w, h)
    Ks = []
    for p in paths:
        w, h = image_size(p)
        f = default_focal_px(w, h)
        Ks.append(np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]]))
    geometry = verify_pair(
        feats[1].keypoints_px, feats[2].keypoints_px, matches.indices, Ks[0], Ks[1], TwoViewOptions(), rng=0
    )
    if not geometry.success:
        print(f"pair rejected: {geometry.reason}")
        return 1
    pose = geometry.cam2_from_cam1
    print(
        f"config={geometry.config}, {geometry.num_inliers} inliers, relative rotation "
        f"{rotation_angle_deg(pose.rotation):.2f} deg, translation direction {np.round(pose.translation, 3)}, "
        f"median triangulation angle {geometry.median_triangulation_angle_deg:.2f} deg"
    )

    # 4. draw epipolar lines of the inliers
    F = geometry.F if geometry.F is not None else (np.linalg.inv(Ks[1]).T @ geometry.E @ np.linalg.inv(Ks[0]))
    x1 = feats[1].keypoints_px[geometry.inlier_matches[:, 0]]
    x2 = feats[2].keypoints_px[geometry.inlier_matches[:, 1]]
    canvas = epipolar_lines_image(read_image(paths[0]), read_image(paths[1]), x1, x2, F)
    cv2.imwrite(args.output, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
