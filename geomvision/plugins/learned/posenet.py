"""PoseNet-style absolute camera pose regression (Kendall, Grimes, Cipolla, ICCV 2015).

A CNN maps one image to the camera's position (centre, 3) and orientation (quaternion wxyz, 4) in the
frame of the scene it was trained on; trained with ``||x̂ - x|| + β ||q̂/||q̂|| - q||``.
"""

from __future__ import annotations

import torch
from torch import nn

from geomvision.plugins.learned.common import init_quaternion_bias, make_backbone, resolve_backbone

__all__ = ["PoseNet", "create_posenet"]


class PoseNet(nn.Module):
    """Absolute pose regressor: images (B, 3, H, W) -> (B, 7) = [centre (3), quat_wxyz (4, unnormalised)].

    The centre and rotation are those of ``ref_from_cam`` (camera-to-reference), in the normalised units
    the model was trained in (see :mod:`geomvision.plugins.learned.data`).
    """

    model_name = "posenet"
    kind = "absolute"

    def __init__(self, *, backbone: str = "auto", hidden: int = 1024, dropout: float = 0.3):
        super().__init__()
        backbone = resolve_backbone(backbone)
        self.config = {"backbone": backbone, "hidden": int(hidden), "dropout": float(dropout)}
        self.encoder, channels = make_backbone(backbone)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc_position = nn.Linear(hidden, 3)
        self.fc_quaternion = nn.Linear(hidden, 4)
        init_quaternion_bias(self.fc_quaternion)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images).mean(dim=(2, 3))  # global average pool
        h = self.fc(features)
        return torch.cat([self.fc_position(h), self.fc_quaternion(h)], dim=1)


def create_posenet(**config) -> PoseNet:
    """Entry-point factory of the ``posenet`` plugin: ``PoseNet(**config)``."""
    return PoseNet(**config)
