"""The stage runner's on-disk cache: content-addressed, signed, pickle-free entries.

One scheme for every stage. An entry's key is a hash of the stage name, the stage's code/format
version, the stage options that change its result, and the content of the item's inputs (never the
worker count or backend). An entry holds the result encoded by the stage's :class:`Codec` as numpy
arrays plus a JSON header, stored as a plain ``.npz`` (read with ``allow_pickle=False``) together with
an HMAC-SHA256, under a per-user key, of the format version and every array.

Loading an entry never executes code from it, and an entry that this user's key did not sign (written
by another user, copied from elsewhere, damaged, or of another format version) is ignored with a log
line and recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from geomvision.runtime.atomic import atomic_path

logger = logging.getLogger(__name__)

#: Signed into every entry; bump the digit when the entry layout changes (old entries are recomputed).
FORMAT = b"geomvision-cache-1"
_MAC = "__mac__"
#: Environment variable naming the key file (tests and shared machines may point it elsewhere).
KEY_FILE_ENV = "GEOMVISION_CACHE_KEY"
_META = "__meta__"


class Codec(Protocol):
    """How a stage's result becomes arrays + a JSON-able header, and back (no pickle involved)."""

    def encode(self, result: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def decode(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> Any: ...


def cache_key(stage: str, version: int, options_key: Any, item_key: str) -> str:
    """Content address of one item's result: 32 hex chars of BLAKE2b.

    Args:
        stage: the stage's name.
        version: the stage's code/format version (bumped when its output changes).
        options_key: JSON-able description of the options that change the result.
        item_key: hash of the item's own inputs.
    """
    text = json.dumps(
        {"stage": stage, "v": version, "options": options_key, "item": item_key},
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def hash_arrays(*values: Any) -> str:
    """BLAKE2b of arrays, bytes and plain values (array dtype and shape included)."""
    digest = hashlib.blake2b(digest_size=16)
    for value in values:
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        elif isinstance(value, bytes | bytearray | memoryview):
            digest.update(b"b")
            digest.update(bytes(value))
        else:
            digest.update(repr(value).encode())
        digest.update(b"|")
    return digest.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """Hex BLAKE2b digest of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_key_file() -> Path:
    """``$GEOMVISION_CACHE_KEY``, else ``$XDG_CACHE_HOME/geomvision/cache.key`` (``~/.cache``)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "geomvision" / "cache.key"


def load_or_create_key(path: Path | None = None) -> bytes | None:
    """This user's signing key (32 random bytes in a 0600 file, created on first use).

    Returns None, with a warning, when no private key can be had (unwritable home, a key file that
    others can read or that another user owns): the runner then computes without caching.
    """
    path = path or default_key_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            logger.warning(
                "cache key %s is not private to this user (mode %o): caching is off",
                path,
                info.st_mode & 0o777,
            )
            return None
        key = path.read_bytes()
    except OSError as exc:
        logger.warning("no cache key at %s (%s): caching is off", path, exc.strerror or exc)
        return None
    if len(key) < 16:
        logger.warning("cache key %s is too short: caching is off", path)
        return None
    return key


def _signature(key: bytes, arrays: Mapping[str, np.ndarray]) -> bytes:
    """HMAC-SHA256 over the format tag and every array's name, dtype, shape and bytes (sorted)."""
    mac = hmac.new(key, FORMAT, hashlib.sha256)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        mac.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
        mac.update(array.tobytes())
    return mac.digest()


class SignedCache:
    """A folder of signed entries, one subfolder per stage.

    An entry is a plain ``.npz`` (so any numpy reads it without pickle): the codec's arrays, the JSON
    header as ``__meta__`` (uint8) and ``__mac__``, the signature of all the others.
    """

    def __init__(self, root: str | os.PathLike, key: bytes) -> None:
        self.root = Path(root)
        self._key = key

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.npz"

    def load(self, stage: str, key: str, codec: Codec) -> tuple[bool, Any]:
        """(True, result) for a valid entry; (False, None) when absent or not trusted (logged)."""
        path = self.path(stage, key)
        if not path.is_file():
            return False, None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError) as exc:  # damaged (e.g. a disk error): recompute
            logger.warning("ignoring unreadable cache entry %s: %s; recomputing", path, exc)
            return False, None
        mac = arrays.pop(_MAC, None)
        if mac is None or not hmac.compare_digest(mac.tobytes(), _signature(self._key, arrays)):
            logger.warning(
                "ignoring cache entry %s: not signed by this user's key for format %s (another user, "
                "version or copy); recomputing",
                path,
                FORMAT.decode(),
            )
            return False, None
        try:
            meta = json.loads(arrays.pop(_META).tobytes().decode())
            return True, codec.decode(arrays, meta)
        except (ValueError, KeyError, TypeError) as exc:  # signed but undecodable: a codec bug
            logger.warning("ignoring cache entry %s: %s; recomputing", path, exc)
            return False, None

    def store(self, stage: str, key: str, codec: Codec, result: Any) -> None:
        """Write one entry atomically (no fsync: a damaged entry is only a cache miss)."""
        arrays, meta = codec.encode(result)
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        arrays[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        arrays[_MAC] = np.frombuffer(_signature(self._key, arrays), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_path(self.path(stage, key), durable=False) as tmp:
            tmp.write_bytes(buffer.getvalue())
