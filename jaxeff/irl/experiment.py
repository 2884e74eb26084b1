"""The paper's experiment: how often the recovered reward makes the expert optimal, vs samples n.

For a synthetic MDP with a known kernel (:func:`jaxeff.irl.synthetic_irl_problem`), each
trial estimates Ẑ from ``n`` fresh generative-model samples, solves :func:`fit_reward` with
margin β, and counts a success when the LP is feasible and the returned reward makes the
expert optimal under the TRUE Z on a fine grid of states (fraction ≥ ``min_fraction``,
checked with :func:`jaxeff.irl.expert_optimal_fraction`). The theory predicts that the
number of samples for a fixed success probability grows like ``k²/β² · log k``.

References:
  Dexter, Bello & Honorio, arXiv 2102.07937 (experiment: proportion of successful trials vs n
  for several margins).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import numpy as np

from jaxeff._core.validation import check_key
from jaxeff.irl._checks import check_int, check_real
from jaxeff.irl.estimate import estimate_transition_operator
from jaxeff.irl.forward import expert_optimal_fraction
from jaxeff.irl.reward import fit_reward, state_grid
from jaxeff.irl.synthetic import SyntheticIRLProblem

__all__ = ["IRLTrials", "irl_success_trials", "irl_bootstrap_interval", "irl_sample_complexity_curve"]


class IRLTrials(NamedTuple):
    """``success`` [num_problems, len(ns), num_trials] (bool), ``feasible`` (same shape),
    ``ns``, ``margins`` (each problem's true margin β)."""

    success: np.ndarray
    feasible: np.ndarray
    ns: np.ndarray
    margins: np.ndarray

    @property
    def rate(self) -> np.ndarray:
        """Success proportion [len(margins), len(ns)]."""
        return self.success.mean(-1)


def irl_success_trials(
    problems: Sequence[SyntheticIRLProblem],
    ns: Sequence[int],
    num_trials: int,
    key: jax.Array,
    *,
    margin_fraction: float = 0.5,
    num_grid: int = 256,
    num_check: int = 2000,
    min_fraction: float = 1.0,
    backend: str = "highs",
) -> IRLTrials:
    """Run ``num_trials`` trials for every (problem, n).

    Each problem has a true margin β (``problem.margin``; e.g. a family from
    ``synthetic_irl_problem(..., deviation_scale=λ)``); the LP uses ``τ = margin_fraction · β``
    (the margin the guarantee asks the LP for, leaving the rest for estimation error).

    Args:
      problems: synthetic problems with exact ``Z`` and a ``sampler``.
      ns: sample sizes.
      num_trials: trials per point (the paper uses 160; ≥ 100 recommended).
      key: PRNG key (trial t at size n of problem i uses ``fold_in(fold_in(fold_in(key, i), n), t)``).
      margin_fraction: τ / β.
      num_grid: LP grid points per dimension; num_check: states for the optimality check.
      min_fraction: success threshold on the fraction of states where the expert is optimal.
      backend: LP backend.

    Returns:
      :class:`IRLTrials` with ``margins`` the problems' β.
    """
    check_key("key", key)
    check_real("min_fraction", min_fraction, 0.0, 1.0)
    check_real("margin_fraction", margin_fraction, 0.0, 1.0, low_inclusive=False)
    if problems is None or isinstance(problems, SyntheticIRLProblem):
        raise ValueError(f"`problems` must be a sequence of SyntheticIRLProblem, got {type(problems).__name__}.")
    try:
        problems = list(problems)
    except TypeError:
        raise ValueError(f"`problems` must be a sequence of SyntheticIRLProblem, got {type(problems).__name__}.") from None
    for i, p in enumerate(problems):
        if not isinstance(p, SyntheticIRLProblem):
            raise ValueError(f"`problems[{i}]` must be a SyntheticIRLProblem, got {type(p).__name__}.")
    if ns is None or isinstance(ns, str) or np.ndim(ns) != 1:
        raise ValueError(f"`ns` must be a sequence of sample sizes (positive ints), got {ns!r}.")
    ns = np.asarray([check_int("ns", n) for n in ns], dtype=np.int64)
    num_trials = check_int("num_trials", num_trials)
    num_grid = check_int("num_grid", num_grid)
    num_check = check_int("num_check", num_check)
    margins = np.asarray([p.margin for p in problems], dtype=np.float64)
    success = np.zeros((len(problems), len(ns), num_trials), dtype=bool)
    feasible = np.zeros_like(success)
    for i, problem in enumerate(problems):
        A = problem.Z.shape[0]
        check_grid = state_grid(problem.basis, max(1, int(round(num_check ** (1 / problem.basis.dim)))))
        tau = margin_fraction * problem.margin
        for j, n in enumerate(ns):
            for t in range(num_trials):
                kt = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), int(n)), t)
                Zh = np.asarray(estimate_transition_operator(problem.basis, problem.sampler, A, int(n), kt), np.float64)
                r = fit_reward(problem.basis, Zh, 0, problem.gamma, margin=tau, num_grid=num_grid, backend=backend)
                feasible[i, j, t] = r.feasible
                if r.feasible:
                    frac = expert_optimal_fraction(problem.basis, problem.Z, r.alpha, problem.gamma, 0, check_grid)
                    success[i, j, t] = frac >= min_fraction
    return IRLTrials(success, feasible, ns, margins)


def irl_bootstrap_interval(
    success: np.ndarray, key: jax.Array, *, num_boot: int = 2000, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the success proportion over the last axis (trials).

    Returns ``(low, high)`` with the shape of ``success.mean(-1)``.
    """
    check_key("key", key)
    check_real("level", level, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    num_boot = check_int("num_boot", num_boot)
    if success is None:
        raise ValueError("`success` must be an array [..., num_trials] of trial outcomes, got None.")
    s = np.asarray(success, dtype=np.float64)
    if s.ndim < 1 or s.shape[-1] < 1:
        raise ValueError(f"`success` must be an array [..., num_trials] with at least one trial, got shape {s.shape}.")
    T = s.shape[-1]
    idx = np.asarray(jax.random.randint(key, (num_boot, T), 0, T))
    boots = s[..., idx].mean(-1)  # [..., num_boot]
    q = (1 - level) / 2
    return np.quantile(boots, q, axis=-1), np.quantile(boots, 1 - q, axis=-1)


def irl_sample_complexity_curve(k: int, margins: Sequence[float], constant: float) -> np.ndarray:
    """The theory's sample size ``n(β) = C · k² log k / β²`` for each margin β.

    ``k`` a positive int, ``margins`` positive finite values (any shape, non-empty), ``constant``
    > 0, or NaN for "no constant fitted" (the curve is then NaN; the paper notebook relies on it).
    """
    k = check_int("k", k)
    if not (isinstance(constant, (float, np.floating)) and np.isnan(constant)):
        check_real("constant", constant, 0.0, None, low_inclusive=False)
    if margins is None:
        raise ValueError("`margins` must be positive finite margins β, got None.")
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0:
        raise ValueError(f"`margins` must hold at least one margin, got shape {margins.shape}.")
    if not np.all(np.isfinite(margins) & (margins > 0)):
        raise ValueError(f"`margins` must be positive finite values, got {margins.ravel()[~(np.isfinite(margins.ravel()) & (margins.ravel() > 0))][:3].tolist()} among them.")
    return constant * k * k * math.log(max(k, 2)) / margins**2
