import io

import numpy as np
import pytest
import torch

from fakedata import class_images
from kdistill.control.registry import METHODS
from kdistill.core.data import CachedTeacher, DeviceImages, LiveTeacher, teacher_outputs
from kdistill.core.engine import evaluate, latency_ms, train
from kdistill.core.networks import DeepNN, LightNN
from kdistill.core.objectives import Objective, Shapes, cross_entropy
from kdistill.core.recipe import CropFlip, Recipe
from kdistill.core.runtime import Runtime, cpu_has_bf16, resolve_runtime
from kdistill.errors import ConfigError, TrainingError
from kdistill.methods.baselines.spec import STUDENT_CE

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU32 = resolve_runtime("cpu", "fp32")
SHAPES = Shapes(LightNN.feature_shape, DeepNN.feature_shape)


def raw_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(n) % 10
    return torch.from_numpy(class_images(labels, np.random.default_rng(seed))), torch.from_numpy(labels)


def split(n: int, seed: int, runtime: Runtime = CPU32, std: tuple[float, ...] = STD) -> DeviceImages:
    return DeviceImages(*raw_split(n, seed), MEAN, std, runtime)


def objective(name: str) -> Objective:
    method = METHODS[name]
    return method.build_objective(method.params(), SHAPES)


@pytest.mark.parametrize(("flags", "native"), [("fpu sse avx512f", False), ("fpu avx512f avx512_bf16 sse", True),
                                               ("amx_tile amx_bf16", True), ("avx512_bf16x", False)])
def test_bf16_is_native_only_with_the_kernels_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(cpuinfo) is native
    assert cpu_has_bf16(tmp_path / "absent") is False


def test_runtime_resolution():
    assert resolve_runtime("cpu", "fp32").autocast_dtype is None
    assert resolve_runtime("cpu", "bf16").autocast_dtype == torch.bfloat16
    assert resolve_runtime("cpu", "auto").precision == ("bf16" if cpu_has_bf16() else "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device is 'cuda'"):
            resolve_runtime("cuda", "auto")


def test_images_are_normalized_once_into_what_the_first_convolution_reads():
    images, labels = raw_split(300, 3)  # more than one normalization chunk
    tutorial = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    fp32, bf16 = DeviceImages(images, labels, MEAN, STD, CPU32), split(300, 3, resolve_runtime("cpu", "bf16"))
    index = torch.tensor([299, 0, 7, 150])
    for data, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        batch = data.inputs(index)
        assert batch.dtype == dtype and batch.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(data.labels[index], labels[index])
    assert torch.allclose(fp32.inputs(index), tutorial[index], atol=1e-5)  # ToTensor + Normalize, to rounding
    # Under bf16 autocast the first convolution rounds its fp32 input to bf16: the stored bf16
    # images are exactly those values, so the networks compute what they would from fp32 inputs.
    assert torch.equal(bf16.inputs(index), fp32.inputs(index).bfloat16())
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(conv(bf16.inputs(index)), conv(fp32.inputs(index)))


