"""geomvision: classical multi-view geometry and structure from motion in Python."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "reconstruct"]


def reconstruct(image_dir, output_dir=None, config=None):
    """Reconstruct cameras and sparse points from a folder of images.

    See :func:`geomvision.pipeline.reconstruct`; imported lazily so ``import geomvision`` stays light.
    """
    from geomvision.pipeline import reconstruct as _reconstruct

    return _reconstruct(image_dir, output_dir=output_dir, config=config)
