"""The report: its table to the digit, and a stage that runs without torch."""

import pandas as pd

from kdistill.analysis.report import to_markdown
from kdistill.control.params import training_keys
from kdistill.control.registry import TRAININGS


def test_the_markdown_table_prints_accuracies_to_the_digit():
    rows = []
    for i, (stage, training) in enumerate(TRAININGS.items()):
        accuracy = 68.49 + i / 100
        rows.append({"stage": stage, "method": training.label, "network": "resnet8", "seeds": 1, "test_accuracy": accuracy,
                     "accuracy_text": f"{accuracy:.2f}", "parameters": 267_738, "model_kib": 1049.08,
                     "latency_ms": 2.21, "latency_batch": 128, "wall_time_s": 39.26,
                     "tutorial_accuracy": training.reference_accuracy,
                     # the record's order (JSON sorts keys) is not params.yaml's: the report restores it
                     "params": {key: 1 for key in reversed(training_keys(training))}, "device": "cpu", "precision": "fp32",
                     **({"vs_student_ce_text": f"{i / 100:.2f}", "verdict": "cannot tell (1 seed)"} if i > 1 else {})})
    text = to_markdown(pd.DataFrame(rows).set_index("stage"))
    cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")]
             for line in text.splitlines() if line.startswith("| ")}
    ce, third = cells[TRAININGS["train_student_ce"].label], cells[list(TRAININGS.values())[2].label]
    assert ce[1:4] == ["resnet8", "1", "68.50"] and ce[6:] == ["267,738", "1049.1", "2.2", "39.3", "70.65"]
    assert third[3:5] == ["68.51", "0.02"]
    kd = TRAININGS["distill_kd"]
    assert f"- {kd.label}: `distill_kd.T=1`, `distill_kd.soft_target_loss_weight=1`, `distill_kd.ce_loss_weight=1`" in text
