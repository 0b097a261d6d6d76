"""Random and hostile config values never produce a traceback: a Config or a one-line UserError."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterclr.config import Config
from clusterclr.configure import build_config, validate
from clusterclr.errors import UserError
from clusterclr.methods.registry import _METHODS


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


KEYS = sorted(
    set(_flatten(Config().model_dump()))
    | {f"method.{option}" for method in _METHODS.values() for option in method.Options.model_fields}
    | {"method", "train", "data.root.deeper", "optim..lr", "unknown.key"}
)
METHOD_NAMES = sorted(_METHODS) + ["", "nope", "../../etc/passwd", "SIMCLR"]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
# A value is given as YAML (JSON is YAML) or as raw text, which may not parse at all.
override_text = st.one_of(values.map(json.dumps), st.text(max_size=16))
override = st.one_of(
    st.tuples(st.sampled_from(KEYS), override_text),
    st.tuples(st.just("method.name"), st.sampled_from(METHOD_NAMES)),
    st.tuples(st.text(max_size=10), override_text),
).map(lambda pair: f"{pair[0]}={pair[1]}")


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override, max_size=4))
def test_any_overrides_give_a_config_or_a_user_error(overrides):
    try:
        config = build_config(overrides=overrides)
    except UserError as err:
        assert str(err)
        return
    # What a run saves (config.yaml, the checkpoint's config) must read back as the same config.
    assert validate(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize(
    "hostile",
    [["optim.batch_size=-5", "model.width=abc"], ["method.name=../../x"], ["train\nepochs=1e999"]],
)
def test_hostile_values_on_the_command_line_are_one_line_errors(hostile, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "clusterclr", "train", "--set", *hostile],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("clusterclr: error:")] == [], result.stderr
