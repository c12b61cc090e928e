"""The report stage: which distillation method really helps, with honest statistics.

Per method: mean test accuracy over seeds with its 95% confidence interval, and the paired
difference against the CE student trained with the same seeds (same initial weights, same batch
order), with its interval and whether it is distinguishable from zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed (or present in CI)
import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from kdistill.analysis.statistics import CONFIDENCE, Interval, verdict
from kdistill.control.params import training_keys
from kdistill.control.registry import METHODS, REPORT, TRAININGS
from kdistill.entry import main
from kdistill.errors import DataError
from kdistill.files import atomic_path, write_json, write_text
from kdistill.layout import Layout, project_root
from kdistill.methods.baselines.spec import STUDENT_CE, TEACHER
from kdistill.pipeline import tracking

BASELINE = STUDENT_CE.name


def _load_metrics(layout: Layout, stage: str) -> dict:
    """The stage's DVC metrics and its per-seed record, in one mapping."""
    loaded = {}
    for path in (layout.metrics(stage), layout.runs(stage)):
        if not path.is_file():
            raise DataError(f"{path}: missing; run the {stage} stage first")
        loaded.update(json.loads(path.read_text()))
    return loaded


TUTORIAL_NETWORKS = ("DeepNN", "LightNN")


def results_table(layout: Layout) -> pd.DataFrame:
    metrics = {stage: _load_metrics(layout, stage) for stage in TRAININGS}
    baseline = metrics[BASELINE]["per_seed"]
    rows = []
    for stage, training in TRAININGS.items():
        m = metrics[stage]
        accuracy = Interval.of(list(m["per_seed"].values()))
        network = m["params"].get("networks.teacher" if training.role == "teacher" else "networks.student")
        # The tutorial's published run compares only with the tutorial's own networks and data.
        tutorials = network in TUTORIAL_NETWORKS and m["params"].get("train.augment", "none") == "none"
        row = {
            "stage": stage, "method": training.label, "network": network or "", "seeds": accuracy.n,
            "test_accuracy": accuracy.mean,
            "ci_low": accuracy.low, "ci_high": accuracy.high, "accuracy_text": accuracy.text(),
            "parameters": m["parameters"], "model_kib": m["model_bytes"] / 1024, "latency_ms": m["latency_ms"],
            "latency_batch": m["latency_batch"],
            "wall_time_s": m["wall_time_s"], "tutorial_accuracy": training.reference_accuracy if tutorials else None,
            "per_seed": m["per_seed"], "mlflow_run_ids": m["mlflow_run_ids"], "params": m["params"],
            "device": m["device"], "precision": m["precision"],
        }
        if stage in METHODS:
            paired = sorted(set(m["per_seed"]) & set(baseline))
            difference = Interval.of([m["per_seed"][s] - baseline[s] for s in paired])
            row.update(vs_student_ce=difference.mean, diff_low=difference.low, diff_high=difference.high,
                       vs_student_ce_text=difference.text(), verdict=verdict(difference))
        rows.append(row)
    return pd.DataFrame(rows).set_index("stage")


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.reset_index()[["method", "network", "seeds", "accuracy_text", "vs_student_ce_text", "verdict", "parameters",
                                 "model_kib", "latency_ms", "wall_time_s", "tutorial_accuracy"]]
    # "—" where a row has no value: no paired difference (teacher, CE student), no published run.
    # Every cell formatted here, none parsed again by tabulate: "68.49" must not print as "68.5".
    shown = shown.assign(vs_student_ce_text=shown["vs_student_ce_text"].fillna("—"), verdict=shown["verdict"].fillna("—"),
                         tutorial_accuracy=[f"{v:.2f}" if pd.notna(v) else "—" for v in shown["tutorial_accuracy"]],
                         seeds=shown["seeds"].map(str), parameters=shown["parameters"].map("{:,}".format),
                         **{c: shown[c].map("{:.1f}".format) for c in ("model_kib", "latency_ms", "wall_time_s")})
    shown.columns = ["method", "network", "seeds", "test accuracy % (95% CI)", "vs CE student, paired (95% CI)", "verdict",
                     "parameters", "size (KiB)", f"latency (ms / {int(table['latency_batch'].max())} images)", "training (s)",
                     "tutorial's run %"]
    body = shown.to_markdown(index=False, disable_numparse=True, colalign=["left", "left", "right", "right", "left", "left",
                                                                           "right", "right", "right", "right", "right"])
    seeds = int(table["seeds"].max())
    caution = (
        "With a single seed no interval can be estimated and no method can be called better: the "
        "tutorial's own gaps between methods (under a point) are within run-to-run noise. Set "
        "`seeds` in params.yaml to several values (e.g. five) to decide."
        if seeds < 2 else
        f"Intervals are Student-t {CONFIDENCE:.0%} intervals over {seeds} seeds; differences are paired by seed "
        "(same initial weights and batch order as the CE student). A method *helps* only if its whole "
        "interval lies above zero."
    )
    # In params.yaml's order (the method's own keys come last in param_keys), whatever the record's order.
    params = "\n".join(
        f"- {row['method']}: " + ", ".join(f"`{k}={row['params'][k]}`" for k in training_keys(TRAININGS[stage])
                                            if k.startswith(f"{stage}."))
        for stage, row in table.iterrows() if stage in METHODS
    )
    # The params.yaml keys every student reads (the run's params also hold its method-neutral weights).
    shared = ", ".join(f"`{key}={table.loc[BASELINE, 'params'][key]}`" for key in training_keys(TRAININGS[BASELINE]))
    return (
        "# Knowledge distillation: results\n\n"
        f"{body}\n\n{caution}\n\n"
        f"Latency: median of 10 forward passes, measured by each training stage on {_runtimes(table)}. Size: one "
        "seed's weights as saved by torch. The regressor of the hint method trains with the student and is not part of it.\n\n"
        f"Shared params: {shared}\n\n{params}\n\n"
        "![Accuracy per method](report/accuracy.png)\n\n![Per-epoch curves](report/curves.png)\n"
    )


