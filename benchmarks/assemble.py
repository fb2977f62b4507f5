"""Rebuild BENCHMARKS.md: the hand-written summary (benchmarks/summary.md) + every results table.

Usage: ``python benchmarks/assemble.py`` after running benchmark scripts (each writes
``benchmarks/results/<name>.md``).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    ("two_view.md", "Two-view geometry (issue: foundation)"),
    ("five_point.md", "Five-point solver cost per sample"),
    ("bench_triangulation.md", "Triangulation and homography"),
    ("matching.md", "Features, matching, verification (issue: features)"),
    ("reconstruct.md", "End-to-end reconstruction (issue: incremental reconstruction)"),
    ("self_calibration.md", "Self-calibration and model trust (issue 19)"),
    ("regression_time.md", "End-to-end time against the commit before this round (issue 19 speed)"),
    ("bench_incremental_mapper.md", "Incremental mapper alone"),
    ("partition.md", "Partitioned mapping and Sim(3) merge (issue 18)"),
    ("bundle_adjustment.md", "Bundle adjustment (issue: bundle adjustment)"),
    ("factorization.md", "Factorization (issue: Tomasi-Kanade)"),
    ("bench_colmap_io.md", "COLMAP model I/O"),
    ("learned_pose.md", "Learned pose plugins (issue: learned pose)"),
    ("distributed.md", "Stage runner backends: serial, process pool, Dask (issue 15: scale-out)"),
    (
        "distributed_repeats.md",
        "Dask (2 workers) against the process pool (2 workers), repeated runs (issue 15)",
    ),
    ("global_mapper.md", "Global mapper vs incremental vs COLMAP/GLOMAP (issue 16)"),
    ("glomap_same_pairs.md", "Global mappers on the same inputs: ours vs GLOMAP (issue 16)"),
    ("scaling.md", "Cost growth on synthetic street scenes (issue 17)"),
    ("wide_baseline.md", "Wide-baseline rings (issue 19)"),
    ("mapping_speed.md", "Incremental mapping speed at 300 images (issue 17)"),
    ("memory_2000.md", "Memory and registration at 1000 and 2000 images (issue 17)"),
]


def main() -> None:
    parts = [(HERE / "summary.md").read_text().rstrip() + "\n"]
    for name, title in ORDER:
        path = HERE / "results" / name
        if not path.is_file():
            continue
        body = path.read_text().strip().splitlines()
        if body and body[0].startswith("# "):
            body = body[1:]  # replaced by our own heading
        demoted = ["#" + line if line.startswith("#") else line for line in body]
        parts.append(
            f"\n## {title}\n\n_Source: `benchmarks/results/{name}`._\n\n" + "\n".join(demoted).strip() + "\n"
        )
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
