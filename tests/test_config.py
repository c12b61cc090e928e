import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdistill.config import ConfigError, load_params, parse_params
from kdistill.pipeline import STAGE_PARAMS

ROOT = Path(__file__).resolve().parents[1]


def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(key: str, value: object) -> dict:
    raw = defaults()
    *sections, leaf = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[leaf] = value
    return raw


def test_defaults_are_the_tutorials():
    params = load_params(ROOT / "params.yaml")
    assert params.seeds == [42]
    assert (params.train.epochs, params.train.batch_size, params.train.lr) == (10, 128, 0.001)
    assert (params.distill_kd.T, params.distill_kd.soft_target_loss_weight, params.distill_kd.ce_loss_weight) == (2, 0.25, 0.75)
    assert (params.distill_cosine.hidden_rep_loss_weight, params.distill_cosine.ce_loss_weight) == (0.25, 0.75)
    assert (params.distill_regressor.feature_map_weight, params.distill_regressor.ce_loss_weight) == (0.25, 0.75)
    assert params.data.md5 == "c58f30108f718f92721af3b95e74349a" and params.data.format == "cifar10"
    assert params.data.mean == [0.485, 0.456, 0.406] and params.data.std == [0.229, 0.224, 0.225]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("distill_kd.temp", 4, "distill_kd.temp: unknown key"),
        ("train.epochs", "10", "train.epochs"),
        ("train.epochs", 0, "train.epochs"),
        ("train.batch_size", 0, "train.batch_size"),
        ("train.lr", 0, "train.lr"),
        ("train.lr", -0.1, "train.lr"),
        ("distill_kd.T", 0, "distill_kd.T"),
        ("distill_kd.T", -1, "distill_kd.T"),
        ("distill_cosine.ce_loss_weight", -0.5, "distill_cosine.ce_loss_weight"),
        ("data.format", "parquet", "data.format"),
        ("train.precision", "fp8", "train.precision"),
        ("train.device", "tpu", "train.device"),
        ("data.md5", "not-a-sum", "data.md5"),
        ("data.std", [0.2, 0.2], "data.std"),
    ],
)
def test_bad_values_are_rejected_naming_key_and_value(key, value, expected):
    with pytest.raises(ConfigError) as error:
        parse_params(with_value(key, value))
    message = str(error.value)
    assert expected in message
    assert repr(value) in message or str(value) in message


def test_all_zero_weights_are_rejected():
    raw = with_value("distill_regressor.feature_map_weight", 0)
    raw["distill_regressor"]["ce_loss_weight"] = 0
    with pytest.raises(ConfigError, match="distill_regressor: .*all loss weights are zero"):
        parse_params(raw)


@pytest.mark.parametrize(("seeds", "expected"), [([], "seeds: List should have at least 1 item"),
                                                 ([1, 1], "seeds must be distinct"), ([-1], "seeds.0")])
def test_bad_seeds_are_rejected(seeds, expected):
    raw = defaults()
    raw["seeds"] = seeds
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_params(raw)


def test_missing_key_is_named():
    raw = defaults()
    del raw["train"]["lr"]
    with pytest.raises(ConfigError, match="train.lr: required key is missing"):
        parse_params(raw)


def test_dvc_yaml_declares_exactly_the_keys_each_stage_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {name: stage.get("params", []) for name, stage in stages.items()}
    assert declared == STAGE_PARAMS
    every_key = set(load_params(ROOT / "params.yaml").flat())
    assert set().union(*STAGE_PARAMS.values()) == every_key, "a params key that no stage reads"


def test_stage_with_bad_params_exits_nonzero_without_traceback(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("distill_kd.temp", 4)))
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "distill_kd.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "distill_kd.temp: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
