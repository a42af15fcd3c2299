"""Timing, memory and table helpers shared by the ``audiomamba bench`` commands.

``median_ms`` times a callable (``triton.testing.do_bench`` on CUDA, wall clock on CPU); ``step_times_ms`` times
the repeated calls of a stateful step (one CUDA event pair per call); ``peak_mb`` measures the peak CUDA memory
of a call above what was already allocated; ``print_table`` prints rows with ratio columns against baseline rows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device | str = "cuda", grad_to_none=None,
              budget_s: float | None = None) -> float | None:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on CUDA (L2 flushed between calls), else the
    wall clock over 5 calls after one warm-up. ``grad_to_none``: tensors whose ``.grad`` is reset between calls.
    None when one call takes longer than ``budget_s`` or the device runs out of memory."""
    dev = torch.device(device)
    try:
        if budget_s is not None:
            sync(dev)
            start = time.perf_counter()
            fn()
            sync(dev)
            if time.perf_counter() - start > budget_s:
                return None
        if dev.type == "cuda":
            import triton.testing

            return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def step_times_ms(step: Callable[[], object], steps: int, device: torch.device | str) -> list[float]:
    """Milliseconds of each of ``steps`` consecutive calls of ``step`` (CUDA events on a GPU, so that the
    queue stays full between steps; the wall clock on CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for begin, end in events:
        begin.record()
        step()
        end.record()
    torch.cuda.synchronize(dev)
    return [begin.elapsed_time(end) for begin, end in events]


def peak_mb(fn: Callable[[], object], device: torch.device | str = "cuda") -> float | None:
    """Peak CUDA memory of ``fn()`` above what was allocated before it, in MiB (None on CPU or out of memory)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    sync(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` of the row dicts, its header, a format spec for numbers (None prints "-")."""

    key: str
    header: str
    fmt: str = ""


@dataclass(frozen=True)
class Ratio:
    """Ratio columns: ``key`` of each row divided by ``key`` of each baseline row (rows whose ``name_key`` is in
    ``baselines``), headed "<label> / <baseline>"."""

    key: str
    label: str
    baselines: Sequence[str]
    name_key: str = "name"


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)


def table_lines(rows: Sequence[dict], columns: Sequence[Column], ratios: Sequence[Ratio] = ()) -> list[str]:
    """Right-aligned text table (first column left-aligned) with one ratio column per (ratio, baseline present)."""
    headers = [c.header for c in columns]
    cells = [[_cell(r.get(c.key), c.fmt) for c in columns] for r in rows]
    for ratio in ratios:
        if all(r.get(ratio.key) is None for r in rows):
            continue  # nothing measured (e.g. memory on CPU)
        base_rows = {r[ratio.name_key]: r for r in rows}
        for name in ratio.baselines:
            base = base_rows.get(name)
            if base is None:
                continue
            headers.append(f"{ratio.label} / {name}")
            for r, line in zip(rows, cells):
                a, b = r.get(ratio.key), base.get(ratio.key)
                line.append("-" if a is None or not b else f"{a / b:.2f}")
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]

    def fmt_line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return [fmt_line(headers)] + [fmt_line(line) for line in cells]


def print_table(rows: Sequence[dict], columns: Sequence[Column], ratios: Sequence[Ratio] = (),
                print_fn: Callable[[str], object] = print) -> None:
    for line in table_lines(rows, columns, ratios):
        print_fn(line)
