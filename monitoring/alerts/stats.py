"""The one-sided tests behind regression alerts, on what the rollups keep: bucketed
histograms, counts, and per-minute sums. Each returns the p-value that the
recent window is worse than the baseline, "worse" being "greater": callers pass misses for
a hit rate and negated sums for a quality score.

- Latency and time to first token: the Mann-Whitney U test on the two histograms. It needs
  no resampling and reads a histogram exactly: values in one bucket are ties (mid-ranks,
  tie-corrected variance), and with hundreds of values on each side the normal approximation
  of U is accurate. It tests a shift of the whole distribution; the rule's minimum effect is
  then judged on the p95 itself.
- Error rate and cache hit rate: the two-proportion z-test when every expected count of the
  2x2 table is in the thousands; below that its normal approximation understates the tail
  many-fold at the small significance levels the alerts use (5 errors in 100 requests
  against a 1% baseline: z says p=0.00003, exactly it is 0.003), so Fisher's exact one-sided
  test of the same table is used, which is as cheap at these counts.
- Cost per request and quality: a t-test of the two means with the per-request variance
  estimated from how the means of the rollups' minutes spread around their window's mean,
  each weighted by its requests. Under no change that estimate is unbiased
  whatever the minutes' sizes, and it takes in what varies from minute to minute (a burst of
  long prompts) that a per-request variance would miss: a sum of squares is not kept."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Fisher's test below this smallest expected count of the 2x2 table, the z-test above it.
EXACT_BELOW = 1000
# Student's t becomes the normal distribution here, within 10% at p=0.00001.
NORMAL_DF = 1000


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def mann_whitney_greater(recent: Mapping[int, int], baseline: Mapping[int, int]) -> float:
    """P-value that values counted in `recent` (bucket -> count) tend to exceed `baseline`'s."""
    n1, n2 = sum(recent.values()), sum(baseline.values())
    if n1 <= 0 or n2 <= 0:
        return 1.0
    n = n1 + n2
    below = 0  # baseline values in lower buckets
    u = 0.0  # pairs (recent, baseline) with the recent one greater, ties counting a half
    ties = 0.0
    for bucket in sorted(set(recent) | set(baseline)):
        r, s = recent.get(bucket, 0), baseline.get(bucket, 0)
        u += r * (below + s / 2)
        below += s
        t = r + s
        ties += t**3 - t
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0  # every value in one bucket: nothing to tell apart
    return normal_sf((u - n1 * n2 / 2 - 0.5) / math.sqrt(variance))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """Fisher's exact one-sided p-value that x1/n1 exceeds x2/n2: P(X >= x1) for X the
    recent window's count drawn (hypergeometric) from both windows' total."""
    total, drawn, marked = n1 + n2, n1, x1 + x2
    low, high = max(0, drawn - (total - marked)), min(marked, drawn)
    if not low <= x1 <= high:
        return 1.0
    log_denominator = _log_choose(total, drawn)

    def pmf(k: int) -> float:
        return math.exp(_log_choose(marked, k) + _log_choose(total - marked, drawn - k) - log_denominator)

    mode = (drawn + 1) * (marked + 1) // (total + 2)
    # Sum from x1 away from the mode, where terms only shrink: stop once they no longer count.
    if x1 > mode:
        term = pmf(x1)
        found, k = term, x1
        while k < high and term > found * 1e-17:
            term *= (marked - k) * (drawn - k) / ((k + 1) * (total - marked - drawn + k + 1))
            k += 1
            found += term
        return min(1.0, found)
    if x1 == low:
        return 1.0
    term = pmf(x1 - 1)
    below, k = term, x1 - 1
    while k > low and term > below * 1e-17:
        term *= k * (total - marked - drawn + k) / ((marked - k + 1) * (drawn - k + 1))
        k -= 1
        below += term
    return max(0.0, 1.0 - below)


def proportion_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """P-value that the recent share x1/n1 exceeds the baseline's x2/n2."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    total, marked = n1 + n2, x1 + x2
    smallest = min(n1, n2) * min(marked, total - marked) / total
    if smallest < EXACT_BELOW:
        return fisher_greater(x1, n1, x2, n2)
    pooled = marked / total
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return normal_sf((x1 / n1 - x2 / n2) / spread)


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction / a


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's T with `df` degrees of freedom."""
    if df >= NORMAL_DF:
        return normal_sf(t)
    tail = 0.5 * _regularized_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


Cluster = tuple[int, float]  # (values, their sum): one minute's rollup


def _spread(clusters: list[Cluster]) -> tuple[int, float, float]:
    """(values, mean, weighted sum of squares of the cluster means about it)."""
    n = sum(size for size, _ in clusters)
    mean = sum(total for _, total in clusters) / n
    squares = sum(size * (total / size - mean) ** 2 for size, total in clusters)
    return n, mean, squares


@dataclass(frozen=True, slots=True)
class MeanDifference:
    difference: float  # recent mean minus baseline mean
    error: float  # its standard error
    df: int

    @property
    def p_value(self) -> float:
        """P-value that the recent mean exceeds the baseline's."""
        if self.df <= 0:
            return 1.0  # one cluster a side: no spread to judge a difference by
        if self.error <= 0:
            return 0.0 if self.difference > 0 else 1.0  # every value the same: any change is no noise
        return t_sf(self.difference / self.error, self.df)


def mean_difference(
    recent: Iterable[Cluster], baseline: Iterable[Cluster], *, baseline_whole: Cluster | None = None
) -> MeanDifference:
    """The two windows' means compared, from clusters of values known only by their count
    and sum: sum(n_k * (mean_k - mean)^2) / (clusters - 1) estimates the variance of one
    value, pooled over both windows as a t-test pools it. With `baseline_whole`, the
    baseline's mean is that (count, sum)'s, of which `baseline`'s clusters are a part that
    the spread is read from."""
    recent = [c for c in recent if c[0] > 0]
    baseline = [c for c in baseline if c[0] > 0]
    if not recent or not baseline:
        return MeanDifference(0.0, 0.0, 0)
    n1, mean1, squares1 = _spread(recent)
    n2, mean2, squares2 = _spread(baseline)
    if baseline_whole is not None and baseline_whole[0] > 0:
        n2, mean2 = baseline_whole[0], baseline_whole[1] / baseline_whole[0]
    df = len(recent) + len(baseline) - 2
    variance = (squares1 + squares2) / df if df > 0 else 0.0
    return MeanDifference(mean1 - mean2, math.sqrt(variance * (1 / n1 + 1 / n2)), df)


def mean_greater(
    recent: Iterable[Cluster], baseline: Iterable[Cluster], *, baseline_whole: Cluster | None = None
) -> float:
    """P-value that the recent mean exceeds the baseline's (see mean_difference)."""
    return mean_difference(recent, baseline, baseline_whole=baseline_whole).p_value