def test_the_fused_adam_is_the_tutorials_update_rule():
    torch.manual_seed(0)
    ours, tutorials = LightNN(), LightNN()
    tutorials.load_state_dict(ours.state_dict())
    fused, plain = Recipe(lr=0.001).make_optimizer(ours.parameters()), torch.optim.Adam(tutorials.parameters(), lr=0.001)
    assert fused.defaults["fused"] and (fused.defaults["betas"], fused.defaults["eps"]) == ((0.9, 0.999), 1e-8)
    initial = [p.detach().clone() for p in ours.parameters()]
    for _ in range(20):  # the same gradients on both sides: the update rules alone are compared
        for a, b in zip(ours.parameters(), tutorials.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    assert all((p != before).all() for p, before in zip(ours.parameters(), initial, strict=True))  # every weight moved
    for a, b in zip(ours.parameters(), tutorials.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)  # the same rule, rounded differently in the last bits


def test_auto_picks_cuda_then_mps_with_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    runtime = resolve_runtime()
    assert (runtime.device.type, runtime.autocast_dtype, runtime.input_dtype) == ("cuda", torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_runtime().precision == "fp32" and resolve_runtime().input_dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert (resolve_runtime().device.type, resolve_runtime().precision) == ("mps", "fp32")


# In a fresh process: the settings are process-wide, and this one goes on testing.
REPRODUCIBLE = """
import json, os, torch
from kdistill.core.runtime import Runtime, make_reproducible
make_reproducible(Runtime(torch.device("cpu"), None))
before = [torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
          torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision]
make_reproducible(Runtime(torch.device("cuda"), None))  # no GPU needed to set them
after = [torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
         torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
         torch.backends.cudnn.benchmark]
print(json.dumps([before, after]))
"""


def test_a_cuda_training_is_made_deterministic_and_ieee_fp32_a_cpu_one_left_alone():
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "CUBLAS_WORKSPACE_CONFIG"}
    result = subprocess.run([sys.executable, "-c", REPRODUCIBLE], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before[:2] == [False, None] and "ieee" not in before[2:]
    assert after == [True, ":4096:8", "ieee", "ieee", False]


def test_images_are_prepared_on_the_runtimes_device():
    # A "meta" device stands in for a GPU: the split must be prepared there, not on the CPU.
    images, labels = raw_split(20, 5)
    data = DeviceImages(images, labels, MEAN, STD, Runtime(torch.device("meta"), torch.bfloat16))
    batch = data.inputs(torch.arange(4, device="meta"))
    assert batch.device.type == data.labels.device.type == "meta"
    assert batch.dtype == torch.bfloat16 and batch.is_contiguous(memory_format=torch.channels_last)


def live_teacher(teacher: DeepNN, data: DeviceImages, runtime) -> torch.Tensor:
    """The tutorial's per-batch teacher forward (batches of 128 there, 7 here) under ``runtime``'s precision."""
    with torch.no_grad(), runtime.autocast():
        return torch.cat([teacher(data.inputs(slice(i, i + 7))).float() for i in range(0, len(data), 7)])


def test_teacher_outputs_are_eval_mode_fp32_and_equal_a_live_forward():
    torch.manual_seed(0)
    teacher = DeepNN()
    teacher.train()  # dropout would make two passes differ; teacher_outputs must switch it off
    data = split(40, 0)
    first = teacher_outputs(teacher, data, CPU32)
    second = teacher_outputs(teacher, data, CPU32)
    assert not teacher.training and torch.equal(first["logits"], second["logits"])
    assert first["logits"].dtype == first["features"].dtype == torch.float32
    assert tuple(first["features"].shape) == (40, *DeepNN.feature_shape)
    assert torch.allclose(first["logits"], live_teacher(teacher, data, CPU32), rtol=1e-5, atol=1e-5)


def test_teacher_outputs_follow_the_training_precision():
    torch.manual_seed(0)
    teacher, data, bf16 = DeepNN(), split(40, 0), resolve_runtime("cpu", "bf16")
    fp32, rounded = teacher_outputs(teacher, data, CPU32), teacher_outputs(teacher, data, bf16)
    assert rounded["logits"].dtype == rounded["features"].dtype == torch.float32  # stored in fp32 either way
    # bf16 values: each stored number survives a round trip through bfloat16
    assert torch.equal(rounded["features"], rounded["features"].bfloat16().float())
    assert torch.allclose(rounded["logits"], live_teacher(teacher, data, bf16), rtol=0.02, atol=0.02)
    assert not torch.equal(rounded["logits"], fp32["logits"])
    assert torch.allclose(rounded["logits"], fp32["logits"], rtol=0.05, atol=0.05)


def test_latency_is_timed_in_eval_mode_and_leaves_the_weights_alone():
    torch.manual_seed(0)
    model = LightNN(num_classes=10).train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    milliseconds = latency_ms(model, CPU32, repeats=3)
    assert 0 < milliseconds < 60_000 and not model.training  # dropout off, as in any inference
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_training_learns_and_trains_the_regressor_too():
    torch.manual_seed(0)
    train_data, test_data = split(200, 1), split(100, 2)
    teacher = teacher_outputs(DeepNN(), train_data, CPU32)
    torch.manual_seed(0)
    student = LightNN()
    hint = objective("distill_regressor")
    regressor = hint.losses["feature_map"].regressor
    regressor_before = regressor.weight.detach().clone()
    before = evaluate(student, test_data, CPU32)
    seen = []
    history = train(student, hint, train_data, test_data, CPU32, stage="distill_regressor",
        recipe=Recipe(epochs=3, batch_size=32, lr=0.003), seed=0, teacher=CachedTeacher(teacher), on_epoch=seen.append)
    assert [r.epoch for r in history] == [1, 2, 3] and seen == history
    assert not torch.equal(regressor.weight, regressor_before), "the regressor did not train"
    assert set(history[0].terms) == {"feature_map", "ce"}
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].test_accuracy > max(before, 50.0)


def test_checkpoint_comes_before_the_epoch_is_reported():
    events = []
    train(LightNN(), Objective([cross_entropy()]), split(32, 1), split(10, 2), CPU32, stage="s",
        recipe=Recipe(epochs=2, batch_size=16, lr=0.001), seed=0, on_epoch=lambda r: events.append(("epoch", r.epoch)),
          on_checkpoint=lambda state: events.append(("checkpoint", state["epoch"])))
    assert events == [("checkpoint", 1), ("epoch", 1), ("checkpoint", 2), ("epoch", 2)]


def test_warm_up_sees_training_progress():
    seen: list[float] = []

    class Recorder(torch.nn.Module):
        def forward(self, progress: float) -> torch.Tensor:
            seen.append(progress)
            return torch.zeros(())

    from kdistill.core.objectives import Term

    recorder = Objective([cross_entropy(), Term("progress", 0.0, Recorder(), ("progress",))])
    train(LightNN(), recorder, split(40, 1), split(10, 2), CPU32, stage="s",
        recipe=Recipe(epochs=2, batch_size=16, lr=0.001), seed=0)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3, 2.0])


