"""Cost growth of the whole pipeline on synthetic street scenes, 100 to 2000 images, against pycolmap.

For each size N, a street scene (``geomvision.synthetic_scenes``, seed 0, 640x480, the repo's sample photos as
facade textures) is rendered once and cached in the work folder (rendered again when the generator's source
changed: see ``generator_fingerprint``). Then, each in its own subprocess so that its
memory is its own:

* geomvision: ``run_pipeline`` with the given pairing (``--pairing``; the pipeline's default unless told);
* pycolmap (COLMAP 3.x/4.x): SIFT extraction, ``match_sequential`` (overlap 10, no loop detection: the
  pairing that suits a trajectory) and ``incremental_mapping``, with the same thread budget (2).

Each child samples the resident memory of its whole process tree (itself + worker processes, from /proc)
every 0.1 s and attributes it to the stage in progress, so the table has per-stage wall time and peak RSS.
The parent scores the largest model against the exact ground truth with
``geomvision.evaluation.evaluate_reconstruction`` (the function behind ``geomvision evaluate``): AUC@T of the
pairwise relative-pose error over all images (unregistered images count as 180 deg), registered images,
number of models, mean reprojection error.

Rows accumulate in ``benchmarks/results/scaling.json`` (keyed by size, tool and pairing), so long sizes can be
run separately; every run rewrites ``benchmarks/results/scaling.md`` from all rows. Each row records the load
average at its start and end: the machine is shared, so compare tools within one size, not across runs.

Usage::

    python benchmarks/scaling.py --sizes 100,300
    python benchmarks/scaling.py --sizes 1000 --timeout-min 30 --tools geomvision
    python benchmarks/scaling.py --sizes 2000 --tools geomvision --stop-before mapping   # front end only
    python benchmarks/scaling.py --markdown-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as shared  # noqa: E402  (sibling benchmark module: shared helpers)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROWS_JSON = RESULTS / "scaling.json"
STAGES_GV = ("features", "matching", "verification", "mapping")
STAGES_PC = ("features", "matching+verification", "mapping")


# --- memory of a process tree ---------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out += [int(c) for c in fh.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (shared pages are counted once per process)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss_bytes(p)
        stack += _children(p)
    return total


class StageMemory:
    """Samples the process tree's RSS every ``period_s`` and keeps the peak per stage label."""

    def __init__(self, period_s: float = 0.1, checkpoint=None, checkpoint_s: float = 30.0) -> None:
        self.stage = "setup"
        self.peaks: dict[str, int] = {}
        self.times: dict[str, float] = {}
        self._period = period_s
        # checkpoint(): called every checkpoint_s (e.g. to write the peaks so far: a run killed by its
        # timeout still reports the stages it went through)
        self._checkpoint, self._checkpoint_s = checkpoint, checkpoint_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        pid = os.getpid()
        last = time.perf_counter()
        while not self._stop.wait(self._period):
            rss = tree_rss_bytes(pid)
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
            if self._checkpoint is not None and time.perf_counter() - last >= self._checkpoint_s:
                last = time.perf_counter()
                self._checkpoint()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def label(self, stage: str):
        previous, self.stage = self.stage, stage
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t
            self.stage = previous


