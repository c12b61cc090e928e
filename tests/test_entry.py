import pytest

from kdistill.layout import project_root
from kdistill.pipeline.tracking import store_root, tracking_uri


def test_store_of_a_queued_experiment_is_the_projects(tmp_path):
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    assert store_root(copy) == project
    assert store_root(project) == project


def test_default_store_is_at_the_root_whatever_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nested = tmp_path / "notebooks" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert project_root() == tmp_path.resolve()
    assert tracking_uri(project_root()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(project_root()) == "http://127.0.0.1:5000"


def test_entry_point_turns_only_the_projects_errors_into_one_line(capsys):
    from kdistill.entry import main
    from kdistill.errors import DataError

    def expected() -> None:
        raise DataError("data/dataset.pt: missing")

    with pytest.raises(SystemExit) as stopped:
        main("download", expected)
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: download: data/dataset.pt: missing\n"

    def bug() -> None:
        raise ValueError("a bug of ours, or a library's")

    with pytest.raises(ValueError, match="a bug of ours"):  # keeps its traceback: not swallowed
        main("download", bug)


def test_a_stage_hides_its_imports_and_results_from_the_garbage_collector():
    import gc

    from kdistill.entry import main

    frozen_during_run, results = [], []

    def stage() -> None:
        frozen_during_run.append(gc.get_freeze_count())
        results.extend([index] for index in range(1000))  # what a stage makes and holds until it exits

    try:
        main("report", stage)
        frozen_after = gc.get_freeze_count()
    finally:
        gc.unfreeze()  # this test process goes on
    # Imported modules are frozen before the stage's work, and what it made before the exit.
    assert frozen_during_run[0] > 10_000 and frozen_after >= frozen_during_run[0] + 1000


def test_the_allocator_setting_can_be_switched_off(monkeypatch):
    from kdistill import entry

    calls = []
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv(entry.KEEP_FREED_MEMORY, "0")
    entry.configure_process()
    monkeypatch.setenv(entry.KEEP_FREED_MEMORY, "1")
    entry.configure_process()
    assert calls == [1]
