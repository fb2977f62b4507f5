"""A plain JSON dump of a reconstruction (for web viewers and scripts that do not read COLMAP)."""

from __future__ import annotations

import json
from pathlib import Path

from geomvision.runtime.atomic import atomic_write_text
from geomvision.scene.reconstruction import Reconstruction

__all__ = ["reconstruction_to_dict", "write_json_model"]


def reconstruction_to_dict(rec: Reconstruction) -> dict:
    """Cameras, registered images and points as JSON-ready lists.

    Conventions are geomvision's: ``cam_from_world`` poses (``quat_wxyz``, ``translation``), camera
    ``center`` in world, OpenCV pixel origin for intrinsics and keypoints.
    """
    cameras = [
        {
            "camera_id": c.camera_id,
            "model": c.model,
            "width": c.width,
            "height": c.height,
            "params": c.params.tolist(),
            "param_names": list(c.param_names),
        }
        for c in (rec.cameras[i] for i in sorted(rec.cameras))
    ]
    images = []
    for image_id in rec.registered_image_ids:
        view = rec.views[image_id]
        pose = view.cam_from_world
        images.append(
            {
                "image_id": image_id,
                "name": view.name,
                "camera_id": view.camera_id,
                "quat_wxyz": pose.quat_wxyz.tolist(),
                "translation": pose.translation.tolist(),
                "center": pose.center.tolist(),
                "num_keypoints": len(view.keypoints_px),
                "num_points3D": view.num_points3D,
            }
        )
    points = [
        {
            "point3D_id": pid,
            "xyz": p.xyz.tolist(),
            "rgb": [int(c) for c in p.color],
            "error_px": float(p.error),
            "track": [[int(i), int(k)] for i, k in p.track],
        }
        for pid, p in sorted(rec.points3D.items())
    ]
    return {
        "format": "geomvision-reconstruction",
        "version": 1,
        "pose_convention": "cam_from_world",
        "pixel_origin": "opencv",
        "cameras": cameras,
        "images": images,
        "points3D": points,
    }


def write_json_model(rec: Reconstruction, path: str | Path) -> Path:
    """Write ``reconstruction_to_dict(rec)`` as JSON (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(reconstruction_to_dict(rec), separators=(",", ":")) + "\n")
    return path
