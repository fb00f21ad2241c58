"""The pure helpers of `benchmarks/dpd_tempo.py`, whose figures README and docs/semantic.md quote."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from dpd_tempo import SHIFT, decoded_envelope, lag_of, pair_onset_table  # noqa: E402


def test_lag_of_finds_how_far_the_onsets_moved():
    rng = np.random.default_rng(0)
    onsets = np.zeros(250)
    onsets[rng.choice(240, 20, replace=False)] = 1.0
    for moved in (0, 3, SHIFT, -5):
        assert lag_of(onsets, np.roll(onsets, moved), 2 * SHIFT) == moved


def test_pair_table_is_each_pairs_mean_onset_and_decodes_it_back():
    tokens = [np.array([0, 1, 1, 0, 1]), np.array([1, 0, 1])]
    envelopes = [np.array([0.0, 2.0, 0.0, 0.0, 4.0]), np.array([1.0, 0.0, 6.0])]
    table = pair_onset_table(tokens, envelopes, vocab=3)
    # (previous, current) → frames' onsets: (0, 0) → 0; (0, 1) → 2, 4, 6; (1, 1) → 0, 1; (1, 0) → 0, 0
    assert table[0, 1] == 4.0 and table[1, 0] == 0.0 and table[1, 1] == 0.5 and table[0, 0] == 0.0
    overall = (6.0 + 7.0) / 8
    assert table[2, 2] == overall  # a pair never seen: the mean of every frame
    assert decoded_envelope(table, np.array([0, 1, 1, 0])).tolist() == [0.0, 4.0, 0.5, 0.0]
