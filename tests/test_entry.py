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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop this test makes
def test_a_ctrl_c_whose_exception_python_drops_still_stops_the_training():
    """A KeyboardInterrupt raised in a weakref callback is dropped ("Exception ignored in ..."), as one
    was in SQLAlchemy's registry while a stage ended an epoch: the stage trained on until killed and
    left its MLflow run RUNNING. The stage's record of the Ctrl-C stops the loop at its next step."""
    import signal
    import weakref

    import torch

    from kdistill.core.data import DeviceImages
    from kdistill.core.engine import train
    from kdistill.core.networks import LightNN
    from kdistill.core.objectives import Objective, cross_entropy
    from kdistill.core.recipe import Recipe
    from kdistill.core.runtime import Runtime
    from kdistill.entry import main

    runtime = Runtime(torch.device("cpu"), None)
    data = DeviceImages(torch.zeros(32, 3, 32, 32, dtype=torch.uint8), torch.zeros(32, dtype=torch.long),
                        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), runtime)
    reached, epochs = [], []

    class Registered:
        pass

    def stage() -> None:
        target = Registered()
        ref = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGINT))
        del target  # the callback runs here and Python drops its KeyboardInterrupt
        reached.append(ref() is None)
        train(LightNN(), Objective([cross_entropy(1.0)]), data, data, runtime, stage="distill_kd",
              recipe=Recipe(epochs=2, batch_size=16), seed=0, on_epoch=epochs.append)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: xdist's workers ignore it
    try:
        with pytest.raises(SystemExit) as stopped:
            main("distill_kd", stage)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reached == [True], "the callback's KeyboardInterrupt was not dropped: the test no longer makes the loss"
    assert stopped.value.code == 130 and epochs == []
