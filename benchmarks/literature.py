"""Side by side: the literature's way of training a CRD pair against this project's engine, one epoch each.

    PYTHONPATH=src python -m benchmarks.literature [--dataset data/dataset.pt] [--images 10000]
        [--teacher resnet20] [--student resnet8] [--precision fp32]

The literature's way is written as plainly as the CRD-recipe code bases (RepDistiller's
``train_student.py``, mdistiller's trainer) write it: a ``Dataset`` that hands out PIL images, torchvision's
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()`` and ``Normalize`` per image, a
``DataLoader`` with 2 workers (this machine's cores), the teacher's forward on every batch, SGD
(lr 0.05, momentum 0.9, weight decay 5e-4) with the multi-step schedule, KD at T=4 weighted 0.9
against cross-entropy at 0.1, ``loss.item()`` per step for the running average, then the test set
through a ``DataLoader``. The project's way is ``kdistill.core.engine.train``, what the stages run,
with the same recipe: images on the device normalized once, crop and flip as one gather per batch,
the teacher run per batch in eval mode, channels_last, a fused SGD, one host sync per epoch.

Both start from the same decoded images (the first ``--images`` of the prepared training set, all of
its test set), the same pair and initial weights, the same precision and threads. The ratio is
what to read. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdistill.control.params import load_params
from kdistill.core.data import DeviceImages, LiveTeacher
from kdistill.core.engine import train
from kdistill.core.networks import build_model
from kdistill.core.objectives import Objective, Term, cross_entropy
from kdistill.core.recipe import Recipe
from kdistill.core.runtime import Runtime, make_reproducible, resolve_runtime
from kdistill.entry import configure_process
from kdistill.methods.kd.losses import SoftTargetLoss
from kdistill.sources.dataset import ImageDataset

BATCH_SIZE, LR, MOMENTUM, WEIGHT_DECAY, MILESTONES = 64, 0.05, 0.9, 5e-4, [150, 180, 210]
T, KD_WEIGHT, CE_WEIGHT = 4.0, 0.9, 0.1


class PILImages(Dataset):
    """torchvision's CIFAR datasets: a uint8 HWC array per image, made a PIL image, then transformed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: object) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class DistillKL(nn.Module):
    """RepDistiller's ``distiller_zoo/KD.py``: KL(teacher_T || student_T), summed, times T² over the batch."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p_s = F.log_softmax(student / T, dim=1)
        p_t = F.softmax(teacher / T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * T**2 / student.shape[0]


def literatures_way(dataset: ImageDataset, mean: list[float], std: list[float], teacher: nn.Module,
                    student: nn.Module) -> float:
    """One epoch and a test pass, as the CRD code bases run them; the accuracy."""
    from torchvision import transforms

    normalize = transforms.Normalize(mean, std)
    train_transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                          transforms.ToTensor(), normalize])
    test_transform = transforms.Compose([transforms.ToTensor(), normalize])
    train_loader = DataLoader(PILImages(dataset.train_images, dataset.train_labels, train_transform),
                              batch_size=BATCH_SIZE, shuffle=True, num_workers=2)
    test_loader = DataLoader(PILImages(dataset.test_images, dataset.test_labels, test_transform),
                             batch_size=BATCH_SIZE, num_workers=2)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, MILESTONES, gamma=0.1)
    kd, losses = DistillKL(), []
    student.train()
    teacher.eval()
    for images, labels in train_loader:
        logits = student(images)
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = CE_WEIGHT * F.cross_entropy(logits, labels) + KD_WEIGHT * kd(logits, teacher_logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # their AverageMeter: a host sync per step
    schedule.step()
    student.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (student(images).argmax(1) == labels).sum().item()
    return 100.0 * correct / len(test_loader.dataset)


def projects_way(dataset: ImageDataset, mean: list[float], std: list[float], teacher: nn.Module, student: nn.Module,
                 runtime: Runtime) -> float:
    train_data = DeviceImages(dataset.train_images, dataset.train_labels, mean, std, runtime)
    test_data = DeviceImages(dataset.test_images, dataset.test_labels, mean, std, runtime)
    objective = Objective([Term("soft_target", KD_WEIGHT, SoftTargetLoss(T), ("student_logits", "teacher_logits")),
                           cross_entropy(CE_WEIGHT)])
    recipe = Recipe(epochs=1, batch_size=BATCH_SIZE, optimizer="sgd", lr=LR, momentum=MOMENTUM,
                    weight_decay=WEIGHT_DECAY, schedule="multistep", milestones=tuple(MILESTONES), augment="crop_flip")
    live = LiveTeacher(teacher.to(runtime.device, memory_format=torch.channels_last), frozenset({"logits"}), runtime)
    history = train(student.to(runtime.device, memory_format=torch.channels_last), objective, train_data, test_data,
                    runtime, stage="project", recipe=recipe, seed=0, teacher=live)
    return history[-1].test_accuracy


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="data/dataset.pt", help="prepared images (`dvc repro download`)")
    parser.add_argument("--params", default="params.yaml", help="for data.mean and data.std")
    parser.add_argument("--images", type=int, default=10_000, help="training images (the first N)")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="both ways (the literature's code has no mixed precision: bf16 runs it under autocast)")
    args = parser.parse_args(argv)
    configure_process()
    params = load_params(args.params, only_known_sections=True)
    full = ImageDataset.load(Path(args.dataset))
    dataset = ImageDataset(full.train_images[:args.images], full.train_labels[:args.images], full.test_images,
                           full.test_labels, full.classes)
    runtime = resolve_runtime("cpu", args.precision)
    make_reproducible(runtime)
    classes = len(dataset.classes)

    def pair() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        return build_model(args.teacher, classes), build_model(args.student, classes)

    print(f"benchmark: one epoch of KD {args.teacher} -> {args.student} on {len(dataset.train_labels)} images, "
          f"batch {BATCH_SIZE}, {args.precision}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    seconds, accuracies = {}, {}
    for name, run in (("literature's way", lambda t, s: literatures_way(dataset, params.data.mean, params.data.std, t, s)),
                      ("project", lambda t, s: projects_way(dataset, params.data.mean, params.data.std, t, s, runtime))):
        teacher, student = pair()
        started = time.perf_counter()
        with runtime.autocast():
            accuracies[name] = run(teacher, student)
        seconds[name] = time.perf_counter() - started
        print(f"benchmark: {name}: {seconds[name]:.1f} s, test accuracy {accuracies[name]:.2f}%", flush=True)
    table = pd.DataFrame({"seconds (epoch + test)": seconds, "images/s": {
        k: len(dataset.train_labels) / v for k, v in seconds.items()}, "test accuracy %": accuracies})
    table.loc["speed-up", "seconds (epoch + test)"] = seconds["literature's way"] / seconds["project"]
    print(table.astype(object).where(table.notna(), None).to_markdown(floatfmt=".2f", missingval=""))
    return table


if __name__ == "__main__":
    main()
