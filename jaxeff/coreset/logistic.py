"""Weighted, optionally L2-regularised logistic regression: a stable loss and a jit solver.

.. math::

    f(\\beta) = \\sum_{i=1}^n w_i \\log\\bigl(1 + e^{-y_i x_i^\\top \\beta}\\bigr)
    + \\tfrac{\\lambda}{2}\\lVert \\beta \\rVert_2^2, \\qquad y_i \\in \\{-1, +1\\}.

This is scikit-learn's objective divided by ``C`` with ``λ = 1/C`` (``fit_intercept=False``;
append a column of ones to ``X`` for an intercept). The solver is a damped Newton method
(exact Hessian, Cholesky solve, Armijo backtracking) run inside ``jax.lax.while_loop``; an
``optax.lbfgs`` variant is available for very wide problems. Rows may be sharded over a mesh
axis: the solver then runs inside ``jax.shard_map`` with ``psum`` for the loss, gradient and
Hessian (O(d²) communication per step).

References:
  Munteanu, Schwiegelshohn, Sohler, Woodruff, "On Coresets for Logistic Regression",
  NeurIPS 2018, arXiv 1805.08571 (the weighted loss coresets approximate).
"""
from __future__ import annotations

import enum
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxeff._core import check_choice, check_in_range, check_shape, is_traced
from jaxeff._core.validation import check_int, check_number
from jax.sharding import PartitionSpec as P

from jaxeff.coreset._common import check_Xy, constrain, mesh_axis_of, psum

__all__ = ["logistic_loss", "fit_logistic", "LogisticFit", "LogisticFitStatus"]


class LogisticFitStatus(enum.IntEnum):
    """Outcome of :func:`fit_logistic`."""

    CONVERGED = 0
    MAX_STEPS = 1  # e.g. separable data without regularisation: the optimum is at infinity
    LINE_SEARCH_FAILED = 2
    NONFINITE = 3
    SEPARABLE = 4  # l2 == 0 and beta classifies every (positively weighted) row correctly:
    # the infimum 0 is not attained, beta grows without bound along a separating direction

    @property
    def successful(self) -> bool:
        return self is LogisticFitStatus.CONVERGED


class LogisticFit(NamedTuple):
    """Result of :func:`fit_logistic`.

    Attributes:
      beta: coefficients [d].
      loss: f(beta) (weighted sum, plus the L2 term).
      status: a :class:`LogisticFitStatus` (an int32 array when called under a transform).
      num_steps: iterations taken.
      grad_norm: Euclidean norm of the gradient at ``beta``.
    """

    beta: jax.Array
    loss: jax.Array
    status: Any
    num_steps: jax.Array
    grad_norm: jax.Array


def _loss(beta, X, y, w, l2):
    z = y * (X @ beta)
    return jnp.sum(w * jax.nn.softplus(-z)) + 0.5 * l2 * jnp.dot(beta, beta)


def logistic_loss(beta: Any, X: Any, y: Any, weights: Any = None, l2: float = 0.0) -> jax.Array:
    """Weighted logistic loss :math:`\\sum_i w_i \\log(1+e^{-y_i x_i^\\top\\beta}) + \\tfrac{l2}{2}\\|\\beta\\|^2`.

    Computed as ``softplus(-y * (X @ beta))``, which never overflows.

    Args:
      beta: coefficients [d].
      X: features [n, d].
      y: labels [n] in {-1, +1} ({0, 1} are converted with a warning).
      weights: optional nonnegative row weights [n] (a coreset's weights); default ones.
      l2: ridge strength λ >= 0.

    Returns:
      scalar loss (a sum over rows, not a mean).

    Example:
      >>> import jax.numpy as jnp
      >>> float(logistic_loss(jnp.zeros(2), jnp.ones((3, 2)), jnp.array([1, -1, 1])))  # 3 log 2
      2.0794415...

    References:
      arXiv 1805.08571 (MSSW 2018).
    """
    X, y, w = check_Xy(X, y, weights)
    check_shape("beta", beta, (X.shape[1],))
    check_number("l2", l2, 0.0)
    return _loss(jnp.asarray(beta, X.dtype), X, y, w, l2)


