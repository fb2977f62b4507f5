"""Camera intrinsics (COLMAP model names and parameter order)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geomvision.errors import InputError, check_choice

#: model name -> parameter names, in COLMAP's order. Pixels use the OpenCV origin (centre of the
#: top-left pixel); COLMAP files are converted in io/colmap.py only.
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


@dataclass
class Camera:
    """Intrinsics of one physical camera.

    Attributes:
        camera_id: id unique within a reconstruction.
        model: one of ``CAMERA_MODELS``.
        width, height: image size in pixels.
        params: (P,) float64 parameters in the model's order.
    """

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self) -> None:
        check_choice("camera model", self.model, sorted(CAMERA_MODELS))
        self.params = np.asarray(self.params, dtype=np.float64).reshape(-1)
        expected = len(CAMERA_MODELS[self.model])
        if self.params.size != expected:
            raise InputError(f"{self.model} takes {expected} params, got {self.params.size}")
        if not np.all(np.isfinite(self.params)):
            raise InputError(f"camera {self.camera_id} params contain NaN/inf: {self.params}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InputError(f"camera size must be positive, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)

    @classmethod
    def pinhole(cls, camera_id: int, fx: float, fy: float, cx: float, cy: float, width: int, height: int):
        return cls(camera_id, "PINHOLE", width, height, np.array([fx, fy, cx, cy]))

    @property
    def param_names(self) -> tuple[str, ...]:
        return CAMERA_MODELS[self.model]

    @property
    def pinhole_params(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels; the models with one focal length ``f`` have ``fx = fy = f``."""
        p = self.params
        if self.model in ("PINHOLE", "OPENCV"):
            return float(p[0]), float(p[1]), float(p[2]), float(p[3])
        return float(p[0]), float(p[0]), float(p[1]), float(p[2])

    @property
    def focal_xy(self) -> tuple[float, float]:
        return self.pinhole_params[:2]

    @property
    def principal_point(self) -> tuple[float, float]:
        return self.pinhole_params[2:]

    @property
    def K(self) -> np.ndarray:
        """(3, 3) calibration matrix of the pinhole part (distortion ignored)."""
        fx, fy, cx, cy = self.pinhole_params
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> np.ndarray:
        """Distortion coefficients in the model's order (empty for pinhole models)."""
        n_pinhole = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4}
        return self.params[n_pinhole[self.model] :].copy()

    def project(self, points_in_cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera-frame points -> (N, 2) pixels (with distortion)."""
        from geomvision.geometry import camera_models

        return camera_models.project(self.model, self.params, points_in_cam)

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) undistorted normalised image coordinates (z = 1)."""
        from geomvision.geometry import camera_models

        return camera_models.unproject(self.model, self.params, pixels)

    def ideal_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) undistorted pixels: the same rays in the pinhole image with this K."""
        K = self.K
        return self.unproject(pixels) @ K[:2, :2].T + K[:2, 2]
