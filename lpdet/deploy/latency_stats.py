"""The statistics of latency measurement: confidence intervals of medians and of paired ratios,
the rule that stops measuring once they are tight, and whether two models are told apart.

Intervals are distribution-free order-statistic intervals of the median: with n samples, the
number below the true median is Binomial(n, 1/2), so the sorted samples x_(j) .. x_(n-j+1),
with j the largest rank whose tail P(B < j) is at most (1 - confidence) / 2, cover it with at
least that confidence, whatever the distribution (latency's is skewed and heavy-tailed, so a
normal interval would lie). Why not a bootstrap: it is random (two calls disagree), it is known to
be poor for medians of small samples, and it costs resampling; the order-statistic interval is
exact, deterministic and needs only numpy (scipy is not a dependency). Both assume independent
samples; a machine whose speed drifts breaks that, which is why models are compared by the
median of per-round paired ratios (`ratio_interval`): drift cancels inside a round.

With several real images cycled round by round, the times of one model are a mixture (each image
has its own post-processing cost), and a median's interval would measure the image set, not the
noise. So the sample is a cycle: the mean per-image time of one pass through every image
(`cycle_means`); cycles differ only by noise, a ratio is taken between two models' means of the
same cycle, and the median over cycles discards the cycles a burst of load hit. Measured on the
loaded 2-core machine (two int8 graphs, 16 images, 60 s): the ratio's interval was ±1.3% with cycle
means, ±3.0% with cycle medians and ±2.4% with per-round ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["cycle_means", "Interval", "median_interval", "ratio_interval", "StopRule", "stop_reason", "Separation",
           "separation"]


@dataclass(frozen=True)
class Interval:
    """A median (of times in ms, or of ratios) with its confidence interval; `low`/`high` are None
    when there are too few samples for the confidence asked (fewer than 6 at 95%)."""

    value: float
    low: float | None
    high: float | None
    confidence: float = 0.95
    samples: int = 0

    @property
    def half_width(self) -> float:
        """The larger distance from the median to an end of the interval, relative to the median
        (inf without an interval)."""
        if self.low is None or self.high is None or self.value <= 0:
            return math.inf
        return max(self.value - self.low, self.high - self.value) / self.value

    def contains(self, x: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= x <= self.high

    def text(self, digits: int = 2) -> str:
        """e.g. '4.21 [4.15, 4.30]', or '4.21 [no CI, n=3]' (too few samples for an interval)."""
        if self.low is None:
            return f"{self.value:.{digits}f} [no CI, n={self.samples}]"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _rank(n: int, confidence: float) -> int:
    """The largest j (1-based) with P(Binomial(n, 1/2) <= j - 1) <= (1 - confidence) / 2; 0 if none."""
    k = np.arange(n + 1)
    log_pmf = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
               - n * math.log(2.0))
    cdf = np.cumsum(np.exp(log_pmf))
    ok = np.nonzero(cdf <= (1.0 - confidence) / 2.0 * (1 + 1e-12))[0]  # cdf[i] = P(B <= i)
    return int(ok[-1]) + 1 if len(ok) else 0


def cycle_means(times, cycle: int) -> np.ndarray:
    """Per-round `times` grouped into complete cycles of `cycle` rounds (one pass over the images),
    each cycle's mean; the times themselves when `cycle` is 1 or not even one cycle is complete."""
    x = np.asarray(times, dtype=float)
    complete = x.size // max(cycle, 1)
    if cycle <= 1 or complete == 0:
        return x
    return x[:complete * cycle].reshape(complete, cycle).mean(axis=1)


def median_interval(samples, confidence: float = 0.95) -> Interval:
    """The median of `samples` with its distribution-free order-statistic confidence interval."""
    x = np.sort(np.asarray(samples, dtype=float))
    if x.size == 0:
        raise ValueError("median_interval: no samples")
    j = _rank(x.size, confidence)
    median = float(np.median(x))
    if j == 0:
        return Interval(median, None, None, confidence, int(x.size))
    return Interval(median, float(x[j - 1]), float(x[x.size - j]), confidence, int(x.size))


