"""Partitioned mapping vs mapping the whole scene, and vs COLMAP's hierarchical mapper, in the same run.

For each dataset (templeRing, castle-P19 from ../shared/datasets; street scenes from ``geomvision
synth-scene`` when given with ``--street``):

* geomvision whole: ``run_pipeline`` with ``[partition] max_cluster_images = 0``;
* geomvision partitioned: the same with clusters of about a third of the images (``--fraction``), the
  cluster tasks on a process pool of ``--workers`` workers (and, with ``--worker-counts 1,2``, once per
  count, to time the mapping's speed-up);
* pycolmap incremental (``incremental_mapping``) and hierarchical (``hierarchical_mapping`` with
  ``leaf_max_num_images`` = our cluster size and ``image_overlap`` = our overlap) on one database of
  SIFT features and exhaustive matches.

Scores are ``geomvision.evaluation.evaluate_reconstruction`` (the numbers of ``geomvision evaluate``) on the
largest model: AUC@T of the pairwise relative pose error, unregistered images at 180 deg. The geomvision
runs share one feature/match/verification cache (``OUT/cache``), so their times differ by the mapping only.
The machine is shared: the load average is printed with every row.

Usage::

    python benchmarks/partition.py                                   # templeRing + castle-P19
    python benchmarks/partition.py --datasets temple --modes known
    python benchmarks/partition.py --street /path/street_1000 --datasets street --worker-counts 1,2
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import common as shared  # noqa: E402  (sibling benchmark module: shared helpers)
import reconstruct as bench  # noqa: E402  (benchmarks/reconstruct.py: datasets, GT loading, scoring)

RESULTS = REPO / "benchmarks" / "results"
_f = shared.fmt_number  # table cell of a number


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run_geomvision(
    image_dir: Path,
    out: Path,
    intrinsics,
    max_cluster_images: int,
    workers: int,
    cache: Path,
    pairing: dict,
    sections: dict | None = None,
):
    """One pipeline run; ``cache`` is shared by all runs on a dataset (features, matches, verification).

    ``sections`` are further config sections (``--sections``), e.g. ``{"calibration": {...}}``."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "cache").exists():
        (out / "cache").symlink_to(cache, target_is_directory=True)
    config = shared.pipeline_config(
        intrinsics,
        num_workers=workers,
        pipeline=pairing,
        **{**(sections or {}), "partition": {"max_cluster_images": max_cluster_images}},
    )
    from geomvision.sfm.partitioned_mapping import _PeakRss  # the sampler the cluster tasks use

    load_start, cpu_start = load_average(), time.process_time()
    with _PeakRss() as memory:
        result, seconds, error = shared.run_pipeline_timed(image_dir, out, config)
    if result is None:
        return None, seconds, {"error": error}
    result.report["main_peak_rss_mb"] = round(memory.peak_mb, 1)
    result.report["main_cpu_s"] = round(time.process_time() - cpu_start, 1)
    result.report["load_start"] = load_start
    return result.reconstructions, seconds, result.report


def worker_costs(report: dict) -> dict:
    """What the cluster mapping cost per worker process: clusters, wall and CPU seconds (the mapper's own
    CPU time, all threads), the thread limits they ran under, and the pickled bytes the runner sent to
    and received from the workers for the mapping stage (0 when clusters ran in this process)."""
    mapping = report.get("mapping", {})
    engine = report.get("engine", {})
    stage = engine.get("stages", {}).get("mapping", {})
    return {
        "backend": f"{engine.get('backend')} x{engine.get('workers')}",
        "per_worker": [
            {k: w[k] for k in ("clusters", "time_s", "cpu_s")} for w in mapping.get("workers", [])
        ],
        "threads": sorted(
            {
                " / ".join(f"{k} {v}" for k, v in (c.get("threads") or {}).items())
                for c in mapping.get("clusters", [])
            }
        ),
        "in_main_process": sum(c.get("pid") == os.getpid() for c in mapping.get("clusters", [])),
        "bytes_to_workers": stage.get("bytes_sent"),
        "bytes_from_workers": stage.get("bytes_received"),
        "main_cpu_s": report.get("main_cpu_s"),
        "load_start": report.get("load_start"),
    }


