"""Hardware facts in one place: accelerators' peak FLOP/s and memory, and a measured peak for the rest.

MFU (model FLOPs utilisation, PaLM, Chowdhery et al. 2022, appendix B) divides achieved FLOP/s by the
device's peak; `foundry plan` turns the same peak and an assumed MFU into a time and cost estimate. Both
read this table, so they cannot disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s for MFU: the table for known GPUs, else a matmul measured once per process."""
    if device.type == "cuda":
        acc = accelerator_named(torch.cuda.get_device_name(device))
        if acc is not None:
            return acc.peak_bf16_flops if dtype == torch.bfloat16 else acc.peak_bf16_flops / 2  # TF32: half
    key = f"{device}:{dtype}"
    if key not in _MEASURED_PEAK:
        _MEASURED_PEAK[key] = measure_matmul_flops(device, dtype=dtype if device.type == "cuda" else torch.float32,
                                                   seconds=0.3)
    return _MEASURED_PEAK[key]
