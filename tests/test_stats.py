"""The eval's statistics: Wilson intervals, McNemar's exact test, the paired bootstrap."""

import numpy as np
import pytest

from melody.eval.stats import mcnemar_p, paired_mean_interval, wilson_interval


def test_wilson_interval_matches_the_closed_form():
    z = 1.959963984540054
    for k, n in ((5, 10), (0, 10), (21, 42), (40, 42)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None
    # 21 of 42 (an accuracy of 0.50 on 42 clips) is known only to about ± 0.15
    low, high = wilson_interval(21, 42)
    assert 0.34 < low < 0.36 and 0.64 < high < 0.66


def test_mcnemar_counts_only_the_discordant_clips():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5 ** 10)  # ten clips right under one model only
    assert mcnemar_p(3, 1) == pytest.approx(0.625)  # P(X ≤ 1) + P(X ≥ 3), X ~ Bin(4, ½): (1 + 4 + 4 + 1) / 16
    assert mcnemar_p(1, 3) == mcnemar_p(3, 1)


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    first = rng.normal(0, 1, 200)
    second = first + 0.5 + rng.normal(0, 0.1, 200)  # every clip better by about 0.5
    mean, (low, high) = paired_mean_interval(first, second)
    assert mean == pytest.approx(np.mean(second - first)) and low < mean < high and 0.45 < low and high < 0.55
    assert paired_mean_interval(first, second) == (mean, (low, high))  # seeded: the same interval again
    noise = paired_mean_interval(first, first + rng.normal(0, 1, 200))[1]
    assert noise[0] < 0 < noise[1]  # no difference: the interval holds 0
    assert paired_mean_interval([1.0, 2.0], [2.0, 3.0]) == (1.0, (1.0, 1.0))  # every pair moved by 1
    assert paired_mean_interval([1.0], [3.0]) == (2.0, None)
    mean, interval = paired_mean_interval([], [])
    assert np.isnan(mean) and interval is None
