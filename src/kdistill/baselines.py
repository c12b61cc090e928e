"""The two trainings every method is measured against: the teacher and the cross-entropy student."""

from __future__ import annotations

from kdistill.config import Section, Seed
from kdistill.methods import Method
from kdistill.objectives import Objective, Shapes, cross_entropy


class TeacherParams(Section):
    # Its own key: adding student seeds must not retrain the (slow) teacher.
    seed: Seed = 42


def _cross_entropy_only(params: Section | None, shapes: Shapes) -> Objective:
    return Objective([cross_entropy()])


TEACHER = Method(
    name="train_teacher",
    label="Teacher (DeepNN, CE)",
    summary="Train the DeepNN teacher with cross-entropy; cache its logits and feature maps on the training set",
    params=TeacherParams,
    objective=_cross_entropy_only,
    architecture="DeepNN",
    role="teacher",
    reference_accuracy=75.98,
)

STUDENT_CE = Method(
    name="train_student_ce",
    label="Student (LightNN, CE)",
    summary="Train the LightNN student with cross-entropy alone (the baseline every method is compared to)",
    objective=_cross_entropy_only,
    reference_accuracy=70.65,
)
