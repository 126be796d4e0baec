"""Shared benchmark harness: timing, peak memory, copy bandwidth, table and JSON output.

Timing: median of repeated runs after warm-up (CUDA synchronised). Peak memory: on GPU
``torch.cuda.max_memory_allocated`` around one call; on CPU the rise of the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs) during one call, measured in a fresh
process per provider so providers cannot share allocator state.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

PEAK_MARKER = "PEAK_BYTES"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    warmup: int = 2,
    reps: int = 15,
    max_seconds: float = 3.0,
) -> float:
    """Median wall time of `fn()` in ms over up to `reps` runs (fewer if slow)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    while len(times) < reps and (len(times) < 3 or time.perf_counter() < budget_end):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device | str = "cpu", nbytes: int = 1 << 28) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def gpu_peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes allocated on the GPU above what was allocated before one call of `fn`."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def report_cpu_peak(fn: Callable[[], Any]) -> None:
    """In a child process: print the rise of peak RSS during one call of `fn` for the parent."""
    fn()  # warm-up: lazy inits, thread pools, JIT builds
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    fn()
    peak = status_kb("VmHWM")
    print(f"{PEAK_MARKER} {(peak - before) * 1024}", flush=True)


def cpu_peak_bytes(argv: Sequence[str], env: dict[str, str] | None = None) -> int | None:
    """Run `python argv...` in a fresh process and parse what `report_cpu_peak` printed."""
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(PEAK_MARKER):
            return int(line.split()[1])
    sys.stderr.write(f"peak-memory child failed ({' '.join(argv)}):\n{proc.stderr[-2000:]}\n")
    return None


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain-text table of `rows` (dicts) with the given column keys."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
