"""Helpers shared by the benchmark scripts (imported as a sibling module, like ``reconstruct``).

* ``fmt_number``: a table cell for a number ("–" for a missing or non-finite value);
* ``pipeline_config`` / ``run_pipeline_timed``: one geomvision run with the benchmarks' settings (2 workers,
  no HTML report), timed, a raised exception turned into an error string (a failed run is a result too);
* ``pycolmap_options`` / ``pycolmap_extract``: pycolmap SIFT extraction and matching options with the same
  thread budget, CPU only, and the single-camera feature extraction every pycolmap row starts with;
* ``pycolmap_match_sequential``: pycolmap's matching of a trajectory (each image with its next ``overlap``
  images, COLMAP's quadratic overlap, no loop detection), as the street-scene rows run it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


def fmt_number(v, digits: int = 3) -> str:
    """A float with ``digits`` decimals, "–" for None/NaN/inf, anything else as ``str``."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def pipeline_config(
    intrinsics, *, seed: int = 0, num_workers: int = 2, pipeline: dict | None = None, **sections
):
    """``ReconstructionConfig`` with the benchmark defaults; ``pipeline`` adds pipeline keys, ``sections``
    other sections (e.g. ``partition={...}``)."""
    from geomvision.config import ReconstructionConfig

    return ReconstructionConfig().with_changes(
        pipeline={
            "intrinsics": intrinsics,
            "seed": seed,
            "num_workers": num_workers,
            "html_report": False,
            **(pipeline or {}),
        },
        **sections,
    )


def run_pipeline_timed(image_dir: Path, out: Path, config):
    """Runs ``run_pipeline``; returns ``(result or None, wall seconds, error string or None)``."""
    from geomvision.pipeline import run_pipeline

    t = time.perf_counter()
    try:
        result = run_pipeline(image_dir, out, config)
    except Exception as exc:  # a failed run is a result too
        return None, time.perf_counter() - t, f"{type(exc).__name__}: {exc}"
    return result, time.perf_counter() - t, None


def pycolmap_options(intrinsics=None, threads: int = 2):
    """``(reader, extraction, matching)`` pycolmap options: CPU, ``threads`` threads; a fixed PINHOLE camera
    with ``intrinsics`` (fx, fy, cx, cy) when given."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    if intrinsics is not None:
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{v:.6f}" for v in intrinsics)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.use_gpu = False
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    matching.use_gpu = False
    return reader, extraction, matching


def pycolmap_extract(db: Path, image_dir: Path, extraction, reader=None) -> None:
    """pycolmap SIFT into ``db``, one camera for all images, on the CPU (``reader``: default options if None)."""
    import pycolmap

    kwargs = {} if reader is None else {"reader_options": reader}
    pycolmap.extract_features(
        db,
        image_dir,
        camera_mode=pycolmap.CameraMode.SINGLE,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
        **kwargs,
    )


def pycolmap_match_sequential(db: Path, matching, overlap: int = 10) -> None:
    """pycolmap ``match_sequential`` into ``db`` on the CPU: each image with its next ``overlap`` images (and
    COLMAP's quadratic overlap, its default), no loop detection: the pairing that suits a trajectory."""
    import pycolmap

    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = overlap
    pairing.loop_detection = False
    pycolmap.match_sequential(
        db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu
    )


def write_lines(path: Path, lines: list[str]) -> None:
    """Writes ``lines`` (a markdown table, say) to ``path``, one per line, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """The scripts' parser: the module docstring (usage included) as the description, kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def model_pose_errors(result, gt) -> list[dict]:
    """Per model of a pipeline result: registered images, median pose-pair errors (deg, among its registered
    images) against ground truth ``gt`` (name -> camera), and the trust verdict with its reasons and signals
    (issue 19: a model over 5 deg must be untrusted)."""
    from geomvision.evaluation import evaluate_reconstruction

    rows = []
    for rec, model in zip(result.reconstructions, result.report.get("models", []), strict=False):
        registered = {rec.views[i].name for i in rec.registered_image_ids}
        sub_gt = {n: g for n, g in gt.items() if n in registered}
        metrics = evaluate_reconstruction(rec, sub_gt, include_per_image=False) if len(sub_gt) >= 2 else {}
        rows.append(
            {
                "num_registered": rec.num_registered,
                "median_pose_error_deg": metrics.get("median_pose_error_deg"),
                "median_rotation_error_deg": metrics.get("median_rotation_error_deg"),
                "median_translation_error_deg": metrics.get("median_translation_error_deg"),
                "trusted": model.get("trusted"),
                "trust_reasons": model.get("trust_reasons"),
                "trust_signals": model.get("trust_signals"),
            }
        )
    return rows
