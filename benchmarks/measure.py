"""Timing, peak memory and FLOP accounting for the benchmark; ratios are taken within one run."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def best_time(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of ``repeats`` timed calls (the least disturbed by other load) and the last result."""
    best, result = float("inf"), None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def interleaved_best(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The fastest time of each run over ``repeats`` rounds that take every run in turn, so that a
    burst of load on a shared machine hits all of them rather than skewing one ratio."""
    best = {name: float("inf") for name in runs}
    for _ in range(max(repeats, 1)):
        for name, run in runs.items():
            best[name] = min(best[name], best_time(run, 1)[0])
    return best


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand memory freed by earlier runs back to the system, so that it does not hide the next peak
    (glibc keeps freed blocks mapped for reuse)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_memory():
    """Peak resident memory of this process over the block, in MB, yielded as a dict filled on exit.

    Linux's high-water mark (VmHWM) is reset on entry by writing 5 to /proc/self/clear_refs, so the
    peak belongs to the block alone; ``extra_mb`` is the peak above the resident size at entry,
    after freed memory has been returned to the system.
    """
    out: dict[str, float | None] = {"peak_mb": None, "extra_mb": None}
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = _status_kb("VmRSS")
    except OSError:  # not Linux: no resettable high-water mark, so no figure rather than a wrong one
        before = None
    yield out
    peak = _status_kb("VmHWM")
    if before is not None and peak is not None:
        out["peak_mb"], out["extra_mb"] = peak / 1024, (peak - before) / 1024


def matmul_rate(device: torch.device, n: int) -> dict[str, float]:
    """Dense matrix-product FLOP/s, measured now: torch.matmul (MKL/cuBLAS) and, on the CPU, the same
    product as a 1x1 convolution (oneDNN; MKL takes a slower path on AMD CPUs). ``peak`` is the faster."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def product() -> torch.Tensor:
        out = a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    product()
    rates = {"matmul": 2 * n**3 / best_time(product, 5)[0]}
    if device.type == "cpu":
        side = max(n // 32, 8)  # (side*side) x n activations times an n x n weight: a matmul of the same width
        x = torch.randn(1, n, side, side).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(n, n, 1, bias=False).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            conv(x)
            seconds = best_time(lambda: conv(x), 5)[0]
        rates["conv1x1"] = 2 * side * side * n * n / seconds
    rates["peak"] = max(rates.values())
    return rates


def conv_flops(run: Callable[[], Any]) -> int:
    """FLOPs of the convolutions (2 per multiply-add) that ``run`` performs, counted by torch."""
    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts().get("Global", {})
    return int(sum(v for op, v in counts.items() if "conv" in str(op)))


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
