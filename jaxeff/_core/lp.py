"""Linear programs behind one interface, with a HiGHS backend (scipy) and a jit-able PDHG backend.

.. math::

    \\min_x c^\\top x \\quad \\text{s.t.}\\quad A_{ub} x \\le b_{ub},\\; A_{eq} x = b_{eq},\\; l \\le x \\le u.

``solve_lp`` returns an :class:`LPResult` with ``x``, ``objective``, ``status`` (an
:class:`LPStatus`), the equality/inequality duals where the backend provides them, and the
iteration count. Infeasible and unbounded problems report their status and ``x`` is NaN
(never a plausible-looking wrong answer). ``throw=True`` turns a non-optimal status into an
:class:`LPError`.

Backends:

* ``"highs"`` (default): scipy's HiGHS (dual simplex / IPM), exact to solver tolerance. CPU.
* ``"pdhg"``: restarted primal-dual hybrid gradient (PDLP-style: Ruiz + Pock-Chambolle
  diagonal preconditioning, adaptive restarts on the normalized duality gap, primal weight
  updates, infeasibility detection from iterate differences), written in JAX and run under
  ``jit``, so it runs on GPU/TPU and scales to LPs too large for a simplex method.
  First-order: accuracy is set by ``tol`` (relative KKT error), default 1e-6.

References:
  Applegate et al., "Practical large-scale linear programming using primal-dual hybrid
  gradient" (PDLP), arXiv 2106.04756. Huangfu & Hall, "Parallelizing the dual revised simplex
  method" (HiGHS), 2018.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["LPStatus", "LPResult", "LPError", "solve_lp", "LP_BACKENDS"]

LP_BACKENDS = ("highs", "pdhg")


class LPStatus(enum.IntEnum):
    """Outcome of an LP solve."""

    OPTIMAL = 0
    INFEASIBLE = 1
    UNBOUNDED = 2
    ITERATION_LIMIT = 3
    NUMERICAL_ERROR = 4

    @property
    def successful(self) -> bool:
        return self is LPStatus.OPTIMAL

    def __str__(self) -> str:
        """Readable name: ``str(LPStatus.INFEASIBLE) == 'infeasible'``,
        ``'iteration limit'`` (still an ``IntEnum``: ``int(status)``, ``status == 1`` work)."""
        return self.name.lower().replace("_", " ")

    def __format__(self, spec: str) -> str:
        # f"{status}" reads like str(status); numeric specs (f"{status:d}") format the int
        try:
            return format(str(self), spec)
        except ValueError:
            return int.__format__(int(self), spec)


class LPError(RuntimeError):
    """Raised by ``solve_lp(..., throw=True)`` when the status is not OPTIMAL."""

    def __init__(self, result: "LPResult"):
        self.result = result
        super().__init__(f"linear program not solved: status {result.status.name} ({result.message})")


class LPResult(NamedTuple):
    """Solution of a linear program.

    Attributes:
      x: primal solution [n] (NaN when not optimal / no solution).
      objective: c @ x (inf for infeasible, -inf for unbounded, NaN otherwise when unsolved).
      status: an :class:`LPStatus`.
      dual_ub: multipliers of the inequality rows (<= 0 in scipy's sign convention), or None.
      dual_eq: multipliers of the equality rows, or None.
      iterations: iterations used by the backend.
      message: the backend's message.
      backend: which backend solved it.
    """

    x: np.ndarray
    objective: float
    status: LPStatus
    dual_ub: np.ndarray | None
    dual_eq: np.ndarray | None
    iterations: int
    message: str
    backend: str

    @property
    def successful(self) -> bool:
        return self.status == LPStatus.OPTIMAL


def _as_2d(name: str, A: Any, n: int) -> np.ndarray | None:
    if A is None:
        return None
    try:
        import scipy.sparse as sp

        if sp.issparse(A):
            A = A.toarray()
    except ImportError:  # pragma: no cover
        pass
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"`{name}` must have shape (m, {n}) to match `c`, got {A.shape}.")
    return A


def _as_1d(name: str, b: Any, m: int | None, matrix: str = "its matrix") -> np.ndarray | None:
    if b is None:
        return None
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D vector (one entry per row of {matrix}), got shape {b.shape}.")
    if m is not None and b.shape[0] != m:
        raise ValueError(f"`{name}` must have length {m} to match the rows of {matrix}, got {b.shape[0]}.")
    return b


# the HiGHS options of scipy.optimize.linprog(method="highs*") (scipy warns and ignores others)
_HIGHS_OPTIONS = ("method", "time_limit", "presolve", "disp", "maxiter", "dual_feasibility_tolerance",
                  "primal_feasibility_tolerance", "ipm_optimality_tolerance", "simplex_dual_edge_weight_strategy",
                  "mip_rel_gap", "mip_max_nodes")


def _normalize_bounds(bounds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """bounds: None (x >= 0, scipy default), a (lo, hi) pair for all, or a sequence of pairs."""
    if bounds is None:
        return np.zeros(n), np.full(n, np.inf)
    if isinstance(bounds, tuple) and len(bounds) == 2 and all(
        b is None or np.isscalar(b) for b in bounds
    ):
        lo, hi = bounds
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        return np.full(n, lo), np.full(n, hi)
    bounds = list(bounds)
    if len(bounds) != n:
        raise ValueError(f"`bounds` must be one (low, high) pair or {n} pairs, got {len(bounds)} pairs.")
    lo = np.array([-np.inf if b[0] is None else float(b[0]) for b in bounds])
    hi = np.array([np.inf if b[1] is None else float(b[1]) for b in bounds])
    return lo, hi


def solve_lp(
    c: Any,
    A_ub: Any = None,
    b_ub: Any = None,
    A_eq: Any = None,
    b_eq: Any = None,
    bounds: Any = None,
    *,
    backend: str = "highs",
    tol: float | None = None,
    max_iters: int | None = None,
    throw: bool = False,
    **options: Any,
) -> LPResult:
    """Solve ``min c@x s.t. A_ub@x <= b_ub, A_eq@x == b_eq, bounds`` (scipy ``linprog`` conventions).

    Args:
      c: objective [n].
      A_ub, b_ub: inequality rows [m1, n], [m1] (optional).
      A_eq, b_eq: equality rows [m2, n], [m2] (optional).
      bounds: ``None`` means ``x >= 0`` (scipy's default); a single ``(low, high)`` pair applies
        to every variable; or one pair per variable. ``None`` inside a pair means unbounded.
      backend: ``"highs"`` or ``"pdhg"``.
      tol: relative tolerance (PDHG: KKT error; HiGHS: primal/dual feasibility tolerance).
      max_iters: iteration cap (status ITERATION_LIMIT when hit).
      throw: raise :class:`LPError` unless the status is OPTIMAL.
      **options: backend options (PDHG: ``restart_check_every``, ``dtype``...).

    Returns:
      :class:`LPResult`.

    Example:
      >>> r = solve_lp([-1.0, -1.0], A_ub=[[1.0, 2.0], [3.0, 1.0]], b_ub=[4.0, 6.0])
      >>> r.status.name, round(r.objective, 6)
      ('OPTIMAL', -2.8)
    """
    if c is None:
        raise ValueError("`c` must be the objective vector [n], got None.")
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > 1:
        raise ValueError(f"`c` must be a 1-D objective vector [n], got shape {c.shape}.")
    c = c.reshape(-1)
    n = c.shape[0]
    if n == 0:
        raise ValueError("`c` must have at least one entry.")
    if not np.all(np.isfinite(c)):
        raise ValueError("`c` contains NaN or inf.")
    A_ub = _as_2d("A_ub", A_ub, n)
    A_eq = _as_2d("A_eq", A_eq, n)
    b_ub = _as_1d("b_ub", b_ub, None if A_ub is None else A_ub.shape[0], "`A_ub`")
    b_eq = _as_1d("b_eq", b_eq, None if A_eq is None else A_eq.shape[0], "`A_eq`")
    if (A_ub is None) != (b_ub is None):
        raise ValueError("`A_ub` and `b_ub` must be given together.")
    if (A_eq is None) != (b_eq is None):
        raise ValueError("`A_eq` and `b_eq` must be given together.")
    for name, arr in (("A_ub", A_ub), ("b_ub", b_ub), ("A_eq", A_eq), ("b_eq", b_eq)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN or inf.")
    lo, hi = _normalize_bounds(bounds, n)
    if np.any(lo > hi):
        j = int(np.argmax(lo > hi))
        raise ValueError(f"`bounds` of variable {j} are empty: low {lo[j]} > high {hi[j]}.")
    if backend == "highs":
        unknown = sorted(set(options) - set(_HIGHS_OPTIONS))
        if unknown:
            raise TypeError(f"solve_lp(backend='highs') got unknown option(s) {unknown}; "
                            f"known HiGHS options: {list(_HIGHS_OPTIONS)}.")
        res = _solve_highs(c, A_ub, b_ub, A_eq, b_eq, lo, hi, tol=tol, max_iters=max_iters, **options)
    elif backend == "pdhg":
        from jaxeff._core.pdhg import solve_pdhg

        res = solve_pdhg(c, A_ub, b_ub, A_eq, b_eq, lo, hi, tol=tol, max_iters=max_iters, **options)
    else:
        raise ValueError(f"`backend` must be one of {list(LP_BACKENDS)}, got {backend!r}.")
    if throw and res.status != LPStatus.OPTIMAL:
        raise LPError(res)
    return res


_HIGHS_STATUS = {
    0: LPStatus.OPTIMAL,
    1: LPStatus.ITERATION_LIMIT,
    2: LPStatus.INFEASIBLE,
    3: LPStatus.UNBOUNDED,
    4: LPStatus.NUMERICAL_ERROR,
}


def _solve_highs(c, A_ub, b_ub, A_eq, b_eq, lo, hi, *, tol=None, max_iters=None, method="highs", **options):
    from scipy.optimize import linprog

    opts = dict(options)
    if tol is not None:
        opts.setdefault("primal_feasibility_tolerance", tol)
        opts.setdefault("dual_feasibility_tolerance", tol)
    if max_iters is not None:
        opts.setdefault("maxiter", int(max_iters))
    bounds = np.stack([np.where(np.isinf(lo), None, lo), np.where(np.isinf(hi), None, hi)], axis=1)
    r = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method=method, options=opts)
    status = _HIGHS_STATUS.get(int(r.status), LPStatus.NUMERICAL_ERROR)
    if status == LPStatus.OPTIMAL:
        x = np.asarray(r.x, dtype=np.float64)
        obj = float(r.fun)
        dual_ub = None if A_ub is None else np.asarray(r.ineqlin.marginals)
        dual_eq = None if A_eq is None else np.asarray(r.eqlin.marginals)
    else:
        x = np.full(c.shape[0], np.nan)
        obj = {LPStatus.INFEASIBLE: np.inf, LPStatus.UNBOUNDED: -np.inf}.get(status, np.nan)
        dual_ub = dual_eq = None
    return LPResult(x, obj, status, dual_ub, dual_eq, int(getattr(r, "nit", 0) or 0), str(r.message), "highs")
