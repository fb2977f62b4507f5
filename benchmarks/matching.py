"""Features + matching + geometric verification: geomvision vs pycolmap (COLMAP) on real data with GT.

For each dataset both pipelines run exhaustive matching with the same image size / feature cap and the
ground-truth intrinsics; then, with the ground-truth cameras:

* precision of verified matches: share of a pair's inlier matches whose Sampson error under the GT
  fundamental matrix is < 2 px (min and median over verified pairs);
* verified matches per pair (median over all pairs, rejected pairs count 0);
* wall time of extraction and matching (+ verification; pycolmap's ``match_exhaustive`` verifies too);
* the view graph of templeRing (connected components), drawn to docs/view_graph_templeRing.png.

Run: ``python benchmarks/matching.py [--datasets fountain,temple] [--workers 2]``.
Writes benchmarks/results/matching.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geomvision.evaluation import read_middlebury_par, read_strecha_cameras
from geomvision.features.extract import ExtractionOptions, extract_features
from geomvision.features.match import IvfOptions, MatchingOptions, match_pairs
from geomvision.features.pairs import exhaustive_pairs
from geomvision.geometry.epipolar import fundamental_from_essential, sampson_distance_sq
from geomvision.geometry.rigid import skew
from geomvision.io.images import image_size, list_images
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.atomic import atomic_write_text
from geomvision.runtime.runner import open_runner
from geomvision.sfm.two_view import TwoViewOptions, verify_pairs
from geomvision.sfm.view_graph import (
    build_view_graph,
    connected_components,
    draw_view_graph,
    filter_rotation_cycles,
)

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("GEOMVISION_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "benchmarks" / "results" / "matching.md"
SAMPSON_PX = 2.0


def load_dataset(key: str, max_images: int | None):
    """(image paths, {name: GroundTruthCamera}) of a shared dataset."""
    if key == "fountain":
        root = DATASETS / "strecha_fountain-P11"
        paths = list_images(root / "images")
        gt = read_strecha_cameras(root, image_sizes={p.name: image_size(p) for p in paths})
    elif key == "temple":
        root = DATASETS / "middlebury_templeRing"
        paths = list_images(root)
        gt = read_middlebury_par(root / "templeR_par.txt")
    else:
        raise SystemExit(f"unknown dataset {key!r}")
    paths = [p for p in paths if p.name in gt][:max_images]
    return paths, gt


def gt_fundamental(gt_i, gt_j) -> np.ndarray:
    rel = gt_j.cam_from_world @ gt_i.cam_from_world.inverse()
    return fundamental_from_essential(skew(rel.translation) @ rel.rotation, gt_i.K, gt_j.K)


def precision_per_pair(names, keypoints, inliers, gt, min_inliers=15) -> dict:
    """{(i, j): share of inlier matches with GT Sampson error < 2 px} for verified pairs."""
    out = {}
    for (i, j), m in inliers.items():
        if len(m) < min_inliers:
            continue
        F = gt_fundamental(gt[names[i]], gt[names[j]])
        err = np.sqrt(sampson_distance_sq(F, keypoints[i][m[:, 0]], keypoints[j][m[:, 1]]))
        out[(i, j)] = float(np.mean(err < SAMPSON_PX))
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def pool_cpu_seconds(pool) -> float:
    """CPU time of a process pool's live workers (forkserver workers are not our children, so
    RUSAGE_CHILDREN misses them; read /proc/<pid>/stat utime + stime instead)."""
    total = 0.0
    for process in list(getattr(pool, "_processes", {}).values()):
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _ivf_desc(args) -> str:
    defaults = IvfOptions()
    cells = args.ivf_cells or defaults.num_cells
    probes = args.ivf_probes or defaults.num_probes
    scaled = (
        f", scaled down to one cell per {defaults.descriptors_per_cell} descriptors of the median image"
        f" (at least 3 probes)"
        if defaults.descriptors_per_cell
        else ""
    )
    return f"up to {cells} cells, {probes} probed per descriptor{scaled}"


def _ivf_options(args) -> IvfOptions:
    out = {}
    if args.ivf_cells is not None:
        out["num_cells"] = args.ivf_cells
    if args.ivf_probes is not None:
        out["num_probes"] = args.ivf_probes
    return IvfOptions(**out)


def forkserver_cpu_seconds() -> float:
    """CPU time of the multiprocessing forkserver (it imports the stage modules for the workers)."""
    import multiprocessing.forkserver as forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ours(paths, gt, args, max_num_features: int):
    names = {k + 1: p.name for k, p in enumerate(paths)}
    cpu0 = cpu_seconds()
    server_cpu0 = forkserver_cpu_seconds()
    t0 = time.perf_counter()
    # One pool for all three stages: workers start once (their start-up is part of the time).
    runner = open_runner("processes", args.workers)
    extraction = ExtractionOptions(
        max_num_features=max_num_features,
        max_image_size_px=args.max_size,
        sift_contrast_threshold=args.contrast_threshold,
        root_sift=True,
    )
    feats = extract_features(paths, extraction, runner=runner)
    t1 = time.perf_counter()
    features = {k + 1: f for k, f in enumerate(feats)}
    pairs = exhaustive_pairs(features)
    # The library default matcher: inverted-file search (approximate, as COLMAP's default CPU
    # matcher, FAISS-based, is); cells / probes are its defaults unless given.
    matching = MatchingOptions(
        method=args.matcher,
        min_num_matches=args.min_num_matches,
        ivf=_ivf_options(args),
    )
    matches = match_pairs(features, pairs, matching, runner=runner, rng=0)
    t2 = time.perf_counter()
    cameras = {k: gt[n].K for k, n in names.items()}
    # The intrinsics are known (ground truth), so E is estimated without the F cross-check; pairs
    # where fewer than half of the putative matches are inliers (wide baselines) are not trusted.
    verification = TwoViewOptions(
        check_calibration=False,
        min_inlier_ratio=args.min_inlier_ratio,
        ransac=RansacOptions(max_error_px=args.max_error_px),
    )
    tvgs = verify_pairs(features, matches, cameras, verification, rng=0, runner=runner)
    pool = getattr(runner.backend, "_pool", None)
    worker_cpu = pool_cpu_seconds(pool) if pool is not None else 0.0
    runner.close()
    t3 = time.perf_counter()
    cpu = cpu_seconds() - cpu0 + worker_cpu + forkserver_cpu_seconds() - server_cpu0
    # The view graph stage: verified pairs whose rotation disagrees with the triplet loops they close
    # are dropped (sfm.view_graph.filter_rotation_cycles); what is left feeds tracks and mapping.
    graph, _ = filter_rotation_cycles(build_view_graph(tvgs, names), max_error_deg=args.cycle_max_deg)
    inliers = {(min(u, v), max(u, v)): tvgs[(min(u, v), max(u, v))].inlier_matches for u, v in graph.edges}
    return {
        "graph": graph,
        "names": names,
        "keypoints": {k: f.keypoints_px for k, f in features.items()},
        "num_features": float(np.mean([len(f) for f in feats])),
        "pairs": pairs,
        "inliers": inliers,
        "tvgs": tvgs,
        "time_extract": t1 - t0,
        "time_match": t2 - t1,
        "time_verify": t3 - t2,
        "cpu": cpu,
    }


def run_pycolmap(paths, gt, args):
    import pycolmap

    K = gt[paths[0].name].K
    # COLMAP pixels: corner origin, so the principal point shifts by +0.5.
    params = f"{K[0, 0]},{K[1, 1]},{K[0, 2] + 0.5},{K[1, 2] + 0.5}"
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "database.db"
        reader = pycolmap.ImageReaderOptions(camera_model="PINHOLE", camera_params=params)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = args.max_size
        extraction.num_threads = args.workers
        extraction.sift.max_num_features = args.max_features
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = args.workers
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        pycolmap.extract_features(
            db_path,
            paths[0].parent,
            image_names=[p.name for p in paths],
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        t1 = time.perf_counter()
        pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)
        t2 = time.perf_counter()
        cpu = cpu_seconds() - cpu0
        db = pycolmap.Database.open(db_path)
        by_name = {p.name: k + 1 for k, p in enumerate(paths)}
        ours_id = {im.image_id: by_name[im.name] for im in db.read_all_images()}
        keypoints, nfeat = {}, []
        for colmap_id, k in ours_id.items():
            kp = db.read_keypoints(colmap_id)
            keypoints[k] = kp[:, :2].astype(np.float64) - 0.5  # back to the OpenCV origin
            nfeat.append(len(kp))
        inliers = {}
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, geom in zip(pair_ids, geometries, strict=True):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            m = np.asarray(geom.inlier_matches, dtype=np.int64).reshape(-1, 2)
            i, j = ours_id[a], ours_id[b]
            if len(m) == 0:
                continue
            inliers[(i, j) if i < j else (j, i)] = m if i < j else m[:, ::-1]
        db.close()
    return {
        "keypoints": keypoints,
        "inliers": inliers,
        "num_features": float(np.mean(nfeat)),
        "time_extract": t1 - t0,
        "time_match": t2 - t1,
        "time_verify": 0.0,
        "cpu": cpu,
    }


def summarise(result, names, gt, pairs) -> dict:
    """Precision over the pairs this pipeline verified; match counts over ``pairs`` (rejected = 0)."""
    precision = precision_per_pair(names, result["keypoints"], result["inliers"], gt)
    counts = [len(result["inliers"].get(p, ())) for p in pairs]
    return {
        "verified_pairs": len(precision),
        "precision_min": min(precision.values()) if precision else float("nan"),
        "precision_median": float(np.median(list(precision.values()))) if precision else float("nan"),
        "matches_median": float(np.median(counts)),
        "num_features": result["num_features"],
        "time_total": result["time_extract"] + result["time_match"] + result["time_verify"],
        "time_extract": result["time_extract"],
        "time_match": result["time_match"] + result["time_verify"],
        "cpu": result["cpu"],
        "worst_pairs": sorted(precision.items(), key=lambda kv: kv[1])[:3],
    }


def _git_commit() -> str:
    """Short HEAD hash, plus the tracked files with uncommitted edits (shared working tree)."""
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, check=True
        ).stdout.rstrip()

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (uncommitted edits in: {', '.join(dirty)})" if dirty else head


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fountain,temple")
    parser.add_argument("--max-features", type=int, default=8192)
    parser.add_argument("--max-size", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--matcher", default="ivf", help="geomvision matcher: ivf (default), bruteforce")
    parser.add_argument(
        "--min-num-matches",
        type=int,
        default=100,
        help="pairs with fewer putative matches are not verified (MatchingOptions.min_num_matches)",
    )
    parser.add_argument("--ivf-cells", type=int, default=None, help="default: MatchingOptions'")
    parser.add_argument("--ivf-probes", type=int, default=None, help="default: MatchingOptions'")
    parser.add_argument("--min-inlier-ratio", type=float, default=0.5)
    parser.add_argument("--max-error-px", type=float, default=1.0)
    parser.add_argument("--cycle-max-deg", type=float, default=2.0)
    parser.add_argument(
        "--contrast-threshold",
        type=float,
        default=ExtractionOptions().sift_contrast_threshold,
        help="OpenCV SIFT contrastThreshold (default: the library's)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--graph-png", type=Path, default=REPO / "docs" / "view_graph_templeRing.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    rows, notes = [], []
    for key in args.datasets.split(","):
        paths, gt = load_dataset(key, args.max_images)
        load_start = os.getloadavg()[0]
        peer = run_pycolmap(paths, gt, args)
        # COLMAP's cap counts keypoint locations and adds up to 2 orientations each; OpenCV's cap
        # counts descriptors. Equal descriptor counts per image are the comparable setting.
        ours = run_ours(paths, gt, args, max(args.max_features, round(peer["num_features"])))
        # Matches per pair are compared over the pairs that either pipeline verified.
        pairs = sorted(set(ours["inliers"]) | {p for p, m in peer["inliers"].items() if len(m) >= 15})
        s_ours = summarise(ours, ours["names"], gt, pairs)
        s_peer = summarise(peer, ours["names"], gt, pairs)
        graph = ours["graph"]
        components = connected_components(graph)
        if key == "temple":
            draw_view_graph(
                graph,
                args.graph_png,
                title=f"templeRing view graph: {len(graph)} images, "
                f"{graph.number_of_edges()} verified pairs, {len(components)} component(s)",
            )
        load = f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}"
        rows.append((key, len(paths), len(ours["pairs"]), s_ours, s_peer, len(components), load))
        print(
            f"{key}: ours {s_ours}\n{key}: pycolmap {s_peer}\n{key}: components {len(components)}", flush=True
        )

    lines = [
        "# Features + matching + verification: geomvision vs pycolmap",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_git_commit()}, "
        f"`python benchmarks/matching.py {' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        "Settings: SIFT (COLMAP: L1-root SIFT, ours: RootSIFT), pycolmap max_num_features "
        f"{args.max_features} "
        "(it keeps up to 2 orientations per location, so it yields more descriptors; ours is capped at "
        "pycolmap's mean descriptor count per image, see feats/img), max image size "
        f"{args.max_size} px, exhaustive pairs, ground-truth intrinsics given to both (PINHOLE), "
        f"{args.workers} worker processes (ours) / num_threads (pycolmap). Ours: the library default "
        f"matcher `{args.matcher}` (inverted-file search: shared k-means quantiser, "
        f"{_ivf_desc(args)}; pairs with < {IvfOptions().min_num_features} descriptors per image "
        "are matched exactly; pycolmap's "
        "default CPU matcher is FAISS-based), ratio 0.8 + mutual check on both sides, SIFT contrast "
        f"threshold {args.contrast_threshold:g}, pairs with < {args.min_num_matches} putative matches not "
        "verified (`MatchingOptions.min_num_matches`), E without the F cross-check (intrinsics known), "
        f"{args.max_error_px:g} px Sampson threshold, pairs with inlier ratio < {args.min_inlier_ratio:g} "
        f"rejected, then view-graph rotation-cycle filtering at {args.cycle_max_deg:g} deg (ours' counted "
        "pairs are the view-graph edges); pycolmap: its defaults (4 px threshold, E/F/H selection), all "
        "its verified pairs with >= 15 inliers counted. "
        "Wall times were taken on a shared 2-core machine under load from other engineers' jobs "
        "(1-minute load averages in the second table); the CPU column (user+system of all threads, worker processes and ours' "
        "forkserver) is the steadier comparison. "
        f"Precision: share of a verified pair's inlier matches with Sampson error < {SAMPSON_PX:g} px under "
        "the ground-truth fundamental matrix. Matches/pair: median over the pairs verified by either "
        "pipeline (a pair the other rejected counts 0). "
        "pycolmap's `match_exhaustive` includes its geometric verification, so the time columns compare "
        "extract + match + verify on both sides.",
        "",
        "| dataset | images | pairs | pipeline | feats/img | verified pairs | precision min "
        "| precision median | matches/pair (median) | extract s | match+verify s | total s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, n_img, n_pairs, so, sp, _, _ in rows:
        for label, s in (("geomvision", so), ("pycolmap", sp)):
            lines.append(
                f"| {key} | {n_img} | {n_pairs} | {label} | {s['num_features']:.0f} | {s['verified_pairs']} "
                f"| {s['precision_min']:.3f} | {s['precision_median']:.3f} | {s['matches_median']:.0f} "
                f"| {s['time_extract']:.1f} | {s['time_match']:.1f} | {s['time_total']:.1f} "
                f"| {s['cpu']:.0f} |"
            )
    lines += [
        "",
        "| dataset | wall time ratio ours/pycolmap | CPU time ratio | matches/pair ratio "
        "| ours: view graph components | ours: 3 least precise pairs | load avg (start -> end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, _, _, so, sp, n_comp, load in rows:
        worst = ", ".join(f"{i}-{j}: {v:.3f}" for (i, j), v in so["worst_pairs"])
        lines.append(
            f"| {key} | {so['time_total'] / sp['time_total']:.2f} | {so['cpu'] / sp['cpu']:.2f} | "
            f"{so['matches_median'] / max(sp['matches_median'], 1):.2f} | {n_comp} | {worst} | {load} |"
        )
    lines += notes
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
