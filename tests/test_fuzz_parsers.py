"""Hypothesis fuzzing of the file parsers: BAL, COLMAP text and binary, and the TOML/dict config.

Valid files are mutated (byte flips, truncation, token replacement with NaN/inf/huge/negative/garbage,
token swaps and deletions, duplicated lines). Each reader must either raise ``InputError`` or return a
valid result (finite numbers); any other exception, or a call that does not return within
``HANG_LIMIT_S``, fails. ``max_examples`` is modest here; the ``slow`` variants run ten times more.
"""

from __future__ import annotations

import math
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recon_fixtures import ring_reconstruction

from geomvision.config import ReconstructionConfig, config_from_dict, dump_config_toml, load_config
from geomvision.errors import InputError
from geomvision.io.bal import read_bal
from geomvision.io.colmap import read_model, write_model

DEFAULT_EXAMPLES = 200
SLOW_EXAMPLES = 2000
HANG_LIMIT_S = 20

NASTY_TOKENS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e309",
    "-1e309",
    "-1",
    "0",
    "-0",
    "1e-320",
    "99999999999999999999",
    "2147483648",
    "4294967296",
    "abc",
    "1.5.2",
    "0x10",
    "",
    "#",
    "PINHOLE",
    "SIMPLE_RADIAL",
    "FOO",
    "3",
    "7",
    "-7",
    "1e8",
    "\u00e9",
]


@contextmanager
def hang_guard(seconds: int = HANG_LIMIT_S):
    """Fail (rather than hang the suite) when a parser does not return in time."""

    def on_alarm(signum, frame):
        raise AssertionError(f"parser did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- mutations ------------------------------------------------------------------------------------------
@st.composite
def mutated_bytes(draw, original: bytes, binary: bool = False) -> bytes:
    data = bytearray(original)
    kind = draw(
        st.sampled_from(
            ["flip", "truncate", "tokens", "lines", "mixed"]
            if not binary
            else ["flip", "truncate", "splice", "mixed"]
        )
    )
    if kind in ("flip", "mixed"):
        for _ in range(draw(st.integers(1, 8))):
            if data:
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] = draw(st.integers(0, 255))
    if kind in ("truncate", "mixed"):
        data = data[: draw(st.integers(0, len(data)))]
    if kind == "splice":  # overwrite a field with an extreme value of a common binary type
        if len(data) > 8:
            pos = draw(st.integers(0, len(data) - 8))
            value = draw(
                st.sampled_from(
                    [
                        np.float64("nan"),
                        np.float64("inf"),
                        np.float64(1e308),
                        np.uint64(2**63),
                        np.int32(-1),
                        np.int32(2**31 - 1),
                        np.uint32(2**32 - 1),
                        np.int64(10**12),
                    ]
                )
            )
            blob = np.array(value).tobytes()
            data[pos : pos + len(blob)] = blob
    if kind == "tokens":
        text = bytes(data).decode("utf-8", errors="replace")
        tokens = text.split(" ")
        for _ in range(draw(st.integers(1, 4))):
            if not tokens:
                break
            i = draw(st.integers(0, len(tokens) - 1))
            op = draw(st.sampled_from(["replace", "swap", "delete", "number"]))
            if op == "replace":
                tokens[i] = draw(st.sampled_from(NASTY_TOKENS))
            elif op == "swap":
                j = draw(st.integers(0, len(tokens) - 1))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            elif op == "delete":
                del tokens[i]
            else:
                tokens[i] = repr(draw(st.floats(allow_nan=True, allow_infinity=True)))
        data = bytearray(" ".join(tokens).encode("utf-8"))
    if kind == "lines":
        lines = bytes(data).split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["duplicate", "delete", "swap"]))
        if op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "delete":
            del lines[i]
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        data = bytearray(b"\n".join(lines))
    return bytes(data)


# --- valid originals ------------------------------------------------------------------------------------
BAL_TEXT = (
    "2 3 4\n"
    "0 0 -3.859900e+02 3.871200e+02\n"
    "1 0 -3.844000e+01 4.921200e+02\n"
    "0 1 -6.679200e+02 1.231100e+02\n"
    "1 2 5.991800e+02 4.079300e+02\n"
    + "".join(f"{v}\n" for v in [0.016, -0.013, -0.004, -0.034, -0.108, 1.12, 399.7, -3.2e-7, 5.9e-13])
    + "".join(f"{v}\n" for v in [0.015, -0.025, -0.009, -0.008, -0.122, 0.719, 402.0, -3.8e-7, 9.3e-13])
    + "".join(f"{v}\n" for v in [-0.61, 0.57, -1.1, 1.55, 0.1, -1.3, 0.3, -0.9, -1.2])
)