def _max_rss_bytes() -> dict[str, int]:
    """Peak RSS of this process and of its largest waited-for child (Linux: ru_maxrss in KiB)."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


# --- children ---------------------------------------------------------------------------------------
class _StopBefore(Exception):
    """Raised by the progress factory when the stage a front-end-only run stops before starts."""


def child_geomvision(
    image_dir: str, out: str, pairing: str | None, result_path: str, stop_before: str | None = None
) -> None:
    from geomvision.config import ReconstructionConfig
    from geomvision.pipeline import run_pipeline

    pipeline = {"seed": 0, "num_workers": 2, "html_report": False}
    if pairing:
        pipeline["pairing"] = pairing
    config = ReconstructionConfig().with_changes(pipeline=pipeline)
    t0 = time.perf_counter()

    def partial_row() -> None:  # the peaks so far, replaced by the full row at the end
        row = {"partial": True, "stage_reached": mem.stage, "wall_s": time.perf_counter() - t0}
        row["peak_rss_by_stage"] = dict(mem.peaks)
        Path(result_path).write_text(json.dumps(row))

    with StageMemory(checkpoint=partial_row) as mem:

        @contextmanager
        def progress_factory(stage: str):
            mem.stage = stage  # the stage keeps its label until the next one starts
            if stage == stop_before:
                raise _StopBefore(stage)
            yield lambda done, total, message="": None

        error = None
        try:
            result = run_pipeline(image_dir, out, config, progress_factory=progress_factory)
            report = result.report
        except Exception as exc:  # a failed run is a result too
            if not isinstance(exc, _StopBefore):
                error = f"{type(exc).__name__}: {exc}"
            report_path = Path(out) / "report.json"
            report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if stop_before:
        mem.peaks.pop(stop_before, None)  # sampled for an instant before the stop
    row = {
        "wall_s": time.perf_counter() - t0,
        "timings_s": report.get("timings_s", {}),
        "pairing": report.get("matching", {}).get("pairing"),
        "num_pairs": report.get("matching", {}).get("num_pairs"),
        "num_models": report.get("num_models"),
        "trusted": report.get("trusted"),
        "peak_rss_by_stage": mem.peaks,
        "max_rss": _max_rss_bytes(),
        "error": error,
    }
    if stop_before:
        row["stopped_before"] = stop_before
    Path(result_path).write_text(json.dumps(row))


def child_pycolmap(image_dir: str, work: str, result_path: str) -> None:
    import pycolmap

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    db = work_dir / "database.db"
    if db.exists():
        db.unlink()
    _, extraction, matching = shared.pycolmap_options()
    mapper = pycolmap.IncrementalPipelineOptions()
    mapper.num_threads = 2
    mapper.random_seed = 0
    t0 = time.perf_counter()
    error, num_models = None, 0
    with StageMemory() as mem:
        try:
            with mem.label("features"):
                shared.pycolmap_extract(db, image_dir, extraction)
            with mem.label("matching+verification"):
                shared.pycolmap_match_sequential(db, matching, overlap=10)
            with mem.label("mapping"):
                maps = pycolmap.incremental_mapping(db, image_dir, work_dir / "sparse", options=mapper)
            num_models = len(maps)
            if maps:
                best = max(maps.values(), key=lambda r: r.num_reg_images())
                (work_dir / "best_text").mkdir(exist_ok=True)
                best.write_text(str(work_dir / "best_text"))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    row = {
        "wall_s": time.perf_counter() - t0,
        "timings_s": {k: round(v, 3) for k, v in mem.times.items()},
        "pairing": "sequential(10)",
        "num_models": num_models,
        "peak_rss_by_stage": mem.peaks,
        "max_rss": _max_rss_bytes(),
        "error": error,
    }
    Path(result_path).write_text(json.dumps(row))


# --- parent -----------------------------------------------------------------------------------------
def generator_fingerprint() -> str:
    """SHA-256 of the scene generator's source (``synthetic_scenes.py`` and ``synthetic.py``).

    A cached scene is reused only when it was rendered by the same generator: a 1000-image street left in
    the work folder by an older generator (plain photo crops, before the per-face procedural layer) made
    8767 of its 11 401 verified pairs link images with no common surface, and the mapper built a
    self-consistent but wrong model from them (AUC@2 0.006).
    """
    digest = hashlib.sha256()
    for name in ("synthetic_scenes.py", "synthetic.py"):
        digest.update((REPO / "geomvision" / name).read_bytes())
    return digest.hexdigest()


def make_scene(work: Path, n: int, width: int, height: int) -> tuple[Path, dict]:
    from geomvision.synthetic_scenes import SceneDatasetOptions, write_scene_dataset

    folder = work / f"street_{n}_{width}x{height}"
    meta_path = folder / "scene.json"
    stamp = folder / "generator.sha256"
    fingerprint = generator_fingerprint()
    if (
        meta_path.is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == fingerprint
        and len(list((folder / "images").glob("*.jpg"))) == n
    ):
        return folder, json.loads(meta_path.read_text())
    if folder.exists():
        print(f"re-rendering {folder}: rendered by another version of the generator", flush=True)
        shutil.rmtree(folder)
    options = SceneDatasetOptions(kind="street", num_images=n, width=width, height=height, write_depth=False)
    write_scene_dataset(folder, options, rng=0)
    stamp.write_text(fingerprint + "\n")
    return folder, json.loads(meta_path.read_text())


def _run_child(args: list[str], timeout_s: float, log: Path) -> tuple[float, bool]:
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as fh:
        try:
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
                env=env,
            )
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    return time.perf_counter() - t, timed_out


def score(model_dir: Path | None, gt_dir: Path) -> dict:
    from geomvision.evaluation import evaluate_reconstruction, load_ground_truth
    from geomvision.io.colmap import read_model

    if model_dir is None or not model_dir.is_dir():
        return {"num_registered": 0, "auc@2": 0.0, "auc@5": 0.0, "mean_reprojection_error_px": None}
    rec = read_model(model_dir)
    gt = load_ground_truth(gt_dir / "sparse" / "0")
    metrics = evaluate_reconstruction(rec, gt, include_per_image=False)
    return {
        "num_registered": metrics["num_registered"],
        "auc@1": metrics["auc@1"],
        "auc@2": metrics["auc@2"],
        "auc@5": metrics["auc@5"],
        "mean_reprojection_error_px": rec.mean_reprojection_error_px(),
        "num_points3D": len(rec.points3D),
    }


def run_size(
    n: int,
    tools: list[str],
    pairing: str | None,
    work: Path,
    timeout_s: float,
    size,
    stop_before: str | None = None,
) -> list[dict]:
    load0 = os.getloadavg()
    t = time.perf_counter()
    scene_dir, meta = make_scene(work, n, *size)
    gen_s = time.perf_counter() - t
    rows = []
    for tool in tools:
        tag = f"{tool}_{n}_{pairing or 'default'}" + (f"_until_{stop_before}" if stop_before else "")
        out = work / tag
        result_path = work / f"{tag}.json"
        if result_path.exists():
            result_path.unlink()
        load_start = os.getloadavg()
        if tool == "geomvision":
            args = [
                "--child-geomvision",
                str(scene_dir / "images"),
                str(out),
                pairing or "",
                str(result_path),
                stop_before or "",
            ]
            model = out / "sparse" / "0"
        else:
            args = ["--child-pycolmap", str(scene_dir / "images"), str(out), str(result_path)]
            model = out / "best_text"
        wall, timed_out = _run_child(args, timeout_s, work / f"{tag}.log")
        child = json.loads(result_path.read_text()) if result_path.is_file() else {}
        row = {
            "images": n,
            "tool": tool,
            "pairing_requested": pairing or "default",
            "size": f"{size[0]}x{size[1]}",
            "generate_s": round(gen_s, 1),
            "scene_render_s_per_image": round(meta.get("total_time_s", 0.0) / n, 3),
            "wall_s": round(wall, 1),
            "timed_out": timed_out,
            "load_start": [round(v, 2) for v in load_start],
            "load_end": [round(v, 2) for v in os.getloadavg()],
            "load_before_generation": [round(v, 2) for v in load0],
            "generator_sha256": (scene_dir / "generator.sha256").read_text().strip()[:12],
            **child,
        }
        if not timed_out and not child.get("stopped_before"):
            row.update(score(model, scene_dir))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _gib(b) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _yes_no(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def write_markdown(rows: list[dict], path: Path) -> None:
    rows = sorted(
        rows, key=lambda r: (r["images"], r["tool"], r["pairing_requested"], r.get("stopped_before") or "")
    )
    lines = [
        "# Cost growth on synthetic street scenes (100 to 2000 images)",
        "",
        f"_Generated by `benchmarks/scaling.py` (last run {date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, shared by several jobs: see each row's load average)._",
        "",
        "Scenes: `geomvision synth-scene --kind street --images N --seed 0` (640x480, facade textures cropped "
        "from the repo's sample photos, exact ground truth). geomvision: `run_pipeline` with 2 workers and the "
        "pairing shown; pycolmap: SIFT + `match_sequential` (overlap 10) + `incremental_mapping`, 2 threads. "
        "AUC@2: pairwise relative pose error against the ground truth over all N images (unregistered = 180 deg). "
        "Peak RSS: resident memory of the whole process tree (main + worker processes), sampled every 0.1 s. "
        "Trusted: the pipeline's trust verdict on its model 0 (`sfm/trust.py`). Scene generator: the first hex "
        "digits of the SHA-256 of the generator's source the scene was rendered with (`-`: rows from before it "
        "was recorded).",
        "",
        "| N | tool | pairing | pairs | wall s | features s | matching s | verification s | mapping s "
        "| peak RSS GiB (stage) | registered | models | trusted | AUC@2 | AUC@5 | reproj px | load (start) "
        "| scene generator |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tim = r.get("timings_s") or {}
        peaks = r.get("peak_rss_by_stage") or {}
        top = max(peaks.items(), key=lambda kv: kv[1]) if peaks else (None, 0)
        if r["tool"] == "pycolmap":
            feat, match, verif = tim.get("features"), tim.get("matching+verification"), None
        else:
            feat, match, verif = tim.get("features"), tim.get("matching"), tim.get("verification")
        status = " (timed out)" if r.get("timed_out") else (" (failed)" if r.get("error") else "")
        if r.get("stopped_before"):
            status += f" (front end: stopped before {r['stopped_before']})"
        lines.append(
            f"| {r['images']} | {r['tool']}{status} | {r.get('pairing') or r['pairing_requested']} "
            f"| {r.get('num_pairs') or '-'} | {_f(r.get('wall_s'))} | {_f(feat)} | {_f(match)} | {_f(verif)} "
            f"| {_f(tim.get('mapping'))} | {_gib(top[1])} ({top[0] or '-'}) | {r.get('num_registered', '-')}/{r['images']} "
            f"| {r.get('num_models') if r.get('num_models') is not None else '-'} "
            f"| {_yes_no(r.get('trusted'))} | {_f(r.get('auc@2'), '{:.3f}')} "
            f"| {_f(r.get('auc@5'), '{:.3f}')} | {_f(r.get('mean_reprojection_error_px'), '{:.3f}')} "
            f"| {r['load_start'][0]:.1f} | {r.get('generator_sha256') or '-'} |"
        )
    notes = [f"- N={r['images']} {r['tool']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "Run notes:", "", *notes]
    lines += [
        "",
        "Per-stage peak RSS (GiB) of each run:",
        "",
        "| N | tool | pairing | " + " | ".join(f"{s}" for s in ("setup", *STAGES_GV, "export")) + " |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peaks = r.get("peak_rss_by_stage") or {}
        tool = r["tool"] + (" (front end)" if r.get("stopped_before") else "")
        if r["tool"] == "pycolmap":
            cells = [
                "-",
                _gib(peaks.get("features")),
                _gib(peaks.get("matching+verification")),
                "(in matching)",
            ]
            cells += [_gib(peaks.get("mapping")), "-"]
        else:
            cells = [_gib(peaks.get(s)) for s in ("setup", *STAGES_GV)] + ["-"]
        lines.append(
            f"| {r['images']} | {tool} | {r.get('pairing') or r['pairing_requested']} | "
            + " | ".join(cells)
            + " |"
        )
    path.write_text("\n".join(lines) + "\n")


def _load_rows() -> list[dict]:
    return json.loads(ROWS_JSON.read_text()) if ROWS_JSON.is_file() else []


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    key = lambda r: (r["images"], r["tool"], r["pairing_requested"], r.get("stopped_before"))  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return list(merged.values())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-geomvision":
        child_geomvision(sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5], sys.argv[6] or None)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--child-pycolmap":
        child_pycolmap(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,300", help="comma-separated image counts")
    parser.add_argument(
        "--tools", default="geomvision,pycolmap", help="comma-separated: geomvision, pycolmap (default both)"
    )
    parser.add_argument(
        "--pairing", default=None, help="geomvision pairing (default: the pipeline's default)"
    )
    parser.add_argument("--timeout-min", type=float, default=30.0, help="per tool and size")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--work", default="/tmp/geomvision_scaling", help="scenes and outputs")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite scaling.md from scaling.json")
    parser.add_argument(
        "--stop-before",
        choices=("mapping",),
        default=None,
        help="geomvision only: end the run when this stage starts (front-end memory and time at sizes "
        "whose mapping would take hours); such rows are kept apart from full runs",
    )
    args = parser.parse_args()
    if not args.markdown_only:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        new = []
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            tools = [t for t in args.tools.split(",") if t]
            unknown = sorted(set(tools) - {"geomvision", "pycolmap"})
            if unknown:
                parser.error(f"unknown --tools {','.join(unknown)}: expected geomvision and/or pycolmap")
            new += run_size(
                n,
                tools,
                args.pairing,
                work,
                args.timeout_min * 60,
                (args.width, args.height),
                args.stop_before,
            )
            ROWS_JSON.write_text(json.dumps(_merge(_load_rows(), new), indent=1))
    write_markdown(_load_rows(), RESULTS / "scaling.md")
    print(f"wrote {RESULTS / 'scaling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
