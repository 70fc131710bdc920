"""A run's metrics log: `RUN/metrics.jsonl` and TensorBoard scalars, trimmed back to the checkpoint on resume."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from foundry.utils.io import atomic_write_text


class MetricsLog:
    """`RUN/metrics.jsonl` (one JSON object per line) and TensorBoard scalars in `RUN/tb`."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Drop what was logged after the checkpoint we resume from: those steps are re-run.
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a" if resume_step is not None else "w", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional; the JSONL log is the record
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