@pytest.fixture(scope="module")
def workdir():
    folder = Path(tempfile.mkdtemp(prefix="gv_fuzz_"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def colmap_models(workdir):
    rec = ring_reconstruction(3, 8, extra_keypoints=1)
    text, binary = workdir / "text_model", workdir / "bin_model"
    write_model(rec, text)
    write_model(rec, binary, binary=True)
    return {
        "text": {n: (text / n).read_bytes() for n in ("cameras.txt", "images.txt", "points3D.txt")},
        "bin": {n: (binary / n).read_bytes() for n in ("cameras.bin", "images.bin", "points3D.bin")},
    }


# --- checks ---------------------------------------------------------------------------------------------
def check_bal(path: Path) -> None:
    try:
        with hang_guard():
            problem = read_bal(path)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for name in ("rotvecs", "translations", "intrinsics", "points", "obs_px"):
        assert np.all(np.isfinite(getattr(problem, name))), name
    assert np.all(problem.obs_camera < len(problem.rotvecs)) and np.all(
        problem.obs_point < len(problem.points)
    )


def check_model(folder: Path) -> None:
    try:
        with hang_guard():
            rec = read_model(folder)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for view in rec.views.values():
        pose = view.cam_from_world
        assert np.all(np.isfinite(pose.rotation)) and np.all(np.isfinite(pose.translation))
    for camera in rec.cameras.values():
        assert np.all(np.isfinite(camera.params)) and camera.width > 0 and camera.height > 0
    for point in rec.points3D.values():
        assert np.all(np.isfinite(point.xyz))


def _model_with(folder: Path, files: dict[str, bytes], name: str, data: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    for other, content in files.items():
        (folder / other).write_bytes(data if other == name else content)
    return folder


FUZZ = settings(
    max_examples=DEFAULT_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_SLOW = settings(FUZZ, max_examples=SLOW_EXAMPLES)


def _fuzz_bal(workdir, data):
    path = workdir / "problem.txt"
    path.write_bytes(data.draw(mutated_bytes(BAL_TEXT.encode())))
    check_bal(path)


def _fuzz_colmap(workdir, colmap_models, data, kind):
    files = colmap_models[kind]
    name = data.draw(st.sampled_from(sorted(files)))
    mutated = data.draw(mutated_bytes(files[name], binary=kind == "bin"))
    check_model(_model_with(workdir / f"fuzz_{kind}", files, name, mutated))


def _fuzz_toml(workdir, data):
    original = dump_config_toml(ReconstructionConfig()).encode()
    path = workdir / "config.toml"
    path.write_bytes(data.draw(mutated_bytes(original)))
    try:
        with hang_guard():
            config = load_config(path)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(config, ReconstructionConfig)


def test_valid_originals_parse(workdir, colmap_models):
    path = workdir / "valid.txt"
    path.write_text(BAL_TEXT)
    assert read_bal(path).num_observations == 4
    rec = read_model(_model_with(workdir / "valid_text", colmap_models["text"], "", b""))
    assert rec.num_registered == 3 and len(rec.points3D) == 8
    rec = read_model(_model_with(workdir / "valid_bin", colmap_models["bin"], "", b""))
    assert rec.num_registered == 3 and len(rec.points3D) == 8


@FUZZ
@given(data=st.data())
def test_fuzz_bal(workdir, data):
    _fuzz_bal(workdir, data)


@FUZZ
@given(data=st.data())
def test_fuzz_colmap_text(workdir, colmap_models, data):
    _fuzz_colmap(workdir, colmap_models, data, "text")


@FUZZ
@given(data=st.data())
def test_fuzz_colmap_binary(workdir, colmap_models, data):
    _fuzz_colmap(workdir, colmap_models, data, "bin")


@FUZZ
@given(data=st.data())
def test_fuzz_config_toml(workdir, data):
    _fuzz_toml(workdir, data)


# --- config dicts ---------------------------------------------------------------------------------------
def _known_keys() -> dict[str, list[str]]:
    return {section: list(values) for section, values in ReconstructionConfig().to_dict().items()}


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["none", "exhaustive", "sequential", "two-view", "PINHOLE", "sift", "orb"]),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def config_dicts(draw):
    known = _known_keys()
    sections = draw(st.lists(st.sampled_from([*known, "bogus"]), max_size=4, unique=True))
    data = {}
    for section in sections:
        keys = known.get(section, []) + ["bogus_key"]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        data[section] = {key: draw(VALUES) for key in chosen}
    if draw(st.booleans()):
        data["preset"] = draw(st.sampled_from(["fast", "accurate", "default", "nope", 3, None]))
    return data


def _check_config_dict(data) -> None:
    try:
        with hang_guard():
            config = config_from_dict(data)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(config, ReconstructionConfig)
    intrinsics = config.pipeline.intrinsics
    assert intrinsics is None or all(math.isfinite(v) for v in intrinsics)


@FUZZ
@given(data=config_dicts())
def test_fuzz_config_dict(data):
    _check_config_dict(data)


# --- slow variants --------------------------------------------------------------------------------------
@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_bal_long(workdir, data):
    _fuzz_bal(workdir, data)


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_colmap_text_long(workdir, colmap_models, data):
    _fuzz_colmap(workdir, colmap_models, data, "text")


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_colmap_binary_long(workdir, colmap_models, data):
    _fuzz_colmap(workdir, colmap_models, data, "bin")


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_config_toml_long(workdir, data):
    _fuzz_toml(workdir, data)


@pytest.mark.slow
@FUZZ_SLOW
@given(data=config_dicts())
def test_fuzz_config_dict_long(data):
    _check_config_dict(data)
