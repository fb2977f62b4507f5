"""Worker processes: start-up (thread limits, silence on Ctrl-C, death with the client) and the local pool.

Every backend's worker runs :func:`prepare_worker` once before its first task:

* OpenCV, BLAS and geomvision's own thread pools (the Schur BA's, through :func:`thread_budget`) run
  single-threaded: the workers already occupy the cores, nested threads would only oversubscribe them
  (and thread scheduling must never change a result). Before the pools followed the limit, a lone worker
  mapping clusters used ~1.1 cores (its BA pool took the idle one) and two workers ran four BA threads
  on two cores;
* glibc's malloc keeps freed blocks of up to 32 MiB for reuse (:func:`reuse_freed_memory`): Dask's
  nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, which freezes glibc's mmap threshold at
  128 KiB, so every large numpy temporary became a fresh ``mmap`` and was paged in again (measured:
  16x the page faults and 1.7x the CPU time of a matching task; the variable also leaks into the
  client's environment and so into a process pool started after a LocalCluster);
* SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the client alone
  decides what to do (cancel, record, exit with one line), so workers never print tracebacks;
* the worker exits when the client process dies, even by SIGKILL: ``prctl(PR_SET_PDEATHSIG)`` covers
  a dead parent, and a watcher thread on a pidfd of the client covers the forkserver topology, where the
  parent is the fork server rather than the client (and the fork server itself only exits once every
  holder of its "alive" pipe, the workers included, is gone).

The local pool (:func:`make_process_pool`) starts its workers with ``forkserver`` while the client's
``__main__`` is hidden from :mod:`multiprocessing`, so a worker never re-imports the user's script:
``geomvision.reconstruct`` works from a script without an ``if __name__ == "__main__":`` guard and
from ``python -`` (our tasks are geomvision functions and never need ``__main__``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import logging
import multiprocessing.context
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator

from geomvision.runtime.allocator import set_malloc_thresholds

logger = logging.getLogger(__name__)

#: Modules the fork server imports once, so every worker forks with them loaded (numpy, OpenCV, scipy
#: and the per-item stages) instead of importing them itself (~0.5 s CPU each). ``__main__`` is
#: deliberately absent (the default preload list is ``["__main__"]``).
WORKER_PRELOAD = (
    "geomvision.runtime.runner",
    "geomvision.features.extract",
    "geomvision.features.match",
    "geomvision.sfm.two_view",
)

_PR_SET_PDEATHSIG = 1
#: ``mallopt`` values: blocks below 32 MiB (glibc's own ceiling for its dynamic threshold) come from the
#: heap; up to 64 MiB of free heap top is kept rather than trimmed.
_MMAP_THRESHOLD_BYTES, _TRIM_THRESHOLD_BYTES = 32 << 20, 64 << 20
_prepared = False
_prepare_lock = threading.Lock()
#: The thread limit :func:`limit_threads` set in this process (None: none set).
_thread_limit: int | None = None


def usable_cpu_count() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_num_workers(requested: int | None) -> int:
    """``requested``, or the usable core count when None."""
    return requested if requested is not None else usable_cpu_count()


def limit_threads(num_threads: int = 1) -> None:
    """``num_threads`` OpenCV and BLAS threads in this process (BLAS through ``threadpoolctl``), and as many
    for geomvision's own thread pools (:func:`thread_budget`)."""
    import cv2  # heavy: imported only by the process that limits it
    from threadpoolctl import threadpool_limits

    global _thread_limit
    cv2.setNumThreads(num_threads)
    threadpool_limits(num_threads)
    _thread_limit = num_threads


def thread_budget() -> int:
    """Threads geomvision's own parallel loops (the Schur BA's pool) may use in this process: the
    :func:`limit_threads` limit where one is set (a worker: 1, as the cores are taken by the other workers),
    else the usable cores."""
    return _thread_limit if _thread_limit is not None else usable_cpu_count()


def thread_limits() -> dict[str, int | None]:
    """The threads OpenCV, BLAS and geomvision's own pools (:func:`thread_budget`) may use in this process
    now (``blas``: the largest of the loaded BLAS libraries' limits, None when none is loaded): a task
    records them to show its thread budget."""
    import cv2  # heavy: imported only where asked (a mapping process has it loaded already)
    from threadpoolctl import threadpool_info

    blas = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return {"opencv": int(cv2.getNumThreads()), "blas": max(blas) if blas else None, "pools": thread_budget()}


