"""SIGKILL ``geomvision reconstruct`` at seeded random moments, rerun, and demand the uninterrupted result.

After every kill each file in OUT must be complete (it parses) or be a temporary file of
:mod:`geomvision.runtime.atomic` (``.<stem>.<8 chars><suffix>``) or of a model folder being swapped in
(``sparse/.tmp-N``, ``sparse/.old-N``), which the next run deletes; a ``sparse/0`` that exists must read
as one consistent model. Rerunning resumes
from the cached stages, and the final model and PLY must equal, byte for byte, those of a run that was
never interrupted. Set ``GEOMVISION_KILL_SUMMARY=path.json`` to keep the per-kill record.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_images import write_set

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ("sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt", "points.ply")
ATOMIC_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
HALF_SWAPPED = re.compile(r"^\.(tmp|old)-\d+$")  # model folders mid-swap (pipeline._replace_folder)


def _command(images: Path, out: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "geomvision",
        "reconstruct",
        str(images),
        "-o",
        str(out),
        "--workers",
        "2",
        "--seed",
        "0",
        "--max-features",
        "1000",
        "--no-progress",
        "--config",
        str(config),
    ]


def _start(images: Path, out: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A session of its own: killing the group also kills the forkserver and its workers.
    return subprocess.Popen(
        _command(images, out, config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


def _check_file(path: Path) -> None:
    """Raise if ``path`` is not a complete file of its kind."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".npz":
        with np.load(path) as data:
            for key in data.files:
                data[key]
    elif suffix == ".pkl":
        with open(path, "rb") as fh:
            pickle.load(fh)
    elif suffix == ".ply":
        from geomvision.io.ply import read_point_cloud

        xyz, _ = read_point_cloud(path)
        assert len(xyz) > 0
    elif suffix == ".png":
        import cv2

        assert cv2.imread(str(path)) is not None
    elif suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>")
    elif suffix == ".txt":
        # COLMAP text files: every data line is complete (the last line ends with a newline).
        text = path.read_text()
        assert text == "" or text.endswith("\n")


def check_out_folder(out: Path) -> dict[str, int]:
    """Assert that OUT holds only complete files (or atomic temp files); count what is there."""
    counts = {"temp": 0, "files": 0}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        if ATOMIC_TEMP.match(path.name) or HALF_SWAPPED.match(path.parent.name):
            counts["temp"] += 1
            continue
        try:
            _check_file(path)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a half-written file
            raise AssertionError(f"half-written or corrupt file after SIGKILL: {path}: {exc!r}") from exc
        counts["files"] += 1
    sparse = out / "sparse" / "0"
    if all((sparse / n).is_file() for n in ("cameras.txt", "images.txt", "points3D.txt")):
        from geomvision.io.colmap import read_model

        # The model folder is swapped in whole, so its three files always belong together.
        assert read_model(sparse).num_registered >= 2
        counts["model"] = 1
    return counts


def _progress(out: Path) -> str:
    cache = out / "cache"
    parts = [
        f"{d}:{len(list((cache / d).glob('*')))}"
        for d in ("features", "matches", "two_view")
        if (cache / d).is_dir()
    ]
    if (out / "sparse" / "0" / "points3D.txt").exists():
        parts.append("model")
    return " ".join(parts) or "nothing"


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    rng = np.random.default_rng(20261123)
    images = tmp_path / "imgs"
    write_set(images, 5)
    config = tmp_path / "config.toml"
    config.write_text("[pipeline]\nhtml_report = false\n")

    t0 = time.perf_counter()
    reference = subprocess.run(
        _command(images, tmp_path / "ref", config),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr
    full_time = time.perf_counter() - t0
    expected = {name: (tmp_path / "ref" / name).read_bytes() for name in MODEL_FILES}

    rounds, kills_per_round = 8, 3
    record = []
    kills = 0
    for round_index in range(rounds):
        out = tmp_path / f"out{round_index}"  # a fresh OUT per round, so early stages get killed too
        killed_here = 0
        attempts = 0
        while killed_here < kills_per_round and attempts < 3 * kills_per_round:
            attempts += 1
            delay = float(rng.uniform(0.3, full_time))
            proc = _start(images, out, config)
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                finished = False
            proc.stderr.close()
            if finished:
                assert proc.returncode == 0
            else:
                killed_here += 1
                kills += 1
            counts = check_out_folder(out) if out.exists() else {"temp": 0, "files": 0}
            record.append(
                {
                    "round": round_index,
                    "delay_s": round(delay, 2),
                    "killed": not finished,
                    "progress": _progress(out) if out.exists() else "nothing",
                    **counts,
                }
            )
        # Resume to the end and compare with the never-interrupted run.
        proc = _start(images, out, config)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr.decode()
        leftovers = [p for p in out.rglob("*") if ATOMIC_TEMP.match(p.name) or HALF_SWAPPED.match(p.name)]
        assert not leftovers, f"temporary files not cleaned: {leftovers}"
        for name in MODEL_FILES:
            assert (out / name).read_bytes() == expected[name], f"round {round_index}: {name} differs"
    summary = {
        "kills": kills,
        "full_run_s": round(full_time, 1),
        "rounds": rounds,
        "temp_files_seen": sum(r["temp"] for r in record),
        "kills_with_model_on_disk": sum(r.get("model", 0) for r in record if r["killed"]),
        "record": record,
    }
    if os.environ.get("GEOMVISION_KILL_SUMMARY"):
        Path(os.environ["GEOMVISION_KILL_SUMMARY"]).write_text(json.dumps(summary, indent=1))
    assert kills >= 20