def _newton(X, y, w, l2, beta0, max_steps, tol, axis=None):
    d = X.shape[1]
    dt = X.dtype
    Z = y[:, None] * X
    eye = jnp.eye(d, dtype=dt)

    def fval(b):
        return psum(jnp.sum(w * jax.nn.softplus(-(Z @ b))), axis) + 0.5 * l2 * jnp.dot(b, b)

    def grad_hess(b):
        z = Z @ b
        s = jax.nn.sigmoid(-z)  # = 1 - sigma(z)
        h = w * s * (1.0 - s)
        g, H = psum((-(Z.T @ (w * s)), (Z * h[:, None]).T @ Z), axis)
        return g + l2 * b, H + l2 * eye

    def solve(H, g):
        # Cholesky with a tiny relative jitter so flat directions (e.g. h ~ 0) stay solvable.
        scale = jnp.maximum(jnp.trace(H) / d, jnp.finfo(dt).tiny)
        jitter = scale * 10 * jnp.finfo(dt).eps
        L = jnp.linalg.cholesky(H + jitter * eye)
        return -jax.scipy.linalg.cho_solve((L, True), g)

    class S(NamedTuple):
        b: Any
        f: Any
        it: Any
        status: Any  # -1 running, else final status
        gnorm: Any

    def cond(s):
        return s.status < 0

    def body(s):
        g, H = grad_hess(s.b)
        p = solve(H, g)
        dec = -jnp.dot(g, p)  # Newton decrement squared, ~ 2 (f - f*)
        converged = dec <= 2.0 * tol * jnp.maximum(jnp.abs(s.f), 1.0)

        def ls_cond(c):
            t, fn, k = c
            return (fn > s.f - 1e-4 * t * dec) & (k < 40)

        def ls_body(c):
            t, _, k = c
            t = 0.5 * t
            return t, fval(s.b + t * p), k + 1

        t, fn, k = jax.lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0, dt), fval(s.b + p), 0))
        ok_step = (fn <= s.f - 1e-4 * t * dec) & jnp.isfinite(fn)
        # Right at the optimum the decrease dec/2 is below the rounding of f: a step that
        # does not lower f then counts as convergence (suboptimality ~ dec/2 <= 50 eps |f|).
        tiny = dec <= 100 * jnp.finfo(dt).eps * jnp.maximum(jnp.abs(s.f), 1.0)
        ok_step = ok_step & ~(tiny & (fn >= s.f))
        nb = jnp.where(ok_step & ~converged, s.b + t * p, s.b)
        nf = jnp.where(ok_step & ~converged, fn, s.f)
        it = s.it + 1
        status = jnp.where(
            converged | (~ok_step & tiny),
            LogisticFitStatus.CONVERGED,
            jnp.where(
                ~jnp.isfinite(dec),
                LogisticFitStatus.NONFINITE,
                jnp.where(~ok_step, LogisticFitStatus.LINE_SEARCH_FAILED,
                          jnp.where(it >= max_steps, LogisticFitStatus.MAX_STEPS, -1)),
            ),
        ).astype(jnp.int32)
        return S(nb, nf, it, status, jnp.linalg.norm(g))

    s0 = S(beta0, fval(beta0), jnp.int32(0), jnp.int32(-1), jnp.asarray(jnp.inf, dt))
    s = jax.lax.while_loop(cond, body, s0)
    g, _ = grad_hess(s.b)
    return s.b, s.f, s.status, s.it, jnp.linalg.norm(g)


def _lbfgs_minimize(fval, beta0, max_steps, tol):
    """optax L-BFGS (zoom line search) on a scalar function of beta; stops on a relative change
    of f below ``tol``, a gradient norm below ``sqrt(tol) * max(|g0|, 1)`` or ``max_steps``."""
    dt = beta0.dtype
    opt = optax.lbfgs(memory_size=20)
    vg = optax.value_and_grad_from_state(fval)
    f0, g0 = jax.value_and_grad(fval)(beta0)
    gtol = jnp.sqrt(tol) * jnp.maximum(jnp.linalg.norm(g0), 1.0)

    def cond(c):
        b, st, it, gn, fprev, fcur = c
        rel = jnp.abs(fprev - fcur) <= tol * jnp.maximum(jnp.abs(fcur), 1.0)
        return (it < max_steps) & (gn > gtol) & ~((it > 1) & rel) & jnp.isfinite(fcur)

    def body(c):
        b, st, it, _, _, fcur = c
        v, g = vg(b, state=st)
        u, st = opt.update(g, st, b, value=v, grad=g, value_fn=fval)
        b = optax.apply_updates(b, u)
        return b, st, it + 1, jnp.linalg.norm(g), v, fval(b)

    c0 = (beta0, opt.init(beta0), jnp.int32(0), jnp.asarray(jnp.inf, dt), jnp.asarray(jnp.inf, dt), f0)
    b, _, it, _, _, f = jax.lax.while_loop(cond, body, c0)
    g = jax.grad(fval)(b)
    gn = jnp.linalg.norm(g)
    status = jnp.where(
        ~jnp.isfinite(f), LogisticFitStatus.NONFINITE,
        jnp.where(it >= max_steps, LogisticFitStatus.MAX_STEPS, LogisticFitStatus.CONVERGED),
    ).astype(jnp.int32)
    return b, f, status, it, gn


def _lbfgs(X, y, w, l2, beta0, max_steps, tol, axis=None):
    def fval(b):
        z = y * (X @ b)
        return psum(jnp.sum(w * jax.nn.softplus(-z)), axis) + 0.5 * l2 * jnp.dot(b, b)

    return _lbfgs_minimize(fval, beta0, max_steps, tol)


