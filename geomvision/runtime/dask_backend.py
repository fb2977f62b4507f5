"""The runner's Dask backend: batches run as ``dask.distributed`` futures (the only module importing dask).

``connect`` either starts a ``LocalCluster`` of worker processes listening on 127.0.0.1 only, or
connects to a running scheduler by address, optionally over TLS (``distributed.security.Security``
built from certificate files, or the dask config's ``distributed.comm.tls`` settings). A scheduler
runs whatever code its clients send: never expose its port without TLS (docs/scaling.md).

Payloads travel as pickled bytes (:func:`geomvision.runtime.runner.run_payload`); large ones are
scattered to a worker first so they go client -> worker directly instead of through the scheduler.
Dask recomputes the batches of a worker that dies before their results are gathered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from geomvision.errors import InputError
from geomvision.runtime.runner import Backend, DaskSettings, run_payload
from geomvision.runtime.worker import main_module_hidden

logger = logging.getLogger(__name__)

try:
    import distributed
except ImportError:  # optional extra: the core runs without it
    distributed = None

#: Payloads above this go to a worker by ``scatter`` (direct transfer), not inside the task.
_SCATTER_BYTES = 1 << 20
_CONNECT_TIMEOUT_S = 30


def _require_dask() -> None:
    if distributed is None:
        raise InputError("the dask backend needs dask.distributed: pip install 'geomvision[distributed]'")


def security_from(settings: DaskSettings):
    """A ``distributed.security.Security`` from the TLS files, or None (the dask config then applies)."""
    files = (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    if not any(files):
        return None
    if not all(files):
        raise InputError(f"TLS needs all of tls_ca_file, tls_cert_file and tls_key_file, got {list(files)}")
    for path in files:
        if not os.path.isfile(path):
            raise InputError(f"TLS file {path!r} does not exist")
    return distributed.security.Security(
        tls_ca_file=settings.tls_ca_file,
        tls_client_cert=settings.tls_cert_file,
        tls_client_key=settings.tls_key_file,
        require_encryption=True,
    )


class DaskBackend(Backend):
    """Batches as futures of a ``distributed.Client``."""

    name = "dask"
    in_process = False

    def __init__(self, client, cluster=None, *, shares_files: bool = False, scheduler: str = "") -> None:
        self.client = client
        self.cluster = cluster
        self.shares_files = shares_files
        self.scheduler = scheduler
        # Workers of our own LocalCluster die with this process; remote workers are not ours to end.
        self._client_pid = os.getpid() if cluster is not None else None
        self._outstanding: set = set()
        self._last_workers: dict = {}
        self._workers()

    def _workers(self) -> dict:
        if self.client is not None:  # after close, the last count seen stands
            self._last_workers = dict(self.client.scheduler_info().get("workers", {}))
        return self._last_workers

    @property
    def num_workers(self) -> int:
        """Worker threads of the cluster (each runs one batch at a time)."""
        return max(1, sum(w.get("nthreads", 1) for w in self._workers().values()))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "dask",
            "workers": len(self._workers()),
            "threads": self.num_workers,
            "scheduler": self.scheduler,
            "images_visible_to_workers": self.shares_files,
        }

    def submit(self, payload: bytes):
        data: Any = payload
        if len(payload) > _SCATTER_BYTES:
            data = self.client.scatter(payload, hash=False)
        future = self.client.submit(run_payload, data, self._client_pid, pure=False)
        self._outstanding.add(future)
        return future

    def wait_first(self, futures: set) -> set:
        return set(distributed.wait(list(futures), return_when="FIRST_COMPLETED").done)

    def result(self, future) -> bytes:
        data = future.result()
        self._outstanding.discard(future)
        future.release()
        return data

    def close(self, *, cancel: bool = False) -> None:
        if self.client is None:
            return
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if cancel and self._outstanding:
                client.cancel(list(self._outstanding), force=True)
            self._outstanding.clear()
            client.close()
        finally:
            if cluster is not None:
                cluster.close()


def connect(settings: DaskSettings, num_workers: int) -> DaskBackend:
    """Start a LocalCluster (``scheduler == "local"``) or connect to a scheduler address."""
    _require_dask()
    security = security_from(settings)
    if settings.scheduler == "local":
        # Worker processes start with __main__ hidden, so an unguarded user script is not re-run in them,
        # and with SIGINT ignored (inherited through exec), so Ctrl-C reaches the client alone.
        with main_module_hidden(), _sigint_ignored():
            cluster = distributed.LocalCluster(
                n_workers=num_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # No dashboard; the HTTP servers that remain (health, metrics) listen on 127.0.0.1 too.
                dashboard_address=None,
                worker_dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR,
                security=security,
            )
        client = distributed.Client(cluster, security=security)
        logger.info("dask: local cluster of %d workers at %s", num_workers, cluster.scheduler_address)
        return DaskBackend(
            client, cluster, shares_files=settings.images_visible_to_workers, scheduler="local"
        )
    if "://" not in settings.scheduler:
        raise InputError(
            f"scheduler must be 'local' or an address like tcp://HOST:PORT, got {settings.scheduler!r}"
        )
    if settings.scheduler.startswith("tcp://") and security is None and not _is_loopback(settings.scheduler):
        logger.warning(
            "connecting to %s without TLS: anyone who reaches that port can run code on the cluster",
            settings.scheduler,
        )
    try:
        client = distributed.Client(settings.scheduler, security=security, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot connect to the dask scheduler at {settings.scheduler}: {exc}") from None
    logger.info("dask: connected to %s", settings.scheduler)
    return DaskBackend(
        client, None, shares_files=settings.images_visible_to_workers, scheduler=settings.scheduler
    )


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while child processes start (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")
