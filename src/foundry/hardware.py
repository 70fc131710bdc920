"""Hardware facts in one place: accelerators' peak FLOP/s and memory, and a measured peak for the rest.

MFU (model FLOPs utilisation, PaLM, Chowdhery et al. 2022, appendix B) divides achieved FLOP/s by the
device's peak; `foundry plan` turns the same peak and an assumed MFU into a time and cost estimate. Both
read this table, so they cannot disagree.

A CPU has no datasheet peak here: its peak is a timed fp32 matmul, measured once per machine (CPU model,
thread count, torch version) as the best of several trials and cached in `~/.cache/foundry/peak_flops.json`
(`FOUNDRY_CACHE_DIR` moves it), so a run that starts while the machine is busy does not take a low peak
from that moment. A peak that a run then beats is not trusted: the loop shows no MFU and the cached value
is dropped, to be measured again.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Accelerator:
    peak_bf16_flops: float  # dense tensor-core peak (no sparsity), FLOP/s
    memory_gib: float


# From the vendors' datasheets. Order matters for matching device names: "L40S" before "L4".
# V100 and T4 have no bf16; their fp16 tensor peak stands in.
ACCELERATORS: dict[str, Accelerator] = {
    "H200": Accelerator(989e12, 141), "H100": Accelerator(989e12, 80), "A100": Accelerator(312e12, 80),
    "L40S": Accelerator(362e12, 48), "L4": Accelerator(121e12, 24), "A10G": Accelerator(125e12, 24),
    "RTX 4090": Accelerator(165e12, 24), "RTX 3090": Accelerator(71e12, 24), "V100": Accelerator(125e12, 32),
    "T4": Accelerator(65e12, 16),
}
_MEASURED_PEAK: dict[str, float] = {}


def accelerator_named(device_name: str) -> Accelerator | None:
    """The table's entry whose name occurs in a CUDA device name ("NVIDIA H100 80GB HBM3" -> H100)."""
    return next((acc for key, acc in ACCELERATORS.items() if key in device_name), None)


def measure_matmul_flops(device: torch.device | str = "cpu", n: int = 2048, dtype=torch.float32,
                         seconds: float = 0.5) -> float:
    """FLOP/s of an n x n matmul on `device`: the practical peak that CPU MFU is measured against."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or reps >= 50:
            return 2 * n**3 * reps / elapsed


def cache_dir() -> Path:
    return Path(os.environ.get("FOUNDRY_CACHE_DIR") or Path.home() / ".cache" / "foundry")


def _cpu_key() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _read_cache() -> dict:
    try:
        return json.loads((cache_dir() / "peak_flops.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    try:
        path = cache_dir() / "peak_flops.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: measured again next time, nothing else changes
        pass


def cpu_peak_flops(trials: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s: the best of `trials` timed matmuls, cached per machine."""
    key = _cpu_key()
    if key in _MEASURED_PEAK:
        return _MEASURED_PEAK[key]
    cached = _read_cache().get(key)
    if isinstance(cached, (int, float)) and cached > 0:
        _MEASURED_PEAK[key] = float(cached)
        return float(cached)
    peak = max(measure_matmul_flops("cpu", n=1024, seconds=0.2) for _ in range(trials))
    _MEASURED_PEAK[key] = peak
    _write_cache({**_read_cache(), key: peak})
    return peak


def distrust_cpu_peak() -> None:
    """Forget the cached CPU peak (a run went faster than it): the next run measures it again."""
    key = _cpu_key()
    _MEASURED_PEAK.pop(key, None)
    entries = _read_cache()
    if entries.pop(key, None) is not None:
        _write_cache(entries)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s for MFU: the datasheet for known GPUs, a cached measured matmul on CPU, None for an
    accelerator the table does not know (its MFU is not shown rather than guessed)."""
    if device.type == "cuda":
        acc = accelerator_named(torch.cuda.get_device_name(device))
        if acc is None:
            return None
        return acc.peak_bf16_flops if dtype == torch.bfloat16 else acc.peak_bf16_flops / 2  # TF32: half
    if device.type == "cpu":
        return cpu_peak_flops()
    return None