def run_at_low_priority(fn, *args):
    """``fn(*args)`` at the lowest CPU priority of this (worker) process, then back to its priority where
    allowed: how a background chore runs beside the stage that needs the cores (e.g. the ~5 s view-graph
    drawing at 1000 images took a core from the global mapper's BA threads at normal priority).

    Raising a priority again needs privileges: without them the worker stays niced, which only matters
    while something else competes for its core.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
    if before is not None:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    try:
        return fn(*args)
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, before)


def prepare_worker(client_pid: int | None = None) -> None:
    """Set up a worker process once (see the module docstring); later calls do nothing.

    Args:
        client_pid: the process whose death ends this worker (None: only the parent's death).
    """
    global _prepared
    with _prepare_lock:
        if _prepared:
            return
        _prepared = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    if client_pid is not None and client_pid != os.getpid():
        _exit_with_process(client_pid)
    limit_threads(1)
    reuse_freed_memory()


def reuse_freed_memory() -> None:
    """Let glibc's malloc reuse freed blocks below 32 MiB instead of returning them to the kernel.

    Fixed thresholds equal to the ceiling glibc's dynamic threshold grows to in a plain process, set
    explicitly because ``MALLOC_TRIM_THRESHOLD_`` in the environment (Dask's nanny sets it to 64 KiB)
    turns the dynamic threshold off. No-op outside glibc.
    """
    set_malloc_thresholds(
        mmap_threshold_bytes=_MMAP_THRESHOLD_BYTES, trim_threshold_bytes=_TRIM_THRESHOLD_BYTES
    )


def _exit_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _exit_with_process(pid: int) -> None:
    """Exit (silently, at once) when process ``pid`` ends: a daemon thread waits on its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        if not _alive(pid):
            os._exit(1)
        threading.Thread(target=_poll_process, args=(pid,), daemon=True, name="geomvision-client").start()
        return
    threading.Thread(target=_wait_pidfd, args=(fd,), daemon=True, name="geomvision-client").start()


def _wait_pidfd(fd: int) -> None:
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(1)


def _poll_process(pid: int) -> None:
    while _alive(pid):
        time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the local process pool -----------------------------------------------------------------------------

_main_lock = threading.Lock()


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Hide ``__main__``'s file and spec from :mod:`multiprocessing` while processes start.

    ``multiprocessing.spawn.get_preparation_data`` tells each new process to re-run the client's main
    script (``init_main_from_path``/``_from_name``) so that functions defined there unpickle; without
    ``__file__`` and ``__spec__`` it asks for nothing. Restored before returning.
    """
    main = sys.modules.get("__main__")
    with _main_lock:
        if main is None:
            yield
            return
        missing = object()
        saved = {name: main.__dict__.get(name, missing) for name in ("__file__", "__spec__")}
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is missing:
                    main.__dict__.pop(name, None)
                else:
                    main.__dict__[name] = value


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    """A forkserver process that never imports the client's ``__main__``."""

    @staticmethod
    def _Popen(process_obj):
        with main_module_hidden():
            return multiprocessing.context.ForkServerProcess._Popen(process_obj)


class _WorkerContext(multiprocessing.context.ForkServerContext):
    Process = _WorkerProcess


def make_process_pool(num_workers: int, *, client_pid: int | None = None) -> cf.ProcessPoolExecutor:
    """A local pool of ``num_workers`` forkserver workers prepared by :func:`prepare_worker`.

    forkserver: no fork of a multi-threaded client (OpenCV/BLAS threads), cheap worker start (the
    server preloads :data:`WORKER_PRELOAD`; this takes effect when the server starts, i.e. for the
    first pool of the process).

    Args:
        num_workers: worker processes.
        client_pid: workers exit when this process dies (default: the calling process).
    """
    context = _WorkerContext()
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    return cf.ProcessPoolExecutor(
        max_workers=num_workers,
        mp_context=context,
        initializer=prepare_worker,
        initargs=(client_pid if client_pid is not None else os.getpid(),),
    )


def terminate_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel queued work now (Ctrl-C, errors); running batches finish, then the workers exit.

    Workers are not killed: a worker killed while it writes a result leaves half a message in the
    pool's result pipe, whose other end the client also holds, and the pool's manager thread then
    blocks on it forever (the process could never exit). A batch is short (one image, a few pairs).
    """
    pool.shutdown(wait=False, cancel_futures=True)
