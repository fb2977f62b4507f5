"""The options tree: the refactor moved settings, it changed no stage's effective options; every leaf of
the tree can be set from TOML and reaches the stage that reads it."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from effective_options import record_effective_options, to_jsonable

from geomvision.config import (
    DEPRECATED_KEYS,
    DEPRECATED_TRANSFORMS,
    PRESETS,
    ReconstructionConfig,
    _literal_choices,
    load_config,
    preset,
)
from geomvision.config import (
    MOVED_FIELDS as MOVED_SINCE_THE_TREE,
)
from geomvision.errors import InputError

BEFORE = json.loads((Path(__file__).parent / "data" / "effective_options_before.json").read_text())

#: Fields of the pre-tree container options that moved into a nested options class (old -> new path).
MOVED_FIELDS = {
    "InitializationOptions": {
        "max_error_px": "triangulation.max_error_px",
        "filter_min_tri_angle_deg": "triangulation.filter_min_tri_angle_deg",
        "essential_max_error_px": "ransac.max_error_px",
    },
    "RegistrationOptions": {
        "max_error_px": "ransac.max_error_px",
        "confidence": "ransac.confidence",
        "ransac_max_iterations": "ransac.max_iterations",
    },
    "FactorizationInitOptions": {"projective_iterations": "projective.max_iterations"},
    # Issue 20: LO-RANSAC and the bail-out test got options classes of their own inside RansacOptions.
    "RansacOptions": {
        "local_optimization": "lo.enabled",
        "lo_iterations": "lo.iterations",
        "lo_threshold_multiplier": "lo.threshold_multiplier",
        "lo_max_points": "lo.max_points",
        "bailout_subset": "bailout.subset",
        "bailout_sigma": "bailout.sigma",
    },
}

#: The one recorded value that differs, and why that is no change of what runs.
RELABELLED = {
    # Local BA never refined intrinsics (the mapper passed it no cameras to refine); the options it
    # received said "shared" all the same. Now the field says "fixed", and the mapper honours it.
    ("grow/local_ba/adjust_bundle->adjust_problem", "options.intrinsics"): ("shared", "fixed"),
}

#: Values of the old tree that were overwritten before any stage saw them (TwoViewOptions copied its
#: own max_error_px / confidence / max_iterations / min_num_inliers over its nested ``ransac``).
OVERWRITTEN = {f"two_view.ransac.{k}" for k in ("max_error_px", "confidence", "max_iterations")}

#: Defaults changed on purpose by a later issue (old value, new value), each with its reason.
CHANGED_ON_PURPOSE = {
    # Issue 17: "auto" matches exhaustively up to 50 images (the same pairs as before on every set of
    # that size) and by retrieval above, where exhaustive pairs grow as N^2.
    "pipeline.pairing": ("exhaustive", "auto"),
    # Issue 15: the default worker count is the usable core count (None), not a fixed 2.
    "pipeline.num_workers": (2, None),
}

#: Option fields whose default changed on purpose at every call site (old value, new value), with the reason.
CHANGED_FIELDS_ON_PURPOSE = {
    # Issue 17: the schur BA backend's threads default to the cores available (None); problems under 48k
    # observations (every mapper BA of the recorded run) still run on the calling thread.
    "num_threads": (1, None),
}

#: Fields removed on purpose by a later issue, each with its reason.
REMOVED_ON_PURPOSE = {
    # Issue 15: the worker count lives in PipelineOptions only; stages take a stage runner.
    "extraction.num_workers",
    "matching.num_workers",
    "two_view.num_workers",
}


#: Call sites added by a later issue (absent from the recording), each with its reason.
ADDED_ON_PURPOSE = {
    # Issue 17: when no candidate registers, the mapper retries images with a strong verified pair to a
    # registered image at a lower PnP inlier floor (pair-checked registration).
    "grow/try_register_next/try_register_pair_checked->rank_next_images",
    "grow/try_register_next/try_register_pair_checked->register_image",
}


def _flat(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


def _get(tree: dict, path: str):
    for part in path.split(".") if path else ():
        tree = tree[part]
    return tree


def test_every_sub_step_receives_the_options_it_received_before_the_tree():
    after = record_effective_options()
    assert sorted(set(after) - ADDED_ON_PURPOSE) == sorted(BEFORE["calls"])
    checked = 0
    for site, old_values in BEFORE["calls"].items():
        new_values = after[site]
        assert len(new_values) == len(old_values), site
        for old, new in zip(old_values, new_values, strict=True):
            moved = MOVED_FIELDS.get(old.get("__class__"), {}) if isinstance(old, dict) else {}
            for path, value in _flat(old):
                new_path = moved.get(path, path)
                if (site, path) in RELABELLED:
                    assert (value, _get(new, new_path)) == RELABELLED[(site, path)]
                elif path == "__class__":
                    assert _get(new, path) == value
                elif path.rpartition(".")[2] in CHANGED_FIELDS_ON_PURPOSE:
                    change = CHANGED_FIELDS_ON_PURPOSE[path.rpartition(".")[2]]
                    assert (value, _get(new, new_path)) == change, (site, path)
                else:
                    assert _get(new, new_path) == value, (site, path, new_path)
                checked += 1
    assert checked > 300  # every field of every RANSAC / BA / triangulation call site


def test_default_config_keeps_every_effective_value_at_its_new_place():
    old = dict(_flat(BEFORE["configs"]["default"]))
    new = ReconstructionConfig().to_dict()
    for path, value in old.items():
        if path in OVERWRITTEN:
            continue
        if path in CHANGED_ON_PURPOSE:
            assert (value, _get(new, path)) == CHANGED_ON_PURPOSE[path], path
            continue
        section, _, key = path.partition(".")
        if path in REMOVED_ON_PURPOSE:
            assert key not in new[section], path
            continue
        targets = DEPRECATED_KEYS.get(path)
        if targets is None:
            assert _get(new, _moved_place(path)) == value, path
            continue
        for new_path in targets:
            transform = DEPRECATED_TRANSFORMS.get((path, new_path))
            assert _get(new, new_path) == (transform(value) if transform else value), (path, new_path)


def _moved_place(path: str) -> str:
    """Where a leaf of the tree went when its field moved into nested options (config.MOVED_FIELDS)."""
    *parents, key = path.split(".")
    options = ReconstructionConfig()
    for part in parents:
        options = getattr(options, part)
    moved = MOVED_SINCE_THE_TREE.get(type(options), {}).get(key)
    return ".".join([*parents, moved]) if moved else path


def test_report_records_the_tree_that_runs():
    config = ReconstructionConfig().with_changes(two_view={"ransac": {"max_error_px": 0.5}})
    tree = config.to_dict()
    assert tree["two_view"]["ransac"]["max_error_px"] == 0.5
    assert "max_error_px" not in tree["two_view"]  # no second copy that could disagree
    assert tree["mapper"]["local_ba"]["backend"] == tree["mapper"]["global_ba"]["backend"] == "schur"


# --- every leaf is reachable from TOML --------------------------------------------------------------
def _leaves(options, prefix=""):
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        path = f"{prefix}.{f.name}" if prefix else f.name
        optional = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), None)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, path)
        elif value is None and optional is not None:  # optional nested options: None = the stage's default
            yield from _leaves(optional(), path)
        else:
            yield path, value, hints[f.name]


def _candidates(value, hint):
    """Values of the field's type different from ``value``, most plausible first."""
    choices = _literal_choices(hint)
    if choices:
        return [c for c in choices if c != value]
    args = set(typing.get_args(hint)) or {hint}
    if isinstance(value, bool) or (value is None and bool in args):
        return [not value] if value is not None else [True, False]
    if isinstance(value, int) or (value is None and int in args):
        base = value or 0
        return [base + 1, base + 2, base - 1, 2, 1] if value is not None else [2, 3, 100]
    if isinstance(value, float) or (value is None and float in args):
        if value is None:
            return [0.5, 0.25, 2.0]
        return [v for v in (value * 0.5, value * 1.5, value + 1.0, 0.5, 0.25) if v != value]
    tuple_hint = next((a for a in args if typing.get_origin(a) is tuple), None)
    if isinstance(value, tuple) or tuple_hint is not None:
        items = typing.get_args(tuple_hint) if tuple_hint is not None else (int, ...)
        if Ellipsis in items:
            return [c for c in ([1], [1, 2]) if tuple(c) != value]
        return [[(640 + k) if t is int else (500.0 + k) for k, t in enumerate(items)]]
    if isinstance(value, str) or (value is None and str in args):
        return ["checkpoint.pt", "tcp://127.0.0.1:8786"]  # the second for pipeline.scheduler (an address)
    raise AssertionError(f"no candidate for {value!r} of {hint}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


#: Leaves that no TOML value may change, with why: the refusal is the point.
REFUSED = {
    f"{ba}.fixed_point_ids": "the mappers' points have no ids while they run"
    for ba in ("mapper.local_ba", "mapper.global_ba", "global_mapper.ba", "global_mapper.round_ba")
}


def test_every_leaf_of_the_tree_can_be_set_from_toml(tmp_path):
    default = ReconstructionConfig()
    leaves = list(_leaves(default))
    assert len(leaves) > 150
    set_count = 0
    for path, value, hint in leaves:
        *tables, key = path.split(".")
        errors = []
        for candidate in _candidates(value, hint):
            toml = tmp_path / "c.toml"
            toml.write_text(f"[{'.'.join(tables)}]\n{key} = {_toml_value(candidate)}\n")
            try:
                config = load_config(toml)
            except InputError as exc:
                errors.append(str(exc))
                continue
            got = dict((p, v) for p, v, _ in _leaves(config))
            expected = tuple(candidate) if isinstance(candidate, list) else candidate
            if path == "pipeline.intrinsics":
                expected = tuple(float(v) for v in candidate)
            assert got[path] == expected, path
            changed = [p for p, v, _ in leaves if got[p] != v]
            assert changed == [path], (path, changed)  # nothing else moved
            set_count += 1
            break
        else:
            assert path in REFUSED, (path, errors)
            assert any("point ids" in e for e in errors), errors
    assert set_count == len(leaves) - len(REFUSED)


def test_set_leaves_reach_the_sub_steps_that_read_them():
    config = ReconstructionConfig().with_changes(
        two_view={"ransac": {"max_error_px": 1.5, "lo": {"iterations": 3}}},
        mapper={
            "registration": {"ransac": {"max_iterations": 4321, "bailout": {"sigma": 2.5}}},
            "initialization": {"ransac": {"confidence": 0.998}, "triangulation": {"max_error_px": 2.5}},
            "triangulation": {"filter_max_error_px": 3.5},
            "local_ba": {"cg_tolerance": 0.02, "function_tolerance": 1e-5},
            "global_ba": {"max_iterations": 40, "num_threads": 2},
        },
        factorization={"projective": {"tolerance": 1e-12}, "bundle_adjustment": {"loss_scale_px": 2.0}},
        pose_prior={"max_neighbours": 4},
    )
    calls = record_effective_options(config)

    def seen(site: str, path: str) -> set:
        return {_get(v, path) for v in calls[site]}

    assert seen("verify_pair->estimate_fundamental", "max_error_px") == {1.5}
    assert seen("verify_pair->estimate_homography", "lo.iterations") == {3}
    assert seen("register_image->estimate_absolute_pose", "max_iterations") == {4321}
    assert seen("register_image->estimate_absolute_pose", "bailout.sigma") == {2.5}
    assert seen(
        "initialize_reconstruction/reconstruct_pair/relative_pose->estimate_essential", "confidence"
    ) == {0.998}
    assert seen("initialize_reconstruction/reconstruct_pair->triangulate_tracks", "max_error_px") == {2.5}
    assert seen("grow/local_ba/filter->filter_points", "max_error_px") == {3.5}
    assert seen("grow/local_ba/adjust_bundle->adjust_problem", "options.cg_tolerance") == {0.02}
    assert seen("grow/local_ba/adjust_bundle->adjust_problem", "options.function_tolerance") == {1e-5}
    assert seen("grow/global_ba/adjust_bundle->adjust_problem", "options.max_iterations") == {40}
    assert seen("grow/global_ba/adjust_bundle->adjust_problem", "options.num_threads") == {2}
    site = "initialize_by_factorization/_factorize_window/_metric_candidates->factorize_projective"
    assert seen(site, "tolerance") == {1e-12}
    assert seen("initialize_by_factorization/_polish->bundle_adjust", "loss_scale_px") == {2.0}
    assert seen("pipeline->apply_learned_pose_prior", "max_neighbours") == {4}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_only_touch_existing_leaves(name):
    """A preset names real places in the tree (a typo would raise) and records its changes in report.json."""
    config = preset(name)
    default = dict((p, v) for p, v, _ in _leaves(ReconstructionConfig()))
    changed = {p for p, v, _ in _leaves(config) if default[p] != v}
    expected = {p for p, _ in _flat(PRESETS[name])}
    assert changed <= expected
    assert to_jsonable(config) is not None


def test_two_view_ransac_threshold_from_toml_changes_the_verified_inliers(tmp_path):
    """The bug the tree fixes: ``[two_view.ransac] max_error_px`` used to be overwritten by a copy."""
    import numpy as np

    from geomvision.sfm.two_view import verify_pair
    from geomvision.synthetic import two_view_correspondences

    data = two_view_correspondences(400, noise_px=1.0, outlier_ratio=0.2, rng=3)
    matches = np.stack([np.arange(len(data.x1_px))] * 2, axis=1)
    toml = tmp_path / "c.toml"
    toml.write_text("[two_view.ransac]\nmax_error_px = 0.5\n")
    tight = load_config(toml).two_view
    counts = [
        verify_pair(data.x1_px, data.x2_px, matches, data.K, data.K, options, rng=0).num_inliers
        for options in (ReconstructionConfig().two_view, tight)
    ]
    # 1 px noise: a 2 px Sampson threshold keeps most true matches, 0.5 px well under half of them.
    assert counts[0] > 250 and counts[1] < 0.7 * counts[0], counts
