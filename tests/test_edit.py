"""`kdistill set`: params.yaml changed in place, its comments kept, nothing written unless the result is valid."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import ROOT
from kdistill.control.edit import parse_assignment, set_params
from kdistill.errors import ConfigError


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_values_are_yaml_and_comments_survive(params):
    before = params.read_text()
    assert set_params(params, ["seeds=[42,43]", "distill_kd.T=4", "data.format=imagefolder"]) == [
        "seeds", "distill_kd.T", "data.format"]
    after = params.read_text()
    values = yaml.safe_load(after)
    assert values["seeds"] == [42, 43] and values["distill_kd"]["T"] == 4 and values["data"]["format"] == "imagefolder"
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in after.splitlines() for line in comments)
    assert "seeds: [42, 43]\n" in after, "a list stays on one line, as the file writes them"
    assert len(after.splitlines()) == len(before.splitlines())


def test_an_unchanged_value_is_not_reported(params):
    assert set_params(params, ["distill_kd.T=4"]) == ["distill_kd.T"]
    assert set_params(params, ["distill_kd.T=4"]) == []


@pytest.mark.parametrize(("assignment", "message"), [
    ("distill_kd.T=-1", "distill_kd.T: Input should be greater than 0"),
    ("distill_kd.temp=4", "distill_kd.temp: unknown key"),
    ("distill_kdd.T=4", "'distill_kdd' is not a section"),
    ("train.epochs=ten", "train.epochs: Input should be a valid integer"),
])
def test_an_invalid_result_is_refused_and_nothing_is_written(params, assignment, message):
    before = params.read_text()
    with pytest.raises(ConfigError, match=message):
        set_params(params, [assignment])
    assert params.read_text() == before


@pytest.mark.parametrize("text", ["distill_kd.T", "=4", "x=[1,"])
def test_malformed_assignments_name_themselves(text):
    with pytest.raises(ConfigError, match="expected key=value|not YAML"):
        parse_assignment(text)
