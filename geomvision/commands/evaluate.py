"""``geomvision evaluate OUT --gt PATH``: pose accuracy against ground truth, as one JSON line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

NAME = "evaluate"
HELP = (
    "compare a reconstruction with ground-truth cameras (pose AUC, centre errors); prints JSON. With "
    "several models (OUT/sparse/0, 1, ...) the top-level numbers score their union, each model aligned "
    "to the ground truth by its camera centres; 'models' scores each model alone"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder holding sparse/0, or a COLMAP model folder")
    parser.add_argument(
        "--gt",
        required=True,
        help="ground truth: COLMAP model, Middlebury *_par.txt, Strecha *.camera folder "
        "(or a dataset folder containing one)",
    )
    parser.add_argument(
        "--thresholds", default="1,2,5,10", help="AUC thresholds in degrees (default 1,2,5,10)"
    )
    parser.add_argument(
        "--table", action="store_true", help="also print a per-image table after the JSON line"
    )
    parser.add_argument(
        "--all-gt",
        action="store_true",
        help="score every ground-truth image; by default only the run's input images (from OUT/report.json) "
        "count, so a run on a subset is not charged for images it never saw",
    )


def _clean(value):
    """JSON has no NaN/inf: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _input_image_names(out: Path) -> set[str] | None:
    """Names of every input image of the run (registered or not), from ``OUT/report.json``."""
    report = out / "report.json"
    if not report.is_file():
        return None
    try:
        per_image = json.loads(report.read_text()).get("features", {}).get("per_image")
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(per_image, dict) or not per_image:
        return None
    return {str(name) for name in per_image} | {Path(str(name)).name for name in per_image}


def _all_model_folders(root: Path, first: Path) -> list[Path]:
    """Every model of a run (``OUT/sparse/0``, ``1``, ... largest first), or just the one given."""
    sparse = root / "sparse"
    if first != sparse / "0":
        return [first]
    numbered = sorted(
        (p for p in sparse.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    return [p for p in numbered if (p / "images.txt").is_file() or (p / "images.bin").is_file()] or [first]


def run(args: argparse.Namespace) -> int:
    from geomvision.errors import InputError
    from geomvision.evaluation import evaluate_models, format_per_image_table, load_ground_truth
    from geomvision.io.colmap import find_model_folder, read_model

    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        raise InputError(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}") from None
    if not thresholds or min(thresholds) <= 0:
        raise InputError(f"--thresholds must be positive, got {args.thresholds!r}")
    folder = find_model_folder(args.model)
    folders = _all_model_folders(Path(args.model), folder)
    recs = [read_model(f) for f in folders]
    sizes = {
        v.name: (rec.cameras[v.camera_id].width, rec.cameras[v.camera_id].height)
        for rec in recs
        for v in rec.views.values()
    }
    sizes.update({k.rsplit("/", 1)[-1]: v for k, v in sizes.items()})
    gt_all = load_ground_truth(args.gt, image_sizes=sizes)
    inputs = None if args.all_gt else _input_image_names(Path(args.model))
    gt = {n: c for n, c in gt_all.items() if n in inputs or Path(n).name in inputs} if inputs else gt_all
    gt = gt or gt_all  # report names that match no ground truth: score against all of it
    result = evaluate_models(recs, gt, thresholds_deg=thresholds)
    per_image = result.pop("per_image")
    for model in result["models"]:
        model["model"] = str(folders[model["model"]])
        for key, value in model.items():
            model[key] = _clean(value)
    summary = {
        "model": str(folder) if len(folders) == 1 else [str(f) for f in folders],
        "gt": str(args.gt),
        "gt_restricted_to_inputs": len(gt) < len(gt_all),
        **{k: _clean(v) for k, v in result.items()},
    }
    print(json.dumps(summary))
    if args.table:
        print(format_per_image_table(per_image))
    return 0