def ratio_interval(numerator, denominator, confidence: float = 0.95) -> Interval:
    """Median of the per-round ratios numerator[i] / denominator[i] (rounds paired: both timed in
    the same round, so load that changes slowly cancels) with its confidence interval."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"ratio_interval: {a.size} and {b.size} samples are not paired")
    return median_interval(a / np.maximum(b, 1e-12), confidence)


@dataclass(frozen=True)
class StopRule:
    """When to stop timing rounds: once every median's (and every ratio's) interval is within
    ±`target` of it, after at least `min_rounds`; or at `max_rounds` or `time_cap_s`, whichever first."""

    target: float = 0.03
    confidence: float = 0.95
    min_rounds: int = 20
    max_rounds: int | None = None
    time_cap_s: float = 60.0

    def __post_init__(self):
        if not 0 < self.target < 1 or not 0.5 < self.confidence < 1:
            raise ValueError(f"StopRule: target must be in (0, 1) and confidence in (0.5, 1), got {self}")
        if self.min_rounds < 1 or (self.max_rounds is not None and self.max_rounds < self.min_rounds):
            raise ValueError(f"StopRule: need 1 <= min_rounds <= max_rounds, got {self}")

    @classmethod
    def fixed(cls, rounds: int) -> StopRule:
        """Exactly `rounds` rounds (no time cap): the old fixed-`runs` benchmark."""
        return cls(min_rounds=rounds, max_rounds=rounds, time_cap_s=math.inf)


def stop_reason(totals: list, rounds: int, elapsed_s: float, rule: StopRule, baseline: int | list[int] = 0,
                cycle: int = 1) -> str | None:
    """Why to stop now ('precise', 'max rounds', 'time cap') or None to go on. `totals[i]` are model
    i's per-round times (`cycle` rounds per pass over the images); precise means each median, and
    each model's ratio to model `baseline` (or `baseline[i]`), of the cycles' means is within
    ±target at the rule's confidence."""
    if rule.max_rounds is not None and rounds >= rule.max_rounds:
        return "max rounds" if rule.max_rounds > rule.min_rounds else "fixed rounds"
    if rounds < rule.min_rounds:
        return "time cap" if elapsed_s >= rule.time_cap_s else None
    cycles = [cycle_means(t, cycle) for t in totals]
    intervals = [median_interval(c, rule.confidence) for c in cycles]
    bases = [baseline] * len(cycles) if isinstance(baseline, int) else list(baseline)
    intervals += [ratio_interval(c, cycles[bases[i]], rule.confidence)
                  for i, c in enumerate(cycles) if i != bases[i]]
    if all(iv.half_width <= rule.target for iv in intervals):
        return "precise"
    return "time cap" if elapsed_s >= rule.time_cap_s else None


@dataclass(frozen=True)
class Separation:
    """Whether model `b` is told apart from model `a`: `ratio` is b/a (median of per-round paired
    ratios); `separated` when its interval excludes 1. Paired ratios rather than the overlap of the
    two medians' intervals: drift widens each median's interval but cancels in a round's ratio."""

    a: int
    b: int
    ratio: Interval
    separated: bool

    @property
    def faster(self) -> int | None:
        """The faster model's index, or None when not separated."""
        if not self.separated:
            return None
        return self.b if self.ratio.value < 1 else self.a


def separation(totals: list, a: int, b: int, confidence: float = 0.95, cycle: int = 1) -> Separation:
    """`totals[i]`: model i's per-round times, `cycle` rounds per pass over the images."""
    ratio = ratio_interval(cycle_means(totals[b], cycle), cycle_means(totals[a], cycle), confidence)
    return Separation(a, b, ratio, ratio.low is not None and not ratio.contains(1.0))