def colmap_database(image_dir: Path, work: Path, intrinsics, pairing: str, overlap: int) -> tuple[Path, dict]:
    """pycolmap's SIFT database of ``image_dir`` in ``work`` (reused when there: delete it to rebuild).

    ``pairing``: "exhaustive", or "sequential" (``common.pycolmap_match_sequential`` with ``overlap``, the
    street scenes' pairing in ``benchmarks/scaling.py``). Built under a temporary name and renamed when
    complete, so an interrupted build is never reused. Returns the database and its build times
    (``database.json`` beside it: extraction and matching seconds, load average)."""
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    db, info_path = work / "database.db", work / "database.json"
    if db.exists():
        return db, json.loads(info_path.read_text()) if info_path.exists() else {}
    partial = work / "database.db.partial"
    partial.unlink(missing_ok=True)
    reader, extraction, matching = shared.pycolmap_options(intrinsics)
    t = time.perf_counter()
    shared.pycolmap_extract(partial, image_dir, extraction, reader)
    info = {"extraction_s": round(time.perf_counter() - t, 1), "pairing": pairing}
    t = time.perf_counter()
    if pairing == "sequential":
        shared.pycolmap_match_sequential(partial, matching, overlap=overlap)
        info["pairing"] = f"sequential({overlap})"
    else:
        pycolmap.match_exhaustive(partial, matching_options=matching, device=pycolmap.Device.cpu)
    info.update({"matching_s": round(time.perf_counter() - t, 1), "load": load_average()})
    partial.rename(db)
    info_path.write_text(json.dumps(info))
    return db, info


def _colmap_mapper_options(options, intrinsics, workers: int):
    options.num_threads = workers
    options.random_seed = 0
    if intrinsics is not None:
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False


def run_pycolmap(
    db: Path,
    image_dir: Path,
    work: Path,
    intrinsics,
    leaf_images: int,
    overlap: int,
    workers: int,
    kinds: tuple[str, ...] = ("incremental", "hierarchical"),
):
    """One (models as geomvision Reconstructions, mapper seconds) per mapper in ``kinds``."""
    import pycolmap

    out = []
    for kind in kinds:
        sparse = work / f"sparse_{kind}"
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir(parents=True)
        t = time.perf_counter()
        if kind == "incremental":
            options = pycolmap.IncrementalPipelineOptions()
            _colmap_mapper_options(options, intrinsics, workers)
            maps = pycolmap.incremental_mapping(db, image_dir, sparse, options=options)
        else:
            options = pycolmap.HierarchicalPipelineOptions()
            options.num_workers = workers
            options.num_threads = workers
            options.clustering_options.leaf_max_num_images = leaf_images
            options.clustering_options.image_overlap = overlap
            _colmap_mapper_options(options.incremental_options, intrinsics, 1)
            maps = pycolmap.hierarchical_mapping(db, image_dir, sparse, options=options)
        elapsed = time.perf_counter() - t
        out.append((_to_geomvision(maps, work / f"text_{kind}"), elapsed))
    return out


def _to_geomvision(maps, folder: Path) -> list:
    from geomvision.io.colmap import read_model

    recs = []
    for k, rec in enumerate(sorted(maps.values(), key=lambda r: -r.num_reg_images())):
        sub = folder / str(k)
        sub.mkdir(parents=True, exist_ok=True)
        rec.write_text(str(sub))
        recs.append(read_model(sub))
    return recs


def score(recs, gt) -> dict:
    s = bench.score(recs[0] if recs else None, gt)
    return {
        "registered": s["num_registered"],
        "models": len(recs or []),
        "auc@1": s["auc@1"],
        "auc@2": s["auc@2"],
        "auc@5": s["auc@5"],
        "reproj_px": s["mean_reprojection_error_px"],
    }


def dataset_inputs(key: str, street: Path | None, subset: int = 0, work: Path | None = None):
    if key == "street":
        if street is None:
            raise SystemExit("--datasets street needs --street DIR (from geomvision synth-scene)")
        image_dir = street / "images" if (street / "images").is_dir() else street
        names = [p.name for p in bench.image_paths(image_dir)]
        if subset:  # the first images of the trajectory: a shorter street
            names = names[:subset]
            image_dir = (
                bench.link_subset(image_dir, names, work / f"street_first_{subset}")
                if not (work / f"street_first_{subset}").exists()
                else work / f"street_first_{subset}"
            )
        from geomvision.evaluation import load_ground_truth

        gt_path = next(
            p for p in (street / "gt", street / "sparse" / "0", street / "gt_sparse") if p.exists()
        )
        gt = load_ground_truth(gt_path)
        return image_dir, names, {n: gt[n] for n in names if n in gt}
    ds = bench.DATASETS[key]
    image_dir = bench.SHARED / ds.folder / ds.images
    names = [p.name for p in bench.image_paths(image_dir)]
    return image_dir, names, bench.load_gt(ds, names, image_dir)


