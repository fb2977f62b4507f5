"""Record the options every stage and sub-step actually receives, by spying on the calls.

Runs small deterministic synthetic problems through two-view verification, the incremental mapper and
the factorization initialiser (plus the pipeline's option hand-offs) with the option-consuming callees
wrapped, and returns ``{call site: [distinct options seen, as JSON-able dicts]}``. The call site is the
callee name after the chain of geomvision functions that led to it, so the same sub-step called from two
places (local vs global bundle adjustment) is recorded twice.

``tests/data/effective_options_before.json`` holds this record made on the code before the options tree
refactor; ``tests/test_options_tree.py`` recomputes it and compares field by field.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections import defaultdict
from contextlib import ExitStack, contextmanager

import numpy as np

#: (module, function, how to pick the recorded value from (args, kwargs)).
_SPIES: list[tuple[str, str, str]] = [
    ("geomvision.sfm.two_view", "estimate_fundamental", "options@2"),
    ("geomvision.sfm.two_view", "estimate_essential", "options@4"),
    ("geomvision.sfm.two_view", "estimate_homography", "options@2"),
    ("geomvision.robust.estimators", "estimate_essential", "options@4"),
    ("geomvision.sfm.initialization", "estimate_essential", "options@4"),
    ("geomvision.geometry.absolute_pose", "estimate_absolute_pose", "options@3"),
    ("geomvision.robust.absolute_pose", "estimate_absolute_pose", "options@3"),
    ("geomvision.sfm.registration", "estimate_absolute_pose", "options@3"),
    ("geomvision.sfm.initialization", "triangulate_tracks", "options@2"),
    ("geomvision.sfm.initialization", "filter_points", "thresholds"),
    ("geomvision.sfm.incremental", "triangulate_tracks", "options@2"),
    ("geomvision.sfm.incremental", "retriangulate", "options@1"),
    ("geomvision.sfm.incremental", "filter_points", "thresholds"),
    ("geomvision.sfm.incremental", "continue_tracks", "max_error@2"),
    ("geomvision.sfm.incremental", "register_image", "options@2"),
    ("geomvision.sfm.incremental", "rank_next_images", "options@2"),
    ("geomvision.sfm.incremental", "initialize_reconstruction", "init_options"),
    ("geomvision.sfm.bundle_adjustment", "adjust_problem", "ba"),
    ("geomvision.sfm.mapper_ba", "adjust_problem", "ba"),
    ("geomvision.sfm.bundle_adjustment", "bundle_adjust", "options@1"),
    ("geomvision.sfm.factorization_init", "bundle_adjust", "options@1"),
    ("geomvision.geometry.factorization", "factorize_projective", "options@1"),
]


def to_jsonable(value):
    """Dataclasses -> {"__class__": name, field: value}; tuples/arrays -> lists; enums -> values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"__class__": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = to_jsonable(getattr(value, f.name))
        return out
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)  # StrEnum members serialise as their value
    return value


def _pick(how: str, args: tuple, kwargs: dict):
    if how.startswith("options@") or how.startswith("max_error@"):
        index = int(how.split("@")[1])
        name = "options" if how.startswith("options@") else "max_error_px"
        return kwargs.get(name, args[index] if len(args) > index else None)
    if how == "thresholds":
        return {"max_error_px": args[2], "min_tri_angle_deg": args[3]}
    if how == "init_options":
        return next(a for a in list(args) + list(kwargs.values()) if type(a).__name__.endswith("Options"))
    if how == "ba":
        problem, options = args[0], kwargs.get("options", args[1] if len(args) > 1 else None)
        return {
            "options": options,
            "intrinsics_free_columns": np.asarray(problem.intrinsics_free).any(axis=0).tolist(),
        }
    raise ValueError(how)


def _call_site(callee: str) -> str:
    names = []
    frame = sys._getframe(2)
    while frame is not None and len(names) < 3:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("geomvision"):
            names.append(frame.f_code.co_name)
        elif names:
            break
        frame = frame.f_back
    return "/".join(reversed(names)) + "->" + callee


