"""The stage runner: one way to map a pure task over per-image, per-pair or per-cluster items.

Every stage that does the same work for many independent items (features per image, matching and
verification per pair, mapping per cluster) describes that work as a :class:`Stage` (a picklable,
module-level task function, a code/format version and a cache :class:`~geomvision.runtime.cache.Codec`)
and calls :meth:`StageRunner.map`. The runner owns, in one place:

* batching: items travel in batches (a stage may group them itself, e.g. matching's image tiles), with
  a bounded number of batches in flight, so lazily built inputs (image bytes) never all sit in memory;
* shared inputs: a large value used by many items (an image's descriptors, used by every pair of that
  image) goes into item inputs as a :class:`Shared`; the Dask backend sends it to the workers once per
  :meth:`StageRunner.map` call and tasks receive it by reference, the process pool pickles it once per
  batch;
* the on-disk cache (:mod:`geomvision.runtime.cache`): one content-addressed, signed entry per item,
  written on the client as results arrive, so a killed or interrupted run resumes from them whatever
  the backend;
* progress with an ETA, and cancellation: an exception or Ctrl-C cancels queued batches at once
  (running ones, one per worker, finish; workers ignore SIGINT, so they stay silent);
* worker set-up (single-threaded OpenCV/BLAS, death with the client): :mod:`geomvision.runtime.worker`;
* the engine report: tasks, pickled bytes sent and received, time spent waiting per stage.

Backends (:func:`open_runner`): ``serial`` (in this process), ``processes`` (a local forkserver pool,
the default; with one worker, per-item batches run in this process, and only *isolated* stages, long tasks
such as a cluster's mapping, in one worker process: a worker then means the same thread budget and the same
memory isolation whatever the worker count) and ``dask`` (a ``dask.distributed.Client``: a running
scheduler by address, or a ``LocalCluster`` on 127.0.0.1; :mod:`geomvision.runtime.dask_backend`, the only
module importing dask). Tasks must be deterministic functions of their inputs; random streams derive from (seed, item)
via :func:`derive_seed`, so every backend gives byte-identical results.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geomvision.errors import InputError
from geomvision.progress import ProgressCallback, report
from geomvision.runtime.cache import Codec, SignedCache, cache_key, load_or_create_key
from geomvision.runtime.worker import (
    default_num_workers,
    make_process_pool,
    prepare_worker,
    run_at_low_priority,
    terminate_pool,
    usable_cpu_count,
)

logger = logging.getLogger(__name__)

BackendName = Literal["serial", "processes", "dask"]
BACKENDS: tuple[str, ...] = ("serial", "processes", "dask")
#: Batches kept queued per worker: enough to hide the round trip, few enough to bound memory.
_IN_FLIGHT_PER_WORKER = 2
#: Automatic batching aims at this many batches per worker (load balance vs per-task overhead).
_BATCHES_PER_WORKER = 4
_MAX_AUTO_BATCH = 64

__all__ = [
    "BACKENDS",
    "Shared",
    "Stage",
    "StageRunner",
    "StageStats",
    "default_num_workers",
    "derive_seed",
    "open_runner",
    "run_payload",
    "usable_cpu_count",
]


@dataclass(frozen=True, kw_only=True)
class Stage:
    """What a stage runs per item, and how its results are cached.

    Attributes:
        name: the stage's name: cache subfolder, report key, progress label.
        task: a module-level (picklable) function. ``batched=False``: ``task(item_input, context) ->
            result``; ``batched=True``: ``task(list_of_item_inputs, context) -> list_of_results`` (for
            stages that share per-batch preparation, e.g. one descriptor normalisation per image).
        version: code/format version of the result, part of every cache key: bump it when the task's
            output or the codec changes.
        codec: encodes a result for the cache (None: never cached).
        batch_size: items per task; None picks about four batches per worker (at most 64 items).
        isolated: long tasks (a cluster's mapping: minutes each) that run in a worker process even when a
            ``processes`` runner has a single worker, with a worker's thread budget (one OpenCV/BLAS thread)
            and a heap that ends with the worker. Per-item stages leave it False: with one worker they run
            in this process, where shipping their inputs would only add pickling. Serial runners run
            everything here; Dask always runs on its workers.
    """

    name: str
    task: Callable[..., Any]
    version: int
    codec: Codec | None = None
    batched: bool = False
    batch_size: int | None = None
    isolated: bool = False


@dataclass
class StageStats:
    """What one stage cost on the engine (summed over its :meth:`StageRunner.map` calls)."""

    items: int = 0
    cached: int = 0
    tasks: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass(frozen=True, eq=False)
class Shared:
    """A large input used by many items of one stage (an image's descriptors), sent to workers once.

    A stage's ``inputs(item)`` may put it, at any depth of tuples and lists, where the task expects the
    value; the task receives the value. In process it is the value itself; the process pool pickles it
    once per batch; the Dask backend scatters it to the workers once per :meth:`StageRunner.map` call
    (re-sending it if the worker holding it dies) and passes it to tasks by reference.

    Attributes:
        key: names the value within one map call (e.g. ``("descriptors", image_id)``): equal keys must
            mean equal values.
        value: the object (picklable).
    """

    key: Hashable
    value: Any


@dataclass(frozen=True)
class SharedRef:
    """Stands for the ``index``-th shared value of a batch inside a pickled payload (worker side)."""

    index: int


def replace_shared(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with every :class:`Shared` / :class:`SharedRef` in it (inside tuples and lists) mapped by ``fn``."""
    if isinstance(value, Shared | SharedRef):
        return fn(value)
    if type(value) is tuple or type(value) is list:
        return type(value)(replace_shared(v, fn) for v in value)
    return value


def _value_of(shared: Shared) -> Any:
    return shared.value


def derive_seed(seed: int, *item: int) -> int:
    """A 63-bit seed for one item's random stream, a function of (seed, item) only.

    Never depends on the order in which items are scheduled, so every backend draws the same numbers.
    """
    state = np.random.SeedSequence([int(seed), *(int(v) for v in item)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def run_payload(payload: bytes, client_pid: int | None = None, shared: Sequence[Any] = ()) -> bytes:
    """Worker side of every out-of-process backend: run one pickled batch, return pickled results.

    The payload is ``(task, batched, inputs, context)``; the result is ``(results, compute_s, cpu_s)``
    (wall and thread CPU time inside the task). Pickling here (rather than letting the executor do it)
    gives the exact bytes moved. ``shared``: the values that the payload's :class:`SharedRef` stand for.
    """
    prepare_worker(client_pid)
    task, batched, inputs, context = pickle.loads(payload)
    if shared:
        inputs, context = replace_shared((inputs, context), lambda ref: shared[ref.index])
    start, cpu_start = time.perf_counter(), time.thread_time()
    results = _call(task, batched, inputs, context)
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    return pickle.dumps((results, elapsed, cpu), protocol=pickle.HIGHEST_PROTOCOL)


def _apply(item: Any, fn: Callable) -> Any:
    """Task of :meth:`StageRunner.map_function`: the context is the function to apply."""
    return fn(item)


def _call(task, batched: bool, inputs: list, context: Any) -> list:
    if batched:
        results = list(task(inputs, context))
        if len(results) != len(inputs):
            raise RuntimeError(
                f"batched task {task.__name__} returned {len(results)} results for {len(inputs)}"
            )
        return results
    return [task(x, context) for x in inputs]


# --- backends -----------------------------------------------------------------------------------------------


class Backend:
    """Where batches run. Subclasses: serial (here), processes (local pool), dask."""

    name: str = "serial"
    #: Whether workers can open the client's file paths (otherwise the client ships file bytes).
    shares_files: bool = True
    #: Whether workers can read the client's cache folder (a stage may then send a cache entry's path
    #: instead of its arrays, e.g. an image's descriptors): the same machine, or a shared filesystem.
    shares_cache: bool = True
    #: Whether batches run in this process (no pickling, no futures).
    in_process: bool = True

    @property
    def num_workers(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.num_workers}

    def for_stage(self, stage: Stage) -> Backend:
        """The backend that runs ``stage``'s batches (this one, except :class:`OneWorkerBackend`'s isolated
        stages)."""
        return self

    def submit(self, task: Callable, batched: bool, inputs: list, context: Any) -> tuple[Any, int]:
        """Start one batch; returns (a future for :meth:`result`, bytes sent for it)."""
        raise NotImplementedError

    def wait_first(self, futures: set) -> set:
        raise NotImplementedError

    def result(self, future: Any) -> tuple[bytes, int]:
        """(the pickled results of a finished batch, bytes sent again to recover it from a fault)."""
        raise NotImplementedError

    def submit_background(self, fn: Callable, *args: Any) -> cf.Future | None:
        """Run ``fn(*args)`` (a client-side chore, e.g. drawing) beside later work if possible: in a worker, at
        the lowest CPU priority (``run_at_low_priority``), so it takes only the cores that work leaves idle.

        Returns a future to wait on, or None when it ran already (serial, or no shared filesystem).
        """
        fn(*args)
        return None

    def release_shared(self) -> None:
        """End of a map call: workers may drop the :class:`Shared` values sent for it."""

    def release_workers(self) -> None:
        """End idle local workers after their queued work (a later call starts fresh ones); see
        :meth:`StageRunner.release_workers`."""

    def close(self, *, cancel: bool = False) -> None:
        """Release workers; ``cancel``: drop queued work now (without waiting for running tasks)."""


class SerialBackend(Backend):
    """Everything in the calling process, in item order."""


class ProcessBackend(Backend):
    """A local pool of forkserver worker processes (:func:`~geomvision.runtime.worker.make_process_pool`)."""

    name = "processes"
    in_process = False

    def __init__(self, num_workers: int) -> None:
        self._num_workers = num_workers
        self._pool: cf.ProcessPoolExecutor | None = None

    @property
    def num_workers(self) -> int:
        return self._num_workers

    @property
    def pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:  # started on first use: a fully cached run starts no process
            self._pool = make_process_pool(self._num_workers)
        return self._pool

    def submit(self, task: Callable, batched: bool, inputs: list, context: Any) -> tuple[cf.Future, int]:
        # Shared values go inline: pickle writes an object used by several items of a batch once.
        payload = pickle.dumps(
            replace_shared((task, batched, inputs, context), _value_of), protocol=pickle.HIGHEST_PROTOCOL
        )
        return self.pool.submit(run_payload, payload, os.getpid()), len(payload)

    def wait_first(self, futures: set) -> set:
        done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        return done

    def result(self, future: cf.Future) -> tuple[bytes, int]:
        return future.result(), 0

    def submit_background(self, fn: Callable, *args: Any) -> cf.Future | None:
        return self.pool.submit(run_at_low_priority, fn, *args)  # only the cores the stage leaves idle

    def release_workers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # queued work (a background chore) still runs
            self._pool = None

    def close(self, *, cancel: bool = False) -> None:
        if self._pool is None:
            return
        if cancel:
            terminate_pool(self._pool)
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


class OneWorkerBackend(SerialBackend):
    """``processes`` with one worker: batches run in this process, except those of isolated stages
    (:attr:`Stage.isolated`), which run in one forkserver worker process (started on first use)."""

    name = "processes"

    def __init__(self) -> None:
        self._worker = ProcessBackend(1)

    def for_stage(self, stage: Stage) -> Backend:
        return self._worker if stage.isolated else self

    def submit_background(self, fn: Callable, *args: Any) -> cf.Future | None:
        fn(*args)  # a worker process would be started for a chore: run it here, as serial does
        return None

    def release_workers(self) -> None:
        self._worker.release_workers()

    def close(self, *, cancel: bool = False) -> None:
        self._worker.close(cancel=cancel)


# --- the runner -----------------------------------------------------------------------------------------------


class StageRunner:
    """Maps stages over items on one backend, with one cache, progress and the engine report.

    Use as a context manager (workers are released on exit; on an exception or Ctrl-C queued work is
    cancelled and workers are ended at once). :func:`open_runner` builds one from settings.

    Args:
        backend: where batches run (default: serial, in this process).
        cache_dir: root of the signed result cache (None: no caching).
    """

    def __init__(self, backend: Backend | None = None, *, cache_dir: str | os.PathLike | None = None) -> None:
        self.backend = backend or SerialBackend()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: SignedCache | None = None
        if self.cache_dir is not None:
            key = load_or_create_key()
            if key is not None:
                self._cache = SignedCache(self.cache_dir, key)
        self.stats: dict[str, StageStats] = {}

    # context management
    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)

    def close(self, *, cancel: bool = False) -> None:
        self.backend.close(cancel=cancel)

    def with_cache(self, cache_dir: str | os.PathLike | None) -> StageRunner:
        """A runner on the same backend with another cache root (stats are shared)."""
        other = StageRunner(self.backend, cache_dir=cache_dir)
        other.stats = self.stats
        return other

    def in_process(self) -> StageRunner:
        """A serial runner with this one's cache and stats (for a few items not worth shipping)."""
        other = StageRunner(cache_dir=self.cache_dir)
        other.stats = self.stats
        return other

    @property
    def shares_files(self) -> bool:
        return self.backend.shares_files

    @property
    def shares_cache(self) -> bool:
        return self.backend.shares_cache

    def report(self) -> dict[str, Any]:
        """The ``engine`` section of report.json."""
        stages = {name: {k: _rounded(v) for k, v in asdict(s).items()} for name, s in self.stats.items()}
        totals = {
            key: _rounded(sum(getattr(s, key) for s in self.stats.values()))
            for key in ("tasks", "bytes_sent", "bytes_received", "wait_s")
        }
        return {**self.backend.describe(), **totals, "stages": stages}

    def submit_background(self, fn: Callable, *args: Any) -> cf.Future | None:
        return self.backend.submit_background(fn, *args)

    def release_workers(self) -> None:
        """End the local pool's worker processes once their queued work is done; the next map starts fresh
        ones (a fraction of a second with the fork server).

        A worker keeps the heap its tasks grew (glibc returns little of it), ~0.2-0.3 GB each after
        matching and more after mapping a cluster; released, that memory no longer counts beside the work
        this process does next (the mapper, the merge's bundle adjustment). Serial and Dask: nothing to do.
        """
        self.backend.release_workers()

    def map(
        self,
        stage: Stage,
        items: Sequence[Hashable],
        *,
        inputs: Callable[[Any], Any] | None = None,
        context: Any = None,
        options_key: Any = None,
        item_key: Callable[[Any], str] | None = None,
        group: Callable[[list], list[list]] | None = None,
        label: Callable[[Any], str] | None = None,
        progress: ProgressCallback | None = None,
        keep: Callable[[Any, Path | None], Any] | None = None,
    ) -> list[Any]:
        """Run ``stage.task`` on every item (cached items are loaded, not recomputed).

        Args:
            stage: the task and its cache description.
            items: distinct, hashable item ids (image ids, pairs, cluster ids); results keep their order.
            inputs: ``inputs(item)`` builds an item's task input, called just before its batch is sent
                (default: the item itself).
            context: inputs shared by all items (options, a quantiser), sent once per batch.
            options_key: JSON-able description of what in ``context`` changes the results (cache key).
            item_key: ``item_key(item)`` hashes the item's own inputs (cache key); None: no caching.
            group: ``group(todo_items) -> batches`` for stages that batch items themselves.
            label: progress text of an item (default: ``str(item)``).
            progress: ``progress(done, total, message)`` callback; the message ends with an ETA.
            keep: ``keep(result, entry)`` is what the returned list holds of a result, called as soon as the
                result is loaded or computed (and cached): ``entry`` is the path of its cache entry (None
                when not cached). E.g. the features stage keeps keypoints and leaves descriptors in the
                entry, so that results never all sit in memory at once. Default: the result itself.

        Returns:
            One result per item (or what ``keep`` kept of it), in order.
        """
        items = list(items)
        total = len(items)
        stats = self.stats.setdefault(stage.name, StageStats())
        stats.items += total
        t_start = time.perf_counter()
        results: list[Any] = [None] * total
        keys: list[str | None] = [None] * total
        have = [False] * total
        backend = self.backend.for_stage(stage)
        cache = self._cache if stage.codec is not None and item_key is not None else None
        if cache is not None:
            for pos, item in enumerate(items):
                keys[pos] = cache_key(stage.name, stage.version, options_key, item_key(item))
                have[pos], results[pos] = cache.load(stage.name, keys[pos], stage.codec)
                if have[pos] and keep is not None:
                    results[pos] = keep(results[pos], cache.path(stage.name, keys[pos]))
        position = {item: pos for pos, item in enumerate(items)}
        if len(position) != total:
            raise InputError(
                f"stage {stage.name}: items must be distinct, got {total - len(position)} repeats"
            )
        todo = [item for pos, item in enumerate(items) if not have[pos]]
        cached = total - len(todo)
        stats.cached += cached
        report(progress, cached, total, f"{stage.name} ({cached} cached)" if cached else stage.name)
        logger.info("%s: %d items (%d cached) on %s", stage.name, len(todo), cached, backend.name)
        if todo:
            batches = group(todo) if group is not None else self._chunks(stage, todo, backend)
            tracker = _Progress(progress, total, cached, label or str)
            make_input = inputs or (lambda item: item)
            try:
                for batch, outputs in self._execute(backend, stage, batches, make_input, context, stats):
                    for item, result in zip(batch, outputs, strict=True):
                        pos = position[item]
                        entry = None
                        if cache is not None:
                            cache.store(stage.name, keys[pos], stage.codec, result)
                            entry = cache.path(stage.name, keys[pos])
                        results[pos] = keep(result, entry) if keep is not None else result
                    tracker.advance(len(batch), batch[-1])
            finally:
                backend.release_shared()
        stats.wall_s += time.perf_counter() - t_start
        return results

    def map_function(
        self, name: str, *, batch_size: int | None = 1, isolated: bool = False
    ) -> Callable[[Callable, Sequence], list]:
        """A builtin-``map``-like callable running ``fn(task)`` for each task on this runner's backend.

        For stages that only need distribution (no cache), e.g. per-cluster mapping:
        ``partitioned_mapping(..., map_fn=runner.map_function("mapping", isolated=True))``. ``fn`` must be a
        module-level function; results come back in task order; stats are reported under ``name``;
        ``isolated``: see :attr:`Stage.isolated`.
        """

        def run(fn: Callable, tasks: Sequence) -> list:
            tasks = list(tasks)
            stage = Stage(name=name, task=_apply, version=0, batch_size=batch_size, isolated=isolated)
            return self.map(stage, range(len(tasks)), inputs=tasks.__getitem__, context=fn)

        return run

    def _chunks(self, stage: Stage, todo: list, backend: Backend) -> list[list]:
        size = stage.batch_size
        if size is None:
            if backend.in_process:
                size = 1
            else:
                workers = max(1, backend.num_workers)
                size = min(_MAX_AUTO_BATCH, max(1, math.ceil(len(todo) / (_BATCHES_PER_WORKER * workers))))
        return [todo[s : s + size] for s in range(0, len(todo), size)]

    def _execute(
        self, backend: Backend, stage: Stage, batches: list[list], make_input, context, stats: StageStats
    ) -> Iterator:
        """Yield (batch, results) as batches finish on ``backend`` (in order for in-process backends)."""
        if backend.in_process:
            for batch in batches:
                start, cpu_start = time.perf_counter(), time.thread_time()
                inputs = replace_shared([make_input(i) for i in batch], _value_of)
                outputs = _call(stage.task, stage.batched, inputs, context)
                elapsed = time.perf_counter() - start
                stats.cpu_s += time.thread_time() - cpu_start
                stats.tasks += 1
                stats.compute_s += elapsed
                stats.wait_s += elapsed
                yield batch, outputs
            return
        limit = max(1, _IN_FLIGHT_PER_WORKER * backend.num_workers)
        # The same context goes with every batch of the call: shared, so Dask sends it once.
        shared_context = Shared(key=("context", stage.name), value=context)
        queue = iter(batches)
        in_flight: dict[Any, list] = {}
        try:
            while True:
                while len(in_flight) < limit:
                    batch = next(queue, None)
                    if batch is None:
                        break
                    inputs = [make_input(i) for i in batch]
                    future, sent = backend.submit(stage.task, stage.batched, inputs, shared_context)
                    stats.bytes_sent += sent
                    stats.tasks += 1
                    in_flight[future] = batch
                if not in_flight:
                    return
                start = time.perf_counter()
                done = backend.wait_first(set(in_flight))
                stats.wait_s += time.perf_counter() - start
                for future in done:
                    batch = in_flight.pop(future)
                    data, resent = backend.result(future)
                    stats.bytes_sent += resent
                    stats.bytes_received += len(data)
                    outputs, compute_s, cpu_s = pickle.loads(data)
                    stats.compute_s += compute_s
                    stats.cpu_s += cpu_s
                    yield batch, outputs
        except BaseException:
            # Ctrl-C or a failed task: queued batches must not run on.
            backend.close(cancel=True)
            raise


class _Progress:
    """Progress reports with an ETA from the items computed so far (cached ones excluded)."""

    def __init__(self, progress: ProgressCallback | None, total: int, done: int, label: Callable) -> None:
        self.progress, self.total, self.done, self.label = progress, total, done, label
        self.first = done
        self.start = time.perf_counter()

    def advance(self, count: int, last_item: Any) -> None:
        self.done += count
        if self.progress is None:
            return
        fresh = self.done - self.first
        elapsed = time.perf_counter() - self.start
        remaining = (self.total - self.done) * elapsed / max(fresh, 1)
        self.progress(self.done, self.total, f"{self.label(last_item)} · eta {_duration(remaining)}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


# --- construction from settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaskSettings:
    """How to reach Dask (see :func:`open_runner`).

    Attributes:
        scheduler: "local" (a LocalCluster on 127.0.0.1) or a scheduler address ``tcp://HOST:PORT`` /
            ``tls://HOST:PORT``.
        images_visible_to_workers: workers can open the client's image paths (shared filesystem);
            otherwise the client reads each image and ships its bytes.
        tls_ca_file, tls_cert_file, tls_key_file: TLS files of a secured scheduler (None: the dask
            config's ``distributed.comm.tls`` settings, if any).
    """

    scheduler: str = "local"
    images_visible_to_workers: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


def open_runner(
    backend: str = "processes",
    num_workers: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    dask: DaskSettings | None = None,
) -> StageRunner:
    """A :class:`StageRunner` on the named backend.

    Args:
        backend: "serial", "processes" (with one worker, only isolated stages leave this process: see
            :attr:`Stage.isolated`) or "dask".
        num_workers: worker processes (processes, and ``--scheduler local``); None: the usable cores.
        cache_dir: root of the result cache (None: no caching).
        dask: Dask connection settings (backend "dask" only).

    Raises:
        InputError: unknown backend, or dask requested but not installed (one line saying how to install).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    workers = default_num_workers(num_workers)
    if backend == "dask":
        from geomvision.runtime import dask_backend  # the only module that imports dask

        engine: Backend = dask_backend.connect(dask or DaskSettings(), workers)
    elif backend == "processes" and workers > 1:
        engine = ProcessBackend(workers)
    elif backend == "processes":
        engine = OneWorkerBackend()
    else:
        engine = SerialBackend()
    return StageRunner(engine, cache_dir=cache_dir)
