"""The runner's Dask backend: batches run as ``dask.distributed`` futures (the only module importing dask).

``connect`` either starts a ``LocalCluster`` of worker processes listening on 127.0.0.1 only, or
connects to a running scheduler by address, optionally over TLS (``distributed.security.Security``
built from certificate files, or the dask config's ``distributed.comm.tls`` settings). A scheduler
runs whatever code its clients send: never expose its port without TLS (docs/scaling.md).

Payloads travel as pickled bytes (:func:`geomvision.runtime.runner.run_payload`); large ones are
scattered to a worker first so they go client -> worker directly instead of through the scheduler.
:class:`~geomvision.runtime.runner.Shared` values (an image's descriptors or keypoints, a stage's
options) are scattered once per map call and tasks take their futures as arguments, so each image's
features cross the client's network link once per stage, not once per batch that uses them.

Faults: Dask recomputes the batches of a worker that dies before their results are gathered. Data
scattered by the client cannot be recomputed by Dask: when the worker holding it dies, the tasks that
need it are cancelled; the backend then scatters the lost values again (the client still holds them)
and resubmits those batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from geomvision.errors import InputError
from geomvision.runtime.runner import Backend, DaskSettings, Shared, SharedRef, replace_shared, run_payload
from geomvision.runtime.worker import main_module_hidden, run_at_low_priority

logger = logging.getLogger(__name__)

try:
    import dask
    import distributed
except ImportError:  # optional extra: the core runs without it
    dask = distributed = None

#: Payloads above this go to a worker by ``scatter`` (direct transfer), not inside the task.
_SCATTER_BYTES = 1 << 20
_CONNECT_TIMEOUT_S = 30
#: Times a batch is resubmitted after the scattered data it needs was lost with a worker.
_MAX_RESUBMITS = 3


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


@dataclass(eq=False)
class _Submission:
    """One batch on the cluster: its future and what is needed to submit it again."""

    future: Any
    payload: bytes
    keys: list[Hashable]  # shared values, in SharedRef order
    shared: list = field(default_factory=list)  # the futures of those values it was last sent with
    scattered_payload: Any = None  # the payload's own future when it was scattered
    resubmits: int = 0


class DaskBackend(Backend):
    """Batches as futures of a ``distributed.Client``."""

    name = "dask"
    in_process = False

    def __init__(
        self, client, cluster=None, *, shares_files: bool = False, scheduler: str = "", startup_s: float = 0.0
    ) -> None:
        self.client = client
        self.startup_s = startup_s
        self.cluster = cluster
        self.shares_files = shares_files
        # A LocalCluster's workers run on this machine, so they read the client's cache folder even when
        # image bytes are shipped; a remote cluster needs a shared filesystem (images_visible_to_workers).
        self.shares_cache = shares_files or scheduler == "local"
        self.scheduler = scheduler
        # Workers of our own LocalCluster die with this process; remote workers are not ours to end.
        self._client_pid = os.getpid() if cluster is not None else None
        self._outstanding: set[_Submission] = set()
        #: Shared values on the cluster during a map call: key -> (future, value kept for a resend).
        self._shared: dict[Hashable, tuple[Any, Any]] = {}
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
            # Starting the LocalCluster (or connecting to the scheduler) and the client, in seconds.
            "startup_s": round(self.startup_s, 3),
        }

    def submit(self, task: Callable, batched: bool, inputs: list, context: Any) -> tuple[_Submission, int]:
        keys: list[Hashable] = []
        index: dict[Hashable, int] = {}
        values: dict[Hashable, Any] = {}

        def to_ref(shared: Shared) -> SharedRef:
            if shared.key not in index:
                index[shared.key] = len(keys)
                keys.append(shared.key)
                values[shared.key] = shared.value
            return SharedRef(index[shared.key])

        payload = pickle.dumps(
            replace_shared((task, batched, inputs, context), to_ref), protocol=pickle.HIGHEST_PROTOCOL
        )
        sent = len(payload) + self._scatter_missing({k: values[k] for k in keys if k not in self._shared})
        submission = _Submission(future=None, payload=payload, keys=keys)
        self._send(submission)
        return submission, sent

    def _scatter_missing(self, values: dict[Hashable, Any]) -> int:
        """Scatter the values not on the cluster yet (one round trip); returns their pickled bytes."""
        if not values:
            return 0
        futures = self.client.scatter(list(values.values()), hash=False)
        sent = 0
        for (key, value), future in zip(values.items(), futures, strict=True):
            self._shared[key] = (future, value)
            sent += len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return sent

    def _send(self, submission: _Submission) -> None:
        data: Any = submission.payload
        if len(data) > _SCATTER_BYTES:
            data = submission.scattered_payload = self.client.scatter(data, hash=False)
        submission.shared = [self._shared[key][0] for key in submission.keys]
        submission.future = self.client.submit(
            run_payload, data, self._client_pid, submission.shared, pure=False
        )
        self._outstanding.add(submission)

    def wait_first(self, futures: set) -> set:
        by_future = {s.future: s for s in futures}
        try:
            done = distributed.wait(list(by_future), return_when="FIRST_COMPLETED").done
        except CancelledError:  # cancelled batches are finished too: result() recovers or raises
            done = [f for f in by_future if f.done() or f.cancelled()]
        return {by_future[f] for f in done}

    def result(self, submission: _Submission) -> tuple[bytes, int]:
        resent = 0
        while True:
            try:
                data = submission.future.result()
                break
            except CancelledError:
                sent = self._resubmit_after_lost_data(submission)
                if sent is None:
                    raise
                resent += sent
        self._outstanding.discard(submission)
        submission.future.release()
        if submission.scattered_payload is not None:
            submission.scattered_payload.release()
        return data, resent

    def _resubmit_after_lost_data(self, submission: _Submission) -> int | None:
        """Scatter again what a cancelled batch needs that a dead worker took with it, and resubmit it.

        Returns the bytes sent again, or None when the batch was cancelled for another reason.
        """
        futures = list(submission.shared)
        if submission.scattered_payload is not None:
            futures.append(submission.scattered_payload)
        gone = {f.key for f in futures if f.status != "finished"}
        if not gone:  # the client may not have heard yet: ask the scheduler who holds them
            try:
                holders = self.client.who_has(futures)
                gone = {f.key for f in futures if not holders.get(f.key)}
            except CancelledError:
                gone = {f.key for f in futures if f.status != "finished"}
        lost = [key for key, f in zip(submission.keys, submission.shared, strict=True) if f.key in gone]
        payload_lost = submission.scattered_payload is not None and submission.scattered_payload.key in gone
        if not (lost or payload_lost) or submission.resubmits >= _MAX_RESUBMITS:
            return None
        # Another batch may have sent a value again already: only the ones still lost go out.
        lost = [key for key in lost if self._shared[key][0].key in gone]
        submission.resubmits += 1
        logger.warning(
            "dask: %d scattered input(s) of a batch were lost with a worker; sending them again", len(lost)
        )
        sent = self._scatter_missing({key: self._shared.pop(key)[1] for key in lost})
        if submission.scattered_payload is not None:
            submission.scattered_payload.release()
            submission.scattered_payload = None
        self._send(submission)
        return sent + len(submission.payload)  # the batch itself goes out again too

    def submit_background(self, fn: Callable, *args: Any):
        """A client-side chore (it writes the client's files) on a worker of our own LocalCluster.

        Those workers run on this machine and see its files; remote workers may not, so with a
        scheduler address the chore runs here, now.
        """
        if self.cluster is None:
            return super().submit_background(fn, *args)
        return self.client.submit(run_at_low_priority, fn, *args, pure=False)  # beside the stage's work

    def release_shared(self) -> None:
        for future, _ in self._shared.values():
            future.release()  # the scheduler forgets the data once no task needs it
        self._shared.clear()

    def close(self, *, cancel: bool = False) -> None:
        if self.client is None:
            return
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if cancel and self._outstanding:
                client.cancel([s.future for s in self._outstanding], force=True)
            self._outstanding.clear()
            self._shared.clear()
            client.close()
        finally:
            if cluster is not None:
                cluster.close()


#: Dask settings for our own LocalCluster. On a small machine the workers and the client (which runs the
#: scheduler and the mapper) share the cores, and Dask's own housekeeping took 10-15 % of templeRing's wall
#: time: the statistical profiler samples each worker's stack every 10 ms, the scheduler's event loop ticks
#: every 20 ms, psutil system monitors poll every 0.5 s, and work stealing moves tasks our runner already
#: balances. Measured on templeRing, 2 workers on 2 quiet cores: 20.4 s with Dask's defaults, 18.3-18.7 s
#: with these, against 17.9 s for the process pool (benchmarks/results/distributed_repeats.md).
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


def start_local_cluster(num_workers: int, security=None):
    """A ``LocalCluster`` of ``num_workers`` single-threaded worker processes, on 127.0.0.1 only.

    Worker processes start with ``__main__`` hidden, so an unguarded user script is not re-run in them,
    and with SIGINT ignored (inherited through exec), so Ctrl-C reaches the client alone. No dashboard;
    the HTTP servers that remain (health, metrics) listen on 127.0.0.1 too.
    """
    _require_dask()
    # The nannies hand this config to their worker processes; the scheduler reads it when it starts.
    with main_module_hidden(), _sigint_ignored(), dask.config.set(LOCAL_CLUSTER_CONFIG):
        return distributed.LocalCluster(
            n_workers=num_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            worker_dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            # Not ERROR: when Ctrl-C ends the client, a worker mid-transfer logs "Worker stream died during
            # communication" at ERROR, a second line under our one. Task failures reach the client anyway,
            # as exceptions, and are reported there.
            silence_logs=logging.CRITICAL,
            security=security,
        )


def connect(settings: DaskSettings, num_workers: int) -> DaskBackend:
    """Start a LocalCluster (``scheduler == "local"``) or connect to a scheduler address."""
    _require_dask()
    security = security_from(settings)
    if settings.scheduler == "local":
        start = time.perf_counter()
        cluster = start_local_cluster(num_workers, security)
        client = distributed.Client(cluster, security=security)
        logger.info("dask: local cluster of %d workers at %s", num_workers, cluster.scheduler_address)
        return DaskBackend(
            client,
            cluster,
            shares_files=settings.images_visible_to_workers,
            scheduler="local",
            startup_s=time.perf_counter() - start,
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
    start = time.perf_counter()
    try:
        client = distributed.Client(settings.scheduler, security=security, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot connect to the dask scheduler at {settings.scheduler}: {exc}") from None
    logger.info("dask: connected to %s", settings.scheduler)
    return DaskBackend(
        client,
        None,
        shares_files=settings.images_visible_to_workers,
        scheduler=settings.scheduler,
        startup_s=time.perf_counter() - start,
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
