"""The report stage: every training stage's result side by side, against the CE student."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import mlflow
import pandas as pd

from kdistill import tracking
from kdistill.config import Params
from kdistill.files import write_json, write_text

if TYPE_CHECKING:
    from kdistill.pipeline import Layout

METHODS = {
    "train_teacher": "Teacher (DeepNN, CE)",
    "train_student_ce": "Student (LightNN, CE)",
    "distill_kd": "Student, CE + KD",
    "distill_cosine": "Student, CE + cosine",
    "distill_regressor": "Student, CE + regressor",
}
BASELINE = "train_student_ce"
# One run each, as printed in the tutorial's seed document (PyTorch tutorial, CIFAR-10, 10 epochs).
TUTORIAL_ACCURACY = {"train_teacher": 75.98, "train_student_ce": 70.65, "distill_kd": 70.49,
                     "distill_cosine": 70.12, "distill_regressor": 70.61}


def results_table(layout: Layout) -> pd.DataFrame:
    rows = []
    for stage, method in METHODS.items():
        path = layout.metrics(stage)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the {stage} stage first")
        metrics = json.loads(path.read_text())
        rows.append({"stage": stage, "method": method, "parameters": metrics["parameters"],
                     "test_accuracy": metrics["test_accuracy"], "epochs": metrics["epochs"],
                     "wall_time_s": metrics["wall_time_s"], "mlflow_run_id": metrics["mlflow_run_id"],
                     "tutorial_accuracy": TUTORIAL_ACCURACY[stage]})
    table = pd.DataFrame(rows).set_index("stage")
    table["vs_student_ce"] = table["test_accuracy"] - table.loc[BASELINE, "test_accuracy"]
    table.loc["train_teacher", "vs_student_ce"] = float("nan")  # a different network: not a method
    return table


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.reset_index()[["method", "parameters", "test_accuracy", "vs_student_ce", "tutorial_accuracy",
                                 "epochs", "wall_time_s"]]
    shown = shown.rename(columns={
        "parameters": "parameters", "test_accuracy": "test accuracy (%)", "vs_student_ce": "vs CE student (points)",
        "tutorial_accuracy": "tutorial's run (%)", "wall_time_s": "wall time (s)"})
    body = shown.to_markdown(index=False, floatfmt=".2f", intfmt=",", missingval="—")
    return (
        "# Knowledge distillation: results\n\n"
        f"{body}\n\n"
        "One run per method (seed as in params.yaml). Differences of under about a point between student "
        "methods are within run-to-run noise on CIFAR-10; the tutorial's column is its one published run.\n"
    )


def run_report(params: Params, layout: Layout) -> pd.DataFrame:
    table = results_table(layout)
    markdown = to_markdown(table)
    records = json.loads(table.reset_index().to_json(orient="records"))
    summary = {stage: {"test_accuracy": row["test_accuracy"]} for stage, row in table.iterrows()}
    for stage in list(METHODS)[1:]:
        summary[stage]["vs_student_ce"] = table.loc[stage, "vs_student_ce"]
    md_path, json_path = layout.root / "metrics" / "report.md", layout.root / "metrics" / "report.json"
    with tracking.stage_run("report", {}, layout.root):
        write_text(md_path, markdown)
        write_json(json_path, {"methods": summary, "rows": records})
        tracking.log_metrics({f"test_accuracy.{stage}": row["test_accuracy"] for stage, row in table.iterrows()})
        mlflow.log_artifact(str(md_path))
        mlflow.log_artifact(str(json_path))
    print(markdown)
    return table
