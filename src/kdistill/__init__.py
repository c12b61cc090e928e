"""Knowledge distillation on CIFAR-10: the PyTorch tutorial as a DVC + MLflow pipeline."""

import sys as _sys
import time as _time
from importlib.util import find_spec as _find_spec

# When this process began loading kdistill (and, after it, torch and MLflow): a stage's record
# counts the seconds from here to its first line of work as its start-up.
LOADING_SINCE = _time.perf_counter()

# The third-party packages kdistill imports (tests/test_registry.py keeps this list equal to the
# source's imports). DVC runs each stage with the `python` first on PATH: outside the project's
# environment that interpreter lacks them, and a stage would fail deep in an import. Say why at once.
REQUIRED_MODULES = ("PIL", "dvc", "matplotlib", "mlflow", "numpy", "pandas", "pydantic", "scipy", "torch", "torchvision",
                    "tqdm", "yaml")

_missing = [name for name in REQUIRED_MODULES if _find_spec(name) is None]
if _missing:
    raise ImportError(
        f"this Python ({_sys.executable}) lacks {', '.join(_missing)}, which kdistill needs: activate the project's "
        "environment first (`make setup`, then `. .venv/bin/activate` at the project root), so that `dvc` and the "
        "stages' `python` are the project's; or run through `make`"
    )
