"""ReconstructionConfig: presets, TOML round trip, nested tables, validation with one-line InputError."""

from __future__ import annotations

import dataclasses
import math

import pytest

from geomvision.config import (
    MOVED_FIELDS,
    PRESETS,
    ReconstructionConfig,
    config_from_dict,
    dump_config_toml,
    load_config,
    preset,
)
from geomvision.errors import InputError


def test_toml_round_trip_of_every_preset(tmp_path):
    for name in PRESETS:
        config = preset(name).with_changes(pipeline={"intrinsics": (500.0, 501.0, 319.5, 239.5), "seed": 4})
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_config_toml(config))
        assert load_config(path) == config


def test_presets_apply_their_values():
    fast = preset("fast")
    # Retrieval pairing (top-k + 3 file-order neighbours), not sequential-only: loops get closed.
    assert fast.pipeline.pairing == "retrieval" and fast.pipeline.retrieval_k == 10
    assert fast.extraction.max_num_features == 4000 and fast.mapper.global_ba.max_iterations == 30
    accurate = preset("accurate")
    assert accurate.two_view.ransac.confidence > ReconstructionConfig().two_view.ransac.confidence
    assert accurate.matching.method == "bruteforce" and accurate.mapper.global_ba.max_iterations == 100
    assert preset("default") == ReconstructionConfig()


def test_file_values_override_preset_and_base(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "fast"\n[pipeline]\nseed = 9\n[extraction]\nmax_num_features = 123\n')
    config = load_config(path, base=ReconstructionConfig().with_changes(pipeline={"seed": 1}))
    assert config.pipeline.seed == 9 and config.pipeline.pairing == "retrieval"
    assert config.extraction.max_num_features == 123


def test_nested_table_updates_nested_options():
    config = config_from_dict(
        {
            "two_view": {"ransac": {"max_iterations": 77}},
            "mapper": {"registration": {"ransac": {"max_error_px": 8.0}}},
        }
    )
    assert (
        config.two_view.ransac.max_iterations == 77 and config.mapper.registration.ransac.max_error_px == 8.0
    )
    # Other fields of the nested options keep their defaults.
    default = ReconstructionConfig()
    assert config.two_view.ransac.max_error_px == default.two_view.ransac.max_error_px == 2.0
    assert config.mapper.registration.ransac.confidence == default.mapper.registration.ransac.confidence


def test_deprecated_flat_keys_move_to_their_place_with_a_warning(caplog):
    with pytest.warns(DeprecationWarning, match=r"\[two_view\] max_error_px is deprecated"):
        config = config_from_dict({"two_view": {"max_error_px": 3.0}})
    assert config.two_view.ransac.max_error_px == 3.0
    assert "deprecated" in caplog.text  # logged too, for CLI users who never see warnings
    with pytest.warns(DeprecationWarning):
        config = config_from_dict(
            {"mapper": {"tri_max_error_px": 3.0, "ba_loss": "cauchy", "min_num_inliers": 40}}
        )
    mapper = config.mapper
    assert mapper.triangulation.max_error_px == mapper.initialization.triangulation.max_error_px == 3.0
    assert mapper.initialization.triangulation.filter_max_error_px == 3.0
    assert mapper.local_ba.loss == mapper.global_ba.loss == "cauchy"
    assert mapper.registration.min_num_inliers == 40 and mapper.registration.min_num_visible == 20
    with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="both the deprecated"):
        config_from_dict({"two_view": {"max_error_px": 3.0, "ransac": {"max_error_px": 1.0}}})


def _places(cls: type, options=None, prefix: str = "") -> list[str]:
    """Every place in the default tree where an options of class ``cls`` stands."""
    options = ReconstructionConfig() if options is None else options
    found = [prefix] if isinstance(options, cls) else []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            found += _places(cls, value, f"{prefix}.{f.name}" if prefix else f.name)
    return found


@pytest.mark.parametrize(
    ("cls", "old"),
    [(cls, old) for cls, moved in MOVED_FIELDS.items() for old in moved],
    ids=lambda v: v.__name__ if isinstance(v, type) else v,
)
def test_fields_moved_into_nested_options_keep_their_old_keys_with_a_warning(cls, old):
    new = MOVED_FIELDS[cls][old]
    places = _places(cls)
    assert places  # the class stands in the tree
    for place in places:
        default = _leaf(ReconstructionConfig(), f"{place}.{new}")
        value = (not default) if isinstance(default, bool) else default * 2 if default else 1
        with pytest.warns(DeprecationWarning, match=rf"\[{place}\] {old} is deprecated"):
            config = config_from_dict(_nested(f"{place}.{old}", value))
        assert _leaf(config, f"{place}.{new}") == value != default
        both = _merged(_nested(f"{place}.{old}", value), _nested(f"{place}.{new}", value))
        with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="both the deprecated"):
            config_from_dict(both)