def _runtimes(table: pd.DataFrame) -> str:
    """Where the stages ran, e.g. "cpu (bf16)"; several only if stages ran on different hardware."""
    return ", ".join(sorted({f"{row['device']} ({row['precision']})" for _, row in table.iterrows()}))


def accuracy_figure(table: pd.DataFrame) -> plt.Figure:
    """Each student's accuracy, with its interval where there is one, against the teacher and the CE student."""
    students = table.loc[[BASELINE, *METHODS]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(students["method"], students["test_accuracy"], color="#4c72b0")
    # A method without an interval (one seed) gets no error bar, not a zero-length one that looks like one.
    shown = students[students["ci_low"].notna()]
    if len(shown):
        ax.errorbar(shown["method"], shown["test_accuracy"], fmt="none", ecolor="black", capsize=6,
                    yerr=[shown["test_accuracy"] - shown["ci_low"], shown["ci_high"] - shown["test_accuracy"]])
    for stage, style in ((TEACHER.name, "--"), (BASELINE, ":")):
        ax.axhline(table.loc[stage, "test_accuracy"], linestyle=style, color="black",
                   label=f"{table.loc[stage, 'method']}: {table.loc[stage, 'test_accuracy']:.2f}%")
    low = min(students["ci_low"].fillna(students["test_accuracy"]).min(), students["test_accuracy"].min())
    ax.set_ylim(max(0, low - 3), min(100, table["test_accuracy"].max() + 2))
    seeds = int(table["seeds"].max())
    # One seed gives no interval: the chart must not promise one.
    ax.set_ylabel(f"test accuracy (%), mean and {CONFIDENCE:.0%} CI" if seeds > 1 else "test accuracy (%)")
    ax.set_title(f"Accuracy per method, {seeds} seeds" if seeds > 1 else "Accuracy per method, 1 seed (no interval)")
    ax.legend(loc="lower right", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    return fig


def curves_figure(layout: Layout) -> plt.Figure:
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, training in TRAININGS.items():
        history = pd.read_csv(layout.history(stage))
        acc.plot(history["epoch"], history["test_accuracy"], marker="o", label=training.label)
        loss.plot(history["epoch"], history["train_loss"], marker="o", label=training.label)
    acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per epoch")
    # Log scale: the methods' weighted totals differ by an order of magnitude (DKD's beta·T² terms).
    loss.set(xlabel="epoch", ylabel="training loss (weighted total, log scale)", title="Training loss per epoch",
             yscale="log")
    acc.legend(fontsize=8)
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=110)
    plt.close(fig)


def _json_ready(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.reset_index().to_json(orient="records"))  # NaN -> null


def report_stage() -> None:
    main(REPORT, lambda: run_report(Layout(project_root())))


def run_report(layout: Layout) -> pd.DataFrame:
    table = results_table(layout)
    md_path, json_path = layout.root / "metrics" / "report.md", layout.root / "metrics" / "report.json"
    pictures = [layout.report_dir / "accuracy.png", layout.report_dir / "curves.png"]
    with tracking.stage_run(REPORT, {}, layout.root):
        _save(accuracy_figure(table), pictures[0])
        _save(curves_figure(layout), pictures[1])
        markdown = to_markdown(table)
        write_text(md_path, markdown)
        summary = {stage: {"test_accuracy": row["test_accuracy"], "seeds": int(row["seeds"]),
                           **({"vs_student_ce": row["vs_student_ce"]} if stage in METHODS else {})}
                   for stage, row in table.iterrows()}
        write_json(json_path, {"methods": summary, "rows": _json_ready(table)})
        tracking.log_metrics({f"test_accuracy.{stage}": row["test_accuracy"] for stage, row in table.iterrows()})
        for artifact in (md_path, json_path, *pictures):
            mlflow.log_artifact(str(artifact))
    print(markdown)
    return table
