"""A mergeable quantile sketch with relative-error guarantees, for latency and cost.

Rollups store one sketch per (version, epoch, metric), so p95 gates and charts read a few
hundred bucket counts instead of every session. The sketch is a logarithmic histogram
in the manner of DDSketch (Masson, Rim & Lee, VLDB 2019): a positive value ``x`` falls in
bucket ``ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``, so every value in a bucket
is within a relative error ``a`` of the bucket's representative. Two sketches with the
same accuracy merge by adding counts, exactly, in any order: a rollup can be written
incrementally by many workers and summed across epochs and stages.

Pure Python, no Django: the statistics and the tests use it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

#: Relative accuracy of every quantile the sketch reports.
RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
#: Values at or below this count in the zero bucket (latency and cost are non-negative).
MIN_POSITIVE = 1e-9
#: Bounds the stored size: past it the lowest buckets fold together, which only coarsens
#: the smallest values (never the upper quantiles that gates read).
MAX_BUCKETS = 2048


def bucket_of(value: float) -> int | None:
    """The bucket index of ``value``, or None for the zero bucket."""
    if value <= MIN_POSITIVE:
        return None
    return math.ceil(math.log(value) / _LOG_GAMMA)


def representative(index: int) -> float:
    """The value reported for a bucket: the point with equal relative error to both ends."""
    return 2 * _GAMMA**index / (_GAMMA + 1)


class Sketch:
    """Counts per logarithmic bucket, plus the exact count, sum, minimum and maximum."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "zero")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf

    @classmethod
    def of(cls, values: Iterable[float]) -> Sketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def add(self, value: float, times: int = 1) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a sketch holds finite non-negative values, not {value!r}")
        index = bucket_of(value)
        if index is None:
            self.zero += times
        else:
            self.buckets[index] = self.buckets.get(index, 0) + times
            if len(self.buckets) > MAX_BUCKETS:
                self._fold_lowest()
        self.count += times
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def _fold_lowest(self) -> None:
        low, second = sorted(self.buckets)[:2]
        self.buckets[second] += self.buckets.pop(low)

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch holding both (neither input changes)."""
        merged = self.copy()
        merged.update(other)
        return merged

    def update(self, other: Sketch) -> None:
        """Add ``other``'s counts into this sketch."""
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        while len(self.buckets) > MAX_BUCKETS:
            self._fold_lowest()
        self.zero += other.zero
        self.count += other.count
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def copy(self) -> Sketch:
        clone = Sketch()
        clone.buckets = dict(self.buckets)
        clone.zero, clone.count = self.zero, self.count
        clone.minimum, clone.maximum = self.minimum, self.maximum
        return clone

    def items(self) -> Iterator[tuple[float, int]]:
        """(representative value, count) in increasing order of value."""
        if self.zero:
            yield 0.0, self.zero
        for index in sorted(self.buckets):
            yield representative(index), self.buckets[index]

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (lower: the value of order statistic ``floor(q (n - 1))``),
        within the relative accuracy; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must lie in [0, 1], not {q!r}")
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        return self.order_statistic(rank)

    def order_statistic(self, rank: int) -> float:
        """The value of the ``rank``-th smallest sample (0-based), clamped to the data."""
        if not 0 <= rank < self.count:
            raise IndexError(f"rank {rank} outside 0..{self.count - 1}")
        seen = 0
        for value, count in self.items():
            seen += count
            if rank < seen:
                return min(max(value, self.minimum), self.maximum)
        raise AssertionError("counts disagree with the total")  # pragma: no cover

    def rank_of(self, value: float) -> int:
        """How many samples are at or below ``value`` (at bucket resolution)."""
        index = bucket_of(value)
        if index is None:
            return self.zero
        return self.zero + sum(c for i, c in self.buckets.items() if i <= index)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "z": self.zero,
            "min": self.minimum if self.count else None,
            "max": self.maximum if self.count else None,
            "b": {str(index): count for index, count in sorted(self.buckets.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Sketch:
        sketch = cls()
        if not data:
            return sketch
        sketch.buckets = {int(index): int(count) for index, count in data.get("b", {}).items()}
        sketch.zero = int(data.get("z", 0))
        sketch.count = int(data.get("n", 0))
        if sketch.count:
            sketch.minimum, sketch.maximum = float(data["min"]), float(data["max"])
        return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sketch) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Sketch(n={self.count}, buckets={len(self.buckets)})"