def _nested(path: str, value) -> dict:
    *tables, key = path.split(".")
    data = {key: value}
    for part in reversed(tables):
        data = {part: data}
    return data


def _merged(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        both_tables = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_tables else value
    return out


def _leaf(config: ReconstructionConfig, path: str):
    for part in path.split("."):
        config = getattr(config, part)
    return config


def test_unknown_keys_get_a_did_you_mean_hint():
    with pytest.raises(InputError, match=r"did you mean 'max_iterations' for 'max_iteration'"):
        config_from_dict({"mapper": {"local_ba": {"max_iteration": 3}}})
    with pytest.raises(InputError, match=r"did you mean \[two_view\]"):
        config_from_dict({"twoview": {}})


def test_closed_choices_are_checked_against_their_literal():
    with pytest.raises(InputError, match=r"option mapper.global_ba.loss must be one of"):
        config_from_dict({"mapper": {"global_ba": {"loss": "l3"}}})


def test_none_string_and_lists_are_coerced():
    config = config_from_dict({"pipeline": {"intrinsics": [400, 400, 100, 80], "single_camera": "none"}})
    assert config.pipeline.intrinsics == (400.0, 400.0, 100.0, 80.0)
    assert config.pipeline.single_camera is None


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"pipelin": {}}, "unknown config section [pipelin]"),
        ({"pipeline": {"sed": 1}}, "unknown option(s) ['sed'] in [pipeline]; did you mean 'seed'"),
        ({"two_view": {"ransac": {"iters": 1}}}, "unknown option(s) ['iters'] in [two_view.ransac]"),
        ({"pipeline": 3}, "[pipeline] must be a table"),
        ({"pipeline": {"pairing": "all"}}, "pairing must be one of"),
        ({"mapper": {"local_ba": {"intrinsics": "per_image"}}}, "intrinsics='per_image'"),
        ({"mapper": {"registration": 3}}, "option mapper.registration must be a table"),
        ({"pipeline": {"intrinsics": [1, 2, 3]}}, "4 finite numbers"),
        ({"pipeline": {"intrinsics": [math.nan, 1, 1, 1]}}, "4 finite numbers"),
        ({"pipeline": {"intrinsics": [0, 1, 1, 1]}}, "positive"),
        ({"pipeline": {"intrinsics": ["a", 1, 1, 1]}}, "intrinsics"),
        ({"pipeline": {"num_workers": 0}}, "num_workers"),
        ({"pipeline": {"num_workers": "2"}}, "num_workers"),
        ({"pipeline": {"seed": "x"}}, "seed"),
        ({"pipeline": {"seed": -1}}, "seed"),
        ({"pipeline": {"html_report": 1}}, "true or false"),
        ({"two_view": {"ransac": 3}}, "option two_view.ransac must be a table"),
        ({"extraction": {"max_num_features": 1.5}}, "must be an integer"),
        ({"preset": "turbo"}, "unknown preset 'turbo'"),
        ({"preset": 3}, "preset must be a string"),
    ],
)
def test_bad_values_raise_one_line_input_error(data, fragment):
    with pytest.raises(InputError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_bad_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[pipeline\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(path)
    path.write_bytes(b"\xff\xfe[pipeline]\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="is a folder"):
        load_config(tmp_path)


def test_auto_pairing_is_exhaustive_for_small_sets_and_retrieval_above():
    import numpy as np

    from geomvision.pipeline import resolve_pairing, select_pairs
    from geomvision.scene.types import Features

    config = ReconstructionConfig()
    assert config.pipeline.pairing == "auto"
    limit = config.pipeline.auto_exhaustive_max_images
    assert resolve_pairing(limit, config.pipeline) == "exhaustive"
    assert resolve_pairing(limit + 1, config.pipeline) == "retrieval"
    fixed = config.with_changes(pipeline={"pairing": "sequential"})
    assert resolve_pairing(10_000, fixed.pipeline) == "sequential"
    rng = np.random.default_rng(0)
    features = {
        i: Features(rng.uniform(0, 100, (60, 2)), rng.random((60, 128), dtype=np.float32))
        for i in range(1, 81)
    }
    small = config.with_changes(pipeline={"auto_exhaustive_max_images": 80})
    assert len(select_pairs(list(features), features, small)) == 80 * 79 // 2
    pairs = select_pairs(list(features), features, config)  # 80 > 50: retrieval + 3 sequential neighbours
    assert len(pairs) < 80 * (config.pipeline.retrieval_k + 3)
    assert all((i, i + 1) in set(pairs) for i in range(1, 80))
    with pytest.raises(InputError, match="auto_exhaustive_max_images must be >= 2, got 1"):
        config.with_changes(pipeline={"auto_exhaustive_max_images": 1})
