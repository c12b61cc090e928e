"""What every stage script runs first and last: process settings, and one line per expected error."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from kdistill.errors import KdistillError

# KDISTILL_KEEP_FREED_MEMORY=0 turns the allocator setting below off (the tests use the same
# setting as the pipeline: tests/conftest.py calls configure_process too).
KEEP_FREED_MEMORY = "KDISTILL_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Stop glibc from returning every large freed block to the OS (Linux/glibc only).

    Convolution activations of a batch are tens of MB: glibc serves each from a fresh mmap and
    unmaps it on free, so every training step page-faults its working set in again. With the
    freed blocks kept, every step reuses the same pages, at the same peak memory;
    ``KDISTILL_KEEP_FREED_MEMORY=0`` runs a stage without this, to compare. It is a process-wide
    setting, so only entry points make it, never library code.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def configure_process() -> None:
    if os.environ.get(KEEP_FREED_MEMORY, "1") != "0":
        keep_freed_memory()


# A Ctrl-C raises KeyboardInterrupt wherever the main thread happens to be. When that is a finalizer
# or a weakref callback (SQLAlchemy's registries run such callbacks while MLflow works), Python prints
# "Exception ignored" and drops it: the stage would train on until killed, its MLflow run left
# RUNNING. So a stage's handler also records the Ctrl-C, and the loop checks the record.
_interrupted: list[bool] = []


def _record_interrupt(signum: int, frame: FrameType | None) -> None:
    _interrupted.append(True)
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C reached this stage, even one whose exception Python dropped; else nothing."""
    if _interrupted:
        raise KeyboardInterrupt


def main(stage: str, run: Callable[[], object]) -> None:
    """Run a stage: expected failures print one line naming the stage and exit 2; bugs keep their traceback."""
    configure_process()
    # Everything imported so far (torch, MLflow: hundreds of thousands of objects) lives until exit:
    # out of the garbage collector's sight, neither the collections during training nor the
    # interpreter's final ones walk it again, which would otherwise make a stage's exit take seconds.
    gc.freeze()
    # Only in place of Python's own handler: a stage started with Ctrl-C ignored keeps ignoring it.
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _record_interrupt)
    try:
        run()
        raise_if_interrupted()  # one dropped after the loop's last check: the stage still ends as interrupted
        gc.freeze()
    except KdistillError as error:
        print(f"error: {stage}: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {stage}: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
        _interrupted.clear()
