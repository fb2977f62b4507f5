"""Siamese relative camera pose network (after Melekhov et al., "Relative camera pose estimation using
convolutional neural networks", ACIVS 2017).

Two weight-sharing convolutional branches, each followed by spatial pyramid pooling, feed a regression
head for the relative rotation (quaternion wxyz) and the translation *direction* of ``cam2_from_cam1``
(the scale of a two-view translation is unobservable, as with the essential matrix, H&Z 9.6).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from geomvision.plugins.learned.common import (
    SpatialPyramidPooling,
    init_quaternion_bias,
    make_backbone,
    resolve_backbone,
)

__all__ = ["RelPoseNet", "create_relpose"]


class RelPoseNet(nn.Module):
    """(images1 (B, 3, H, W), images2 (B, 3, H, W)) -> (B, 7) = [quat_wxyz (4), unit t direction (3)].

    The pose is ``cam2_from_cam1``: ``x_cam2 = R x_cam1 + t`` with ``||t|| = 1``.
    """

    model_name = "relpose"
    kind = "relative"

    def __init__(
        self,
        *,
        backbone: str = "auto",
        reduced_channels: int = 128,
        hidden: int = 512,
        levels: tuple[int, ...] = (1, 2, 4),
        dropout: float = 0.2,
    ):
        super().__init__()
        backbone = resolve_backbone(backbone)
        self.config = {
            "backbone": backbone,
            "reduced_channels": int(reduced_channels),
            "hidden": int(hidden),
            "levels": list(levels),
            "dropout": float(dropout),
        }
        self.encoder, channels = make_backbone(backbone)
        # A 1x1 reduction keeps the pyramid's length (C * 21) small enough for a compact head.
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced_channels, 1), nn.ReLU(inplace=True))
        self.spp = SpatialPyramidPooling(tuple(levels))
        self.head = nn.Sequential(
            nn.Linear(2 * self.spp.output_length(reduced_channels), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.fc_quaternion = nn.Linear(hidden, 4)
        self.fc_translation = nn.Linear(hidden, 3)
        init_quaternion_bias(self.fc_quaternion)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """One branch: (B, 3, H, W) -> (B, C * sum(levels²)) pyramid descriptor."""
        return self.spp(self.reduce(self.encoder(images)))

    def forward(self, images1: torch.Tensor, images2: torch.Tensor) -> torch.Tensor:
        # Both branches share weights: run them as one batch (also keeps BatchNorm statistics common).
        both = self.embed(torch.cat([images1, images2], dim=0))
        f1, f2 = both.chunk(2, dim=0)
        h = self.head(torch.cat([f1, f2], dim=1))
        return torch.cat([self.fc_quaternion(h), F.normalize(self.fc_translation(h), dim=1)], dim=1)


def create_relpose(**config) -> RelPoseNet:
    """Entry-point factory of the ``relpose`` plugin: ``RelPoseNet(**config)``."""
    if "levels" in config:
        config["levels"] = tuple(config["levels"])
    return RelPoseNet(**config)