def test_same_seed_same_result():
    def run() -> list[float]:
        torch.manual_seed(3)
        history = train(LightNN(), objective("distill_kd"), split(64, 1), split(30, 2), CPU32, stage="distill_kd",
                        recipe=Recipe(epochs=2, batch_size=16, lr=0.001), seed=3,
                        teacher=CachedTeacher(teacher_outputs(DeepNN(), split(64, 1), CPU32)))
        return [r.train_loss for r in history] + [r.test_accuracy for r in history]

    assert run() == run()


def test_non_finite_loss_stops_naming_stage_epoch_and_first_bad_batch():
    torch.manual_seed(0)
    blown_up = split(64, 1, std=(1e-45,) * 3)  # 1/(255 std) overflows: inputs become inf/NaN -> NaN loss
    checkpoints = []
    with pytest.raises(TrainingError, match=r"train_student_ce: loss became nan at epoch 1, batch 1/4"):
        train(LightNN(), STUDENT_CE.build_objective(None, SHAPES), blown_up, split(10, 2), CPU32,
              stage="train_student_ce",
                  recipe=Recipe(epochs=1, batch_size=16, lr=0.001), seed=0, on_checkpoint=checkpoints.append)
    assert checkpoints == [], "nothing may be saved from a diverged epoch"


def test_a_resumed_distillation_continues_its_trained_regressor_exactly():
    torch.manual_seed(0)
    train_data, test_data = split(96, 1), split(30, 2)
    teacher = teacher_outputs(DeepNN(), train_data, CPU32)

    def fresh() -> tuple[LightNN, Objective]:
        torch.manual_seed(5)  # the stage seeds before building both
        return LightNN(), objective("distill_regressor")

    common = dict(stage="distill_regressor",
        recipe=Recipe(epochs=3, batch_size=32, lr=0.003), seed=5, teacher=CachedTeacher(teacher))
    model, hint = fresh()
    states = []

    def save(state: dict) -> None:  # as the stage does: to bytes at once (the state holds live tensors)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        states.append(buffer.getvalue())

    reference = train(model, hint, train_data, test_data, CPU32, on_checkpoint=save, **common)
    resumed_model, resumed_hint = fresh()  # a new process: fresh objects, the state from disk
    torch.manual_seed(123)  # whatever the RNG did since: the state restores it
    after_epoch_1 = torch.load(io.BytesIO(states[0]), weights_only=True)
    resumed = train(resumed_model, resumed_hint, train_data, test_data, CPU32, resume_from=after_epoch_1, **common)
    assert [r.train_loss for r in resumed] == [r.train_loss for r in reference]
    assert [r.test_accuracy for r in resumed] == [r.test_accuracy for r in reference]
    regressor = resumed_hint.losses["feature_map"].regressor.weight
    assert torch.equal(regressor, hint.losses["feature_map"].regressor.weight)


