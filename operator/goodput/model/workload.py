"""Workload description: request rate, prompt/output length distributions, SLOs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from goodput.model.errors import CapacityModelError

FloatArray = npt.NDArray[np.float64]

# Quantile bins, finer in the tail: the p99 TTFT is decided by the longest prompts.
_EDGES = np.array([0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .98, .99, .995, .999, 1.0])
_Z99 = 2.3263478740408408


def _bisect_rising(f: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 60) -> float:
    """The x in [lo, hi] where a rising ``f`` reaches ``target`` (bisection, ``steps`` halvings)."""
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def lognormal_mu_sigma(mean: float, p99: float | None, strict: bool = True) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and 99th percentile; sigma 0 when p99 is absent or
    not above the mean. p99/mean = exp(z99*sigma - sigma^2/2) peaks at exp(z99^2/2) = 14.97: beyond
    that, `strict` refuses, otherwise sigma stops at z99 (the heaviest tail a lognormal has)."""
    if p99 is None or p99 <= mean:
        return math.log(mean), 0.0
    disc = _Z99**2 - 2.0 * math.log(p99 / mean)
    if disc < 0 and strict:
        raise CapacityModelError(
            f"no lognormal has mean {mean:g} and p99 {p99:g}: p99/mean cannot exceed "
            f"{math.exp(_Z99**2 / 2):.2f}; give a smaller p99 or an empirical distribution (--lengths-from)")
    sigma = _Z99 - math.sqrt(max(disc, 0.0))
    return math.log(mean) - sigma**2 / 2.0, sigma


def p99_behind_bucketed_quantile(mean: float, observed: float, bounds: list[float] | tuple[float, ...],
                                 q: float = 0.99) -> float:
    """The p99 of the lognormal with this (exact) mean whose ``histogram_quantile(q)`` over these
    bucket bounds reads ``observed``. Prometheus interpolates linearly inside a bucket, as if the
    density were flat there; in a length tail it falls steeply, so a wide bucket (vLLM's 1-2-5 token
    buckets are 2-2.5x wide) reads the p99 far too high: a true p99 of 4,100 tokens reads about 7,000
    in the 5,000-10,000 bucket. Inverting the interpolation under the lognormal recovers it. Returns
    ``observed`` unchanged when it cannot be inverted (below the first bound, in the +Inf bucket, no
    lognormal with this mean reads it)."""
    finite = sorted(float(b) for b in bounds)
    if not (mean > 0 and observed > mean) or not finite or observed >= finite[-1]:
        return observed
    hi_i = next(i for i, b in enumerate(finite) if b >= observed)
    lo, hi = (finite[hi_i - 1] if hi_i > 0 else 0.0), finite[hi_i]

    def cdf(x: float, mu: float, sigma: float) -> float:
        return 0.0 if x <= 0 else 0.5 * (1.0 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2.0))))

    def reads(sigma: float) -> float:
        mu = math.log(mean) - sigma**2 / 2.0
        f_lo, f_hi = cdf(lo, mu, sigma), cdf(hi, mu, sigma)
        if f_hi - f_lo < 1e-12:
            return lo if q <= f_lo else hi
        return lo + (hi - lo) * (q - f_lo) / (f_hi - f_lo)

    # The reading rises with sigma (a heavier tail at the same mean); bisect on it.
    a, b = 1e-3, _Z99
    if not reads(a) <= observed <= reads(b):
        return observed
    sigma = _bisect_rising(reads, observed, a, b)
    return float(math.exp(math.log(mean) - sigma**2 / 2.0 + sigma * _Z99))