def run_dataset(key: str, mode: str, args, work: Path) -> list[dict]:
    image_dir, names, gt = dataset_inputs(
        key, Path(args.street) if args.street else None, args.street_subset, work
    )
    intrinsics = bench.known_intrinsics(gt) if mode == "known" else None
    n = len(names)
    cluster = args.cluster_images or max(2, math.ceil(n * args.fraction))
    from geomvision.sfm.partition import PartitionOptions

    popts = PartitionOptions()
    overlap = max(popts.min_overlap_images, math.ceil(popts.overlap_ratio * cluster))
    cache = Path(args.cache) if args.cache else work / f"{key}_{mode}_cache"
    cache.mkdir(parents=True, exist_ok=True)
    sections = json.loads(args.sections) if args.sections else None
    rows = []

    def row(tool, recs, elapsed, mapping_s, extra=None):
        r = {
            "dataset": key,
            "K": mode,
            "images": n,
            "tool": tool,
            **score(recs, gt),
            "mapping_s": mapping_s,
            "total_s": elapsed,
            "load": load_average(),
            **(extra or {}),
        }
        rows.append(r)
        print(json.dumps(r, default=str), flush=True)
        return r

    pairing = {"pairing": args.pairing, "sequential_window": args.window}
    whole: dict = {"auc@2": None}

    def run_whole():
        whole_recs, t, rep = run_geomvision(
            image_dir, work / f"{key}_{mode}_whole", intrinsics, 0, args.workers, cache, pairing, sections
        )
        whole = row(
            "geomvision whole",
            whole_recs,
            t,
            rep.get("timings_s", {}).get("mapping"),
            {"error": rep.get("error"), "main_peak_rss_mb": rep.get("main_peak_rss_mb")},
        )
        return whole

    if not args.partitioned_first and not args.no_whole:
        whole = run_whole()
    for workers in args.worker_counts:
        recs, t, rep = run_geomvision(
            image_dir,
            work / f"{key}_{mode}_part{workers}",
            intrinsics,
            cluster,
            workers,
            cache,
            pairing,
            sections,
        )
        mapping = rep.get("mapping", {})
        clusters = mapping.get("clusters", [])
        merge = mapping.get("merge", {})
        alignments = [a for a in merge.get("alignments", []) if a.get("success")]
        r = row(
            f"geomvision partitioned ({len(clusters)} clusters <= {cluster}, {workers} worker{'s' * (workers > 1)})",
            recs,
            t,
            rep.get("timings_s", {}).get("mapping"),
            {
                "clusters_s": mapping.get("timings_s", {}).get("clusters"),
                "merge_s": mapping.get("timings_s", {}).get("merge"),
                "cluster_sizes": mapping.get("partition", {}).get("cluster_sizes"),
                "peak_rss_mb": [c.get("peak_rss_mb") for c in clusters],
                "main_peak_rss_mb": rep.get("main_peak_rss_mb"),
                "merge_reproj_px": [round(a["reprojection_error_dst_px"]["median"], 3) for a in alignments],
                "dropped": len(mapping.get("dropped_images", [])),
                **worker_costs(rep),
                "error": rep.get("error"),
            },
        )
        r["auc2_ratio"] = r["auc@2"] / whole["auc@2"] if whole["auc@2"] else float("nan")
    if args.partitioned_first and not args.no_whole:
        whole = run_whole()
        for r in rows:
            if "clusters_s" in r:
                r["auc2_ratio"] = r["auc@2"] / whole["auc@2"] if whole["auc@2"] else float("nan")
    if not args.no_colmap:
        colmap_pairing = args.colmap_pairing or (
            "exhaustive" if args.pairing == "exhaustive" else "sequential"
        )
        colmap_work = work / f"{key}_{mode}_colmap"
        db, db_info = colmap_database(image_dir, colmap_work, intrinsics, colmap_pairing, args.colmap_overlap)
        kinds = tuple(k for k in args.colmap_mappers.split(",") if k)
        workers = max(args.worker_counts, default=args.workers)
        runs = dict(
            zip(
                kinds,
                run_pycolmap(db, image_dir, colmap_work, intrinsics, cluster, overlap, workers, kinds),
                strict=True,
            )
        )
        front = {"colmap_" + k: v for k, v in db_info.items()}
        colmap_whole = {"auc@2": None}
        if "incremental" in runs:
            recs, t_inc = runs["incremental"]
            colmap_whole = row("pycolmap incremental", recs, t_inc, t_inc, front)
        if "hierarchical" in runs:
            recs, t_hier = runs["hierarchical"]
            r = row(
                f"pycolmap hierarchical (leaf {cluster}, overlap {overlap}, {workers} workers)",
                recs,
                t_hier,
                t_hier,
                front,
            )
            r["auc2_ratio"] = r["auc@2"] / colmap_whole["auc@2"] if colmap_whole["auc@2"] else float("nan")
    return rows


