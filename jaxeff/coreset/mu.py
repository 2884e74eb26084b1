"""The complexity measure μ_y(X) of a logistic regression problem, exactly, by one small LP.

.. math::

    \\mu_y(X) = \\sup_{\\beta \\ne 0} \\frac{\\lVert (D_y X\\beta)^+ \\rVert_1}{\\lVert (D_y X\\beta)^- \\rVert_1},
    \\qquad D_y = \\mathrm{diag}(y),

μ >= 1, and μ = ∞ iff some β puts all margins on one side (the data are separable). Coreset
sizes of all sensitivity-sampling schemes scale with μ (Õ(dμ/ε²)), and DDK'24 prove an
Ω̃(dμ) lower bound for mergeable coresets.

Exact μ (DDK'24, arXiv 2412.02639, who refute the conjecture that μ is hard to compute): with
Z = D_y X, :math:`\\mathrm{OPT} = \\min \\{\\mathbf 1^\\top (Z\\beta)^+ : \\mathbf 1^\\top Z\\beta = -1\\}`
and μ = 1 + 1/OPT (OPT = 0 ⇒ μ = ∞). The paper writes it over v = Zβ with the n x n projector
onto range(Z) (Eq. 9); the primal here has n + d variables and n rows, and its dual has only
d equality rows, which is what :func:`mu` solves:

.. math::

    \\min_{\\lambda, \\nu} \\; \\nu \\quad \\text{s.t.}\\quad Z^\\top(\\lambda - \\nu \\mathbf 1) = 0,\\;
    0 \\le \\lambda \\le 1, \\qquad \\mathrm{OPT} = -\\nu^*.

The maximising β is read off the multipliers of the d equality rows. At n = 1e5, d = 50 the
n-row primal takes minutes in HiGHS while this dual takes seconds.

References:
  Dexter, Drineas, Khanna, "The Space Complexity of Approximating Logistic Loss", NeurIPS 2024,
  arXiv 2412.02639. Munteanu, Schwiegelshohn, Sohler, Woodruff, NeurIPS 2018, arXiv 1805.08571
  (definition of μ and the approximate bounds of :func:`mu_bounds_mssw`).
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np

from jaxeff._core import LPStatus, check_choice, check_in_range, solve_lp
from jaxeff.coreset._common import check_Xy

__all__ = ["mu", "MuResult", "MuStatus", "mu_bounds_mssw", "MuBounds", "mu_ratio"]


class MuStatus(enum.IntEnum):
    """Outcome of :func:`mu`."""

    FINITE = 0
    SEPARABLE = 1  # μ = ∞
    FAILED = 2  # the LP solver did not reach optimality (see ``lp_status``)


class MuResult(NamedTuple):
    """Result of :func:`mu`.

    Attributes:
      value: μ_y(X) (``inf`` for separable data, NaN when the LP failed).
      beta: a maximiser [d] of the ratio (for separable data, a direction with all margins
        >= 0, i.e. a separating direction for ``y``), NaN when unavailable.
      status: a :class:`MuStatus`.
      opt: the LP optimum OPT = 1/(μ - 1).
      lp_status: the :class:`~jaxeff._core.LPStatus` of the solve.
    """

    value: float
    beta: np.ndarray
    status: MuStatus
    opt: float
    lp_status: LPStatus


def _z(X, y) -> np.ndarray:
    X, y, _ = check_Xy(X, y)
    return np.asarray(y, np.float64)[:, None] * np.asarray(X, np.float64)


def mu_ratio(beta: Any, X: Any, y: Any) -> float:
    """The ratio :math:`\\lVert (D_yX\\beta)^+\\rVert_1 / \\lVert (D_yX\\beta)^-\\rVert_1` at one β
    (a lower bound on μ_y(X) for every β; ``inf`` when no margin is negative).

    Example:
      >>> import numpy as np
      >>> mu_ratio(np.array([1.0]), np.array([[1.0], [2.0], [-1.0]]), np.array([1, 1, 1]))
      3.0

    References:
      arXiv 1805.08571.
    """
    Z = _z(X, y)
    if beta is None:
        raise ValueError("`beta` must be a coefficient vector, got None.")
    beta = np.asarray(beta, np.float64)
    if beta.ndim > 1:
        raise ValueError(f"`beta` must be a 1-D coefficient vector, got shape {beta.shape}.")
    beta = beta.reshape(-1)
    if beta.shape[0] != Z.shape[1]:
        raise ValueError(f"`beta` must have length {Z.shape[1]}, got {beta.shape[0]}.")
    v = Z @ beta
    pos, neg = np.sum(np.maximum(v, 0)), np.sum(np.maximum(-v, 0))
    if neg == 0:
        return float("inf") if pos > 0 else float("nan")
    return float(pos / neg)


def _ratio(Z, beta):
    v = Z @ beta
    pos, neg = np.sum(np.maximum(v, 0)), np.sum(np.maximum(-v, 0))
    return np.inf if neg <= 0 else pos / neg


def mu(
    X: Any,
    y: Any,
    backend: str = "highs",
    *,
    tol: float | None = None,
    max_iters: int | None = None,
    separable_tol: float | None = None,
) -> MuResult:
    """Exact μ_y(X) by the d-row dual LP (see the module docstring).

    Args:
      X: features [n, d] (a sharded jax array is gathered to the host).
      y: labels [n] in {-1, +1} ({0, 1} converted with a warning).
      backend: ``"highs"`` (simplex/IPM, exact) or ``"pdhg"`` (first-order, jit, accelerator).
      tol: LP tolerance passed to the backend (for PDHG the relative KKT error, default 1e-6).
      max_iters: LP iteration cap.
      separable_tol: OPT at or below this means μ = ∞ (default 1e-9 for HiGHS and
        ``max(1e-6, 10 tol)`` for PDHG).

    Returns:
      :class:`MuResult` ``(value, beta, status, opt, lp_status)``.

    Example:
      >>> import numpy as np
      >>> X = np.array([[1.0], [2.0], [-1.0]]); y = np.ones(3)
      >>> round(mu(X, y).value, 6)   # sup over beta = ±1 of pos/neg: max(3/1, 1/3)
      3.0

    References:
      Dexter, Drineas, Khanna, arXiv 2412.02639 (Eq. 9 and Section 5).
    """
    check_choice("backend", backend, ("highs", "pdhg"))
    if tol is not None:
        check_in_range("tol", tol, 0.0, None, low_inclusive=False)
    Z = _z(X, y)
    n, d = Z.shape
    if separable_tol is None:
        separable_tol = 1e-9 if backend == "highs" else max(1e-6, 10 * (tol or 1e-6))
    s = Z.sum(axis=0)  # Z^T 1
    scale = np.max(np.abs(Z))
    if scale == 0:
        raise ValueError("`X` is all zeros: μ is undefined (every margin is 0).")
    if np.max(np.abs(s)) <= 1e-12 * scale * n:
        # Z^T 1 = 0: every β has equal positive and negative mass, so the ratio is 1.
        b = np.zeros(d)
        b[int(np.argmax(np.abs(Z).sum(0)))] = 1.0
        return MuResult(1.0, b, MuStatus.FINITE, float("inf"), LPStatus.OPTIMAL)
    # variables [lambda (n), nu]; rows: Z^T lambda - nu Z^T 1 = 0
    c = np.zeros(n + 1)
    c[-1] = 1.0
    A_eq = np.concatenate([Z.T, -s[:, None]], axis=1)
    b_eq = np.zeros(d)
    bounds = [(0.0, 1.0)] * n + [(None, None)]
    res = solve_lp(c, A_eq=A_eq, b_eq=b_eq, bounds=bounds, backend=backend, tol=tol, max_iters=max_iters)
    if res.status != LPStatus.OPTIMAL:
        return MuResult(float("nan"), np.full(d, np.nan), MuStatus.FAILED, float("nan"), res.status)
    opt = max(-float(res.objective), 0.0)
    beta = np.full(d, np.nan)
    if res.dual_eq is not None and np.all(np.isfinite(res.dual_eq)) and np.any(res.dual_eq != 0):
        cand = np.asarray(res.dual_eq, np.float64)
        beta = max((cand, -cand), key=lambda b: _ratio(Z, b))
        beta = beta / np.linalg.norm(beta)
    if opt <= separable_tol:
        # degenerate dual: recover a separating direction from  Z b >= 0, 1^T Z b = 1  (d variables)
        sep = solve_lp(np.zeros(d), A_ub=-Z, b_ub=np.zeros(n), A_eq=s[None, :], b_eq=[1.0],
                       bounds=(None, None), backend="highs")
        if sep.status == LPStatus.OPTIMAL:
            beta = sep.x / np.linalg.norm(sep.x)
        return MuResult(float("inf"), beta, MuStatus.SEPARABLE, opt, res.status)
    return MuResult(1.0 + 1.0 / opt, beta, MuStatus.FINITE, opt, res.status)


class MuBounds(NamedTuple):
    """Result of :func:`mu_bounds_mssw`: ``lower <= μ <= upper``.

    Attributes:
      lower: the ratio at the best basis direction found (a valid lower bound).
      upper: :math:`\\alpha d / t_\\infty` (a valid upper bound).
      t: :math:`t_\\infty = \\min_{\\lVert\\gamma\\rVert_\\infty = 1} \\lVert (U\\gamma)^-\\rVert_1`,
        which brackets MSSW's :math:`t = \\min_{\\lVert\\gamma\\rVert_1=1}` as
        :math:`t_\\infty/d \\le t \\le t_\\infty`.
      alpha: :math:`\\sum_i \\max_j |U_{ij}|`, so that :math:`\\lVert U\\gamma\\rVert_1 \\le \\alpha\\lVert\\gamma\\rVert_1`.
    """

    lower: float
    upper: float
    t: float
    alpha: float


def _lewis_basis(Z, iters=20):
    n, d = Z.shape
    v = np.ones(n)
    for _ in range(iters):
        G = (Z / v[:, None]).T @ Z
        L = np.linalg.cholesky(G + 1e-12 * np.trace(G) / d * np.eye(d))
        Y = np.linalg.solve(L, Z.T)
        v = np.sqrt(np.maximum(np.sum(Y * Y, 0), 1e-300))
    R = np.linalg.qr(Z / np.sqrt(v)[:, None], mode="r")
    return np.linalg.solve(R.T, Z.T).T  # Z R^-1


def mu_bounds_mssw(X: Any, y: Any, *, backend: str = "highs") -> MuBounds:
    """The prior approximate approach to μ (MSSW 2018, Theorem 3): bounds from an ℓ1-well-conditioned basis.

    U = Z R⁻¹ with R the QR factor of :math:`V^{-1/2}Z` (V the ℓ1 Lewis weights of Z = D_yX;
    an ℓ1-well-conditioned basis). MSSW bound μ within poly(d) by :math:`t = \\min_{\\lVert\\gamma\\rVert_1=1}
    \\lVert (U\\gamma)^-\\rVert_1` (:math:`1/t \\lesssim \\mu \\lesssim \\mathrm{poly}(d)/t`); the ℓ1 sphere is not
    convex, so this computes :math:`t_\\infty` over the ℓ∞ sphere instead with 2d small LPs
    (:math:`\\min \\lVert (U\\gamma)^-\\rVert_1` s.t. :math:`\\sigma\\gamma_j \\ge 1`, each solved through
    its d-row dual) and returns rigorous bounds ``lower <= μ <= upper`` (see :class:`MuBounds`).
    For separable data ``t = 0`` and both bounds are ``inf``.

    Args:
      X, y: the problem (labels in {-1, +1}).
      backend: LP backend, ``"highs"`` or ``"pdhg"``.

    Returns:
      :class:`MuBounds`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0); X = rng.standard_normal((200, 3))
      >>> y = np.where(X[:, 0] + rng.standard_normal(200) > 0, 1, -1)
      >>> b = mu_bounds_mssw(X, y); m = mu(X, y).value
      >>> b.lower <= m * (1 + 1e-6) and m <= b.upper * (1 + 1e-6)
      True

    References:
      Munteanu, Schwiegelshohn, Sohler, Woodruff, arXiv 1805.08571 (Theorem 3);
      compared against the exact LP in Dexter, Drineas, Khanna, arXiv 2412.02639.
    """
    check_choice("backend", backend, ("highs", "pdhg"))
    Z = _z(X, y)
    n, d = Z.shape
    U = _lewis_basis(Z)
    alpha = float(np.sum(np.max(np.abs(U), axis=1)))
    best_t, best_gamma = np.inf, None
    c = np.zeros(n + 1)
    c[-1] = -1.0  # maximise rho
    bounds = [(0.0, 1.0)] * n + [(0.0, None)]
    for j in range(d):
        for sgn in (1.0, -1.0):
            # dual of  min 1^T s  s.t. s >= -U g, s >= 0, sgn g_j >= 1:
            #   max rho  s.t. U^T lam + rho sgn e_j = 0, 0 <= lam <= 1, rho >= 0
            e = np.zeros((d, 1))
            e[j, 0] = sgn
            A_eq = np.concatenate([U.T, e], axis=1)
            r = solve_lp(c, A_eq=A_eq, b_eq=np.zeros(d), bounds=bounds, backend=backend)
            if r.status == LPStatus.UNBOUNDED:
                continue  # cannot happen: rho <= sum|U|; kept for robustness
            if r.status != LPStatus.OPTIMAL:
                continue
            t = max(-float(r.objective), 0.0)
            if t < best_t:
                best_t = t
                g = None if r.dual_eq is None else np.asarray(r.dual_eq, np.float64)
                if g is not None and np.any(g != 0):
                    # the primal gamma is the equality multiplier (up to sign): keep the one
                    # with sgn * gamma_j >= 0
                    g = g if sgn * g[j] >= 0 else -g
                    best_gamma = g
    if not np.isfinite(best_t):
        return MuBounds(float("nan"), float("nan"), float("nan"), alpha)
    if best_t <= 1e-9:
        return MuBounds(float("inf"), float("inf"), best_t, alpha)
    lower = 1.0
    if best_gamma is not None:
        v = U @ best_gamma
        pos, neg = np.sum(np.maximum(v, 0)), np.sum(np.maximum(-v, 0))
        if neg > 0:
            lower = max(lower, pos / neg)
    upper = alpha * d / best_t
    return MuBounds(float(lower), float(upper), float(best_t), alpha)
