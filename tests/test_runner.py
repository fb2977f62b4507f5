"""runtime.runner: backends agree byte for byte, the signed cache, cancellation, worker hygiene."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from process_helpers import descendant_pids
from reliability_images import render, write_image

from geomvision.errors import InputError
from geomvision.runtime import cache as cache_mod
from geomvision.runtime.runner import Stage, StageRunner, derive_seed, open_runner
from geomvision.runtime.worker import main_module_hidden, thread_limits

REPO = Path(__file__).resolve().parents[1]


def draw_task(item: int, context: dict) -> np.ndarray:
    """A task with a random stream derived from (seed, item): the same numbers on every backend."""
    rng = np.random.default_rng(derive_seed(context["seed"], item))
    return rng.normal(size=4) + item


def failing_task(item: int, context) -> int:
    if item == 3:
        raise ValueError(f"item {item} is bad")
    return item


def where_task(item: int, context) -> tuple[int, dict]:
    """The process that ran the task and its OpenCV/BLAS thread limits."""
    return os.getpid(), thread_limits()


def slow_task(item: int, context) -> int:
    time.sleep(0.5)
    return item


class ArrayCodec:
    def encode(self, result):
        return {"value": result}, {"kind": "draw"}

    def decode(self, arrays, meta):
        assert meta == {"kind": "draw"}
        return arrays["value"]


DRAW = Stage(name="draw", task=draw_task, version=1, codec=ArrayCodec())


@pytest.fixture
def private_key(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "cache.key"
    monkeypatch.setenv(cache_mod.KEY_FILE_ENV, str(path))
    return path


def _draws(runner: StageRunner, items, seed=7, **kw):
    return runner.map(DRAW, items, context={"seed": seed}, options_key={"seed": seed}, item_key=str, **kw)


def test_derive_seed_depends_on_seed_and_item_only():
    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2)
    values = {derive_seed(s, i, j) for s in range(3) for i in range(4) for j in range(4)}
    assert len(values) == 48  # no collisions among distinct (seed, item)
    assert all(0 <= v < 2**63 for v in values)


def test_serial_and_processes_agree_and_cache_resumes(tmp_path, private_key):
    items = list(range(10))
    serial = _draws(StageRunner(), items)
    with open_runner("processes", 2, cache_dir=tmp_path) as runner:
        pooled = _draws(runner, items)
        engine = runner.report()
    for a, b in zip(serial, pooled, strict=True):
        assert a.tobytes() == b.tobytes()
    assert engine["backend"] == "processes" and engine["workers"] == 2
    assert engine["stages"]["draw"]["items"] == 10 and engine["stages"]["draw"]["cached"] == 0
    assert engine["bytes_sent"] > 0 and engine["bytes_received"] > 0 and engine["tasks"] >= 2
    assert len(list((tmp_path / "draw").glob("*.npz"))) == 10
    assert private_key.stat().st_mode & 0o777 == 0o600
    # A rerun (any backend) loads every item: nothing is sent to the workers.
    progress = []
    again = StageRunner(cache_dir=tmp_path)
    reloaded = _draws(again, items, progress=lambda d, t, m: progress.append((d, t, m)))
    assert again.stats["draw"].cached == 10 and again.stats["draw"].tasks == 0
    assert [r.tobytes() for r in reloaded] == [r.tobytes() for r in serial]
    assert progress == [(10, 10, "draw (10 cached)")]
    # Another seed is another cache key.
    _draws(again, items[:2], seed=8)
    assert again.stats["draw"].cached == 10 and len(list((tmp_path / "draw").glob("*.npz"))) == 12


def test_progress_reports_eta():
    messages = []
    _draws(StageRunner(), [1, 2, 3], progress=lambda d, t, m: messages.append((d, t, m)))
    assert messages[0] == (0, 3, "draw")
    assert messages[-1][:2] == (3, 3) and messages[-1][2].startswith("3 · eta ")


def test_cache_entry_of_another_key_is_recomputed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(cache_mod.KEY_FILE_ENV, str(tmp_path / "mine.key"))
    first = _draws(StageRunner(cache_dir=tmp_path / "c"), [1, 2])
    # Another user (another key) finds the entries but does not trust them.
    monkeypatch.setenv(cache_mod.KEY_FILE_ENV, str(tmp_path / "theirs.key"))
    other = StageRunner(cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="geomvision.runtime.cache"):
        again = _draws(other, [1, 2])
    assert other.stats["draw"].cached == 0
    assert "not signed by this user's key" in caplog.text
    assert [a.tobytes() for a in again] == [a.tobytes() for a in first]


def test_tampered_or_pickled_entries_are_never_loaded(tmp_path, private_key, caplog):
    runner = StageRunner(cache_dir=tmp_path)
    _draws(runner, [5])
    (entry,) = (tmp_path / "draw").glob("*.npz")
    with np.load(entry) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["value"] = arrays["value"] + 1.0  # edited data, old signature
    np.savez(entry, **arrays)
    fresh = StageRunner(cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="geomvision.runtime.cache"):
        (value,) = _draws(fresh, [5])
    assert fresh.stats["draw"].cached == 0 and "not signed" in caplog.text
    np.testing.assert_array_equal(value, draw_task(5, {"seed": 7}))
    # An entry holding a pickled object array is refused by np.load(allow_pickle=False).
    np.savez(entry, value=np.array([{"x": 1}], dtype=object))
    caplog.clear()
    fresh = StageRunner(cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="geomvision.runtime.cache"):
        _draws(fresh, [5])
    assert fresh.stats["draw"].cached == 0 and "unreadable cache entry" in caplog.text


def test_key_file_readable_by_others_turns_caching_off(tmp_path, private_key, caplog):
    private_key.parent.mkdir(parents=True)
    private_key.write_bytes(os.urandom(32))
    private_key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="geomvision.runtime.cache"):
        runner = StageRunner(cache_dir=tmp_path / "c")
        _draws(runner, [1])
    assert "not private" in caplog.text and not (tmp_path / "c").exists()


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_task_error_reaches_the_client(backend):
    stage = Stage(name="fail", task=failing_task, version=1, batch_size=1)
    with pytest.raises(ValueError, match="item 3 is bad"):
        with open_runner(backend, 2) as runner:
            runner.map(stage, range(8))


def test_interrupt_cancels_queued_work_and_ends_workers():
    """Ctrl-C (here raised by the progress callback) while 40 half-second tasks are queued: the map
    stops at once, the running tasks finish and the pool's processes are gone soon after."""
    stage = Stage(name="slow", task=slow_task, version=1, batch_size=1)
    runner = open_runner("processes", 2)
    pids: list[int] = []

    def interrupt(done, total, message):
        if done >= 2:
            pids.extend(runner.backend.pool._processes)  # the workers, running the next tasks
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with runner:
            runner.map(stage, range(40), progress=interrupt)
    assert time.monotonic() - start < 8  # 40 tasks on 2 workers would take 10 s
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def test_map_function_keeps_order():
    with open_runner("processes", 2) as runner:
        assert runner.map_function("double")(abs, [-3, 2, -1, 0]) == [3, 2, 1, 0]
        assert runner.report()["stages"]["double"]["items"] == 4


