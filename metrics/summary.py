"""Sufficient statistics of one metric for one arm: what a rollup stores and a gate reads.

Counts, sums and sums of squares are enough for proportions and means; latency and cost
also carry a quantile sketch for p95. Summaries add exactly, so a rollup written
incrementally in shards, or read across the epochs of one stage, sums to the same thing
as a pass over the raw sessions. Pure Python, no Django.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metrics.sketch import Sketch


@dataclass
class Summary:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    sketch: Sketch | None = field(default=None, compare=False)

    @classmethod
    def of(cls, values: list[float], *, sketched: bool = False) -> Summary:
        summary = cls(sketch=Sketch() if sketched else None)
        for value in values:
            summary.add(value)
        return summary

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value
        if self.sketch is not None:
            self.sketch.add(value)

    def update(self, other: Summary) -> None:
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = other.sketch.copy()
            else:
                self.sketch.update(other.sketch)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        """The sample variance (n - 1 denominator), None below two samples."""
        if self.n < 2:
            return None
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))
