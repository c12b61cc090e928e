"""Adding a method, as the README says, on the real pipeline: one folder, one params section, a
regenerated dvc.yaml; removing it again."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from conftest import PIPELINE_SEEDS
from helpers import commit_all, repro, sh, stage_record, state_kept
from kdistill.control.registry import TRAININGS

pytestmark = pytest.mark.e2e
SEEDS = PIPELINE_SEEDS
TRAINING_STAGES = list(TRAININGS)


TOY_SPEC = '''"""KD whose temperature falls linearly from T_start to T_end over the first anneal_epochs (a toy)."""

from __future__ import annotations

from pydantic import Field

from kdistill.methods.method import Method, MethodParams, PositiveFloat, Weight


class Params(MethodParams):
    T_start: PositiveFloat = 8.0
    T_end: PositiveFloat = 2.0
    anneal_epochs: float = Field(default=1.0, gt=0)
    soft_target_loss_weight: Weight = 0.25
    ce_loss_weight: Weight = 0.75


METHOD = Method(name="distill_annealed", label="Student, CE + annealed KD",
                summary="LightNN with cross-entropy + KD at a temperature annealed from T_start to T_end",
                losses=f"{__package__}.losses", params=Params)
'''

TOY_LOSSES = '''"""The annealed KD's loss."""

from __future__ import annotations

from kdistill.core.objectives import Objective, Shapes, Term, cross_entropy
from kdistill.methods.kd.losses import SoftTargetLoss


class AnnealedSoftTargetLoss(SoftTargetLoss):
    def __init__(self, start: float, end: float, epochs: float) -> None:
        super().__init__(start)
        self.start, self.end, self.epochs = start, end, epochs

    def forward(self, student_logits, teacher_logits, progress):
        self.temperature = self.start + (self.end - self.start) * min(progress / self.epochs, 1.0)
        return super().forward(student_logits, teacher_logits)


def objective(params, shapes: Shapes) -> Objective:
    loss = AnnealedSoftTargetLoss(params.T_start, params.T_end, params.anneal_epochs)
    return Objective([Term("soft_target", params.soft_target_loss_weight, loss,
                           ("student_logits", "teacher_logits", "progress")),
                      cross_entropy(params.ce_loss_weight)])
'''

TOY_PARAMS = """
distill_annealed:  # a toy: KD with an annealed temperature
  T_start: 8.0
  T_end: 2.0
  anneal_epochs: 1.0
  soft_target_loss_weight: 0.25
  ce_loss_weight: 0.75
"""


@pytest.fixture
def toy_method_added(pipeline):
    """README's "Add a method" steps in the pipeline's project, undone afterwards."""
    project, env, _ = pipeline
    commit_all(project, env, "before the toy method")
    with state_kept(project):
        yield project, env
        shutil.rmtree(project / "src" / "kdistill" / "methods" / "annealed", ignore_errors=True)  # a failed test may leave it


def test_adding_a_method_is_one_folder_one_params_section_and_a_regenerated_dvc_yaml(toy_method_added):
    from mlflow.tracking import MlflowClient

    project, env = toy_method_added
    # 1. the method's folder (spec, losses); 2. its params.yaml section; 3. `kdistill dvc-yaml` (run from this copy)
    folder = project / "src" / "kdistill" / "methods" / "annealed"
    folder.mkdir()
    (folder / "spec.py").write_text(TOY_SPEC)
    (folder / "losses.py").write_text(TOY_LOSSES)
    with open(project / "params.yaml", "a") as params:
        params.write(TOY_PARAMS)
    sh(sys.executable, "-m", "kdistill.cli", "dvc-yaml", cwd=project, env={**env, "PYTHONPATH": "src"})
    status = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=project, env=env).splitlines()
    assert sorted(line[3:] for line in status) == [
        "dvc.yaml", "params.yaml", "src/kdistill/methods/annealed/losses.py", "src/kdistill/methods/annealed/spec.py",
        "stages/distill_annealed.py"]
    # 4. dvc repro runs the new stage (and the checks and report that read every method), nothing else
    assert repro(project, env) == {"check_params", "distill_annealed", "report"}
    metrics = stage_record(project, "distill_annealed")
    assert list(metrics["per_seed"]) == [str(s) for s in SEEDS]
    rows = {row["stage"]: row for row in json.loads((project / "metrics" / "report.json").read_text())["rows"]}
    assert rows["distill_annealed"]["method"] == "Student, CE + annealed KD" and rows["distill_annealed"]["seeds"] == len(SEEDS)
    assert "Student, CE + annealed KD " in (project / "metrics" / "report.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("knowledge-distillation").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'distill_annealed'")
    assert sorted(r.data.tags["seed"] for r in runs) == sorted(str(s) for s in SEEDS)
    assert {r.data.params["distill_annealed.T_start"] for r in runs} == {"8.0"}
    terms = [m.key for m in client.get_metric_history(runs[0].info.run_id, "train_loss.soft_target")]
    assert terms, "the new method's loss terms are logged by name"

    # Removing it again (folder, section, regenerated files) reruns the report: no stale row stays.
    shutil.rmtree(folder)
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(TOY_PARAMS, ""))
    sh(sys.executable, "-m", "kdistill.cli", "dvc-yaml", cwd=project, env={**env, "PYTHONPATH": "src"})
    assert not (project / "stages" / "distill_annealed.py").exists(), "the generator removes the scripts it made"
    assert repro(project, env) == {"check_params", "report"}
    rows = json.loads((project / "metrics" / "report.json").read_text())["methods"]
    assert set(rows) == set(TRAINING_STAGES)
