"""Bad input through the command line: non-zero exit, one ``geomvision: ...`` line, no traceback.

Cases that depend on the process boundary (exit codes, stderr, signals) run ``python -m geomvision``
in a subprocess; option validation runs ``geomvision.cli.main`` in-process (same code path, no
interpreter start-up) to keep the file fast.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from process_helpers import default_sigint, finished_features
from reliability_images import encode, render, write_image, write_set

from geomvision import cli
from geomvision.errors import Terminated

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GEOMVISION_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "geomvision", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """stderr holds no traceback and exactly one ``geomvision:`` line, containing every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("geomvision:")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def main_in_process(capsys, *args) -> tuple[int, str]:
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def image_set(tmp_path_factory) -> Path:
    """Three overlapping 320x240 views."""
    folder = tmp_path_factory.mktemp("cli_set") / "imgs"
    write_set(folder, 3)
    return folder


FAST = ("--workers", "1", "--max-features", "1000", "--no-progress")


# --- subprocess: exit codes and stderr as a user sees them ------------------------------------------------
def test_cli_missing_folder(tmp_path):
    proc = run_cli("reconstruct", tmp_path / "missing", "-o", tmp_path / "out", *FAST)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "geomvision: error:", "does not exist", "missing")


def test_cli_output_is_a_file(capsys, tmp_path, image_set):
    (tmp_path / "out").write_text("x")
    rc, err = main_in_process(capsys, "reconstruct", image_set, "-o", tmp_path / "out", *FAST)
    assert rc == 2
    assert_one_error_line(err, "is not a folder")
    assert (tmp_path / "out").read_text() == "x"


def test_cli_truncated_jpeg_strict_keeps_report(tmp_path, image_set):
    """--strict: a truncated JPEG aborts before any work (without it, it is skipped: test_first_hour)."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_set(imgs, 2)
    good = render(1).images[0]
    (imgs / "view_9.jpg").write_bytes(encode(good, ".jpg")[:-1500])
    proc = run_cli("reconstruct", imgs, "-o", out, *FAST, "--strict")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "view_9.jpg", "truncated")
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["error_type"] == "InputError"
    assert not (out / "cache" / "features").exists()  # checked before any feature was extracted


def test_cli_no_overlap_exit_1_keeps_caches(tmp_path):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_image(imgs / "a.png", render(1, seed=1).images[0])
    write_image(imgs / "b.png", render(1, seed=2).images[0])
    proc = run_cli("reconstruct", imgs, "-o", out, *FAST)
    assert proc.returncode == 1
    assert_one_error_line(proc.stderr, "geomvision: failed:", "no image pair could be verified")
    report = json.loads((out / "report.json").read_text())
    assert report["failed_stage"] == "verification" and report["features"]["min"] > 100
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["features", "matches", "two_view"]


def test_cli_malformed_bal(tmp_path):
    path = tmp_path / "problem.txt"
    path.write_text("2 3 4\n0 0 1.0 2.0\nnot numbers\n")
    proc = run_cli("bundle-adjust", path)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "problem.txt", "truncated")


def test_cli_broken_colmap_model(tmp_path):
    from recon_fixtures import ring_reconstruction

    from geomvision.io.colmap import write_model

    model = tmp_path / "model" / "sparse" / "0"
    write_model(ring_reconstruction(4, 20), model)
    text = (model / "images.txt").read_text().splitlines()
    text[4] = " ".join(text[4].split()[:6])  # an image line cut after TY
    (model / "images.txt").write_text("\n".join(text) + "\n")
    for command in (
        ("export", tmp_path / "model", "--format", "ply"),
        ("evaluate", tmp_path / "model", "--gt", tmp_path / "model"),
    ):
        proc = run_cli(*command)
        assert proc.returncode == 2, command
        assert_one_error_line(proc.stderr, "images.txt:5")
    assert not (tmp_path / "model" / "export").exists()  # nothing half-written


def test_cli_sigint_exits_130_and_reports(tmp_path):
    """Ctrl-C mid-run: one line, exit 130, report.json says interrupted, caches kept for the rerun."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_set(imgs, 4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geomvision",
            "reconstruct",
            str(imgs),
            "-o",
            str(out),
            "--workers",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 60
    while not finished_features(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the workers get it too
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert_one_error_line(stderr, "interrupted", "rerun to resume")
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert finished_features(out)


def test_a_signal_silences_the_background_loggers():
    """Dask's event-loop thread logs the errors an interrupt causes; the signal handler silences it,
    and leaves our own logger alone."""
    names = ("distributed", "distributed.client", "tornado", "tornado.application", "asyncio")
    before = {name: logging.getLogger(name).level for name in names}
    try:
        cli._quiet_background_loggers()
        assert not logging.getLogger("distributed.client").isEnabledFor(logging.CRITICAL)
        assert not logging.getLogger("tornado.application").isEnabledFor(logging.CRITICAL)
        assert logging.getLogger("geomvision").isEnabledFor(logging.WARNING)
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def test_a_signal_dropped_in_a_destructor_is_raised_again(capsys):
    """A handler that raises inside ``__del__`` has its exception printed and dropped by Python; the
    CLI's unraisable hook sends the signal again, and after the interrupt stays silent about objects
    it left half built. Handlers and hook are put back afterwards."""
    hook_before, term_before = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), cli._signals_end_the_command():
        sys.unraisablehook(types.SimpleNamespace(exc_value=Terminated(signal.SIGTERM)))
        for _ in range(1000):  # the handler runs at the next instruction; bounded in case it never does
            pass
    assert sys.unraisablehook is hook_before and signal.getsignal(signal.SIGTERM) is term_before

    with pytest.raises(Terminated), cli._signals_end_the_command():
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:  # what a half-built ZipFile's __del__ reports after the interrupt
            sys.unraisablehook(types.SimpleNamespace(exc_value=AttributeError("_writing")))
    assert capsys.readouterr().err == ""


