import pytest
import torch

from fakedata import class_images
from kdistill.config import load_params
from kdistill.engine import DeviceImages, TrainingError, evaluate, resolve_runtime, teacher_outputs, train
from kdistill.models import DeepNN, LightNN
from kdistill.objectives import build_objective
from conftest import ROOT

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU32 = resolve_runtime("cpu", "fp32")


def split(n: int, seed: int) -> DeviceImages:
    import numpy as np

    labels = np.arange(n) % 10
    images = torch.from_numpy(class_images(labels, np.random.default_rng(seed)))
    return DeviceImages(images, torch.from_numpy(labels), MEAN, STD, torch.device("cpu"))


def test_runtime_resolution():
    assert resolve_runtime("cpu", "fp32").autocast_dtype is None
    assert resolve_runtime("cpu", "bf16").autocast_dtype == torch.bfloat16
    flags = open("/proc/cpuinfo").read()
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    assert resolve_runtime("cpu", "auto").precision == ("bf16" if native else "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device is 'cuda'"):
            resolve_runtime("cuda", "auto")


def test_teacher_outputs_use_eval_mode_and_no_gradients():
    torch.manual_seed(0)
    teacher = DeepNN()
    teacher.train()  # dropout would make two passes differ; teacher_outputs must switch it off
    data = split(40, 0)
    first = teacher_outputs(teacher, data, CPU32)
    second = teacher_outputs(teacher, data, CPU32)
    assert not teacher.training
    assert torch.equal(first["logits"], second["logits"])
    assert all(p.grad is None for p in teacher.parameters())
    assert not first["logits"].requires_grad and tuple(first["features"].shape) == (40, 32, 8, 8)
    with torch.no_grad():
        assert torch.allclose(first["logits"], teacher(data.inputs(slice(0, 40))), atol=1e-5)


def test_training_learns_and_trains_the_regressor_too():
    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    teacher_model = DeepNN()
    train_data, test_data = split(200, 1), split(100, 2)
    teacher = teacher_outputs(teacher_model, train_data, CPU32)
    torch.manual_seed(0)
    student = LightNN()
    objective = build_objective("distill_regressor", params)
    regressor_before = objective.loss.regressor.weight.detach().clone()
    before = evaluate(student, test_data, CPU32)
    seen = []
    history = train(student, objective, train_data, test_data, CPU32, stage="distill_regressor", epochs=3,
                    batch_size=32, lr=0.003, seed=0, teacher=teacher, on_epoch=seen.append)
    assert [r.epoch for r in history] == [1, 2, 3] and seen == history
    assert not torch.equal(objective.loss.regressor.weight, regressor_before), "the regressor did not train"
    assert set(history[0].terms) == {"feature_map", "ce"}
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].test_accuracy > max(before, 50.0)


def test_same_seed_same_result():
    params = load_params(ROOT / "params.yaml")

    def run() -> list[float]:
        torch.manual_seed(3)
        model = LightNN()
        history = train(model, build_objective("train_student_ce", params), split(64, 1), split(30, 2), CPU32,
                        stage="train_student_ce", epochs=2, batch_size=16, lr=0.001, seed=3)
        return [r.train_loss for r in history] + [r.test_accuracy for r in history]

    assert run() == run()


def test_non_finite_loss_stops_naming_stage_epoch_and_batch():
    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    blown_up = split(64, 1)
    blown_up.scale = torch.full_like(blown_up.scale, float("inf"))  # inputs become inf/NaN -> NaN loss
    with pytest.raises(TrainingError, match=r"train_student_ce: loss became nan at epoch 1, batch 1/4"):
        train(LightNN(), build_objective("train_student_ce", params), blown_up, split(10, 2), CPU32,
              stage="train_student_ce", epochs=1, batch_size=16, lr=0.001, seed=0)
