"""Self-calibration: unknown vs known intrinsics, and the focal error against ground truth.

For each dataset, runs ``geomvision.pipeline.run_pipeline`` with

* ``unknown``: no intrinsics, view-graph calibration on (the default);
* ``unknown-nocal``: no intrinsics, calibration off (the mapper starts from the 1.2 max(w, h) prior,
  as before the calibration stage existed);
* ``known``: the ground-truth pinhole K, fixed;

and optionally pycolmap's incremental mapper with unknown intrinsics, and reports AUC@2 (pairwise
relative pose error, unregistered = 180 deg), registered images, the calibration's focal estimate and
the final (bundle-adjusted) focal against the ground-truth focal, and wall time. Runs keep their
output folders under ``--work`` so the pipeline's feature / match / verification caches are reused by
later runs of the same set (the timing column is then only comparable between rows run alike).

Usage::

    python benchmarks/self_calibration.py --datasets fountain,temple --modes unknown,known
    python benchmarks/self_calibration.py --datasets dtu --modes unknown --pycolmap
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconstruct as rb  # noqa: E402  (sibling benchmark script)
from common import model_pose_errors  # noqa: E402  (sibling benchmark module)

DATASETS = dict(rb.DATASETS)
DATASETS["dtu"] = rb.Dataset("dtu", "dtu_scan37", "images", "dtu_scan37_par.txt")
#: sparse rings: every third image of a full set (name -> (full set, step))
SUBSETS = {"temple16": ("temple", 3)}
#: known-wrong-<s>: the ground-truth K with the focal scaled by s, held fixed (a wrong focal given by the
#: user): every model it yields must come out untrusted when it is wrong.
MODES = ("unknown", "unknown-nocal", "known", "known-wrong-0.25", "known-wrong-0.5")
#: AUC@2 from benchmarks/results/reconstruct.md (commit 1a72001, same machine), used in the summary where
#: this script did not run the row itself: (geomvision known K, pycolmap unknown K).
REFERENCE_AUC2 = {
    "fountain": (0.975, 0.830),
    "entry": (0.971, 0.820),
    "castle": (0.871, 0.645),
    "temple": (0.890, 0.522),
}


def _images_and_gt(key: str, work: Path):
    """(image folder, names, ground truth) of a set or of a sparse ring made from one (symlinks)."""
    full, step = SUBSETS.get(key, (key, 1))
    ds = DATASETS[full]
    image_dir = rb.SHARED / ds.folder / ds.images
    names = [p.name for p in rb.image_paths(image_dir)][::step]
    gt = rb.load_gt(ds, names, image_dir)
    if step > 1:
        subset = work / f"images_{key}"
        if not subset.exists():
            rb.link_subset(image_dir, names, subset)
        image_dir = subset
    return image_dir, names, gt


def _intrinsics_for(mode: str, gt) -> tuple[float, float, float, float] | None:
    if not mode.startswith("known"):
        return None
    fx, fy, cx, cy = rb.known_intrinsics(gt)
    scale = float(mode.rsplit("-", 1)[1]) if mode.startswith("known-wrong") else 1.0
    return fx * scale, fy * scale, cx, cy


def _share_feature_cache(work: Path, key: str, out: Path) -> None:
    """Seed a new run's cache with the features and matches of an earlier run of the same set (they do
    not depend on the intrinsics), so the unknown / known rows do not extract everything twice."""
    if (out / "cache").exists():
        return
    for other in sorted(work.glob(f"{key}_*")):
        if (other / "cache" / "features").is_dir():
            for stage in ("features", "matches"):
                if (other / "cache" / stage).is_dir():
                    shutil.copytree(other / "cache" / stage, out / "cache" / stage)
            return


def run(key: str, mode: str, work: Path) -> dict:
    from geomvision.config import ReconstructionConfig
    from geomvision.pipeline import run_pipeline

    image_dir, names, gt = _images_and_gt(key, work)
    gt_focal = float(np.mean([np.sqrt(g.K[0, 0] * g.K[1, 1]) for g in gt.values()]))
    changes = {
        "pipeline": {
            "intrinsics": _intrinsics_for(mode, gt),
            "num_workers": 2,
            "html_report": False,
        }
    }
    if mode == "unknown-nocal":
        changes["calibration"] = {"enabled": False}
    config = ReconstructionConfig().with_changes(**changes)
    out = work / f"{key}_{mode}"
    _share_feature_cache(work, key, out)
    t = time.perf_counter()
    try:
        result = run_pipeline(image_dir, out, config)
        rec, report = result.reconstruction, result.report
        models = model_pose_errors(result, gt)
    except Exception as exc:  # a failed run is a result too
        rec, report, models = None, {"error": f"{type(exc).__name__}: {exc}"}, []
    elapsed = time.perf_counter() - t
    scores = rb.score(rec, gt)
    row = {
        "dataset": key,
        "mode": mode,
        "images": len(names),
        "gt_focal_px": gt_focal,
        "num_registered": scores["num_registered"],
        "auc@2": scores["auc@2"],
        "auc@5": scores["auc@5"],
        "median_rotation_error_deg": scores.get("median_rotation_error_deg"),
        "time_s": elapsed,
        "timings_s": report.get("timings_s"),
        "load_avg": os.getloadavg()[0],
    }
    if rec is not None:
        cams = rec.cameras
        focal = [float(np.sqrt(np.prod(cams[c].focal_xy))) for c in sorted(cams)]
        row["final_focal_px"] = float(np.median(focal))
        row["final_focal_error"] = row["final_focal_px"] / gt_focal - 1.0
    calibration = report.get("calibration", {}).get("view_graph")
    if calibration:
        est = [
            c["estimate_px"] for c in calibration["cameras"].values() if c["estimate_px"] == c["estimate_px"]
        ]
        if est:
            row["calibration_focal_px"] = float(np.median(est))
            row["calibration_focal_error"] = row["calibration_focal_px"] / gt_focal - 1.0
        row["calibration_trusted"] = all(c["trusted"] for c in calibration["cameras"].values())
        row["calibration_time_s"] = report["calibration"].get("time_s")
    row["models"] = models
    row["principal_point"] = report.get("principal_point")
    if "error" in report:
        row["error"] = report["error"]
    return row


def run_pycolmap_unknown(key: str, work: Path) -> dict:
    image_dir, names, gt = _images_and_gt(key, work)
    rec, elapsed, _ = rb.run_pycolmap(image_dir, work / f"colmap_{key}_unknown", None)
    scores = rb.score(rec, gt)
    gt_focal = float(np.mean([np.sqrt(g.K[0, 0] * g.K[1, 1]) for g in gt.values()]))
    row = {
        "dataset": key,
        "mode": "pycolmap-unknown",
        "images": len(names),
        "gt_focal_px": gt_focal,
        "num_registered": scores["num_registered"],
        "auc@2": scores["auc@2"],
        "auc@5": scores["auc@5"],
        "time_s": elapsed,
        "load_avg": os.getloadavg()[0],
    }
    if rec is not None:
        focal = [float(np.sqrt(np.prod(c.focal_xy))) for c in rec.cameras.values()]
        row["final_focal_px"] = float(np.median(focal))
        row["final_focal_error"] = row["final_focal_px"] / gt_focal - 1.0
    return row


def _auc(row: dict | None, reference: float | None = None) -> str:
    if row is not None:
        return f"{row['auc@2']:.3f}"
    return "" if reference is None else f"{reference:.3f}*"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:+.1f} %"


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [
        "# Self-calibration: unknown vs known intrinsics",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"`python benchmarks/self_calibration.py {' '.join(sys.argv[1:])}` (rows appended across runs; "
        "load = 1-min load average at the end of the row; times with cached features are not comparable "
        "to cold runs).",
        "",
        "| dataset | mode | registered | AUC@2 | AUC@5 | calibration focal error | final focal error | "
        "time (s) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {r['num_registered']}/{r['images']} | {r['auc@2']:.3f} | "
            f"{r['auc@5']:.3f} | {_pct(r.get('calibration_focal_error'))} | {_pct(r.get('final_focal_error'))} | "
            f"{r['time_s']:.1f} | {r['load_avg']:.1f} |"
        )
    by = {(r["dataset"], r["mode"]): r for r in rows}
    lines += [
        "",
        "Unknown vs known K (AUC@2) and pycolmap with unknown K (* = from `reconstruct.md`, commit 1a72001, "
        "the same machine; the known-K path is unchanged since):",
        "",
        "| dataset | unknown | known | unknown / known | pycolmap unknown | models (registered, median pose error, trusted) |",
        "|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys(r["dataset"] for r in rows):
        unknown, known, peer = (
            by.get((key, "unknown")),
            by.get((key, "known")),
            by.get((key, "pycolmap-unknown")),
        )
        if unknown is None:
            continue
        ref_known, ref_peer = REFERENCE_AUC2.get(key, (None, None))
        known_auc = known["auc@2"] if known else ref_known
        ratio = f"{unknown['auc@2'] / known_auc:.3f}" if known_auc else ""
        models = "; ".join(
            f"{m['num_registered']}, {m['median_rotation_error_deg']:.2f} deg, {'yes' if m['trusted'] else 'no'}"
            for m in unknown.get("models", [])
            if m.get("median_rotation_error_deg") is not None
        )
        lines.append(
            f"| {key} | {unknown['auc@2']:.3f} | {_auc(known, ref_known)} | {ratio} | {_auc(peer, ref_peer)} | {models} |"
        )
    lines += [
        "",
        "Every model of every row: median pose-pair errors against ground truth and the trust verdict "
        "(a model over 5 deg must be untrusted):",
        "",
        "| dataset | mode | model | registered | median rotation / translation error (deg) | trusted | reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for k, m in enumerate(r.get("models", [])):
            if m.get("median_rotation_error_deg") is None:
                continue
            lines.append(
                f"| {r['dataset']} | {r['mode']} | {k} | {m['num_registered']} | "
                f"{m['median_rotation_error_deg']:.2f} / {m['median_translation_error_deg']:.2f} | "
                f"{'yes' if m['trusted'] else 'no'} | {'; '.join(m.get('trust_reasons') or [])} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="fountain,entry,castle,temple,dtu")
    parser.add_argument("--modes", default="unknown,known")
    parser.add_argument("--pycolmap", action="store_true", help="also run pycolmap with unknown intrinsics")
    parser.add_argument("--work", type=Path, default=Path("/tmp/geomvision_selfcal"))
    parser.add_argument("--jsonl", type=Path, default=rb.RESULTS / "self_calibration.jsonl")
    args = parser.parse_args()
    rows = []
    for key in args.datasets.split(","):
        for mode in args.modes.split(","):
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; expected one of {MODES}")
            rows.append(run(key, mode, args.work))
            print(json.dumps(rows[-1]), flush=True)
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
        if args.pycolmap:
            rows.append(run_pycolmap_unknown(key, args.work))
            print(json.dumps(rows[-1]), flush=True)
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    all_rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    latest = {(r["dataset"], r["mode"]): r for r in all_rows}  # the last run of each row
    write_markdown(list(latest.values()), rb.RESULTS / "self_calibration.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