# --- in-process: option and file validation ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (("--intrinsics", "nan,300,160,120"), "finite"),
        (("--intrinsics", "300,300,160"), "four numbers"),
        (("--intrinsics=-300,300,160,120",), "positive"),
        (("--intrinsics", "300,300,abc,120"), "four numbers"),
        (("--intrinsics", "300,300,1600,120"), "outside"),
        (("--workers", "0"), "num_workers"),
        (("--max-image-size", "-5"), "max_image_size_px"),
        (("--max-features", "0"), "max_num_features"),
        (("--preset", "turbo"), "unknown preset"),
    ],
    ids=["nan", "three", "neg-focal", "text", "pp-outside", "workers0", "size-neg", "features0", "preset"],
)
def test_cli_bad_options(capsys, tmp_path, image_set, option, fragment):
    rc, err = main_in_process(
        capsys, "reconstruct", image_set, "-o", tmp_path / "out", "--no-progress", *option
    )
    assert rc == 2
    assert_one_error_line(err, "geomvision: error:", fragment)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[pipeline\nseed = 1", "not valid TOML"),
        ("[pipelin]\nseed = 1", "unknown config section"),
        ("[pipeline]\nsed = 1", "unknown option"),
        ("[pipeline]\npairing = 'everything'", "pairing must be one of"),
        ("preset = 3", "preset must be a string"),
    ],
    ids=["syntax", "section", "key", "value", "preset-type"],
)
def test_cli_bad_config_file(capsys, tmp_path, image_set, text, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    rc, err = main_in_process(capsys, "reconstruct", image_set, "-o", tmp_path / "out", "--config", config)
    assert rc == 2
    assert_one_error_line(err, fragment)


def test_cli_missing_config_file(capsys, tmp_path, image_set):
    config = tmp_path / "none.toml"
    rc, err = main_in_process(capsys, "reconstruct", image_set, "-o", tmp_path / "o", "--config", config)
    assert rc == 2
    assert_one_error_line(err, "config file not found")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "header"),
        ("1 1 1\n0 0 nan 2.0\n", "non-finite"),
        ("1 1 1\n5 0 1.0 2.0\n" + "0\n" * 12, "outside [0, 1)"),
    ],
    ids=["empty", "nan", "bad-index"],
)
def test_cli_bad_bal_in_process(capsys, tmp_path, content, fragment):
    path = tmp_path / "p.txt"
    path.write_text(content)
    rc, err = main_in_process(capsys, "bundle-adjust", path)
    assert rc == 2
    assert_one_error_line(err, "p.txt")
    assert fragment in err.lower()


def test_cli_truncated_binary_model(capsys, tmp_path):
    from recon_fixtures import ring_reconstruction

    from geomvision.io.colmap import write_model

    model = tmp_path / "m"
    write_model(ring_reconstruction(3, 10), model, binary=True)
    data = (model / "points3D.bin").read_bytes()
    (model / "points3D.bin").write_bytes(data[: len(data) // 2])
    rc, err = main_in_process(capsys, "export", model, "--format", "json", "-o", tmp_path / "x.json")
    assert rc == 2
    assert_one_error_line(err, "points3D.bin")
    assert not (tmp_path / "x.json").exists()


def test_cli_full_disk_exit_1(capsys, tmp_path, image_set, monkeypatch):
    """ENOSPC while writing the model: exit 1, one line, caches of the earlier stages kept."""
    import geomvision.runtime.atomic as atomic

    real_replace = os.replace

    def replace(src, dst):
        if "sparse" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    out = tmp_path / "out"
    rc, err = main_in_process(capsys, "reconstruct", image_set, "-o", out, *FAST)
    assert rc == 1
    assert_one_error_line(err, "geomvision: failed:", "No space left on device")
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "export"
    assert len(list((out / "cache" / "features").glob("*.npz"))) == 3
    assert not list(out.rglob(".*"))  # no temporary file left


def test_cli_internal_error_is_one_line(capsys, tmp_path, image_set, monkeypatch):
    import geomvision.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nwith a second line")

    monkeypatch.setattr(pipeline, "select_pairs", broken)
    out = tmp_path / "out"
    rc, err = main_in_process(capsys, "reconstruct", image_set, "-o", out, *FAST)
    assert rc == 3
    assert_one_error_line(err, "internal error: RuntimeError: simulated bug with a second line")
    # Features were extracted before the bug: they are cached for the rerun.
    assert len(list((out / "cache" / "features").glob("*.npz"))) == 3
    assert np.isfinite(json.loads((out / "report.json").read_text())["features"]["mean"])