def test_one_worker_runs_isolated_stages_in_a_worker_process_with_one_thread():
    """With one worker, per-item stages stay in this process (nothing to gain from shipping them), isolated
    stages (cluster mapping) run in one worker process under the worker's thread budget, as with two workers."""
    with open_runner("processes", 1) as runner:
        here = runner.map(Stage(name="here", task=where_task, version=1), range(3))
        away = runner.map(Stage(name="away", task=where_task, version=1, isolated=True), range(3))
        # the same worker process runs the next isolated stage
        assert runner.map_function("cluster", isolated=True)(_pid, [0, 1]) == [away[0][0]] * 2
        report = runner.report()
    assert {pid for pid, _ in here} == {os.getpid()}
    assert len({pid for pid, _ in away}) == 1 and away[0][0] != os.getpid()
    assert all(limits == {"opencv": 1, "blas": 1, "pools": 1} for _, limits in away)
    assert report["backend"] == "processes" and report["workers"] == 1
    assert report["stages"]["here"]["bytes_sent"] == 0 and report["stages"]["away"]["bytes_sent"] > 0
    assert report["stages"]["away"]["bytes_received"] > 0
    with open_runner("serial", 1) as runner:  # serial means this process, isolated or not
        assert {
            pid for pid, _ in runner.map(Stage(name="s", task=where_task, version=1, isolated=True), [0])
        } == {os.getpid()}


def _pid(item) -> int:
    return os.getpid()


