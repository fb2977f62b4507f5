"""Compatibility alias: atomic writes live on the ground floor, :mod:`geomvision.runtime.atomic`."""

from geomvision.runtime.atomic import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
