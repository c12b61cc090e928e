"""`kdistill set`: params.yaml changed in place, its comments kept, nothing written unless the result is valid."""

from __future__ import annotations

import pytest
import yaml

from helpers import committed_params_text
from kdistill.control.edit import parse_assignment, set_params
from kdistill.errors import ConfigError


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(committed_params_text())
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


def test_the_crd_recipe_writes_the_literatures_values_for_the_pair(params, monkeypatch):
    from kdistill.cli import main

    monkeypatch.chdir(params.parent)
    (params.parent / "dvc.yaml").write_text("stages: {}\n")  # marks the project root
    assert main(["recipe", "crd", "--teacher", "resnet56", "--student", "resnet20"]) == 0
    values = yaml.safe_load(params.read_text())
    train = values["train"]
    assert (train["optimizer"], train["lr"], train["momentum"], train["weight_decay"]) == ("sgd", 0.05, 0.9, 5e-4)
    assert (train["batch_size"], train["epochs"], train["milestones"], train["lr_decay"]) == (64, 240, [150, 180, 210], 0.1)
    assert (train["schedule"], train["augment"]) == ("multistep", "crop_flip")
    assert values["networks"] == {"teacher": "resnet56", "student": "resnet20"}
    assert (values["data"]["format"], values["data"]["md5"]) == ("cifar100", "eb9058c3a382ffc7106e4002c42a8d85")
    assert values["distill_kd"] == {"T": 4.0, "soft_target_loss_weight": 0.9, "ce_loss_weight": 0.1}
    assert (values["distill_dkd"]["beta"], values["distill_dkd"]["warmup_epochs"]) == (2.0, 20.0)  # mdistiller's res56_res20
    assert main(["recipe", "crd", "--teacher", "resnet32x4", "--student", "ShuffleV1"]) == 0
    values = yaml.safe_load(params.read_text())
    assert (values["train"]["lr"], values["distill_dkd"]["beta"]) == (0.01, 8.0)  # ShuffleNet students: lr 0.01


def test_the_recipe_prints_dvc_overrides_and_refuses_an_unknown_network(params, monkeypatch, capsys):
    from kdistill.cli import main

    monkeypatch.chdir(params.parent)
    before = params.read_text()
    assert main(["recipe", "crd", "--teacher", "vgg13", "--student", "vgg8", "--overrides"]) == 0
    printed = capsys.readouterr().out
    assert "-S 'networks.student=\"vgg8\"'" in printed and "-S 'distill_dkd.beta=6.0'" in printed
    assert main(["recipe", "crd", "--teacher", "resnet9", "--student", "vgg8"]) == 2
    assert "--teacher 'resnet9': unknown network" in capsys.readouterr().err
    assert params.read_text() == before