def test_bad_backend_and_repeated_items():
    with pytest.raises(InputError, match="unknown backend"):
        open_runner("threads")
    with pytest.raises(InputError, match="distinct"):
        StageRunner().map(DRAW, [1, 1], context={"seed": 0})


def test_main_module_is_hidden_only_while_processes_start():
    main = sys.modules["__main__"]
    before = (getattr(main, "__file__", None), main.__spec__)
    with main_module_hidden():
        assert not hasattr(main, "__file__") and main.__spec__ is None
    assert (getattr(main, "__file__", None), main.__spec__) == before


# --- worker hygiene, end to end -------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_reconstruct_leaves_no_process(tmp_path):
    """`kill -9` of `geomvision reconstruct`: its fork server and pool workers exit within 10 s."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    for k, image in enumerate(render(6).images):
        write_image(imgs / f"v{k}.png", image)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geomvision", "reconstruct", str(imgs), "-o", str(out), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        family: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            family |= descendant_pids(proc.pid)
            if len(family) >= 3 and list((out / "cache" / "features").glob("*.npz")):
                break  # fork server + 2 workers (+ resource tracker) are up and working
            time.sleep(0.05)
        assert proc.poll() is None and len(family) >= 3, "the pool never started"
        family |= descendant_pids(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            time.sleep(0.1)
        assert not [p for p in family if _alive(p)], "children outlived the killed run"
    finally:
        for pid in {proc.pid} | family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


UNGUARDED = """
import geomvision
from geomvision.config import ReconstructionConfig

config = ReconstructionConfig().with_changes(
    pipeline={{"num_workers": 2, "html_report": False}}, extraction={{"max_num_features": 1000}}
)
rec = geomvision.reconstruct({imgs!r}, {out!r}, config)
print("registered", rec.num_registered)
"""


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_reconstruct_from_an_unguarded_script(tmp_path, how):
    """No ``if __name__ == "__main__":`` guard, as a file and through ``python -``: the pool starts
    without re-running the script in its workers."""
    imgs = tmp_path / "imgs"
    for k, image in enumerate(render(4).images):
        write_image(imgs / f"v{k}.png", image)
    code = UNGUARDED.format(imgs=str(imgs), out=str(tmp_path / "out"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if how == "file":
        script = tmp_path / "script.py"
        script.write_text(code)
        args, stdin = [sys.executable, str(script)], None
    else:
        args, stdin = [sys.executable, "-"], code
    proc = subprocess.run(
        args, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "registered 4"
    assert proc.stderr == ""
    import json

    assert json.loads((tmp_path / "out" / "report.json").read_text())["engine"]["backend"] == "processes"


@pytest.mark.slow
def test_readme_snippet_runs_unguarded(tmp_path):
    """The README's Python snippet, as printed, run as a file (it reconstructs the sample set)."""
    import re

    text = (REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "__main__" not in snippet
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(snippet))
    (tmp_path / "datasets").symlink_to(REPO / "datasets")  # the snippet's relative paths, outside the repo
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "num_registered" in proc.stdout


def pid_task(item: int, context) -> int:
    time.sleep(0.05)  # long enough that both workers take tasks
    return os.getpid()


def test_release_workers_ends_them_after_queued_work_and_the_next_map_starts_fresh_ones(tmp_path):
    stage = Stage(name="pid", task=pid_task, version=1, batch_size=1)
    with open_runner("processes", 2) as runner:
        before = set(runner.map(stage, range(8)))
        chore = runner.submit_background(time.sleep, 0.5)  # queued behind nothing, still running
        runner.release_workers()
        assert chore.done() and chore.exception() is None  # queued work finished, not cancelled
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in before) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert before and not any(_alive(p) for p in before)
        after = set(runner.map(stage, range(8)))
        assert after and not after & before
    with StageRunner() as serial:  # nothing to release in process
        serial.release_workers()
        assert serial.map(stage, [1]) == [os.getpid()]


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_background_chore_runs_at_the_lowest_priority_and_in_a_worker():
    """A chore submitted to the process pool runs niced to 19 (it must only take idle cores), in a worker,
    and leaves this process's priority alone."""
    before = _own_priority()
    with open_runner("processes", 2) as runner:
        future = runner.submit_background(_own_priority)
        assert future is not None and future.result(timeout=60) == 19
    assert _own_priority() == before
