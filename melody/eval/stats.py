"""How sure a figure is: intervals for the eval's accuracies, and paired tests for telling two models apart.

On 55 test clips one clip moves an accuracy by about 2 points, and two draws of the same model move the
attribute accuracies by a clip or two and FAD by several units (docs/dpd.md), so a report shows each accuracy's
interval, and `melody eval compare` judges two models on the same clips by what changed clip by clip:

- `wilson_interval`: the Wilson score interval of k successes in n (Wilson 1927), which keeps inside [0, 1]
  and stays honest at small n and at accuracies near 0 or 1, where the normal approximation does not.
- `mcnemar_p`: McNemar's exact test (McNemar 1947) for paired right/wrong outcomes. Only the discordant clips,
  right under one model and wrong under the other, carry evidence; under "no difference" each falls either way
  with probability ½, so the two-sided p is the binomial's.
- `paired_mean_interval`: a percentile bootstrap (Efron 1979) of the mean per-clip difference, for measures
  with a value per clip (MCC, tag adherence, tempo error).

scipy computes each (`binomtest`, `bootstrap`); these functions fix the choices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap

CONFIDENCE = 0.95


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None for no trials."""
    if trials == 0:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p from the discordant pairs: right only under the first model, only under the second."""
    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(binomtest(only_first, discordant, 0.5).pvalue)


def paired_mean_interval(first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE,
                         resamples: int = 9999, seed: int = 0) -> tuple[float, tuple[float, float] | None]:
    """(mean of second − first, its percentile-bootstrap interval over the pairs); no interval under 2 pairs."""
    diff = np.asarray(second, dtype=np.float64) - np.asarray(first, dtype=np.float64)
    if diff.size == 0:
        return float("nan"), None
    if diff.size < 2 or np.all(diff == diff[0]):  # resampling one value gives that value: the interval is a point
        return float(diff.mean()), (float(diff[0]), float(diff[0])) if diff.size >= 2 else None
    ci = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(diff.mean()), (float(ci.low), float(ci.high))