def test_the_schedules_set_each_epochs_rate():
    def rates(recipe: Recipe) -> list[float]:
        optimizer = recipe.make_optimizer([torch.nn.Parameter(torch.zeros(1))])
        schedule = recipe.make_schedule(optimizer)
        seen = []
        for _ in range(recipe.epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    assert rates(Recipe(epochs=3, lr=0.5)) == [0.5, 0.5, 0.5]
    # The literature's: the rate of epoch e + 1 is multiplied by the decay once for each milestone <= e.
    multistep = rates(Recipe(epochs=5, lr=1.0, schedule="multistep", milestones=(2, 4), lr_decay=0.1))
    assert multistep == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    assert rates(Recipe(epochs=4, lr=1.0, schedule="cosine")) == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    sgd = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4).make_optimizer(
        [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["fused"]
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"], sgd.defaults["weight_decay"]) == (0.9, True, 5e-4)


def test_crop_and_flip_make_the_image_torchvisions_transforms_make_for_the_same_offsets_and_flip():
    import torchvision.transforms.functional as TF

    images, _ = raw_split(6, 4)
    data = split(6, 4)
    augmented = CropFlip(data.black, torch.Generator().manual_seed(9))(data.inputs(torch.arange(6)))
    draws = torch.Generator().manual_seed(9)  # the same draws, in the same order
    offsets = torch.randint(0, 9, (6, 2), generator=draws)
    flips = torch.randint(0, 2, (6,), generator=draws).bool()
    assert augmented.is_contiguous(memory_format=torch.channels_last)
    for i in range(6):
        # The literature's order: pad the uint8 image with black, crop, flip, then ToTensor + Normalize.
        picture = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            picture = TF.hflip(picture)
        expected = TF.normalize(picture.float() / 255, MEAN, STD)
        assert torch.allclose(augmented[i], expected, atol=1e-5), i
    assert flips.any() and not flips.all()


class _Spy(torch.nn.Module):
    """A network that records what its forward_features sees."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.seen = network, []

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        return self.network.forward_features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.forward_head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # evaluation: not recorded
        return self.network(images)


def test_with_augmentation_the_teacher_runs_on_each_augmented_batch_in_eval_mode():
    torch.manual_seed(0)
    train_data, test_data = split(48, 1), split(10, 2)
    teacher, student = _Spy(DeepNN().train()), _Spy(LightNN())
    recipe = Recipe(epochs=1, batch_size=16, augment="crop_flip")
    train(student, objective("distill_kd"), train_data, test_data, CPU32, stage="distill_kd", recipe=recipe, seed=1,
          teacher=LiveTeacher(teacher, frozenset({"logits"}), CPU32))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    steps = len(teacher.seen)
    assert steps == 3 and all(torch.equal(t, s) for t, s in zip(teacher.seen, student.seen[:steps], strict=True))
    order = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(teacher.seen[0], train_data.inputs(order[:16])), "the batch was not augmented"


def test_without_augmentation_the_objective_reads_the_cached_outputs():
    torch.manual_seed(0)
    train_data = split(32, 1)
    cache = {"logits": torch.randn(32, 10)}
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            seen.append((teacher_logits, labels))
            return torch.zeros(())

    from kdistill.core.objectives import Term

    recorder = Objective([cross_entropy(), Term("t", 0.0, Recorder(), ("teacher_logits", "labels"))])
    train(LightNN(), recorder, train_data, split(10, 2), CPU32, stage="s", recipe=Recipe(epochs=1, batch_size=8),
          seed=2, teacher=CachedTeacher(cache))
    order = torch.randperm(32, generator=torch.Generator().manual_seed(2))
    for step, (logits, labels) in enumerate(seen):
        index = order[step * 8:(step + 1) * 8]
        assert torch.equal(logits, cache["logits"][index])
        assert torch.equal(labels, train_data.labels[index])


def test_a_resumed_literature_recipe_continues_exactly():
    # SGD with momentum, a multi-step schedule, crop + flip and a teacher run per batch: every piece
    # of state (momentum buffers, the schedule, the crops' generator) must survive the restart.
    torch.manual_seed(0)
    train_data, test_data = split(64, 1), split(20, 2)
    torch.manual_seed(1)
    teacher = LiveTeacher(DeepNN(), frozenset({"logits"}), CPU32)
    recipe = Recipe(epochs=3, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
                    schedule="multistep", milestones=(1, 2), augment="crop_flip")
    common = dict(stage="distill_kd", recipe=recipe, seed=4, teacher=teacher)
    states = []

    def save(state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        states.append(buffer.getvalue())

    torch.manual_seed(4)
    model = LightNN()
    reference = train(model, objective("distill_kd"), train_data, test_data, CPU32, on_checkpoint=save, **common)
    torch.manual_seed(4)
    resumed_model = LightNN()
    torch.manual_seed(99)
    resumed = train(resumed_model, objective("distill_kd"), train_data, test_data, CPU32,
                    resume_from=torch.load(io.BytesIO(states[0]), weights_only=True), **common)
    assert [r.train_loss for r in resumed] == [r.train_loss for r in reference]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values(),
                                                 strict=True))
