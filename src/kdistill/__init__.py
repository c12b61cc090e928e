"""Knowledge distillation experiments: the PyTorch tutorial's pipeline, and the field's methods, on DVC and MLflow.

Layers, each a folder, imports running downward: ``core`` (torch only: networks, objectives, the
engine), ``methods``, ``sources`` (data), ``control`` (params, registry, dvc.yaml; no torch),
``pipeline`` (stages, tracking, checkpoints) and ``analysis`` (statistics, report, review).
Importing this package imports none of them.
"""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING, Any

# When this process began loading kdistill: a stage's record counts the seconds from here to its
# first line of work as its start-up.
LOADING_SINCE = _time.perf_counter()

if TYPE_CHECKING:
    from kdistill.pipeline.logged_models import load_network

__all__ = ["load_network"]


def __getattr__(name: str) -> Any:
    # Lazily: `import kdistill` must work where only torch is installed (a borrowed GPU box).
    if name == "load_network":
        from kdistill.pipeline.logged_models import load_network

        return load_network
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