def _fit_core(X, y, w, l2, beta0, tol, *, method, max_steps, axis):
    fn = _newton if method == "newton" else _lbfgs
    b, f, status, it, gn = fn(X, y, w, l2, beta0, max_steps, tol, axis)
    margins = y * (X @ b)
    wrong = psum(jnp.sum(jnp.where(w > 0, margins <= 0, False).astype(jnp.int32)), axis)
    separated = (l2 == 0) & (wrong == 0)
    status = jnp.where(separated, LogisticFitStatus.SEPARABLE, status).astype(jnp.int32)
    return b, f, status, it, gn


@functools.partial(jax.jit, static_argnames=("method", "max_steps", "mesh", "axis"))
def _fit(X, y, w, l2, beta0, tol, *, method, max_steps, mesh=None, axis=None):
    l2 = jnp.asarray(l2, X.dtype)
    tol = jnp.asarray(tol, X.dtype)
    core = functools.partial(_fit_core, method=method, max_steps=max_steps)
    if mesh is None:
        return core(X, y, w, l2, beta0, tol, axis=None)
    row, rep = P(axis), P()
    args = [constrain(a, mesh, sp) for a, sp in zip((X, y, w, l2, beta0, tol), (row, row, row, rep, rep, rep))]
    return jax.shard_map(functools.partial(core, axis=axis), mesh=mesh, in_specs=(row, row, row, rep, rep, rep),
                         out_specs=(rep,) * 5, check_vma=False)(*args)


def fit_logistic(
    X: Any,
    y: Any,
    weights: Any = None,
    l2: float = 0.0,
    *,
    method: str = "newton",
    max_steps: int | None = None,
    tol: float = 1e-10,
    beta0: Any = None,
) -> LogisticFit:
    """Minimise the weighted logistic loss :math:`f` (see :func:`logistic_loss`).

    ``method="newton"`` (default, best for d up to a few thousand): damped Newton,
    :math:`\\beta \\leftarrow \\beta - t H^{-1} g` with :math:`H = Z^\\top \\mathrm{diag}(w\\sigma(1-\\sigma)) Z
    + \\lambda I`, Armijo backtracking, stopping when the Newton decrement
    :math:`g^\\top H^{-1} g / 2 \\approx f - f^*` falls below ``tol * |f|``.
    ``method="lbfgs"``: ``optax.lbfgs`` with its zoom line search.
    Matches scikit-learn's ``LogisticRegression(C=1/l2, fit_intercept=False)`` optimum
    (use ``penalty=None`` for ``l2=0``) to ~1e-6 relative loss or better.

    Args:
      X: features [n, d] (rows may be sharded over a mesh).
      y: labels [n] in {-1, +1} ({0, 1} converted with a warning).
      weights: optional nonnegative row weights [n].
      l2: ridge strength λ >= 0 (sklearn's ``1/C``).
      method: "newton" or "lbfgs".
      max_steps: iteration cap (default 100 for Newton, 1000 for L-BFGS).
      tol: relative tolerance on the suboptimality estimate.
      beta0: optional starting point [d] (default zeros).

    Returns:
      :class:`LogisticFit` ``(beta, loss, status, num_steps, grad_norm)``; ``status`` is
      ``SEPARABLE`` when ``l2 == 0`` and the returned beta separates the data (no finite optimum).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (200, 3))
      >>> y = jnp.where(X @ jnp.array([1.0, -1.0, 0.5]) + jax.random.logistic(jax.random.key(1), (200,)) > 0, 1, -1)
      >>> fit = fit_logistic(X, y)
      >>> fit.status.name
      'CONVERGED'

    References:
      arXiv 1805.08571 (MSSW 2018); Nocedal & Wright, Numerical Optimization (Newton, L-BFGS).
    """
    X, y, w = check_Xy(X, y, weights)
    check_number("l2", l2, 0.0)
    check_choice("method", method, ("newton", "lbfgs"))
    check_number("tol", tol, 0.0, None, low_inclusive=False)
    if max_steps is None:
        max_steps = 100 if method == "newton" else 1000
    check_int("max_steps", max_steps, 1)
    d = X.shape[1]
    if beta0 is None:
        beta0 = jnp.zeros((d,), X.dtype)
    else:
        check_shape("beta0", beta0, (d,))
        beta0 = jnp.asarray(beta0, X.dtype)
    mesh, axis = mesh_axis_of(X)
    if mesh is not None and X.shape[0] % mesh.shape[axis]:
        mesh = axis = None
    b, f, status, it, gn = _fit(X, y, w, l2, beta0, tol, method=method, max_steps=int(max_steps),
                                mesh=mesh, axis=axis)
    if not is_traced(status):
        status = LogisticFitStatus(int(status))
    return LogisticFit(b, f, status, it, gn)
