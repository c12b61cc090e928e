import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from helpers import committed_params, shipped_params, with_value
from kdistill.control.params import load_params, parse_params
from kdistill.control.registry import METHODS, TRAININGS, Params, load_all_params
from kdistill.errors import ConfigError


def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def parse(raw: dict):
    return parse_params(raw, Params)


def test_defaults_are_the_tutorials_and_the_papers():
    # What ships: the committed shared sections and each method's declared defaults. Experiments
    # rewrite the working copy, and a method being added is not committed yet.
    params = parse(shipped_params())
    assert params.seeds == [42] and params.train_teacher.seed == 42
    assert (params.train.epochs, params.train.batch_size, params.train.lr) == (10, 128, 0.001)
    assert (params.distill_kd.T, params.distill_kd.soft_target_loss_weight, params.distill_kd.ce_loss_weight) == (2, 0.25, 0.75)
    assert (params.distill_cosine.hidden_rep_loss_weight, params.distill_cosine.ce_loss_weight) == (0.25, 0.75)
    assert (params.distill_regressor.feature_map_weight, params.distill_regressor.ce_loss_weight) == (0.25, 0.75)
    dkd = params.distill_dkd
    assert (dkd.T, dkd.alpha, dkd.beta, dkd.ce_loss_weight, dkd.warmup_epochs) == (4, 1, 8, 1, 1)
    assert (params.distill_attention.beta, params.distill_attention.ce_loss_weight) == (1000, 1)
    assert params.data.md5 == "c58f30108f718f92721af3b95e74349a" and params.data.format == "cifar10"
    assert params.data.mean == [0.485, 0.456, 0.406] and params.data.std == [0.229, 0.224, 0.225]
    assert (params.networks.teacher, params.networks.student) == ("DeepNN", "LightNN")
    train = params.train
    assert (train.optimizer, train.weight_decay, train.momentum, train.nesterov) == ("adam", 0, 0, False)
    assert (train.schedule, train.milestones, train.augment) == ("constant", [], "none")
    assert (params.train_teacher.checkpoint, params.train_teacher.checkpoint_md5) == ("", "")


@pytest.mark.parametrize("name", sorted(TRAININGS))
def test_params_yaml_holds_each_methods_declared_defaults(name):
    # The committed file, or the working copy while a change of a default is being made.
    model = TRAININGS[name].params
    if model is not None:
        assert model().model_dump() in (committed_params().get(name), defaults()[name])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("distill_kd.temp", 4, "distill_kd.temp: unknown key"),
        ("distill_dkd.gamma", 1, "distill_dkd.gamma: unknown key"),
        ("train.epochs", "10", "train.epochs"),
        ("train.epochs", 0, "train.epochs"),
        ("train.batch_size", 0, "train.batch_size"),
        ("train.lr", 0, "train.lr"),
        ("train.lr", -0.1, "train.lr"),
        ("distill_kd.T", 0, "distill_kd.T"),
        ("distill_dkd.T", -1, "distill_dkd.T"),
        ("distill_dkd.warmup_epochs", -1, "distill_dkd.warmup_epochs"),
        ("distill_attention.beta", -5, "distill_attention.beta"),
        ("distill_cosine.ce_loss_weight", -0.5, "distill_cosine.ce_loss_weight"),
        ("train_teacher.seed", -1, "train_teacher.seed"),
        ("data.format", "parquet", "data.format"),
        ("train.precision", "fp8", "train.precision"),
        ("train.device", "tpu", "train.device"),
        ("data.md5", "not-a-sum", "data.md5"),
        ("data.std", [0.2, 0.2], "data.std"),
    ],
)
def test_bad_values_are_rejected_naming_key_and_value(key, value, expected):
    with pytest.raises(ConfigError) as error:
        parse(with_value(defaults(), key, value))
    message = str(error.value)
    assert expected in message
    assert repr(value) in message or str(value) in message


@pytest.mark.parametrize("name", sorted(METHODS))
def test_all_zero_weights_are_rejected(name):
    raw = defaults()
    for key, field in METHODS[name].params.model_fields.items():
        if (field.json_schema_extra or {}).get("loss_weight"):
            raw[name][key] = 0
    with pytest.raises(ConfigError, match=f"{name}: .*all loss weights are zero"):
        parse(raw)


@pytest.mark.parametrize(("seeds", "expected"), [([], "seeds: List should have at least 1 item"),
                                                 ([1, 1], "seeds must be distinct"), ([-1], "seeds.0")])
def test_bad_seeds_are_rejected(seeds, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse(with_value(defaults(), "seeds", seeds))


def test_missing_key_and_section_are_named_with_their_default():
    raw = defaults()
    del raw["train"]["lr"]
    del raw["distill_dkd"]["beta"]
    with pytest.raises(ConfigError) as error:
        parse(raw)
    assert "train.lr: required key is missing" in str(error.value)
    assert "distill_dkd.beta: required key is missing (documented default: 8.0)" in str(error.value)


def test_a_stage_reads_its_own_section_and_ignores_the_others(tmp_path):
    raw = with_value(defaults(), "distill_dkd.T", -1)  # another stage's problem
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    kd = METHODS["distill_kd"]
    params = load_params(tmp_path / "params.yaml", {kd.name: kd.params}, only_known_sections=True)
    assert raw["distill_kd"]["T"] == params.section("distill_kd").T and not hasattr(params, "distill_dkd")
    with pytest.raises(ConfigError, match="distill_dkd.T"):
        load_all_params(tmp_path / "params.yaml")


@pytest.mark.slow
def test_stage_with_bad_params_exits_2_with_one_line(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(defaults(), "distill_kd.T", "hot")))
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "distill_kd.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 2, result.stderr
    assert "error: distill_kd: " in result.stderr and "distill_kd.T: Input should be a valid number" in result.stderr
    assert "Traceback" not in result.stderr
