import copy

import pytest
import torch
from benchmarks.speed import in_tutorial_order
from torch.nn import Conv2d, MaxPool2d, ReLU

from kdistill.control.registry import METHODS
from kdistill.core.networks import DeepNN, LightNN, build_model, count_parameters, feature_shape
from kdistill.core.objectives import Shapes
from kdistill.core.runtime import Runtime
from kdistill.errors import DataError
from kdistill.methods.baselines.spec import STUDENT_CE
from kdistill.pipeline.checkpoints import load_checkpoint, save_checkpoint
from kdistill.pipeline.training import seeded_start

# The tutorial's feature extractors, layer by layer, as its code writes them.
TUTORIAL_FEATURES = {
    DeepNN: [Conv2d, ReLU, Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, Conv2d, ReLU, MaxPool2d],
    LightNN: [Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d],
}


def test_parameter_counts_are_the_tutorials():
    assert count_parameters(DeepNN()) == 1_186_986
    assert count_parameters(LightNN()) == 267_738


@pytest.mark.parametrize(("model", "shape"), [(DeepNN(), (32, 8, 8)), (LightNN(), (16, 8, 8))])
def test_declared_feature_shapes_are_what_the_networks_compute(model, shape):
    # The objectives size their losses (the hint regressor, the cosine pooling) from these declarations.
    assert tuple(model.forward_features(torch.randn(3, 3, 32, 32)).shape) == (3, *shape) == (3, *model.feature_shape)


@pytest.mark.parametrize("architecture", [DeepNN, LightNN])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_pooling_before_the_relu_computes_exactly_what_the_tutorials_order_does(architecture, autocast_dtype):
    # The networks pool before their ReLUs (faster); outputs and every gradient must still be the
    # tutorial network's to the bit, dropout included, and its weights load unchanged.
    torch.manual_seed(0)
    ours = architecture().to(memory_format=torch.channels_last).train()
    tutorials = in_tutorial_order(copy.deepcopy(ours))
    assert [type(layer) for layer in tutorials.features] == TUTORIAL_FEATURES[architecture]
    assert [type(layer) for layer in ours.features] != TUTORIAL_FEATURES[architecture]
    assert ours.state_dict().keys() == tutorials.state_dict().keys()
    runtime = Runtime(torch.device("cpu"), autocast_dtype)
    images = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outputs = []
    for model in (ours, tutorials):
        torch.manual_seed(1)  # the same dropout masks
        with runtime.autocast():
            logits = model(images)
        logits.float().logsumexp(dim=1).sum().backward()
        outputs.append((logits, [p.grad for p in model.parameters()]))
    (ours_logits, ours_grads), (their_logits, their_grads) = outputs
    assert torch.equal(ours_logits, their_logits)
    assert all(torch.equal(a, b) for a, b in zip(ours_grads, their_grads, strict=True))


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize(("student", "teacher"), [("LightNN", "DeepNN"), ("resnet8", "wrn_16_2")])
def test_every_method_starts_a_seed_from_the_ce_students_weights(name, student, teacher):
    method = METHODS[name]
    shapes = Shapes(feature_shape(student), feature_shape(teacher))
    baseline, _ = seeded_start(student, STUDENT_CE.build_objective, None, shapes, 10, seed=7)
    torch.manual_seed(0)  # whatever ran before in the process
    model, _ = seeded_start(student, method.build_objective, method.params(), shapes, 10, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(baseline.state_dict().values(), model.state_dict().values(), strict=True))
    other, _ = seeded_start(student, method.build_objective, method.params(), shapes, 10, seed=8)
    first = next(iter(model.state_dict()))
    assert not torch.equal(other.state_dict()[first], model.state_dict()[first])


def test_checkpoint_rebuilds_the_network_from_its_file(tmp_path):
    model = build_model("DeepNN").eval()
    torch.manual_seed(7)
    other = build_model("DeepNN").eval()
    save_checkpoint(tmp_path / "m.pt", {42: model, 7: other}, stage="train_teacher", metrics={"test_accuracy": 50.0})
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    images = torch.randn(2, 3, 32, 32)
    assert isinstance(loaded, DeepNN) and payload["stage"] == "train_teacher" and payload["seeds"] == [42, 7]
    assert torch.equal(loaded.eval()(images), model(images))
    assert torch.equal(load_checkpoint(tmp_path / "m.pt", seed=7)[0].eval()(images), other(images))
    with pytest.raises(DataError, match="no weights for seed 3"):
        load_checkpoint(tmp_path / "m.pt", seed=3)
    assert not list(tmp_path.glob(".*partial"))


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_tampered_checkpoint_is_refused_without_running_its_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"name": "LightNN", "num_classes": 10}, "seeds": [1], "state_dicts": {1: {}},
                "x": Exploit()}, path)
    with pytest.raises(DataError, match="not a loadable checkpoint"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    torch.load(path, weights_only=False)  # the file really is hostile: an unrestricted load runs it
    assert "pwned" in capsys.readouterr().out
