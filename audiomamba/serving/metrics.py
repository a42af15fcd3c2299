"""Prometheus text exposition (version 0.0.4) of the server's counters, gauges and histograms."""

from __future__ import annotations

import bisect
import threading


class Histogram:
    """Counts of observations at or below each bucket bound, their sum and count (Prometheus' histogram);
    also keeps the last ``recent`` observations for percentiles. Thread-safe."""

    def __init__(self, bounds: tuple[float, ...], recent: int = 10_000):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0
        self._recent: list[float] = []
        self._keep = recent
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value
            self.count += 1
            self._recent.append(value)
            if len(self._recent) > 2 * self._keep:
                del self._recent[: -self._keep]

    def recent(self) -> list[float]:
        """The last observations (up to ``recent``), oldest first."""
        with self._lock:
            return self._recent[-self._keep :]

    def reset_recent(self) -> None:
        with self._lock:
            self._recent.clear()

    def render(self, name: str, help_text: str) -> list[str]:
        with self._lock:
            lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            total = 0
            for bound, n in zip(self.bounds, self.counts):
                total += n
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"{name}_sum {self.sum:.9g}")
            lines.append(f"{name}_count {self.count}")
        return lines


def render_metric(name: str, kind: str, help_text: str, value: float) -> list[str]:
    """One gauge or counter."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:.9g}"]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
