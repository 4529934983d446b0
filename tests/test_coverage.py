"""Read coverage (server/core/coverage.py): merged byte ranges, checked against a model of
single bytes, and the cap on separate ranges (the drop session's collection rule rests on it)."""

from __future__ import annotations

import random

import pytest

from sluis.server.core.coverage import Coverage
from sluis.server.errors import LimitReached


def test_coverage_agrees_with_a_byte_model() -> None:
    rng = random.Random(9)
    for _ in range(200):
        size = rng.randint(1, 300)
        cov, model = Coverage(max_ranges=size), set()
        for _ in range(rng.randint(0, 40)):
            start = rng.randint(0, size)
            end = min(size, start + rng.randint(0, 30))
            cov.add(start, end)
            model.update(range(start, end))
            assert cov.total == len(model)
            assert cov.covers(size) == (len(model) == size)
            edges = sum(1 for b in model if b - 1 not in model)
            assert cov.ranges == edges      # merged: touching and overlapping ranges are one


def test_coverage_cap_refuses_only_a_new_separate_range() -> None:
    cov = Coverage(max_ranges=2)
    cov.add(0, 10)
    cov.add(20, 30)
    with pytest.raises(LimitReached):
        cov.add(40, 50)
    cov.add(10, 12)         # touches a range: merges, no new one
    cov.add(15, 25)         # overlaps one
    assert (cov.ranges, cov.total) == (2, 12 + 15)
    cov.add(12, 15)         # fills the gap: one range
    assert cov.ranges == 1 and cov.covers(30)
