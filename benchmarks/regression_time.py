"""End-to-end time of `geomvision reconstruct` now against an earlier commit, same machine, same run.

Issue #19 asks that the self-calibration and wide-baseline work keep fountain, entry and castle "within 1.1x of
today" (the commit before that work). This script checks out ``--base`` into a detached git worktree and runs
the CLI of both trees on each dataset, alternating which goes first, cold (a fresh output folder, so no
cache), with unknown intrinsics, 2 workers and the same seed. It prints and writes per-run wall times, the
median per tree and the ratio now / base, plus the registered image count and AUC@2 of each run (from
``geomvision evaluate`` of the current tree, so both are scored alike).

    python benchmarks/regression_time.py --base f2a1d50 --datasets fountain entry castle --repeats 2
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import argument_parser, fmt_number, write_lines

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DATASETS = {
    "fountain": "strecha_fountain-P11",
    "entry": "strecha_entry-P10",
    "castle": "strecha_castle-P19",
    "temple": "middlebury_templeRing",
}
RESULTS = ROOT / "benchmarks" / "results" / "regression_time.md"


def _worktree_at(rev: str) -> Path:
    """A detached worktree of ``rev`` under the temp folder (reused when it exists)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"geomvision_base_{sha}"
    if not (path / "geomvision").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha], check=True)
    return path


def _reconstruct(tree: Path, images: Path, out: Path, seed: int, workers: int) -> float:
    """Wall seconds of one cold CLI run of the package in ``tree``."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "geomvision.cli", "reconstruct", str(images), "-o", str(out)]
    cmd += ["--seed", str(seed), "--workers", str(workers), "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{tree.name}: reconstruct failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall


def _score(out: Path, dataset_dir: Path) -> tuple[int, float]:
    """(registered images, AUC@2) of ``out``'s sparse/0, scored by the current tree's evaluator."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "geomvision.cli", "evaluate", str(out), "--gt", str(dataset_dir)]
    proc = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    data = json.loads(proc.stdout)
    return int(data["num_registered"]), float(data["auc@2"])


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--base", default="f2a1d50", help="the commit to compare with")
    parser.add_argument("--datasets", nargs="+", default=["fountain", "entry", "castle"], choices=DATASETS)
    parser.add_argument("--repeats", type=int, default=2, help="runs per tree and dataset (alternating)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = _worktree_at(args.base)
    trees = {"now": ROOT, f"base {args.base}": base}
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# End-to-end time against an earlier commit",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, HEAD {head}, "
        f"`python benchmarks/regression_time.py --base {args.base} --datasets {' '.join(args.datasets)} "
        f"--repeats {args.repeats}`. Cold runs (fresh output folder), unknown K, {args.workers} workers, "
        f"seed {args.seed}; the trees alternate which runs first. load = 1-min load average after the run.",
        "",
        "| dataset | tree | runs (s) | median (s) | registered | AUC@2 | load |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    with tempfile.TemporaryDirectory(prefix="gv_regression_") as tmp:
        for name in args.datasets:
            dataset_dir = SHARED / DATASETS[name]
            if not dataset_dir.is_dir():
                print(f"skip {name}: {dataset_dir} absent")
                continue
            walls: dict[str, list[float]] = {t: [] for t in trees}
            order = list(trees)
            for r in range(args.repeats):
                for label in order if r % 2 == 0 else order[::-1]:
                    out = Path(tmp) / f"{name}_{label.split()[0]}"
                    walls[label].append(
                        _reconstruct(trees[label], dataset_dir / "images", out, args.seed, args.workers)
                    )
                    print(f"{name} {label}: {walls[label][-1]:.1f} s", flush=True)
            medians = {}
            for label in trees:
                out = Path(tmp) / f"{name}_{label.split()[0]}"
                registered, auc2 = _score(out, dataset_dir)
                medians[label] = statistics.median(walls[label])
                runs = ", ".join(f"{w:.1f}" for w in walls[label])
                lines.append(
                    f"| {name} | {label} | {runs} | {medians[label]:.1f} | {registered} | "
                    f"{fmt_number(auc2)} | {os.getloadavg()[0]:.1f} |"
                )
            ratio = medians["now"] / medians[f"base {args.base}"]
            ratios.append(f"- {name}: now / base = **{ratio:.2f}x** (medians)")
    lines += ["", *ratios]
    write_lines(RESULTS, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
