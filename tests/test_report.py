"""The report: its table to the digit, and a stage that runs without torch."""

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.container import ErrorbarContainer

from kdistill.analysis.report import accuracy_figure, to_markdown
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


def _accuracies(seeds: int) -> pd.DataFrame:
    """The report table's chart columns: every stage at 70 + i, with a ±1 interval when there are several seeds."""
    rows = [{"stage": stage, "method": training.label, "seeds": seeds, "test_accuracy": 70.0 + i,
             "ci_low": 69.0 + i if seeds > 1 else math.nan, "ci_high": 71.0 + i if seeds > 1 else math.nan}
            for i, (stage, training) in enumerate(TRAININGS.items())]
    return pd.DataFrame(rows).set_index("stage")


def test_the_accuracy_chart_draws_an_interval_only_where_there_is_one():
    single_figure, several_figure = accuracy_figure(_accuracies(1)), accuracy_figure(_accuracies(3))
    plt.close(single_figure)
    plt.close(several_figure)
    single, several = single_figure.axes[0], several_figure.axes[0]
    assert single.get_title() == "Accuracy per method, 1 seed (no interval)"
    assert not [c for c in single.containers if isinstance(c, ErrorbarContainer)]
    assert several.get_title() == "Accuracy per method, 3 seeds" and "95% CI" in several.get_ylabel()
    (bars,) = [c for c in several.containers if isinstance(c, ErrorbarContainer)]
    spans = [segment[:, 1].tolist() for segment in bars.lines[2][0].get_segments()]
    students = list(TRAININGS)[1:]  # the teacher is a line, not a bar
    assert spans == [[69.0 + i, 71.0 + i] for i in range(1, len(students) + 1)]
