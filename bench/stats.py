"""Summaries of repeated measurements: median with spread, paired ratios.

Rules:

1. A summary always carries the number of samples, the median, min, max and the
   quartiles, so no figure is printed without its spread.
2. Ratios are paired: the ratio of two runs made in the same round, then summarised, so
   a slow moment of the machine slows both sides of the ratio.
3. Pure: no clock, no I/O.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    min: float
    max: float
    q1: float
    q3: float

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        return Summary(
            self.n,
            self.median * factor,
            self.min * factor,
            self.max * factor,
            self.q1 * factor,
            self.q3 * factor,
        )


def summarize(samples: Sequence[float]) -> Summary:
    """Median, extremes and quartiles of ``samples`` (at least one)."""
    if not samples:
        raise ValueError("summarize: no samples (a benchmark produced no measurement)")
    values = sorted(float(v) for v in samples)
    median = statistics.median(values)
    if len(values) >= 2:
        q1, _q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = median
    return Summary(len(values), median, values[0], values[-1], q1, q3)


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """The per-round ratios numerator/denominator, summarised."""
    if len(numerators) != len(denominators):
        raise ValueError(
            f"paired_ratios: {len(numerators)} numerators but {len(denominators)} "
            "denominators (pairs must come from the same rounds)"
        )
    return summarize([a / b for a, b in zip(numerators, denominators) if b > 0])


def fmt_seconds(summary: Summary, unit: str = "ms") -> str:
    """``123.4 ms (min 120.1, max 130.2, IQR 121.0-125.0, n=10)``."""
    factor = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    s = summary.scaled(factor)
    return (
        f"{_num(s.median)} {unit} (min {_num(s.min)}, max {_num(s.max)}, "
        f"IQR {_num(s.q1)}-{_num(s.q3)}, n={s.n})"
    )


def fmt_ratio(summary: Summary) -> str:
    """``1.42x (min 1.30, max 1.61, n=10)``."""
    return (
        f"{summary.median:.2f}x (min {summary.min:.2f}, max {summary.max:.2f}, "
        f"IQR {summary.q1:.2f}-{summary.q3:.2f}, n={summary.n})"
    )


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