@dataclass(frozen=True)
class LengthDistribution:
    """A token-length distribution as weighted representative points (quantile bins)."""

    values: FloatArray
    weights: FloatArray

    def __post_init__(self) -> None:
        if self.values.shape != self.weights.shape or self.values.size == 0:
            raise CapacityModelError("length distribution needs as many weights as values")
        if not np.all(np.isfinite(self.values)) or np.any(self.values < 0):
            raise CapacityModelError("token lengths must be finite and non-negative")

    @classmethod
    def fixed(cls, length: float) -> LengthDistribution:
        if not length > 0:
            raise CapacityModelError(f"token length must be positive, got {length}")
        return cls(np.array([float(length)]), np.array([1.0]))

    @classmethod
    def lognormal(cls, mean: float, p99: float) -> LengthDistribution:
        """Lognormal with the given mean and 99th percentile (p99 >= mean)."""
        if not mean > 0 or p99 < mean:
            raise CapacityModelError(f"need 0 < mean <= p99, got mean={mean}, p99={p99}")
        if p99 == mean:
            return cls.fixed(mean)
        _, sigma = lognormal_mu_sigma(mean, p99)
        # The continuous lognormal's p99 is not the binned one's (the bins' points re-scaled to the mean
        # read about 1.5% high): solve sigma so that the distribution used keeps the given p99 exactly.
        sigma = _binned_sigma(p99 / mean, sigma)
        return cls._binned_lognormal(mean, sigma)

    @classmethod
    def _binned_lognormal(cls, mean: float, sigma: float) -> LengthDistribution:
        """The lognormal of this sigma on the quantile bins, re-scaled to have exactly this mean."""
        values = np.exp(sigma * _bin_z())
        weights = np.diff(_EDGES)
        values *= mean / float(np.sum(values * weights))
        return cls(values, weights)

    @classmethod
    def empirical(cls, samples: npt.ArrayLike) -> LengthDistribution:
        data = np.asarray(samples, dtype=np.float64)
        data = data[np.isfinite(data)]
        if data.size == 0:
            raise CapacityModelError("no token lengths to build a distribution from")
        mids = (_EDGES[:-1] + _EDGES[1:]) / 2.0
        values = np.quantile(data, mids)
        weights = np.diff(_EDGES)
        return cls(np.maximum(values, 1.0), weights)

    @property
    def mean(self) -> float:
        return float(np.sum(self.values * self.weights))

    @property
    def mean_square(self) -> float:
        return float(np.sum(self.values**2 * self.weights))

    @property
    def max(self) -> float:
        return float(np.max(self.values))

    def quantile(self, q: float) -> float:
        """Interpolated between the representative points, each placed at its bin's middle
        probability (a point stands for its bin: reading the bin itself would be off by half a bin,
        the 98.5th percentile for the p99)."""
        if self.values.size == 1:
            return float(self.values[0])
        order = np.argsort(self.values)
        values = self.values[order]
        weights = self.weights[order] / np.sum(self.weights)
        mids = np.cumsum(weights) - weights / 2.0
        # Length tails are close to lognormal: interpolate the logarithm.
        return float(np.exp(np.interp(q, mids, np.log(np.maximum(values, 1e-9)))))

    def token_weighted_mean(self) -> float:
        """Mean length seen by a token picked at random (long prompts hold more steps)."""
        return self.mean_square / self.mean

    def describe(self) -> str:
        if self.values.size == 1:
            return f"{self.mean:.0f}"
        return f"mean {self.mean:.0f}, p99 {self.quantile(0.99):.0f}"


@functools.cache
def _bin_z() -> FloatArray:
    """The standard normal quantiles of the bins' middle probabilities."""
    mids = (_EDGES[:-1] + _EDGES[1:]) / 2.0
    return np.array([_inverse_normal(float(p)) for p in mids])


def _binned_ratio(sigma: float) -> float:
    """p99/mean of the binned lognormal with this sigma (independent of mu).

    ``LengthDistribution._binned_lognormal(1.0, sigma)``'s ``quantile(0.99) / mean``, with the
    same numpy operations minus those whose result is known: the points rise with the bins (sigma
    > 0), so sorting them changes nothing, and the bins' middle probabilities are constants. The
    bisection of `_binned_sigma` calls this sixty times per lognormal."""
    weights, mids = _bin_weights_mids()
    values = np.exp(sigma * _bin_z())
    values *= 1.0 / float(np.sum(values * weights))
    p99 = float(np.exp(np.interp(0.99, mids, np.log(np.maximum(values, 1e-9)))))
    return p99 / float(np.sum(values * weights))


