"""Resume points: a training's last completed epoch on disk, so a killed stage continues instead of restarting."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from kdistill.control.codedeps import digest
from kdistill.files import atomic_path
from kdistill.layout import Layout
from kdistill.pipeline import tracking


class ResumePoint:
    """A training's last completed epoch on disk, so a killed stage continues instead of restarting.

    Valid only for the same params, seed, input files and code: a resume point made by other code
    (say, an edited engine.py) is discarded, and the seed starts over, saying so.
    """

    def __init__(self, layout: Layout, stage: str, seed: int, params: dict[str, object], inputs: list[Path],
                 code: list[Path]) -> None:
        self.path = layout.resume_dir / f"{stage}-seed{seed}.pt"
        self.stage, self.seed = stage, seed
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
        self.fingerprint = {
            "params": _hash({"params": params, "seed": seed}),
            "inputs": _hash(stats),
            "code": digest(code),
        }

    def load(self) -> dict | None:
        """The saved record ({run_id, state}), or None; a record for other inputs ends its run as FAILED."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged resume file only costs the resume
            self.clear()
            return None
        changed = [part for part, value in self.fingerprint.items() if saved.get("fingerprint", {}).get(part) != value]
        if changed or saved.get("state") is None:
            if changed and saved.get("state") is not None:
                print(f"{self.stage}: not resuming seed {self.seed} from epoch {saved['state']['epoch']}: its "
                      f"{' and '.join(changed)} changed since; starting over")
            tracking.mark_failed(saved["run_id"])
            self.clear()
            return None
        return saved

    def save(self, run_id: str, state: dict | None) -> None:
        with atomic_path(self.path) as partial:
            torch.save({"fingerprint": self.fingerprint, "run_id": run_id, "state": state}, partial)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
