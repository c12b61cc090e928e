"""Each loss against golden values or an independent numpy computation of its paper's formula, and
each method's weights against the terms they must multiply (a swap fails)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.control.registry import METHODS
from kdistill.core.networks import DeepNN, LightNN
from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy
from kdistill.methods.attention.losses import AttentionTransferLoss
from kdistill.methods.cosine.losses import HiddenCosineLoss
from kdistill.methods.dkd.losses import NonTargetClassLoss, TargetClassLoss
from kdistill.methods.kd.losses import SoftTargetLoss
from kdistill.methods.regressor.losses import FeatureRegressorLoss

SHAPES = Shapes(student=LightNN.feature_shape, teacher=DeepNN.feature_shape)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def tensor(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


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
    expected = np.sum(soft_targets * (np.log(soft_targets) - np.log(softmax(s / T)))) / len(s) * T**2
    assert SoftTargetLoss(T)(tensor(s), tensor(t)).item() == pytest.approx(expected, rel=1e-5)


def test_hidden_cosine_loss_pools_the_teacher_and_matches_numpy():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(4, 16, 8, 8)), rng.normal(size=(4, 32, 8, 8))
    s = student.reshape(4, -1)
    t = teacher.reshape(4, 1024, 2).mean(axis=2)  # avg_pool1d, kernel 2: 2048 -> 1024
    cos = np.sum(s * t, axis=1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
    loss = HiddenCosineLoss(1024, 2048)(tensor(student), tensor(teacher)).item()
    assert loss == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)
    same = tensor(rng.normal(size=(3, 16, 8, 8)))
    assert HiddenCosineLoss(1024, 2048)(same, same.repeat_interleave(2, dim=-1)).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_regressor_loss_is_mse_of_the_regressor_output():
    torch.manual_seed(0)
    loss = FeatureRegressorLoss((16, 8, 8), (32, 8, 8))
    student, teacher = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 8, 8)
    regressed = F.conv2d(student, loss.regressor.weight, loss.regressor.bias, padding=1).detach().numpy()
    assert loss(student, teacher).item() == pytest.approx(float(np.mean((regressed - teacher.numpy()) ** 2)), rel=1e-5)


def test_dkd_terms_match_the_papers_formulas_in_numpy():
    """TCKD = KL(b_t || b_s) T² over [p_target, 1 - p_target]; NCKD = KL over the renormalized non-target
    probabilities, T²; both averaged over the batch (Zhao et al. 2022, eq. 1-4)."""
    rng = np.random.default_rng(2)
    s, t, y, T = rng.normal(size=(8, 10)) * 3, rng.normal(size=(8, 10)) * 3, rng.integers(0, 10, 8), 4.0
    ps, pt, rows = softmax(s / T), softmax(t / T), np.arange(8)
    b_s = np.stack([ps[rows, y], 1 - ps[rows, y]], axis=1)
    b_t = np.stack([pt[rows, y], 1 - pt[rows, y]], axis=1)
    tckd = np.sum(b_t * np.log(b_t / b_s)) / 8 * T**2
    others = np.ones_like(s, dtype=bool)
    others[rows, y] = False
    q_s = np.where(others, ps, 0) / np.where(others, ps, 0).sum(axis=1, keepdims=True)
    q_t = np.where(others, pt, 0) / np.where(others, pt, 0).sum(axis=1, keepdims=True)
    nckd = np.sum(np.where(others, q_t * np.log(np.where(others, q_t / np.where(others, q_s, 1), 1)), 0)) / 8 * T**2
    labels = torch.tensor(y)
    assert TargetClassLoss(T)(tensor(s), tensor(t), labels).item() == pytest.approx(tckd, rel=1e-5)
    assert NonTargetClassLoss(T)(tensor(s), tensor(t), labels).item() == pytest.approx(nckd, rel=1e-5)
    # A student that matches the teacher exactly pays nothing in either term.
    assert TargetClassLoss(T)(tensor(t), tensor(t), labels).item() == pytest.approx(0.0, abs=1e-6)
    assert NonTargetClassLoss(T)(tensor(t), tensor(t), labels).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_transfer_matches_the_papers_formula_in_numpy():
    rng = np.random.default_rng(3)
    student, teacher = rng.normal(size=(4, 16, 8, 8)), rng.normal(size=(4, 32, 8, 8)) * 5

    def attention(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = np.mean((attention(student) - attention(teacher)) ** 2)
    assert AttentionTransferLoss()(tensor(student), tensor(teacher)).item() == pytest.approx(expected, rel=1e-5)
    # Invariant to each map's scale: only where the network attends matters.
    assert AttentionTransferLoss()(tensor(teacher), tensor(teacher) * 3).item() == pytest.approx(0.0, abs=1e-7)


def test_for_the_tutorials_pair_the_feature_losses_are_the_tutorials_computation_to_the_bit():
    # The tutorial's own code (shared/seed): CosineEmbeddingLoss(target 1) against the teacher's
    # avg_pool1d(2048 -> 1024); its regressor Conv2d(16, 32, 3, padding=1) then MSELoss.
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 16, 8, 8), torch.randn(8, 32, 8, 8)
    pooled_teacher = F.avg_pool1d(torch.flatten(teacher, 1), 2)
    cosine = torch.nn.CosineEmbeddingLoss()(torch.flatten(student, 1), pooled_teacher, torch.ones(8))
    assert torch.allclose(HiddenCosineLoss(1024, 2048)(student, teacher), cosine, rtol=1e-6, atol=1e-7)
    ours = HiddenCosineLoss(1024, 2048)(student, teacher)
    expected = (1 - F.cosine_similarity(torch.flatten(student, 1), pooled_teacher, dim=1)).mean()
    assert torch.equal(ours, expected)
    torch.manual_seed(1)
    tutorials = torch.nn.Conv2d(16, 32, kernel_size=3, padding=1)
    torch.manual_seed(1)
    hint = FeatureRegressorLoss((16, 8, 8), (32, 8, 8))
    assert isinstance(hint.regressor, torch.nn.Conv2d)
    assert torch.equal(hint(student, teacher), torch.nn.MSELoss()(tutorials(student), teacher))
    maps = AttentionTransferLoss()(student, teacher)
    assert torch.equal(maps, (F.normalize(student.pow(2).mean(1).flatten(1)) -
                              F.normalize(teacher.pow(2).mean(1).flatten(1))).pow(2).mean())


@pytest.mark.parametrize(("student", "teacher"), [("ShuffleV1", "resnet32x4"), ("mobile_half", "vgg13"),
                                                  ("resnet8x4", "ShuffleV2"), ("wrn_16_2", "wrn_40_2")])
def test_every_feature_method_fits_any_pair_with_the_references_adaptations(student, teacher):
    from kdistill.core.networks import feature_shape

    shapes = Shapes(feature_shape(student), feature_shape(teacher))
    values = {"labels": torch.randint(0, 100, (4,)), "progress": 1.0,
              "student_logits": torch.randn(4, 100), "teacher_logits": torch.randn(4, 100),
              "student_features": torch.randn(4, *shapes.student).relu(),
              "teacher_features": torch.randn(4, *shapes.teacher).relu()}
    for name in ("distill_attention", "distill_cosine", "distill_regressor"):
        total, _ = METHODS[name].build_objective(METHODS[name].params(), shapes)(values)
        assert torch.isfinite(total), name
    # The hint's regressor brings the student's map to the teacher's shape, as ConvReg does.
    regressor = METHODS["distill_regressor"].build_objective(METHODS["distill_regressor"].params(), shapes)
    mapped = regressor.losses["feature_map"].regressor(values["student_features"])
    assert tuple(mapped.shape[1:]) == shapes.teacher


def test_the_hint_refuses_a_student_map_smaller_than_the_teachers_but_half():
    with pytest.raises(ValueError, match="from a larger map or from half its size"):
        FeatureRegressorLoss((1280, 2, 2), (256, 8, 8))


def test_attention_maps_of_different_sizes_meet_at_the_smaller():
    rng = np.random.default_rng(4)
    student, teacher = tensor(rng.normal(size=(2, 8, 4, 4))), tensor(rng.normal(size=(2, 16, 8, 8)))
    pooled = F.adaptive_avg_pool2d(teacher, (4, 4))
    assert torch.equal(AttentionTransferLoss()(student, teacher), AttentionTransferLoss()(student, pooled))
    assert torch.equal(AttentionTransferLoss()(teacher, student), AttentionTransferLoss()(pooled, student))


# Which params key weights which term: written here independently of the method modules.
WEIGHT_OF_TERM = {
    "distill_kd": {"soft_target": "soft_target_loss_weight", "ce": "ce_loss_weight"},
    "distill_cosine": {"hidden_rep": "hidden_rep_loss_weight", "ce": "ce_loss_weight"},
    "distill_regressor": {"feature_map": "feature_map_weight", "ce": "ce_loss_weight"},
    "distill_dkd": {"tckd": "alpha", "nckd": "beta", "ce": "ce_loss_weight"},
    "distill_attention": {"attention": "beta", "ce": "ce_loss_weight"},
}


def batch_values(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"labels": torch.randint(0, 10, (8,), generator=g),
            "student_logits": torch.randn(8, 10, generator=g) * 3,
            "student_features": torch.randn(8, 16, 8, 8, generator=g).abs(),
            "teacher_logits": torch.randn(8, 10, generator=g) * 3,
            "teacher_features": torch.randn(8, 32, 8, 8, generator=g).abs(),
            "progress": 5.0}


def test_every_method_is_covered_here():
    assert set(WEIGHT_OF_TERM) == set(METHODS)


@pytest.mark.parametrize("name", sorted(WEIGHT_OF_TERM))
def test_each_weight_multiplies_its_own_term(name):
    method = METHODS[name]
    keys = WEIGHT_OF_TERM[name]
    # Distinct weights (primes), so that any swap changes the total.
    weights = dict(zip(keys.values(), (0.3, 0.7, 1.1)[:len(keys)], strict=True))
    params = method.params(**{**method.params().model_dump(), **weights})
    torch.manual_seed(0)
    objective = method.build_objective(params, SHAPES)
    values = batch_values()
    total, terms = objective(values)
    assert set(terms) == set(keys)
    expected = sum(weights[keys[term]] * value for term, value in terms.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    values_by_term = sorted(terms.values(), key=lambda v: v.item())
    assert len({round(v.item(), 6) for v in values_by_term}) == len(terms), "terms must differ for the check to bite"
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(values["student_logits"], values["labels"]).item())


def test_objectives_combine_terms_without_a_new_class():
    kd = METHODS["distill_kd"].build_objective(METHODS["distill_kd"].params(), SHAPES)
    hint = METHODS["distill_regressor"].build_objective(METHODS["distill_regressor"].params(), SHAPES)
    combined = Objective([*kd.terms, *(t for t in hint.terms if t.name != "ce")])
    assert combined.teacher_outputs == {"logits", "features"}
    total, terms = combined(batch_values())
    assert set(terms) == {"soft_target", "feature_map", "ce"}
    assert len(list(combined.parameters())) == 2, "the regressor's weight and bias train with the student"
    # The published weights, written out: 0.25 for each distillation term, 0.75 for cross-entropy.
    expected = 0.25 * terms["soft_target"] + 0.25 * terms["feature_map"] + 0.75 * terms["ce"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_warm_up_ramps_a_terms_weight_linearly():
    term = Term("kd", 8.0, SoftTargetLoss(4.0), ("student_logits", "teacher_logits"), warmup_epochs=2.0)
    assert [term.scale(p) for p in (0.0, 0.5, 1.0, 2.0, 7.0)] == [0.0, 2.0, 4.0, 8.0, 8.0]
    objective = Objective([term, cross_entropy(1.0)])
    values = batch_values()
    early, terms = objective({**values, "progress": 0.5})
    assert early.item() == pytest.approx(2.0 * terms["kd"].item() + terms["ce"].item(), rel=1e-6)


def test_unknown_inputs_and_duplicate_terms_are_refused():
    with pytest.raises(ValueError, match="unknown inputs"):
        Term("x", 1.0, SoftTargetLoss(1.0), ("student_logits", "teacher_probs"))
    with pytest.raises(ValueError, match="distinct names"):
        Objective([cross_entropy(), cross_entropy()])


def test_neutral_params_line_the_methods_up():
    kd = METHODS["distill_kd"].build_objective(METHODS["distill_kd"].params(), SHAPES)
    dkd = METHODS["distill_dkd"].build_objective(METHODS["distill_dkd"].params(), SHAPES)
    assert kd.neutral_params() == {"ce_loss_weight": 0.75, "distill_loss_weight": 0.25}
    assert dkd.neutral_params() == {"ce_loss_weight": 1.0, "distill_loss_weight": 9.0}
    assert Objective([cross_entropy()]).neutral_params() == {"ce_loss_weight": 1.0, "distill_loss_weight": 0}
