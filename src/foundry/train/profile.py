"""`--profile N` (train.profile_steps): where a training step's time goes, from torch.profiler.

After a few warm-up steps (allocator, autotuning, compilation) N optimiser steps are recorded; when they
end, RUN/profile/ holds `ops.txt` (operators by self time, the table to read first), `trace.json` (a
Chrome / Perfetto trace of the same steps) and `summary.json` (the share of the time spent in matrix
multiplication and attention kernels, i.e. arithmetic, against everything else: copies, casts, norms,
the optimiser, Python).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WARMUP_STEPS = 3
# Kernels that are the model's arithmetic: matmuls and fused attention. The rest is what a faster step removes.
ARITHMETIC_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                  "aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_flash_attention",
                  "aten::_efficient_attention")


class StepProfiler:
    """Records steps WARMUP_STEPS + 1 .. WARMUP_STEPS + `steps`; `step()` once per optimiser step."""

    def __init__(self, steps: int, run_dir: Path, enabled: bool = True):
        self.out = Path(run_dir) / "profile"
        self.profiler = None
        self.summary: dict | None = None
        if steps > 0 and enabled:
            from torch.profiler import ProfilerActivity, profile, schedule

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities, record_shapes=True, on_trace_ready=self._write,
                                    schedule=schedule(wait=0, warmup=WARMUP_STEPS, active=steps, repeat=1))
            self.profiler.__enter__()

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)  # writes the trace if the run ended mid-profile
            self.profiler = None

    def _write(self, prof) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        averages = prof.key_averages()
        cuda = torch.cuda.is_available()
        sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        (self.out / "ops.txt").write_text(averages.table(sort_by=sort_by, row_limit=40) + "\n")
        prof.export_chrome_trace(str(self.out / "trace.json"))

        def self_time(event) -> float:
            return float(getattr(event, "self_device_time_total" if cuda else "self_cpu_time_total", 0.0))

        averages = [e for e in averages if not e.key.startswith("ProfilerStep")]  # the profiler's own time
        total = sum(self_time(e) for e in averages) or 1.0
        arithmetic = sum(self_time(e) for e in averages if e.key.startswith(ARITHMETIC_OPS))
        others = sorted((e for e in averages if not e.key.startswith(ARITHMETIC_OPS)), key=self_time, reverse=True)
        self.summary = {"device": "cuda" if cuda else "cpu", "arithmetic_share": round(arithmetic / total, 4),
                        "top_other_ops": [{"op": e.key, "share": round(self_time(e) / total, 4)} for e in others[:8]]}
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