@functools.cache
def _bin_weights_mids() -> tuple[FloatArray, FloatArray]:
    """The bins' weights, and their middle probabilities as `LengthDistribution.quantile` places them."""
    weights = np.diff(_EDGES)
    normed = weights / np.sum(weights)
    return weights, np.cumsum(normed) - normed / 2.0


@functools.lru_cache(maxsize=1024)
def _binned_sigma(ratio: float, start: float) -> float:
    """The sigma whose binned lognormal has p99/mean = ratio, by bisection around the continuous
    sigma ``start`` (the ratio rises with sigma up to the tail's peak, past ``start`` here); the
    closest sigma when the bins cannot reach the ratio exactly. Memoized: the planner asks for the
    spec's hinted lengths at every reconcile."""
    lo, hi = 1e-6, min(max(start * 1.5, 0.05), _Z99)
    if _binned_ratio(hi) < ratio:
        return hi
    return _bisect_rising(_binned_ratio, ratio, lo, hi)


def _inverse_normal(p: float) -> float:
    """Acklam's rational approximation of the standard normal quantile (|error| < 1.2e-9)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
    if p > 1 - low:
        q = math.sqrt(-2 * math.log(1 - p))
        return -(((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q+c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q+1)
    q = p - 0.5
    r = q * q
    return ((((((a[0]*r+a[1])*r+a[2])*r+a[3])*r+a[4])*r+a[5])*q
            / (((((b[0]*r+b[1])*r+b[2])*r+b[3])*r+b[4])*r+1))


@dataclass(frozen=True)
class Workload:
    rate_rps: float
    input_len: LengthDistribution
    output_len: LengthDistribution
    prefix_cache_hit_rate: float = 0.0
    # Squared coefficient of variation of the inter-arrival times one replica sees (ca²): 1 for
    # Poisson arrivals. The TTFT queueing term scales its wait by (ca² + cs²) / (1 + cs²)
    # (Kingman's G/G/1 approximation); the planner measures it (goodput.planner.burst).
    arrival_scv: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_rps) and self.rate_rps >= 0):
            raise CapacityModelError(f"request rate must be a finite non-negative number, got {self.rate_rps}")
        if not 0.0 <= self.prefix_cache_hit_rate < 1.0:
            raise CapacityModelError("prefix-cache hit rate must be in [0, 1)")
        if not (math.isfinite(self.arrival_scv) and self.arrival_scv >= 0):
            raise CapacityModelError(f"arrival variability (ca²) must be a finite non-negative number, "
                                     f"got {self.arrival_scv}")

    @property
    def max_context(self) -> int:
        return math.ceil(self.input_len.max + self.output_len.max)

    def with_rate(self, rate_rps: float) -> Workload:
        return Workload(rate_rps, self.input_len, self.output_len, self.prefix_cache_hit_rate, self.arrival_scv)

    def with_arrival_scv(self, arrival_scv: float) -> Workload:
        return Workload(self.rate_rps, self.input_len, self.output_len, self.prefix_cache_hit_rate, arrival_scv)


@dataclass(frozen=True)
class SLO:
    ttft_ms: float
    itl_ms: float
    percentile: float = 99.0

    def __post_init__(self) -> None:
        if not (self.ttft_ms > 0 and self.itl_ms > 0):
            raise CapacityModelError("SLO targets must be positive milliseconds")
        if not 50.0 <= self.percentile < 100.0:
            raise CapacityModelError("SLO percentile must be in [50, 100)")

    @property
    def quantile(self) -> float:
        return self.percentile / 100.0

    @property
    def label(self) -> str:
        return f"p{self.percentile:g}"
