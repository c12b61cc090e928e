"""The two trainings every method is measured against: the teacher and the cross-entropy student."""

from __future__ import annotations

from pydantic import Field, model_validator

from kdistill.methods.method import Method, Section, Seed


class TeacherParams(Section):
    # Its own key: adding student seeds must not retrain the (slow) teacher.
    seed: Seed = 42
    # A published teacher instead of training one (RepDistiller's and mdistiller's checkpoints hold
    # the state dict under "model"): its URL or path, fetched by the download stage, and its md5.
    checkpoint: str = ""
    checkpoint_md5: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")

    @model_validator(mode="after")
    def _checkpoint_with_md5(self) -> TeacherParams:
        if bool(self.checkpoint) != bool(self.checkpoint_md5):
            raise ValueError("train_teacher.checkpoint and train_teacher.checkpoint_md5 go together: set both or neither")
        return self


TEACHER = Method(
    name="train_teacher",
    label="Teacher (CE)",
    summary="Train the teacher (networks.teacher) with cross-entropy, or evaluate a published one; cache its "
            "logits and feature maps on the training set",
    losses=f"{__package__}.losses",
    params=TeacherParams,
    role="teacher",
    distills=False,
    reference_accuracy=75.98,
)

STUDENT_CE = Method(
    name="train_student_ce",
    label="Student (CE)",
    summary="Train the student (networks.student) with cross-entropy alone (the baseline every method is compared to)",
    losses=f"{__package__}.losses",
    distills=False,
    reference_accuracy=70.65,
)
