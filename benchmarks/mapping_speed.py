"""Mapping-stage speed: the incremental mapper and its bundle adjustments, one code tree against another.

Issue #17 asks for the whole pipeline to be faster than pycolmap at every street-scene size; at 300 images
the mapping stage was the largest gap. This script measures, for each code tree given with ``--tree
NAME=PATH`` (e.g. the commit before the speed work, checked out with ``git worktree add``, and this one):

* ``micro``: CPU time (``time.process_time``, median of ``--repeats``) per call of the BA pieces on bundle
  adjustment problems recorded from a mapping run (``--problems``, written by ``dump``): ``evaluate`` with
  and without Jacobians, ``_linearise``, ``_reduced_system`` and ``_step`` on the largest global BA, and the
  whole ``adjust_problem`` of that global BA and of the last 20 local BAs, with their final costs;
* ``map``: mapping alone (``incremental_mapping`` on pickled ``(cameras, images, verified_pairs)``, e.g.
  dumped by the pipeline before mapping), wall time per mapper step, registered images, AUC@2 against the
  scene's ground truth, and the written model's hashes.

The trees run as subprocesses (``PYTHONPATH=tree``), all at once for ``map`` (so that they share whatever
load the machine has; CPU shares are then comparable, absolute times are not), one after the other for
``micro``. Results go to ``benchmarks/results/mapping_speed.json`` (one record per tree and kind, appended)
and the table ``benchmarks/results/mapping_speed.md`` is rewritten from all records.

Usage::

    python benchmarks/mapping_speed.py dump INPUTS.pkl PROBLEMS.pkl
    python benchmarks/mapping_speed.py micro --problems PROBLEMS.pkl --tree before=/path/a --tree after=.
    python benchmarks/mapping_speed.py map --inputs INPUTS.pkl --gt GT_DIR --tree before=/path/a --tree after=.
    python benchmarks/mapping_speed.py note "TEXT"   # a measured fact made elsewhere, listed under Notes
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "mapping_speed.json"
RESULTS_MD = HERE / "results" / "mapping_speed.md"


# --- work done inside one tree's subprocess -----------------------------------------------------------------
def dump_problems(inputs: str, out: str) -> None:
    """Run the mapper once and keep copies of its largest global BA problem and its last 20 local ones."""
    import geomvision.sfm.mapper_ba as mapper_ba
    from geomvision.sfm.incremental import IncrementalMapperOptions, incremental_mapping

    with open(inputs, "rb") as f:
        cameras, images, pairs = pickle.load(f)
    kept: dict = {"local": [], "global": None}
    adjust = mapper_ba.adjust_problem

    def recording(problem, options, **kwargs):
        snapshot = (copy.deepcopy(problem), options)
        if options.intrinsics == "fixed":
            kept["local"] = [*kept["local"][-19:], snapshot]
        elif kept["global"] is None or problem.num_observations >= kept["global"][0].num_observations:
            kept["global"] = snapshot
        return adjust(problem, options, **kwargs)

    mapper_ba.adjust_problem = recording
    incremental_mapping(cameras, images, pairs, IncrementalMapperOptions(), rng=0)
    with open(out, "wb") as f:
        pickle.dump(kept, f)


def _median_cpu_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return round(1000 * sorted(times)[len(times) // 2], 2)


def micro(problems: str, repeats: int) -> dict:
    """CPU ms per call of the BA pieces (see the module docstring)."""
    import geomvision.sfm.ba.schur as schur
    from geomvision.sfm.ba.model import evaluate
    from geomvision.sfm.bundle_adjustment import _single_threaded_blas, adjust_problem

    try:  # the trees before the allocator setting have no such module
        from geomvision.runtime.allocator import retain_freed_memory
    except ImportError:
        retain_freed_memory = None
    if retain_freed_memory is not None:
        retain_freed_memory()
    with open(problems, "rb") as f:
        kept = pickle.load(f)
    problem, options = kept["global"]
    ordered = problem.sorted_by_image()
    out: dict = {"global_observations": ordered.num_observations, "global_points": len(ordered.points)}
    with _single_threaded_blas():
        for name, jac in (("evaluate_jacobians", True), ("evaluate_cost", False)):
            out[name] = _median_cpu_ms(
                lambda jac=jac: evaluate(
                    ordered,
                    options.loss,
                    options.loss_scale_px,
                    jacobians=jac,
                    zero_fixed_columns=False,
                    rotation_tangent=True,
                ),
                repeats,
            )
        st = schur._build_structure(ordered, options)
        st.rot_cols = schur.rotation_tangent_columns(ordered)
        evaluations = schur._evaluate(ordered, st, options, jacobians=True)
        out["linearise"] = _median_cpu_ms(lambda: schur._linearise(ordered, st, evaluations), repeats)
        lin = schur._linearise(ordered, st, evaluations)
        out["reduced_system"] = _median_cpu_ms(lambda: schur._reduced_system(ordered, st, lin, 1e-4), repeats)
        out["step"] = _median_cpu_ms(lambda: schur._step(ordered, st, lin, 1e-4, options), repeats)

    def solve_global():
        result = adjust_problem(copy.deepcopy(problem), options)
        out["global_final_cost"], out["global_iterations"] = result.final_cost, result.iterations

    def solve_locals():
        out["local_final_costs"] = [adjust_problem(copy.deepcopy(p), o).final_cost for p, o in kept["local"]]

    out["global_ba"] = _median_cpu_ms(solve_global, repeats)
    out["local_bas"] = _median_cpu_ms(solve_locals, repeats)
    out["num_local"] = len(kept["local"])
    return out


def map_only(inputs: str, gt: str, out_dir: str) -> dict:
    """Mapping alone on pickled inputs: times, registration, AUC@2 and model hashes."""
    import resource

    from geomvision.evaluation import evaluate_reconstruction, load_ground_truth
    from geomvision.io.colmap import write_model
    from geomvision.sfm.incremental import IncrementalMapperOptions, incremental_mapping

    with open(inputs, "rb") as f:
        cameras, images, pairs = pickle.load(f)
    t = time.perf_counter()
    cpu = time.process_time()
    result = incremental_mapping(cameras, images, pairs, IncrementalMapperOptions(), rng=0)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    model = result.reconstructions[0]
    scores = evaluate_reconstruction(model, load_ground_truth(gt), include_per_image=False)
    os.makedirs(out_dir, exist_ok=True)
    write_model(model, out_dir)
    report = result.report["models"][0]
    return {
        "mapping_s": round(wall, 1),
        "mapping_cpu_s": round(cpu, 1),
        "steps_s": result.report["timings_s"],
        "registered": f"{scores['num_registered']}/{len(images)}",
        "auc@2": round(scores["auc@2"], 4),
        "reproj_px": round(report["mean_reprojection_error_px"], 4),
        "points": report["num_points3D"],
        "global_bas": report["num_global_ba"],
        "local_bas": report["num_local_ba"],
        "maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "hashes": {
            name: hashlib.sha1((Path(out_dir) / name).read_bytes()).hexdigest()[:12]
            for name in ("images.txt", "points3D.txt")
        },
    }


# --- driver -----------------------------------------------------------------------------------------------
def _spawn(tree: str, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    return subprocess.Popen(
        [sys.executable, __file__, "_child", *args], env=env, stdout=subprocess.PIPE, text=True
    )


def _record(kind: str, name: str, tree: str, load: tuple, data: dict) -> dict:
    return {
        "kind": kind,
        "tree": name,
        "path": str(Path(tree).resolve()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": round(load[0], 1),
        "load_end": round(os.getloadavg()[0], 1),
        **data,
    }


def _write(records: list[dict]) -> None:
    existing = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else []
    existing += records
    RESULTS_JSON.write_text(json.dumps(existing, indent=1) + "\n")
    RESULTS_MD.write_text(render(existing))


def render(records: list[dict]) -> str:
    """The markdown table of every record (latest last)."""
    lines = [
        "# Mapping-stage speed (issue 17)",
        "",
        "_Generated by `benchmarks/mapping_speed.py` from `mapping_speed.json`; see the script's docstring for"
        " what each column measures. Load: 1-minute load average at the start / end of the run._",
        "",
        "## BA pieces, CPU ms per call (median)",
        "",
        "| date | tree | observations | evaluate (J) | evaluate (cost) | linearise | reduced system | step"
        " | global BA | 20 local BAs | global final cost | final costs vs row above | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    previous: dict | None = None
    for r in records:
        if r["kind"] == "micro":
            costs = [r["global_final_cost"], *r["local_final_costs"]]
            diff = "-"
            if previous is not None and previous["global_observations"] == r["global_observations"]:
                before = [previous["global_final_cost"], *previous["local_final_costs"]]
                diff = f"max rel. {max(abs(a / b - 1) for a, b in zip(costs, before, strict=True)):.1e}"
            previous = r
            lines.append(
                f"| {r['date']} | {r['tree']} | {r['global_observations']} | {r['evaluate_jacobians']} |"
                f" {r['evaluate_cost']} | {r['linearise']} | {r['reduced_system']} | {r['step']} |"
                f" {r['global_ba']} | {r['local_bas']} | {r['global_final_cost']:.10g} | {diff} |"
                f" {r['load_start']} / {r['load_end']} |"
            )
    lines += [
        "",
        "## Mapping alone (wall s; trees run at the same time)",
        "",
        "| date | tree | mapping s | CPU s | local BA s | global BA s | filtering s | triangulation s"
        " | registered | AUC@2 | reproj px | points | peak RSS GiB | images.txt | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["kind"] == "map":
            steps = r["steps_s"]
            lines.append(
                f"| {r['date']} | {r['tree']} | {r['mapping_s']} | {r['mapping_cpu_s']} |"
                f" {steps.get('local_ba', 0):.1f} | {steps.get('global_ba', 0):.1f} |"
                f" {steps.get('filtering', 0):.1f} | {steps.get('triangulation', 0):.1f} | {r['registered']} |"
                f" {r['auc@2']} | {r['reproj_px']} | {r['points']} | {r['maxrss_gib']} |"
                f" `{r['hashes']['images.txt']}` | {r['load_start']} / {r['load_end']} |"
            )
    notes = [r for r in records if r["kind"] == "note"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {r['date']}: {r['text']}" for r in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":  # inside one tree
        kind, *rest = sys.argv[2:]
        if kind == "micro":
            data = micro(rest[0], int(rest[1]))
        else:
            data = map_only(*rest)
        print(json.dumps(data), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    dump = sub.add_parser("dump")
    dump.add_argument("inputs")
    dump.add_argument("out")
    note = sub.add_parser("note", help="add a measured fact that the script does not produce itself")
    note.add_argument("text")
    for name in ("micro", "map"):
        p = sub.add_parser(name)
        p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a tree to measure")
        if name == "micro":
            p.add_argument("--problems", required=True)
            p.add_argument("--repeats", type=int, default=5)
        else:
            p.add_argument("--inputs", required=True)
            p.add_argument("--gt", required=True)
    args = parser.parse_args()
    if args.kind == "dump":
        dump_problems(args.inputs, args.out)
        return
    if args.kind == "note":
        _write(
            [
                {
                    "kind": "note",
                    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
                    "text": args.text,
                }
            ]
        )
        return
    trees = [t.split("=", 1) for t in args.tree]
    load = os.getloadavg()
    records = []
    if args.kind == "micro":
        for name, tree in trees:
            proc = _spawn(tree, ["micro", args.problems, str(args.repeats)])
            records.append(_record("micro", name, tree, load, json.loads(proc.communicate()[0])))
            print(json.dumps(records[-1]), flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            procs = [
                (name, tree, _spawn(tree, ["map", args.inputs, args.gt, str(Path(tmp) / name)]))
                for name, tree in trees
            ]
            for name, tree, proc in procs:
                records.append(_record("map", name, tree, load, json.loads(proc.communicate()[0])))
                print(json.dumps(records[-1]), flush=True)
    _write(records)


if __name__ == "__main__":
    main()
