"""Raw benchmark records: the machine, its load, and every figure, in `benchmarks/results/NAME.json`.

The README's measured table is rendered from these files (`benchmarks/readme_table.py`), so a figure
there can always be traced to the run that produced it. The CPU these run on may be shared, so the
load average is recorded before and after each contender.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "load_average_start": load_average()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(name: str, machine_info: dict, command: str, figures: dict) -> Path:
    """RESULTS/NAME.json with the machine (load average now added as its end value) and the figures."""
    from foundry.utils.io import atomic_write_text

    record = {"benchmark": name, "command": command,
              "machine": {**machine_info, "load_average_end": load_average()}, **figures}
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def bits_per_byte(logits_of, ids: list[int], nbytes: int, block: int) -> dict:
    """Summed next-token NLL of a whole text, in bits per UTF-8 byte of that text.

    Windows of block + 1 tokens overlapping by one, so every token after the first is predicted exactly
    once (each window restarts its context). `logits_of(input_ids (1, T)) -> (1, T, V)`. The same scorer
    for every contender, so tokenizers and models are compared on the same bytes.
    """
    import torch

    data, total, predicted = torch.tensor(ids, dtype=torch.long), 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data) - 1, block):
            x = data[start:start + block + 1]
            logits = logits_of(x[None, :-1]).float()
            total += torch.nn.functional.cross_entropy(logits[0], x[1:], reduction="sum").item()
            predicted += len(x) - 1
    return {"bpb": total / math.log(2) / nbytes, "tokens": len(ids), "bytes": nbytes, "predicted": predicted}


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
