"""Building blocks shared by the learned pose models: backbones, spatial pyramid pooling, pose losses.

Backbones are created with random weights only (``weights=None``): nothing is downloaded at run time.
torchvision is optional; without it ``backbone="auto"`` picks the small ResNet-style network defined here.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn
from torch.nn import functional as F

from geomvision.errors import InputError, check_choice

logger = logging.getLogger(__name__)

#: Per-channel mean / std used to standardise RGB in [0, 1] (the usual ImageNet statistics; the models
#: are trained from scratch, so these only centre the inputs).
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)

BACKBONES = ("auto", "small", "resnet18", "resnet34")


def torchvision_available() -> bool:
    """True when torchvision can be imported beside the installed torch."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - e.g. "operator torchvision::nms does not exist"
        logger.debug("torchvision present but not importable: %s", exc)
        return False
    return True


def resolve_backbone(name: str) -> str:
    """Map ``"auto"`` to ``"resnet18"`` when torchvision imports, else ``"small"``; validate the rest."""
    check_choice("backbone", name, BACKBONES)
    if name == "auto":
        return "resnet18" if torchvision_available() else "small"
    if name.startswith("resnet") and not torchvision_available():
        raise InputError(f"backbone {name!r} needs torchvision; use backbone='small' or install torchvision")
    return name


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A light ResNet-style feature extractor: (B, 3, H, W) -> (B, 256, H/16, W/16).

    About 2.8 M parameters, a quarter of ResNet-18's compute: enough to overfit a scene of a few dozen
    images on a CPU in minutes.
    """

    out_channels = 256

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 5, 2, 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        chans = [w, 2 * w, 4 * w, 8 * w]
        blocks = []
        c_prev = w
        for i, c in enumerate(chans):
            blocks.append(_BasicBlock(c_prev, c, 1 if i == 0 else 2))
            c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = c_prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def make_backbone(name: str) -> tuple[nn.Module, int]:
    """A convolutional feature extractor with random weights.

    Args:
        name: ``"small"``, ``"resnet18"`` or ``"resnet34"`` (already resolved, see :func:`resolve_backbone`).

    Returns:
        (module mapping (B, 3, H, W) to a (B, C, h, w) feature map, C).
    """
    name = resolve_backbone(name)
    if name == "small":
        net = SmallResNet()
        return net, net.out_channels
    import torchvision

    resnet = getattr(torchvision.models, name)(weights=None)  # random init: no download
    # Drop the classifier (global pool + fc); keep the conv trunk with stride 32.
    trunk = nn.Sequential(*list(resnet.children())[:-2])
    return trunk, resnet.fc.in_features


class SpatialPyramidPooling(nn.Module):
    """Max-pool a feature map over 1x1, 2x2 and 4x4 grids and concatenate (He et al. 2014).

    Keeps coarse spatial layout, which matters for relative pose, at a fixed length for any input size.
    """

    def __init__(self, levels: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.levels = tuple(levels)

    def output_length(self, channels: int) -> int:
        return channels * sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], dim=1)


def canonical_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) wxyz with the sign chosen so that w >= 0 (q and -q are one rotation)."""
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_distance(q_pred: torch.Tensor, q_true: torch.Tensor) -> torch.Tensor:
    """Sign-invariant quaternion distance ``min(||q̂/|q̂| - q||, ||q̂/|q̂| + q||)`` over rows (..., 4)."""
    q_hat = F.normalize(q_pred, dim=-1)
    return torch.minimum((q_hat - q_true).norm(dim=-1), (q_hat + q_true).norm(dim=-1))


def pose_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, *, beta: float, position_first: bool = True
) -> torch.Tensor:
    """PoseNet loss ``||x̂ - x|| + β ||q̂/||q̂|| - q||`` averaged over all leading dimensions.

    Args:
        pred: (..., 7) predictions; ``position_first`` selects the layout [x(3), q(4)] (absolute and
            sequence models) or [q(4), t_dir(3)] (relative model, whose translation is normalised to a unit
            direction before the comparison since its scale is unobservable).
        target: (..., 7) labels in the same layout, quaternions canonical (w >= 0), directions unit.
        beta: weight of the rotation term (units: position units per unit quaternion distance).
    """
    if position_first:
        pos_err = (pred[..., :3] - target[..., :3]).norm(dim=-1)
        rot_err = quaternion_distance(pred[..., 3:], target[..., 3:])
    else:
        rot_err = quaternion_distance(pred[..., :4], target[..., :4])
        pos_err = (F.normalize(pred[..., 4:], dim=-1) - target[..., 4:]).norm(dim=-1)
    return (pos_err + beta * rot_err).mean()


def init_quaternion_bias(linear: nn.Linear) -> None:
    """Start a quaternion head near the identity rotation so early normalisation is well conditioned."""
    nn.init.normal_(linear.weight, std=1e-3)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
