"""Small data types shared by all stages (no algorithms beyond bookkeeping)."""

from geomvision.scene.camera import CAMERA_MODELS, Camera
from geomvision.scene.reconstruction import Point3D, Reconstruction, View
from geomvision.scene.types import Features, ImageInfo, Matches, Track, TwoViewGeometry

__all__ = [
    "CAMERA_MODELS",
    "Camera",
    "Features",
    "ImageInfo",
    "Matches",
    "Point3D",
    "Reconstruction",
    "Track",
    "TwoViewGeometry",
    "View",
]
