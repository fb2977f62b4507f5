"""HTML report: self-contained (data URIs), correct per-image numbers, opens in headless Chromium."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.viz.geometry import covisibility_graph
from geomvision.viz.report import per_image_statistics, write_report_html

REPO = Path(__file__).resolve().parents[1]


def _images(doc: str) -> list[np.ndarray]:
    import cv2

    out = []
    for b64 in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", doc):
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None
        out.append(img)
    return out


@pytest.fixture(scope="module")
def noisy():
    rec = ring_reconstruction(num_views=6, num_points=80, noise_px=0.7, rng=11)
    rec.views[6].cam_from_world = None  # one unregistered image
    for pid in list(rec.points3D):
        rec.points3D[pid].track = [(i, k) for i, k in rec.points3D[pid].track if i != 6]
        rec.views[6].point3D_ids[:] = -1
    return rec


@pytest.fixture(scope="module")
def report_path(noisy, tmp_path_factory):
    """One report for the content and Chromium tests; the software renderer keeps it quick (the Open3D
    renderer itself is covered in test_viewer.py)."""
    out = tmp_path_factory.mktemp("report")
    report = {"timings_s": {"features": 1.25, "total": 9.5}, "num_images": 6, "note": "<b>&"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOMVISION_RENDERER", "software")
        return write_report_html(
            out, noisy, report, view_graph=covisibility_graph(noisy), render_size=(320, 240)
        )


def _expected_mean_errors(rec) -> dict[int, float]:
    out = {}
    for image_id in rec.registered_image_ids:
        view = rec.views[image_id]
        K = rec.cameras[view.camera_id].K
        sel = view.point3D_ids >= 0
        xyz = np.array([rec.points3D[p].xyz for p in view.point3D_ids[sel]])
        proj = view.cam_from_world.apply(xyz) @ K.T
        out[image_id] = float(
            np.mean(np.linalg.norm(proj[:, :2] / proj[:, 2:] - view.keypoints_px[sel], axis=1))
        )
    return out


def test_per_image_statistics(noisy):
    rows = {r["image_id"]: r for r in per_image_statistics(noisy)}
    expected = _expected_mean_errors(noisy)
    for image_id, err in expected.items():
        assert rows[image_id]["mean_reprojection_error_px"] == pytest.approx(err, rel=1e-9)
        assert rows[image_id]["num_observations"] == 80 and rows[image_id]["num_keypoints"] == 83
    assert not rows[6]["registered"] and np.isnan(rows[6]["mean_reprojection_error_px"])


def test_report_is_self_contained(report_path, noisy):
    assert report_path.name == "report.html"
    doc = report_path.read_text()
    assert doc.startswith("<!DOCTYPE html>")
    assert "http://" not in doc and "https://" not in doc  # nothing fetched from the network
    images = _images(doc)
    assert len(images) == 4  # render, two histograms, view graph
    assert images[0].shape[:2] == (240, 320)
    assert "timings_s.features</td><td>1.25" in doc and "&lt;b&gt;&amp;" in doc
    expected = _expected_mean_errors(noisy)
    for err in expected.values():
        assert f"{err:.4g}</td></tr>" in doc
    assert doc.count("class='unregistered'") == 1


def test_report_without_render_or_graph(tmp_path):
    rec = ring_reconstruction(num_views=3, num_points=10)
    doc = write_report_html(tmp_path, rec, None, render=False).read_text()
    assert len(_images(doc)) == 2


def test_report_opens_in_headless_chromium(report_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from check_report_chromium import find_chromium
    finally:
        sys.path.pop(0)
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_report_chromium.py"), str(report_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert '"images_ok": 4, "images_total": 4' in proc.stdout
    assert '["point cloud and cameras' in proc.stdout and "320, 240]" in proc.stdout
