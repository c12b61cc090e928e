"""Each loss against golden values worked out by hand and an independent numpy computation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.config import load_params
from kdistill.models import DeepNN, LightNN
from kdistill.objectives import (
    Batch,
    CrossEntropyObjective,
    FeatureRegressorLoss,
    HiddenCosineLoss,
    SoftTargetLoss,
    StudentOutput,
    build_objective,
)
from conftest import ROOT


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_soft_target_loss_golden_values():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # T=1: KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln 1.5 + 1/4 ln 0.5
    assert SoftTargetLoss(1.0)(student, teacher).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    # T=2: teacher softens to [sqrt3, 1]/(sqrt3 + 1); KL vs uniform, times T^2 = 4
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    assert SoftTargetLoss(2.0)(student, teacher).item() == pytest.approx(4 * float(np.sum(p * np.log(2 * p))), rel=1e-6)


def test_soft_target_loss_matches_the_tutorials_formula():
    rng = np.random.default_rng(0)
    s, t, T = rng.normal(size=(16, 10)) * 3, rng.normal(size=(16, 10)) * 3, 4.0
    soft_targets = softmax(t / T)
    log_q = np.log(softmax(s / T))
    expected = np.sum(soft_targets * (np.log(soft_targets) - log_q)) / len(s) * T**2
    actual = SoftTargetLoss(T)(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert actual.item() == pytest.approx(expected, rel=1e-5)


def test_hidden_cosine_loss_pools_the_teacher_and_matches_numpy():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(4, 16, 8, 8)), rng.normal(size=(4, 32, 8, 8))
    s = student.reshape(4, -1)
    t = teacher.reshape(4, -1).reshape(4, 1024, 2).mean(axis=2)  # avg_pool1d, kernel 2: 2048 -> 1024
    cos = np.sum(s * t, axis=1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
    actual = HiddenCosineLoss()(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32))
    assert actual.item() == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)
    same = torch.tensor(rng.normal(size=(3, 16, 8, 8)), dtype=torch.float32)
    assert HiddenCosineLoss()(same, same.repeat_interleave(2, dim=-1)).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_regressor_loss_is_mse_of_the_regressor_output():
    torch.manual_seed(0)
    loss = FeatureRegressorLoss()
    student, teacher = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 8, 8)
    regressed = F.conv2d(student, loss.regressor.weight, loss.regressor.bias, padding=1).detach().numpy()
    assert loss(student, teacher).item() == pytest.approx(float(np.mean((regressed - teacher.numpy()) ** 2)), rel=1e-5)
    assert tuple(loss.regressor.weight.shape) == (32, 16, 3, 3)


def test_objectives_sum_their_named_terms_by_the_configured_weights():
    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    logits, features = torch.randn(8, 10), torch.randn(8, 16, 8, 8)
    batch = Batch(torch.randint(0, 10, (8,)), torch.randn(8, 10), torch.randn(8, 32, 8, 8))
    expected_terms = {"distill_kd": {"soft_target", "ce"}, "distill_cosine": {"hidden_rep", "ce"},
                      "distill_regressor": {"feature_map", "ce"}, "train_student_ce": {"ce"}}
    for stage, names in expected_terms.items():
        objective = build_objective(stage, params)
        total, terms = objective(StudentOutput(logits, features), batch)
        assert set(terms) == names
        weighted = sum(objective.weights[name] * value for name, value in terms.items())
        assert total.item() == pytest.approx(weighted.item())
        assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, batch.labels).item())
    kd = build_objective("distill_kd", params)
    assert kd.weights == {"soft_target": 0.25, "ce": 0.75}
    assert kd.loss.temperature == 2


def test_cross_entropy_objective_needs_no_teacher():
    assert CrossEntropyObjective().teacher_outputs == frozenset()


def test_cached_teacher_outputs_give_the_same_losses_as_a_live_teacher():
    from kdistill.engine import DeviceImages, resolve_runtime, teacher_outputs

    torch.manual_seed(0)
    teacher, student = DeepNN(), LightNN()
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    data = DeviceImages(images, labels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), torch.device("cpu"))
    runtime = resolve_runtime("cpu", "fp32")
    cached = teacher_outputs(teacher, data, runtime)
    index = torch.tensor([5, 17, 3, 60])
    params = load_params(ROOT / "params.yaml")
    teacher.eval()
    with torch.no_grad():
        live_features = teacher.forward_features(data.inputs(index))
        live = Batch(labels[index], teacher.forward_head(live_features), live_features)
    from_cache = Batch(labels[index], cached["logits"][index], cached["features"][index])
    features = student.forward_features(data.inputs(index))
    out = StudentOutput(student.forward_head(features), features)
    for stage in ("distill_kd", "distill_cosine", "distill_regressor"):
        torch.manual_seed(1)
        objective = build_objective(stage, params)
        assert objective(out, from_cache)[0].item() == pytest.approx(objective(out, live)[0].item(), rel=1e-5, abs=1e-6)
