"""The quantile sketch and metric summaries: relative accuracy, exact merges, and a
lossless JSON form."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.sketch import MAX_BUCKETS, RELATIVE_ACCURACY, Sketch
from metrics.summary import Summary

values = st.lists(
    st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


def exact_lower_quantile(data: list[float], q: float) -> float:
    return sorted(data)[math.floor(q * (len(data) - 1))]


@given(values, st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]))
def test_every_quantile_is_within_the_relative_accuracy(data, q):
    got = Sketch.of(data).quantile(q)
    want = exact_lower_quantile(data, q)
    if want <= 1e-9:
        assert got <= 1e-9 or got == min(data)
    else:
        assert abs(got - want) <= RELATIVE_ACCURACY * want * (1 + 1e-9)


@given(values, values)
def test_merging_equals_sketching_the_union(left, right):
    assert Sketch.of(left).merge(Sketch.of(right)) == Sketch.of(left + right)


@given(values)
@settings(max_examples=50)
def test_json_round_trip_is_lossless(data):
    sketch = Sketch.of(data)
    again = Sketch.from_json(json.loads(json.dumps(sketch.to_json())))
    assert again == sketch
    assert again.quantile(0.95) == sketch.quantile(0.95)


def test_rank_of_counts_values_at_or_below():
    sketch = Sketch.of([0, 1, 2, 3, 100])
    assert sketch.rank_of(2) == 3
    assert sketch.rank_of(0) == 1
    assert sketch.rank_of(1000) == 5


def test_it_refuses_negative_and_non_finite_values():
    sketch = Sketch()
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="non-negative"):
            sketch.add(bad)
    assert sketch.count == 0
    assert Sketch().quantile(0.95) is None


def test_its_size_is_bounded_and_upper_quantiles_survive_folding():
    rng = random.Random(7)
    data = [10 ** rng.uniform(-8, 12) for _ in range(20000)]
    sketch = Sketch.of(data)
    assert len(sketch.buckets) <= MAX_BUCKETS
    want = exact_lower_quantile(data, 0.95)
    assert abs(sketch.quantile(0.95) - want) <= RELATIVE_ACCURACY * want


@given(values, values)
@settings(max_examples=50)
def test_summaries_add_exactly(left, right):
    merged = Summary.of(left, sketched=True)
    merged.update(Summary.of(right, sketched=True))
    whole = Summary.of(left + right, sketched=True)
    assert merged.n == whole.n
    assert merged.total == pytest.approx(whole.total)
    assert merged.total_sq == pytest.approx(whole.total_sq)
    assert merged.sketch == whole.sketch
    if len(left + right) > 1:
        mean = sum(left + right) / len(left + right)
        var = sum((x - mean) ** 2 for x in left + right) / (len(left + right) - 1)
        # The sum-of-squares form cancels catastrophically for large, close values: allow
        # the rounding of total_sq itself.
        assert merged.variance == pytest.approx(var, rel=1e-6, abs=1e-12 * whole.total_sq + 1e-3)
