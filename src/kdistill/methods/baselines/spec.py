"""The two trainings every method is measured against: the teacher and the cross-entropy student."""

from __future__ import annotations

from kdistill.methods.method import Method, Section, Seed


class TeacherParams(Section):
    # Its own key: adding student seeds must not retrain the (slow) teacher.
    seed: Seed = 42


TEACHER = Method(
    name="train_teacher",
    label="Teacher (DeepNN, CE)",
    summary="Train the DeepNN teacher with cross-entropy; cache its logits and feature maps on the training set",
    losses=f"{__package__}.losses",
    params=TeacherParams,
    architecture="DeepNN",
    role="teacher",
    reference_accuracy=75.98,
)

STUDENT_CE = Method(
    name="train_student_ce",
    label="Student (LightNN, CE)",
    summary="Train the LightNN student with cross-entropy alone (the baseline every method is compared to)",
    losses=f"{__package__}.losses",
    reference_accuracy=70.65,
)