def write_markdown(rows: list[dict], path: Path, args) -> None:
    """The tables of ``rows``; hand-written notes in ``path`` (from its first ``## `` heading on) are kept
    below them."""
    notes = []
    if path.exists():
        old = path.read_text().splitlines()
        start = next((i for i, line in enumerate(old) if line.startswith("## ")), len(old))
        notes = ["", *old[start:]] if start < len(old) else []
    lines = [
        "# Partitioned mapping vs whole-scene mapping vs COLMAP's hierarchical mapper",
        "",
        f"Run {date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, shared with other "
        f"jobs: load average per row). Clusters of ceil({args.fraction:.3f} x images) core images (street: the "
        "size in the row) plus overlap; "
        "geomvision runs share one feature/match/verification cache, so `mapping s` is the comparable time "
        "(for pycolmap: its mapper call). AUC of the pairwise relative pose error of the largest model "
        "(unregistered = 180 deg), via `geomvision.evaluation`. `AUC@2 ratio` = partitioned / whole of the "
        "same tool (geomvision partitioned / geomvision whole; pycolmap hierarchical / pycolmap incremental).",
        "",
        "| dataset | K | images | tool | models | registered | AUC@1 | AUC@2 | AUC@5 | AUC@2 ratio | mean reproj px "
        "| mapping s | total s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['K']} | {r['images']} | {r['tool']} | {r['models']} | {r['registered']} | "
            f"{_f(r['auc@1'])} | {_f(r['auc@2'])} | {_f(r['auc@5'])} | {_f(r.get('auc2_ratio'))} | "
            f"{_f(r['reproj_px'])} | {_f(r['mapping_s'], 1)} | {_f(r['total_s'], 1)} | {r['load']} |"
        )
    detail = [r for r in rows if "clusters_s" in r]
    if detail:
        lines += [
            "",
            "Partitioned runs in detail (cluster mapping wall time, merge time, cluster sizes with overlap, peak "
            "RSS of the process that mapped each cluster, median reprojection error of the merge alignments in "
            "the destination model, images dropped at merge):",
            "",
            "| dataset | K | tool | clusters s | merge s | cluster sizes | cluster peak RSS MB | main process peak RSS MB "
            "| merge reproj px | dropped |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in detail:
            lines.append(
                f"| {r['dataset']} | {r['K']} | {r['tool']} | {_f(r['clusters_s'], 1)} | {_f(r['merge_s'], 1)} | "
                f"{r['cluster_sizes']} | {r['peak_rss_mb']} | {r.get('main_peak_rss_mb')} | {r['merge_reproj_px']} "
                f"| {r['dropped']} |"
            )
    costs = [r for r in detail if "per_worker" in r]
    if costs:
        lines += [
            "",
            "Cluster mapping per worker process (clusters mapped, their summed wall and CPU seconds, the OpenCV/BLAS "
            "thread limits they ran under, clusters mapped in the main process), pickled MB the runner sent to / "
            "received from the workers for the mapping stage, CPU seconds of the main process over the whole run "
            "(cache loading, partition, merge), load average at the start and end of the run:",
            "",
            "| dataset | tool | backend | per worker: clusters, wall s, CPU s | threads | in main process | MB to workers "
            "| MB from workers | main CPU s | load start | load end |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in costs:
            per_worker = "; ".join(
                f"{w['clusters']}, {_f(w['time_s'], 1)}, {_f(w['cpu_s'], 1)}" for w in r["per_worker"]
            )
            mb = [None if r[k] is None else r[k] / 2**20 for k in ("bytes_to_workers", "bytes_from_workers")]
            lines.append(
                f"| {r['dataset']} | {r['tool']} | {r['backend']} | {per_worker} | {', '.join(r['threads'])} | "
                f"{r['in_main_process']} | {_f(mb[0], 1)} | {_f(mb[1], 1)} | {_f(r['main_cpu_s'], 1)} | "
                f"{r['load_start']} | {r['load']} |"
            )
    shared.write_lines(path, lines + notes)


def merge_rows(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` with each row of ``new`` replacing the one of the same dataset, K, size and tool (in its
    place), the others appended."""

    def key(r: dict) -> tuple:
        return r["dataset"], r["K"], r["images"], r["tool"]

    fresh = {key(r): r for r in new}
    rows = [fresh.pop(key(r), r) for r in earlier]
    return rows + [r for r in new if key(r) in fresh]


def _fill_ratios(rows: list[dict]) -> None:
    """AUC@2 ratios of rows from separate invocations (e.g. whole and partitioned runs in two processes)."""
    for r in rows:
        if r.get("auc2_ratio") is not None and not (
            isinstance(r["auc2_ratio"], float) and math.isnan(r["auc2_ratio"])
        ):
            continue
        peer = (
            "geomvision whole"
            if r["tool"].startswith("geomvision partitioned")
            else "pycolmap incremental"
            if r["tool"].startswith("pycolmap hierarchical")
            else None
        )
        base = next(
            (
                b
                for b in rows
                if b["tool"] == peer
                and (b["dataset"], b["K"], b["images"]) == (r["dataset"], r["K"], r["images"])
            ),
            None,
        )
        if base is not None and base["auc@2"]:
            r["auc2_ratio"] = r["auc@2"] / base["auc@2"]


def main() -> int:
    parser = shared.argument_parser(__doc__)
    parser.add_argument("--datasets", default="temple,castle")
    parser.add_argument("--modes", default="known")
    parser.add_argument("--fraction", type=float, default=1 / 3, help="cluster size as a share of the images")
    parser.add_argument("--workers", type=int, default=2, help="workers of the whole run's per-item stages")
    parser.add_argument("--worker-counts", default="2", help="partitioned runs, one per worker count")
    parser.add_argument("--street", help="folder made by `geomvision synth-scene --kind street`")
    parser.add_argument("--street-subset", type=int, default=0, help="use the first N street images only")
    parser.add_argument("--pairing", default="exhaustive", help="geomvision pairing (street: sequential)")
    parser.add_argument("--window", type=int, default=8, help="sequential window")
    parser.add_argument("--cluster-images", type=int, help="cluster size (default: --fraction of the images)")
    parser.add_argument("--partitioned-first", action="store_true", help="run the whole-scene mapping last")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-scene geomvision run")
    parser.add_argument("--no-colmap", action="store_true")
    parser.add_argument(
        "--colmap-mappers", default="incremental,hierarchical", help="pycolmap mappers to run (comma list)"
    )
    parser.add_argument(
        "--colmap-pairing",
        choices=("exhaustive", "sequential"),
        help="pycolmap matching (default: exhaustive when --pairing is, else sequential)",
    )
    parser.add_argument("--colmap-overlap", type=int, default=10, help="pycolmap sequential overlap")
    parser.add_argument(
        "--cache",
        help="pipeline cache folder to share (e.g. an earlier run's OUT/cache, made with the same pairing, "
        "--modes and --sections: its features, matches and verified pairs are reused)",
    )
    parser.add_argument(
        "--sections",
        help='further config sections as JSON, e.g. \'{"calibration": {"refine_principal_point": false}}\'',
    )
    parser.add_argument("--keep", help="keep work folders (and caches) here")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start the table empty (default: this run's rows replace the rows of the same dataset, K, size "
        "and tool in --output's .json, the others stay)",
    )
    parser.add_argument("--output", default=str(RESULTS / "partition.md"))
    parser.add_argument(
        "--only-assemble",
        nargs="*",
        metavar="JSON",
        help="write the table from these rows files (earlier runs' .json) without running anything",
    )
    args = parser.parse_args()
    if args.only_assemble is not None:
        rows = [r for path in args.only_assemble for r in json.loads(Path(path).read_text())]
        _fill_ratios(rows)
        write_markdown(rows, Path(args.output), args)
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
        print(f"wrote {args.output}")
        return 0
    args.worker_counts = [int(w) for w in args.worker_counts.split(",") if w.strip()]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gv_partition_"))
    json_path = Path(args.output).with_suffix(".json")
    earlier = json.loads(json_path.read_text()) if json_path.exists() and not args.fresh else []
    new: list[dict] = []
    try:
        for key in args.datasets.split(","):
            for mode in args.modes.split(","):
                new.extend(run_dataset(key, mode, args, work))
                rows = merge_rows(earlier, new)
                _fill_ratios(rows)
                write_markdown(rows, Path(args.output), args)
                json_path.write_text(json.dumps(rows, indent=1, default=str))
        print(f"wrote {args.output}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