@contextmanager
def spying(record: dict[str, set[str]]):
    """Wrap every spy target that exists; restore them on exit."""
    with ExitStack() as stack:
        for module_name, name, how in _SPIES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:  # the module moved (layer fixes): its new home is listed too
                continue
            original = getattr(module, name, None)
            if original is None:
                continue

            def wrapper(*args, _original=original, _how=how, _name=name, **kwargs):
                value = _pick(_how, args, kwargs)
                record[_call_site(_name)].add(json.dumps(to_jsonable(value), sort_keys=True))
                return _original(*args, **kwargs)

            setattr(module, name, wrapper)
            stack.callback(setattr, module, name, original)
        yield


class _Stop(Exception):
    pass


def record_effective_options(config=None) -> dict[str, list]:
    """{call site: sorted distinct options (JSON-able)} of one run over the synthetic problems."""
    import geomvision.pipeline as pipeline
    from geomvision.config import ReconstructionConfig
    from geomvision.plugins import learned_prior
    from geomvision.sfm import factorization_init
    from geomvision.sfm.incremental import incremental_mapping
    from geomvision.sfm.two_view import verify_pair
    from geomvision.synthetic import random_scene, two_view_correspondences

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from mapper_fixtures import mapper_inputs
    from test_factorization_init import _ring_scene  # the templeRing-like ring those tests use

    config = config or ReconstructionConfig()
    record: dict[str, set[str]] = defaultdict(set)
    with spying(record):
        for planar, outliers in ((False, 0.3), (True, 0.1)):
            data = two_view_correspondences(300, noise_px=0.5, outlier_ratio=outliers, planar=planar, rng=5)
            matches = np.stack([np.arange(len(data.x1_px))] * 2, axis=1)
            verify_pair(data.x1_px, data.x2_px, matches, data.K, data.K, config.two_view, rng=1)
            verify_pair(data.x1_px, data.x2_px, matches, None, None, config.two_view, rng=1)

        scene = random_scene(300, 9, rng=3)
        cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=1, model="SIMPLE_RADIAL")
        incremental_mapping(cameras, images, geoms, config.mapper, rng=0)
        cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=2, with_pose=False)
        incremental_mapping(cameras, images, geoms, config.mapper, rng=0)  # E re-estimated at init

        cams, imgs, tracks, _ = _ring_scene(np.random.default_rng(0), num_images=10, num_points=300)
        factorization_init.initialize_by_factorization(
            cams, imgs, tracks, _factorization_options(config), rng=0
        )

    # What the pipeline hands to the stages it calls with options of their own.
    for module, name, call in (
        (
            factorization_init,
            "initialize_by_factorization",
            lambda: pipeline._factorization_init({}, {}, {}, config),
        ),
        (
            learned_prior,
            "apply_learned_pose_prior",
            lambda: pipeline._run_pose_prior([], {}, {}, [], {}, config),
        ),
    ):
        original = getattr(module, name)

        def stop(*args, _name=name, **kwargs):
            options = next(a for a in args if type(a).__name__.endswith("Options"))
            record["pipeline->" + _name].add(json.dumps(to_jsonable(options), sort_keys=True))
            raise _Stop

        setattr(module, name, stop)
        try:
            call()
        except _Stop:
            pass
        finally:
            setattr(module, name, original)
    return {key: [json.loads(v) for v in sorted(values)] for key, values in sorted(record.items())}


def _factorization_options(config):
    """The factorization initialiser's options as the pipeline would pass them."""
    for path in (("pipeline", "factorization"), ("factorization",), ("initialization", "factorization")):
        node = config
        try:
            for part in path:
                node = getattr(node, part)
        except AttributeError:
            continue
        return node
    from geomvision.sfm.factorization_init import FactorizationInitOptions

    return FactorizationInitOptions()
