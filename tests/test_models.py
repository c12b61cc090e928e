import pytest
import torch

from kdistill.checkpoints import load_checkpoint, save_checkpoint
from kdistill.errors import DataError
from kdistill.models import DeepNN, LightNN, build_model, count_parameters


def test_parameter_counts_are_the_tutorials():
    assert count_parameters(DeepNN()) == 1_186_986
    assert count_parameters(LightNN()) == 267_738


@pytest.mark.parametrize(("model", "shape"), [(DeepNN(), (32, 8, 8)), (LightNN(), (16, 8, 8))])
def test_declared_feature_shapes_are_what_the_networks_compute(model, shape):
    # The objectives size their losses (the hint regressor, the cosine pooling) from these declarations.
    assert tuple(model.forward_features(torch.randn(3, 3, 32, 32)).shape) == (3, *shape) == (3, *model.feature_shape)


def test_same_seed_same_student():
    torch.manual_seed(42)
    first = LightNN()
    torch.manual_seed(42)
    second = LightNN()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))


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
    torch.save({"model": {"architecture": "LightNN", "num_classes": 10}, "seeds": [1], "state_dicts": {1: {}},
                "x": Exploit()}, path)
    with pytest.raises(DataError, match="not a loadable checkpoint"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    torch.load(path, weights_only=False)  # the file really is hostile: an unrestricted load runs it
    assert "pwned" in capsys.readouterr().out
