"""The statistics behind a canary verdict, pure: histogram quantiles, a bootstrap interval on the
canary/stable median-latency ratio, and a one-sided two-proportion test on error counts.

Why these two tests (``docs/canary.md`` says it for users):

- **Latency: bootstrap on the ratio of medians, from the histogram buckets.** The worker exports
  a Prometheus histogram, not samples. Resampling the bucket counts (multinomial, the bucket
  shares as probabilities) and taking each side's interpolated median the way
  ``histogram_quantile`` does gives an interval on the very number users reason about ("the
  canary is 1.3x slower"), in the units of the minimum-effect setting. Kayenta's Mann-Whitney
  judge needs samples; expanding buckets into samples gives a p-value that only ranks buckets
  (every sample in a bucket ties) and still needs a separate effect size, so the two would
  disagree exactly where it matters. The median, not p99, because a compute regression moves
  the whole distribution and the median's interval is ~10x narrower at a few hundred requests
  (the absolute ``p99LatencyMs`` SLO still guards the tail).
- **Errors: Fisher's exact test** (``scipy.stats.fisher_exact``, one-sided) on the 2x2 table of
  errors and non-errors per side: exact at the small counts a 10 % canary sees, where the normal
  approximation of the z-test breaks down with zero errors on one side.

Nothing here does I/O; everything is deterministic (the bootstrap uses a fixed seed), so the
same buckets always give the same verdict, on a restarted operator and in the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "ProportionTest",
    "RatioInterval",
    "error_increase",
    "histogram_quantile",
    "median_ratio",
]

BOOTSTRAP_RESAMPLES = 2000
SEED = 20260101

# (upper bound "le" in seconds, cumulative count), sorted by bound, +Inf last.
Buckets = Sequence[tuple[float, float]]


def _quantiles(q: float, les: NDArray[np.float64], cum: NDArray[np.float64]) -> NDArray[np.float64]:
    """``histogram_quantile(q)`` of each row of cumulative counts ``cum`` (shape (..., K)) over the
    bounds ``les`` (K, +Inf last), with Prometheus's rules: linear within the bucket, the lowest
    bucket starts at 0, a rank in the +Inf bucket answers the highest finite bound; NaN for an
    empty histogram."""
    total = cum[..., -1]
    rank = q * total
    idx = np.argmax(cum >= rank[..., None], axis=-1)
    upper = les[idx]
    prev_idx = np.maximum(idx - 1, 0)
    lower = np.where(idx == 0, 0.0, les[prev_idx])
    prev = np.where(idx == 0, 0.0, np.take_along_axis(cum, prev_idx[..., None], -1)[..., 0])
    here = np.take_along_axis(cum, idx[..., None], -1)[..., 0]
    span = here - prev
    frac = np.divide(rank - prev, span, out=np.ones_like(rank, dtype=float), where=span > 0)
    value = lower + (upper - lower) * frac
    top = les[-2] if len(les) > 1 else math.nan
    value = np.where(np.isinf(upper), top, value)
    return np.where(total > 0, value, np.nan)


def _arrays(buckets: Buckets) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    les = np.array([b[0] for b in buckets], dtype=float)
    cum = np.maximum.accumulate(np.array([max(b[1], 0.0) for b in buckets], dtype=float))
    if len(les) == 0 or not math.isinf(les[-1]):  # a histogram always has +Inf; be safe
        les = np.append(les, math.inf)
        cum = np.append(cum, cum[-1] if len(cum) else 0.0)
    return les, cum


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0..1) of cumulative ``buckets`` in their unit; None when empty."""
    les, cum = _arrays(buckets)
    value = float(_quantiles(q, les, cum))
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class RatioInterval:
    """canary median / stable median: the point estimate and one-sided bounds at ``confidence``
    (``lower``: the ratio is above it with that confidence; ``upper``: below it)."""

    effect: float
    lower: float
    upper: float
    confidence: float


def _resampled_medians(
    les: NDArray[np.float64], cum: NDArray[np.float64], rng: np.random.Generator
) -> NDArray[np.float64]:
    counts = np.diff(cum, prepend=0.0)
    whole = np.rint(counts).astype(np.int64)  # increase() extrapolates: counts are not integers
    n = int(whole.sum())
    draws = rng.multinomial(n, whole / n, size=BOOTSTRAP_RESAMPLES).astype(float)
    return _quantiles(0.5, les, np.cumsum(draws, axis=1))


def median_ratio(canary: Buckets, stable: Buckets, confidence: float) -> RatioInterval | None:
    """Bootstrap interval on canary median / stable median from two histograms with the same
    bucket bounds. None when either side has fewer than one whole request or a zero median."""
    les_c, cum_c = _arrays(canary)
    les_s, cum_s = _arrays(stable)
    if round(cum_c[-1]) < 1 or round(cum_s[-1]) < 1:
        return None
    point_c = float(_quantiles(0.5, les_c, cum_c))
    point_s = float(_quantiles(0.5, les_s, cum_s))
    if not point_s > 0:
        return None
    rng = np.random.default_rng(SEED)
    med_c = _resampled_medians(les_c, cum_c, rng)
    med_s = _resampled_medians(les_s, cum_s, rng)
    ratios = med_c / np.where(med_s > 0, med_s, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    lower, upper = np.quantile(ratios, [1.0 - confidence, confidence])
    return RatioInterval(point_c / point_s, float(lower), float(upper), confidence)


@dataclass(frozen=True)
class ProportionTest:
    """canary error rate - stable error rate, and the one-sided p-value of "the canary's rate is
    no higher than stable's" (Fisher's exact test)."""

    effect: float
    p_value: float
    canary_rate: float
    stable_rate: float


def error_increase(
    canary_errors: float, canary_total: float, stable_errors: float, stable_total: float
) -> ProportionTest | None:
    """Compare two error proportions (counts may be fractional, from ``increase()``; they are
    rounded). None when a side has no request."""
    ce, cn = round(max(canary_errors, 0.0)), round(max(canary_total, 0.0))
    se, sn = round(max(stable_errors, 0.0)), round(max(stable_total, 0.0))
    ce, se = min(ce, cn), min(se, sn)
    if cn < 1 or sn < 1:
        return None
    table = [[ce, cn - ce], [se, sn - se]]
    result = stats.fisher_exact(table, alternative="greater")
    return ProportionTest(ce / cn - se / sn, float(result.pvalue), ce / cn, se / sn)
