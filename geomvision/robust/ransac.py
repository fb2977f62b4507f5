"""One generic, estimator-agnostic adaptive RANSAC with MSAC scoring and LO-RANSAC refinement.

The loop knows nothing about geometry: an :class:`Estimator` turns minimal samples into model hypotheses
and models into squared residuals for all data points. Everything geometric (thresholds in pixels,
coordinate normalisation, minimal solvers) lives in the estimators (``robust/estimators.py``,
``robust/absolute_pose.py``).

Algorithm (Fischler & Bolles 1981; H&Z 4.7.1 for the adaptive sample count):

- Hypotheses are generated in *batches* of ``options.batch_size`` minimal samples. An estimator that
  provides ``fit_batch`` / ``residuals_sq_batch`` solves and scores the whole batch with array code,
  which is what makes a pure-numpy RANSAC competitive: one (M, N) residual matrix per batch instead of
  M Python round trips.
- Scoring is MSAC (Torr & Zisserman 2000): ``sum(min(r^2, t^2))``, a truncated quadratic, which ranks
  hypotheses with the same inlier count by how well they fit.
- When a hypothesis beats the best so far, LO-RANSAC (Chum et al. 2003; Lebeda et al. 2012) refits the
  model by least squares on its inliers a few times with a threshold shrinking from
  ``lo.threshold_multiplier * t`` to ``t``; the refined model is kept only if it scores better.
- The number of samples is adapted to the best inlier ratio ``w``: ``k = log(1 - p) / log(1 - w^s)``.
- Before full scoring, each batch's hypotheses are scored on a random subset of the data and those
  statistically unable to beat the best are dropped (Capel 2005 bail-out test); at most
  ``_FULL_SCORE_MAX`` survivors (most subset inliers first) are scored on all points. With many
  outliers this removes most of the scoring cost. The test is sequential (in the spirit of Matas &
  Chum's SPRT) on batches of more than ``_STAGE1_MAX`` hypotheses: a quarter of the subset first,
  with a one-sigma more lenient bound, then the whole subset for at most ``_STAGE1_MAX`` survivors.
  A batch cheap to score on all points (``len(models) * N`` at most two one-pass subsets) skips it.
- With ``polish_follows`` (the caller polishes the result, as the two-view estimators do), local
  optimisation runs only for a hypothesis whose own inlier ratio does not yet allow stopping: on easy
  data the raw best hypothesis goes to the caller's polish, which does the same work once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geomvision.errors import InputError, check_fields_at_least, check_range
from geomvision.runtime.rng import as_rng

__all__ = [
    "BailoutOptions",
    "Estimator",
    "LocalOptimizationOptions",
    "RansacOptions",
    "RansacResult",
    "RobustFit",
    "ransac",
    "required_iterations",
    "msac_scores",
]

logger = logging.getLogger(__name__)

#: local optimisation stops at the final threshold once a refit lowers the MSAC cost by less than this
#: fraction.
_LO_RTOL = 1e-3
#: the first, short stage of the bail-out test is this many standard deviations more lenient than the
#: full one (its binomial counts are small and the normal bound is less reliable there).
_BAILOUT_FIRST_EXTRA_SIGMA = 1.0
#: of the hypotheses passing the bail-out test, at most this many (most subset inliers first) are scored
#: on all points. On easy data nearly every hypothesis passes and full scoring dominated the cost on
#: large N; on hard data few pass anyway.
_FULL_SCORE_MAX = 4
#: at most this many survivors of the bail-out test's first, short stage (most inliers first) go on to
#: its second stage: on easy data nearly all hypotheses survive the first stage, and their second-stage
#: scoring cost more than the sampling itself.
_STAGE1_MAX = 4 * _FULL_SCORE_MAX
#: batches with at most this many (model, subset point) residuals are scored on the whole bail-out
#: subset in one call (one call costs less than two small ones).
_ONE_PASS_RESIDUALS = 8192


@runtime_checkable
class Estimator(Protocol):
    """What :func:`ransac` needs from a model estimator.

    Models are numpy arrays of a fixed shape per estimator (a 3x3 matrix, a 3x4 pose ...), so that a
    batch of hypotheses can be stacked into one (M, ...) array.

    Required:
        sample_size: number of data points in a minimal sample.
        fit(sample_idx): (sample_size,) int indices -> list of candidate models (possibly empty).
        residuals_sq(model): squared residuals of all N data points, (N,), in the units of
            ``RansacOptions.max_error_px`` squared.

    Optional (looked up with ``getattr``):
        fit_batch(samples): (B, sample_size) int -> (M, ...) stacked models from all samples.
        residuals_sq_batch(models, index=None): (M, ...) -> (M, N) squared residuals, or (M, len(index))
            for the data points ``index`` only (used by the bail-out test).
        refit(inlier_idx): (K,) int, K >= sample_size -> list of models fitted by least squares;
            enables local optimisation.
        is_degenerate(sample_idx): True to skip a sample before fitting (only used without fit_batch).
    """

    sample_size: int

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]: ...

    def residuals_sq(self, model: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, kw_only=True)
class LocalOptimizationOptions:
    """Options of LO-RANSAC's local optimisation (least-squares refits on the inliers of a new best model).

    Attributes:
        enabled: run the refits when a new best hypothesis is found (needs the estimator's ``refit``).
        iterations: number of least-squares refits per local optimisation.
        threshold_multiplier: the first refit uses inliers at ``multiplier * max_error_px``; the
            threshold shrinks linearly to ``max_error_px`` at the last refit.
        max_points: the least-squares refits inside the loop use at most this many randomly chosen
            inliers (Lebeda et al. 2012 cap the LO sample the same way; 0 = all); the final refit always
            uses all inliers.
    """

    enabled: bool = True
    iterations: int = 4
    threshold_multiplier: float = 3.0
    max_points: int = 256

    def __post_init__(self) -> None:
        check_fields_at_least(self, iterations=0, threshold_multiplier=1)


@dataclass(frozen=True, kw_only=True)
class BailoutOptions:
    """Options of the bail-out test (Capel 2005) that drops hopeless hypotheses before full scoring.

    Attributes:
        subset: hypotheses are first scored on this many random data points; 0 disables the test. Only
            used when N > 3 * subset.
        sigma: a hypothesis is dropped when its subset inlier count is more than this many binomial
            standard deviations below that expected at the best inlier ratio so far; of the survivors at
            most ``_FULL_SCORE_MAX`` (most subset inliers first) are scored on all points.
    """

    subset: int = 128
    sigma: float = 3.0


@dataclass(frozen=True, kw_only=True)
class RansacOptions:
    """Options of :func:`ransac` (and of the estimators built on it).

    Attributes:
        max_error_px: inlier threshold on the residual (pixels for every estimator in geomvision);
            squared residuals are compared with its square.
        confidence: probability of having drawn at least one all-inlier sample when stopping.
        min_iterations: minimum number of minimal samples drawn, capped by max_iterations (guards
            against stopping on a wrong but popular model when the inlier ratio looks high, e.g.
            small-baseline pairs, and gives local optimisation a good start: with 16 instead of 64 the
            two-view benchmark's F translation-direction median at 30 % outliers grew from 0.25 to
            0.30 deg and templeRing F successes fell from 90 % to 80 %).
        max_iterations: maximum number of minimal samples drawn.
        lo: local optimisation (LO-RANSAC) of each new best hypothesis.
        final_refit: refit on all inliers of the best model at the end (kept only if it scores better).
        min_num_inliers: fewer inliers than this is a failure (``success=False``).
        min_inlier_ratio: lower bound on the inlier ratio used for the adaptive sample count, so that a
            hopeless problem stops at ``max_iterations`` instead of spinning.
        batch_size: minimal samples solved and scored together at first; once a model is found the
            batch grows (up to 32x) with the number of samples still needed, to amortise Python overhead
            (a batch never exceeds a quarter of the samples still needed, so it does not overshoot).
        bailout: the bail-out test on a random subset before full scoring.
    """

    max_error_px: float = 1.0
    confidence: float = 0.999
    min_iterations: int = 64
    max_iterations: int = 10_000
    lo: LocalOptimizationOptions = field(default_factory=LocalOptimizationOptions)
    final_refit: bool = True
    min_num_inliers: int = 15
    min_inlier_ratio: float = 0.0
    batch_size: int = 16
    bailout: BailoutOptions = field(default_factory=BailoutOptions)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_error_px) and self.max_error_px > 0):
            raise InputError(f"max_error_px must be positive, got {self.max_error_px}")
        check_range("confidence", self.confidence, 0, 1, low_open=True, high_open=True)
        check_fields_at_least(self, min_iterations=0, max_iterations=1)
        check_fields_at_least(self, min_num_inliers=0, batch_size=1)


@dataclass(frozen=True)
class RobustFit:
    """The fields every robust estimate reports (:class:`RansacResult` and the two-view estimates).

    Attributes:
        success: a good enough model was found (what "good enough" means is the subclass's).
        reason: empty on success, otherwise why not (e.g. ``"12 inliers < 15"``).
        model: best model, or None.
        inlier_mask: (N,) bool, residual_sq <= max_error_px^2 for the returned model.
        num_iterations: minimal samples drawn.
        score: MSAC cost of the model (lower is better; inf when there is none).
    """

    success: bool
    reason: str
    model: np.ndarray | None
    inlier_mask: np.ndarray
    num_iterations: int
    score: float

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inlier_mask))


@dataclass(frozen=True)
class RansacResult(RobustFit):
    """Outcome of :func:`ransac`: the :class:`RobustFit` fields, then the two below.

    ``success`` means a model with at least ``min_num_inliers`` inliers was found; ``model`` is also set
    on an inlier-count failure, for diagnostics.

    Attributes:
        residuals_sq: (N,) squared residuals of all data points for ``model`` (None without a model), so
            that a caller polishing the model need not recompute them.
        locally_optimized: ``model`` went through local optimisation (False only when
            :func:`ransac` was told that the caller polishes it, see ``polish_follows``).
    """

    residuals_sq: np.ndarray | None = field(default=None, repr=False, compare=False)
    locally_optimized: bool = True


def required_iterations(inlier_ratio: float, sample_size: int, confidence: float) -> float:
    """Samples needed to draw one all-inlier sample with probability ``confidence`` (H&Z 4.7.1).

    Returns ``inf`` when the inlier ratio is zero.
    """
    p_good = float(inlier_ratio) ** sample_size
    if p_good <= 0.0:
        return math.inf
    if p_good >= 1.0:
        return 0.0
    # log1p keeps precision when p_good is tiny (high outlier ratios, large samples).
    return math.log(1.0 - confidence) / math.log1p(-p_good)


def msac_scores(residuals_sq: np.ndarray, threshold_sq: float) -> np.ndarray:
    """MSAC costs ``sum(min(r^2, t^2))`` along the last axis; NaN residuals count as outliers."""
    # fmin returns the non-NaN operand: a NaN residual costs threshold_sq, like an outlier.
    return np.add.reduce(np.fmin(residuals_sq, threshold_sq), axis=-1)


def draw_samples(rng: np.random.Generator, num_data: int, sample_size: int, count: int) -> np.ndarray:
    """(count, sample_size) samples of distinct indices, each sample drawn uniformly without replacement."""
    if num_data <= 64:
        # Argsort of uniform keys: exact sampling without replacement, vectorised over samples.
        keys = rng.random((count, num_data))
        return np.argpartition(keys, sample_size - 1, axis=1)[:, :sample_size]
    # Large N: draw with replacement, a few more than needed, and drop the samples with a repeated index
    # (each sample is then uniform among those without: rejection sampling, no second round trip).
    out = np.empty((0, sample_size), dtype=np.intp)
    while len(out) < count:
        draw = count - len(out) + count // 8 + 2
        samples = (rng.random((draw, sample_size)) * num_data).astype(np.intp)
        s = np.sort(samples, axis=1)
        samples = samples[np.logical_and.reduce(s[:, 1:] != s[:, :-1], axis=1)]
        out = samples if len(out) == 0 else np.concatenate([out, samples])
    return out[:count]


class _Scorer:
    """Fits and scores batches of hypotheses through whichever interface the estimator offers."""

    def __init__(self, estimator: Estimator, threshold_sq: float):
        self.est = estimator
        self.threshold_sq = threshold_sq
        self._fit_batch = getattr(estimator, "fit_batch", None)
        self._res_batch = getattr(estimator, "residuals_sq_batch", None)
        self._degenerate = getattr(estimator, "is_degenerate", None)

    def fit(self, samples: np.ndarray) -> list[np.ndarray] | np.ndarray:
        if self._fit_batch is not None:
            return self._fit_batch(samples)
        models: list[np.ndarray] = []
        for sample in samples:
            if self._degenerate is not None and self._degenerate(sample):
                continue
            models.extend(self.est.fit(sample))
        return models

    def residuals(self, models: list[np.ndarray] | np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        if self._res_batch is not None:
            return self._res_batch(np.asarray(models), index)
        res = np.stack([self.est.residuals_sq(m) for m in models])
        return res if index is None else res[:, index]

    def bail_out(
        self,
        models: np.ndarray,
        num_data: int,
        best_ratio: float,
        options: BailoutOptions,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Capel's (2005) bail-out test: keep hypotheses whose inlier count on a random subset is
        statistically compatible with beating the best inlier ratio so far (or, before there is one,
        the best subset ratio of this batch). Returns the kept models."""
        m = options.subset
        if m <= 0 or num_data <= 3 * m or self._res_batch is None or len(models) <= 1:
            return models
        if len(models) * num_data <= _ONE_PASS_RESIDUALS * 2:
            return models  # scoring them all on all points costs no more than the test
        subset = rng.integers(0, num_data, size=m)  # with replacement: counts are exactly binomial
        # Up to _ONE_PASS_RESIDUALS, all models are scored on the whole subset in one call and both
        # stages count on that; a long batch scores the full subset only for the first stage's survivors.
        one_pass = len(models) * m <= _ONE_PASS_RESIDUALS
        hits = self._hits(models, subset) if one_pass else None
        if len(models) > _STAGE1_MAX:
            # Sequential test (in the spirit of Matas & Chum's SPRT): a quarter of the subset first
            # rejects the clearly bad hypotheses, so that most hypotheses cost m / 4 residuals instead
            # of m. The reference is the best model's ratio alone once there is one (the maximum over
            # many short counts is biased upwards and would reject good hypotheses); before, the
            # batch's best short count, with the same extra sigma of leniency.
            m1 = max(m // 4, 16)
            counts = np.add.reduce(hits[:, :m1] if one_pass else self._hits(models, subset[:m1]), axis=1)
            sigma = options.sigma + _BAILOUT_FIRST_EXTRA_SIGMA
            keep = _most_supported(
                _passes(counts, m1, best_ratio, sigma, best_ratio <= 0.0), counts, _STAGE1_MAX
            )
            models = models[keep]
            if len(models) <= 1:
                return models
            hits = hits[keep] if one_pass else None
        counts = np.add.reduce(self._hits(models, subset) if hits is None else hits, axis=1)
        keep = _passes(counts, m, best_ratio, options.sigma, True)
        # Many statistically equivalent hypotheses (easy data): fully score only the few with the most
        # subset inliers (preemptive scoring, Nister 2003); LO absorbs the small differences.
        return models[_most_supported(keep, counts, _FULL_SCORE_MAX)]

    def _hits(self, models: np.ndarray, subset: np.ndarray) -> np.ndarray:
        """(M, len(subset)) bool: which subset points are inliers of each model."""
        return self.residuals(models, subset) <= self.threshold_sq


def _passes(counts: np.ndarray, m: int, best_ratio: float, sigma: float, use_batch_max: bool) -> np.ndarray:
    """Indices of the models whose inlier count on a subset of ``m`` points is at most ``sigma``
    binomial standard deviations below that expected at the reference ratio (the best ratio so far,
    raised to the batch's best subset ratio with ``use_batch_max``)."""
    ratio = max(best_ratio, int(np.maximum.reduce(counts)) / m) if use_batch_max else best_ratio
    if ratio <= 0.0:
        return np.arange(len(counts))
    expected = m * ratio
    bound = expected - sigma * math.sqrt(expected * (1.0 - ratio))
    return np.flatnonzero(counts >= bound)


def _most_supported(keep: np.ndarray, counts: np.ndarray, limit: int) -> np.ndarray:
    """``keep`` (indices into ``counts``), reduced to the ``limit`` with the most inliers (stable order)."""
    if len(keep) <= limit:
        return keep
    return keep[np.argsort(-counts[keep], kind="stable")[:limit]]


def _local_optimization(
    estimator: Any,
    scorer: _Scorer,
    model: np.ndarray,
    residuals_sq: np.ndarray,
    score: float,
    max_error_px: float,
    options: LocalOptimizationOptions,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """LO-RANSAC: iterated least squares on inliers with a shrinking threshold; keeps the best model."""
    best = (model, residuals_sq, score)
    t = max_error_px
    # Threshold multipliers from threshold_multiplier down to 1 (Lebeda et al. 2012, "iterative
    # least squares").
    k, m0 = options.iterations, options.threshold_multiplier
    multipliers = [m0 + (1.0 - m0) * j / (k - 1) for j in range(k)] if k > 1 else [m0]
    for mult in multipliers:
        inlier_idx = np.flatnonzero(best[1] <= (mult * t) ** 2)
        if len(inlier_idx) <= estimator.sample_size:
            break
        if rng is not None and 0 < options.max_points < len(inlier_idx):
            inlier_idx = rng.choice(inlier_idx, options.max_points, replace=False)
        models = estimator.refit(inlier_idx)
        if len(models) == 0:
            break
        res = scorer.residuals(models)
        scores = msac_scores(res, scorer.threshold_sq)
        i = int(np.argmin(scores))
        if scores[i] >= best[2]:
            if mult <= 1.0:
                break  # no gain at the final threshold: the next refit would start from the same inliers
            continue
        gain = best[2] - float(scores[i])
        best = (np.asarray(models[i]), res[i], float(scores[i]))
        if mult <= 1.0 and gain <= _LO_RTOL * best[2]:
            break  # converged at the final threshold: a further refit would not change the inliers
    return best


def ransac(
    estimator: Estimator,
    num_data: int,
    options: RansacOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    polish_follows: bool = False,
) -> RansacResult:
    """Robustly fit a model with adaptive MSAC + LO-RANSAC.

    Args:
        estimator: see :class:`Estimator`; its residuals are compared with ``options.max_error_px``.
        num_data: number of data points N the estimator indexes.
        options: :class:`RansacOptions` (defaults if None).
        rng: seed or generator for the sampling; runs are reproducible for a fixed seed.
        polish_follows: the caller refines the returned model with its own robust polish. Local
            optimisation then runs in the loop only where it can change the number of samples drawn
            (the new best hypothesis's own inlier ratio does not yet allow stopping at the samples
            drawn or ``min_iterations``); otherwise the raw hypothesis is returned with
            ``locally_optimized=False`` and the polish does the work (on easy data: one polish
            instead of a local optimisation followed by a polish).

    Returns:
        :class:`RansacResult`; ``success=False`` with a reason when no model reaches
        ``options.min_num_inliers`` inliers. Never raises for geometric failure.

    Raises:
        InputError: ``num_data`` smaller than the estimator's sample size.
    """
    options = options or RansacOptions()
    s = int(estimator.sample_size)
    if num_data < s:
        raise InputError(f"RANSAC needs at least {s} data points, got {num_data}")
    rng = as_rng(rng)
    threshold_sq = float(options.max_error_px) ** 2
    scorer = _Scorer(estimator, threshold_sq)
    can_lo = options.lo.enabled and options.lo.iterations > 0 and hasattr(estimator, "refit")

    best_model: np.ndarray | None = None
    best_res = np.empty(0)
    best_score = math.inf
    best_ratio = 0.0
    best_optimized = True
    needed = float(options.max_iterations)
    drawn = 0
    while drawn < (target := min(max(options.min_iterations, needed), options.max_iterations)):
        # The min_iterations samples are drawn anyway: one batch for them means one LO run at most.
        count = max(options.batch_size, min(options.min_iterations - drawn, 8 * options.batch_size))
        if best_model is not None:
            count = int(min(max(count, (target - drawn) // 4), 32 * options.batch_size))
        count = int(min(count, options.max_iterations - drawn))
        samples = draw_samples(rng, num_data, s, count)
        drawn += count
        models = scorer.fit(samples)
        if len(models):
            models = scorer.bail_out(np.asarray(models), num_data, best_ratio, options.bailout, rng)
        if len(models) == 0:
            continue
        res = scorer.residuals(models)
        scores = msac_scores(res, threshold_sq)
        i = int(np.argmin(scores))
        if scores[i] >= best_score:
            continue
        model, model_res, score = np.asarray(models[i]), res[i], float(scores[i])
        ratio = np.count_nonzero(model_res <= threshold_sq) / num_data
        needed = required_iterations(max(ratio, options.min_inlier_ratio), s, options.confidence)
        best_optimized = not can_lo
        if can_lo and (not polish_follows or needed > max(options.min_iterations, drawn)):
            model, model_res, score = _local_optimization(
                estimator, scorer, model, model_res, score, options.max_error_px, options.lo, rng
            )
            best_optimized = True
            ratio = np.count_nonzero(model_res <= threshold_sq) / num_data
            needed = required_iterations(max(ratio, options.min_inlier_ratio), s, options.confidence)
        best_model, best_res, best_score, best_ratio = model, model_res, score, ratio

    if best_model is None:
        return RansacResult(
            False,
            f"no model from {drawn} samples (degenerate data?)",
            None,
            np.zeros(num_data, dtype=bool),
            drawn,
            math.inf,
        )
    if options.final_refit and hasattr(estimator, "refit"):
        # One more LO pass at the final threshold only: polishes a model found late in the loop (the
        # whole schedule for a hypothesis whose local optimisation was deferred).
        if best_optimized:
            final_lo, final_rng = replace(options.lo, threshold_multiplier=1.0, iterations=2), None
        else:
            final_lo, final_rng, best_optimized = options.lo, rng, True
        best_model, best_res, best_score = _local_optimization(
            estimator, scorer, best_model, best_res, best_score, options.max_error_px, final_lo, final_rng
        )
    mask = best_res <= threshold_sq
    n_in = int(np.count_nonzero(mask))
    logger.debug("ransac: %d samples, %d/%d inliers, score %.4g", drawn, n_in, num_data, best_score)
    if n_in < options.min_num_inliers:
        return RansacResult(
            False,
            f"{n_in} inliers < {options.min_num_inliers}",
            best_model,
            mask,
            drawn,
            best_score,
            best_res,
            best_optimized,
        )
    return RansacResult(True, "", best_model, mask, drawn, best_score, best_res, best_optimized)
