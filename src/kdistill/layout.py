"""Where every input and output of the pipeline lives, relative to the project root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def params_checked(self) -> Path:
        return self.root / "data" / "params.checked"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def dataset(self) -> Path:
        return self.root / "data" / "dataset.pt"

    def published_teacher(self, md5: str) -> Path:
        """A fetched teacher checkpoint (train_teacher.checkpoint), named by its md5."""
        return self.raw_dir / f"teacher-{md5}.pt"

    @property
    def teacher_outputs(self) -> Path:
        return self.root / "data" / "teacher_outputs.pt"

    @property
    def resume_dir(self) -> Path:
        # Outside DVC's outputs: DVC deletes those before it reruns a stage.
        return self.root / ".resume"

    def script(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.py"

    def model(self, stage: str) -> Path:
        return self.root / "models" / f"{stage}.pt"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def runs(self, stage: str) -> Path:
        """Per seed: accuracy, MLflow run id; wall time, precision (not DVC metrics: kept out of its tables)."""
        return self.root / "metrics" / "runs" / f"{stage}.json"

    def history(self, stage: str) -> Path:
        return self.root / "metrics" / "history" / f"{stage}.csv"

    @property
    def report_dir(self) -> Path:
        return self.root / "metrics" / "report"


def project_root() -> Path:
    """The nearest directory at or above the working directory that holds dvc.yaml.

    Not DVC_ROOT: inside `dvc queue` workers it can name the workspace rather than the
    experiment's own copy, and outputs must land in the copy that DVC collects.
    """
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here
