"""Recurrent sequence pose model: a conv encoder per frame feeding an LSTM over the image sequence.

Each output is the frame's pose relative to the first frame of the sequence, in the camera-to-world form
``R'_i = R_1^T R_i``, ``t'_i = R_1^T (t_i - t_1)`` (see
:func:`geomvision.geometry.rigid.relative_poses_to_first_cam_to_world`), so the first frame's label is the
identity. Trained with the same loss as PoseNet (in the spirit of DeepVO, Wang et al., ICRA 2017).
"""

from __future__ import annotations

import torch
from torch import nn

from geomvision.plugins.learned.common import init_quaternion_bias, make_backbone, resolve_backbone

__all__ = ["SequencePoseNet", "create_sequence_model"]


class SequencePoseNet(nn.Module):
    """Images (B, T, 3, H, W) -> (B, T, 7) = per frame [centre in first camera (3), quat_wxyz (4)]."""

    model_name = "sequence"
    kind = "sequence"

    def __init__(
        self,
        *,
        backbone: str = "auto",
        feature_dim: int = 256,
        hidden: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
    ):
        super().__init__()
        backbone = resolve_backbone(backbone)
        self.config = {
            "backbone": backbone,
            "feature_dim": int(feature_dim),
            "hidden": int(hidden),
            "num_layers": int(num_layers),
            "bidirectional": bool(bidirectional),
        }
        self.encoder, channels = make_backbone(backbone)
        self.project = nn.Sequential(nn.Linear(channels, feature_dim), nn.ReLU(inplace=True))
        self.lstm = nn.LSTM(
            feature_dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=bidirectional
        )
        out = hidden * (2 if bidirectional else 1)
        # The head sees the frame's own features too, so it does not rely on the recurrent state alone.
        self.fc_position = nn.Linear(out + feature_dim, 3)
        self.fc_quaternion = nn.Linear(out + feature_dim, 4)
        init_quaternion_bias(self.fc_quaternion)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, t = images.shape[:2]
        feats = self.encoder(images.flatten(0, 1)).mean(dim=(2, 3))
        feats = self.project(feats).view(b, t, -1)
        states, _ = self.lstm(feats)
        h = torch.cat([states, feats], dim=2)
        return torch.cat([self.fc_position(h), self.fc_quaternion(h)], dim=2)


def create_sequence_model(**config) -> SequencePoseNet:
    """Entry-point factory of the ``sequence`` plugin: ``SequencePoseNet(**config)``."""
    return SequencePoseNet(**config)
