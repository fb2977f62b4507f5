"""Descriptors on disk, keypoints in memory: the bounded-memory form of a large image set's features.

An image's SIFT descriptors (float32, 128 per keypoint: ~1.5 MB for 3000 keypoints) outweigh everything
else the pipeline keeps per image by ten times, and only matching (and the few passes that re-match a
pair) reads them. The features stage already writes each image's result to the runner's signed cache;
:class:`StoredFeatures` keeps the keypoints, scales, orientations and colours in memory and only a
:class:`DescriptorFile` reference (path, shape, content hash) for the descriptors, which are read back from
that cache entry where a task needs them: in a matching worker, one tile's images at a time.

Measured on the synthetic street (640x480, ~2900 SIFT keypoints per image): the client held 0.45 GB of
descriptors at 300 images and would hold ~3 GB at 2000; stored, it holds ~0.1 GB of keypoints at 2000.

Workers read the entries by path, so they must see the client's cache folder: always true for the local
process pool and a local Dask cluster; a remote Dask cluster needs a shared filesystem (the setting
``images_visible_to_workers``), otherwise descriptors travel by value as before.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomvision.runtime.cache import hash_arrays
from geomvision.scene.types import Features

__all__ = ["DescriptorFile", "StoredFeatures", "descriptor_source", "features_hash", "load_descriptors"]


@dataclass(frozen=True)
class DescriptorFile:
    """One image's descriptors as a member of an uncompressed ``.npz`` (a features cache entry).

    Has the array's ``shape``, ``dtype`` and ``len`` without reading it; :meth:`load` reads it and checks
    its content hash, so a worker never matches with descriptors other than those the client checked.

    Attributes:
        path: absolute path of the ``.npz``.
        digest: :func:`~geomvision.runtime.cache.hash_arrays` of the descriptors.
        shape: (N, D).
        dtype_str: numpy dtype string (``"<f4"`` SIFT, ``"|u1"`` binary).
        member: the array's name in the archive.
    """

    path: str
    digest: str
    shape: tuple[int, int]
    dtype_str: str
    member: str = "descriptors"

    @classmethod
    def of(
        cls, path: str | os.PathLike, descriptors: np.ndarray, member: str = "descriptors"
    ) -> DescriptorFile:
        """The reference to ``descriptors``, which ``path`` holds as ``member``."""
        return cls(
            path=str(Path(path).resolve()),
            digest=hash_arrays(descriptors),
            shape=(int(descriptors.shape[0]), int(descriptors.shape[1])),
            dtype_str=descriptors.dtype.str,
            member=member,
        )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dtype_str)

    def __len__(self) -> int:
        return self.shape[0]

    def load(self) -> np.ndarray:
        """Read the descriptors (only this member of the archive).

        Raises:
            OSError: the file is gone, unreadable, or no longer holds the same descriptors (another run
                rewrote the cache folder meanwhile).
        """
        with np.load(self.path, allow_pickle=False) as npz:
            descriptors = npz[self.member]
        if hash_arrays(descriptors) != self.digest:
            raise OSError(f"descriptors in {self.path} changed while this run used them")
        return descriptors


class StoredFeatures(Features):
    """:class:`~geomvision.scene.types.Features` whose descriptors stay in a file.

    Everything but the descriptors is in memory; ``descriptors`` reads them from :attr:`descriptor_file`
    on every access (nothing is kept), so a pass over many images holds one image's descriptors at a time.
    ``content_hash`` is :func:`features_hash` of the full features, computed once when they were stored.
    """

    def __init__(
        self,
        features: Features,
        descriptor_file: DescriptorFile,
        *,
        content_hash: str | None = None,
    ) -> None:
        self.keypoints_px = features.keypoints_px
        self.scales = features.scales
        self.orientations = features.orientations
        self.colors = features.colors
        self.descriptor_file = descriptor_file
        self.content_hash = content_hash or features_hash(features)

    @property
    def descriptors(self) -> np.ndarray:  # type: ignore[override]
        return self.descriptor_file.load()

    def __repr__(self) -> str:
        return f"StoredFeatures({len(self)} keypoints, descriptors in {self.descriptor_file.path})"


def descriptor_source(features: Features) -> np.ndarray | DescriptorFile:
    """The descriptors themselves, or for :class:`StoredFeatures` their file (nothing is read)."""
    return features.descriptor_file if isinstance(features, StoredFeatures) else features.descriptors


def load_descriptors(source: np.ndarray | DescriptorFile) -> np.ndarray:
    """The array behind a :func:`descriptor_source` value (read from its file if it is one)."""
    return source.load() if isinstance(source, DescriptorFile) else source


def features_hash(features: Features) -> str:
    """Content hash of a feature set (keypoints + descriptors); stored features reuse theirs."""
    if isinstance(features, StoredFeatures):
        return features.content_hash
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(features.keypoints_px).tobytes())
    digest.update(str(features.descriptors.dtype).encode())
    digest.update(np.ascontiguousarray(features.descriptors).tobytes())
    return digest.hexdigest()
