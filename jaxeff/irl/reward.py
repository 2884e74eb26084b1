"""Reward recovery by linear programming: the orthonormal-basis IRL LP and the Ng-Russell baseline.

**Optimality condition (derived here; the [check] item of the design notes).** Take the
convention of :mod:`jaxeff.irl.estimate`, ``Z_ij(a) = ∬ φ_i(s') φ_j(s) P(s'|s,a)`` (i: next
state), a reward ``R(s) = αᵀφ(s)`` and the expert policy ``π(s) = a₁``. For ``f = cᵀφ``,

.. math::

    (P^a f)(s) = \\int P(s'|s,a) f(s')\\,ds' = \\sum_{ij} Z_{ij}(a)\\,c_i\\,\\varphi_j(s) = (Z(a)^\\top c)^\\top \\varphi(s),

so the span is invariant and the expert's value is ``V = vᵀφ`` with
``v = α + γ Z(a₁)ᵀ v``, i.e. ``v = (I - γ Z(a₁)ᵀ)^{-1} α``. When the kernel is exactly
representable this is invertible for γ < 1 (the eigenvalues of ``Z(a₁)ᵀ`` are then eigenvalues
of the Markov operator ``P^{a₁}`` on bounded functions, of modulus ≤ 1); a truncated (Galerkin)
or estimated Ẑ can have spectral radius slightly above 1 (e.g. 1.06 for deterministic
MountainCar with 28 cosines), so the conditioning is checked and a singular system raises. Then

.. math::

    Q(s,a) = \\alpha^\\top\\varphi(s) + \\gamma\\, v^\\top Z(a)\\,\\varphi(s),\\qquad
    Q(s,a_1) - Q(s,a) = \\gamma\\, \\alpha^\\top (I - \\gamma Z(a_1))^{-1} (Z(a_1) - Z(a))\\,\\varphi(s),

using ``vᵀ = αᵀ (I - γ Z(a₁))^{-1}``. By the policy-improvement theorem the expert is optimal iff
this is ≥ 0 for all s and a, so (dropping γ > 0)

.. math::

    \\alpha^\\top F(a)\\,\\varphi(s) \\ge 0\\quad \\forall s, a \\ne a_1,\\qquad
    F(a) = (I - \\gamma Z(a_1))^{-1}\\,(Z(a_1) - Z(a)),

which is the design notes' formula with the first index of Z on the next state (with the
other convention both Z's would be transposed). With a truncated basis, Ẑ is the Galerkin
approximation of the kernel and ``F̂`` the plug-in estimate.

**The LP** (on a finite grid G of S, ℓ1 normalization, margin τ):

.. math::

    \\min_{\\alpha} \\|\\alpha\\|_1 \\quad\\text{s.t.}\\quad \\alpha^\\top \\hat F(a)\\varphi(s) \\ge \\tau\\ \\ \\forall s\\in G, a\\ne a_1,
    \\qquad \\|\\alpha\\|_1 \\le 1,

solved with ``α = α⁺ - α⁻`` (2k non-negative variables) through :func:`jaxeff._core.solve_lp`.
It is feasible iff the best ℓ1-normalized margin ``t* = max_{‖α‖₁≤1} min_{s,a} αᵀF̂(a)φ(s)`` is
≥ τ; minimizing ‖α‖₁ then returns the sparsest such reward (whose normalized margin is
exactly t*). When it is infeasible the max-margin LP is solved to report ``t*`` (≤ 0 when no
reward makes the expert strictly optimal on the grid), and ``alpha`` is NaN.

**Grid from a Lipschitz bound.** For ‖α‖₁ ≤ 1, ``s ↦ αᵀF(a)φ(s)`` is L-Lipschitz (ℓ2) with
``L = max_{a,i} Σ_j |F_ij(a)| G_j`` (``G_j = sup‖∇φ_j‖``, :meth:`grad_bounds`). On a
cell-centred grid of spacing ``h_t`` every state is within ``½‖h‖₂`` of a grid point, so
``h_t ≤ τ / (L √d)`` turns "≥ τ on G" into "≥ τ/2 on all of S" (for F̂).

References:
  Dexter, Bello & Honorio, arXiv 2102.07937 (the LP and its guarantees);
  Ng & Russell, "Algorithms for Inverse Reinforcement Learning", ICML 2000 (baseline, §4).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core import LPResult, LPStatus, solve_lp
from jaxeff._core.lp import LP_BACKENDS
from jaxeff._core.validation import check_choice, check_in_range
from jaxeff.irl._checks import check_basis, check_int, check_real, check_Z
from jaxeff.irl.bases import OrthonormalBasis

__all__ = [
    "IRLResult",
    "expert_advantage_operators",
    "fit_reward",
    "ng_russell_lp",
    "state_grid",
    "reward_margins",
    "lipschitz_bound",
]


class IRLResult(NamedTuple):
    """Result of a reward-recovery method.

    Attributes:
      alpha: reward coefficients [k] (``R = αᵀφ``), NaN when no reward was found.
      feasible: whether ``alpha`` makes the expert optimal on the grid under ``Ẑ`` (with the
        requested margin for :func:`fit_reward`).
      achieved_margin: ``min_{s∈G, a≠a₁} αᵀF̂(a)φ(s) / ‖α‖₁`` of the returned α; when
        infeasible, the best achievable value ``t*`` (from the max-margin LP).
      status: :class:`jaxeff._core.LPStatus` of the solve (projection IRL: OPTIMAL when it
        converged, ITERATION_LIMIT otherwise).
      lp: the raw :class:`jaxeff._core.LPResult` (None for non-LP methods).
      num_constraints: number of LP rows (grid points × deviating actions).
      info: method-specific extras (dict).
    """

    alpha: np.ndarray
    feasible: bool
    achieved_margin: float
    status: LPStatus
    lp: LPResult | None = None
    num_constraints: int = 0
    info: dict | None = None


def _check_expert_action(expert_action, A, z_name):
    if isinstance(expert_action, bool) or not isinstance(expert_action, (int, np.integer)) or not 0 <= expert_action < A:
        raise ValueError(f"`expert_action` must be an int in [0, {A}) (the action axis of `{z_name}`), got {expert_action!r}.")
    return int(expert_action)


def _check_problem(basis, Z_hat, expert_action, gamma, z_name="Z_hat"):
    basis = check_basis(basis)
    Z = check_Z(z_name, Z_hat, basis.num_features, min_actions=2)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    return Z, _check_expert_action(expert_action, Z.shape[0], z_name)


def _check_alpha(alpha, k):
    if alpha is None:
        raise ValueError(f"`alpha` must be reward coefficients of shape ({k},), got None.")
    a = np.asarray(alpha, np.float64)
    if a.shape != (k,):
        raise ValueError(f"`alpha` must have shape ({k},) (one coefficient per basis function), got {a.shape}.")
    return a


def _check_num_grid(num_grid):
    """``num_grid``: None (the default grid) or a positive int (points per dimension)."""
    return None if num_grid is None else check_int("num_grid", num_grid)


def expert_advantage_operators(Z_hat: Any, expert_action: int, gamma: float) -> np.ndarray:
    """``F(a) = (I - γ Z(a₁))^{-1} (Z(a₁) - Z(a))`` for every ``a ≠ a₁``, [A-1, k, k] (float64).

    ``αᵀF(a)φ(s)`` is ``(Q(s,a₁) - Q(s,a))/γ`` under the reward ``αᵀφ`` when the expert plays
    ``a₁`` everywhere (derivation in the module docstring). Actions keep their order with
    ``a₁`` removed.

    Example:
      >>> import numpy as np
      >>> Z = np.stack([0.5 * np.eye(2), np.zeros((2, 2))])
      >>> expert_advantage_operators(Z, 0, 0.5)[0].round(4).tolist()
      [[0.6667, 0.0], [0.0, 0.6667]]
    """
    Z = check_Z("Z_hat", Z_hat, min_actions=2)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    expert_action = _check_expert_action(expert_action, Z.shape[0], "Z_hat")
    k = Z.shape[-1]
    M = np.eye(k) - gamma * Z[expert_action]
    cond = np.linalg.cond(M)
    if not np.isfinite(cond) or cond > 1e12:
        raise ValueError(
            f"I - gamma * Z_hat[expert_action] is singular (condition number {cond:.3g}); "
            "use more samples or a smaller gamma."
        )
    others = [a for a in range(Z.shape[0]) if a != expert_action]
    D = np.stack([Z[expert_action] - Z[a] for a in others])
    return np.stack([np.linalg.solve(M, d) for d in D])


def state_grid(basis: OrthonormalBasis, num_per_dim: int | tuple[int, ...]) -> np.ndarray:
    """Cell-centred grid of the basis' box: ``low + (i + ½) h`` per dimension, [m, d] (float64).

    Example:
      >>> from jaxeff.irl import CosineBasis
      >>> state_grid(CosineBasis(3), 4).ravel().tolist()
      [0.125, 0.375, 0.625, 0.875]
    """
    basis = check_basis(basis)
    lo, hi = basis.bounds
    d = basis.dim
    if num_per_dim is None or isinstance(num_per_dim, str):
        raise ValueError(f"`num_per_dim` must be a positive int or {d} positive ints, got {num_per_dim!r}.")
    nums = (num_per_dim,) * d if np.isscalar(num_per_dim) else tuple(num_per_dim)
    if len(nums) != d:
        raise ValueError(f"`num_per_dim` must be a positive int or {d} positive ints, got {num_per_dim!r}.")
    nums = tuple(check_int("num_per_dim", n) for n in nums)
    axes = [lo[t] + (np.arange(int(nums[t])) + 0.5) * (hi[t] - lo[t]) / int(nums[t]) for t in range(d)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def lipschitz_bound(basis: OrthonormalBasis, F: np.ndarray) -> float:
    """``L = max_{a,i} Σ_j |F_ij(a)| G_j``: Lipschitz constant of ``s ↦ αᵀF(a)φ(s)`` over ‖α‖₁ ≤ 1.

    ``F`` is one k×k operator [k, k] or one per deviating action [A-1, k, k]
    (:func:`expert_advantage_operators`).
    """
    basis = check_basis(basis)
    k = basis.num_features
    if F is None:
        raise ValueError(f"`F` must be an array [A-1, {k}, {k}] or [{k}, {k}], got None.")
    Fa = np.asarray(F, dtype=np.float64)
    if Fa.ndim not in (2, 3) or Fa.shape[-1] != k or Fa.shape[-2] < 1 or (Fa.ndim == 3 and Fa.shape[0] < 1):
        raise ValueError(f"`F` must have shape (A-1, {k}, {k}) or (m, {k}) for a basis of k={k}, got {Fa.shape}.")
    G = np.asarray(basis.grad_bounds(), dtype=np.float64)
    return float(np.max(np.abs(Fa) @ G))


def _check_states(name, basis, states):
    """States [m, d] (or [m] when d = 1) as float64, non-empty; NaN / inf refused."""
    d = basis.dim
    g = np.asarray(states, dtype=np.float64)
    if d == 1 and g.ndim == 1:
        g = g[:, None]
    if g.ndim != 2 or g.shape[1] != d or g.shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (m, {d}) (states of dimension {d}), got {np.shape(states)}.")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(g)))} NaN or inf value(s); expected finite states.")
    return g


def _grid_for(basis, F, grid, num_grid, margin, lipschitz, max_grid_points):
    d = basis.dim
    if grid is not None:
        return _check_states("grid", basis, grid), None
    lo, hi = basis.bounds
    if lipschitz is not None:
        L = lipschitz_bound(basis, F) if lipschitz == "auto" else float(lipschitz)
        check_in_range("lipschitz", L, 0.0, None)  # L = 0: the constraints do not depend on s
        # spacing h_t <= margin / (L sqrt(d)): every state is within margin/(2L) of the grid.
        nums = [max(1, int(math.ceil(L * (hi[t] - lo[t]) * math.sqrt(d) / margin))) for t in range(d)]
        if num_grid is not None:
            nums = [max(n, int(num_grid)) for n in nums]
    else:
        if num_grid is None:
            num_grid = max(4, int(math.ceil(1024 ** (1.0 / d))))
        nums = [int(num_grid)] * d
    total = math.prod(nums)
    if total > max_grid_points:
        raise ValueError(
            f"the grid needs {total} points ({nums} per dimension) to certify the margin with Lipschitz "
            f"bound {L if lipschitz is not None else 'n/a'}; raise `margin`, give `grid`, or raise "
            f"`max_grid_points` ({max_grid_points})."
        )
    return state_grid(basis, nums), nums


def _constraint_rows(basis, F, grid):
    Phi = np.asarray(basis.batch(jnp.asarray(grid, jnp.float32)), dtype=np.float64)  # [m, k]
    # row (a, s): (F(a) φ(s))ᵀ  -> [A-1, m, k]
    return np.einsum("aij,mj->ami", F, Phi).reshape(-1, F.shape[-1])


def reward_margins(basis: OrthonormalBasis, Z: Any, alpha: Any, expert_action: int, gamma: float, states: Any) -> np.ndarray:
    """``αᵀF(a)φ(s)`` for every state and deviating action, [n, A-1] (≥ 0 ⇔ expert optimal there)."""
    Z, expert_action = _check_problem(basis, Z, expert_action, gamma, z_name="Z")
    alpha = _check_alpha(alpha, basis.num_features)
    if states is None:
        raise ValueError(f"`states` must be an array of states [n, {basis.dim}], got None.")
    g = _check_states("states", basis, states)
    F = expert_advantage_operators(Z, expert_action, gamma)
    rows = _constraint_rows(basis, F, g).reshape(F.shape[0], g.shape[0], -1)
    return np.einsum("ami,i->ma", rows, alpha)


def fit_reward(
    basis: OrthonormalBasis,
    Z_hat: Any,
    expert_action: int,
    gamma: float,
    *,
    grid: Any = None,
    num_grid: int | None = None,
    margin: float,
    lipschitz: float | str | None = None,
    backend: str = "highs",
    tol: float | None = None,
    max_iters: int | None = None,
    max_grid_points: int = 200_000,
) -> IRLResult:
    """Find a sparse reward ``αᵀφ`` under which the expert action is optimal with a margin.

    .. math::

        \\min_\\alpha \\|\\alpha\\|_1\\ \\ \\text{s.t.}\\ \\ \\alpha^\\top \\hat F(a)\\varphi(s) \\ge \\tau\\ \\ (s\\in G,\\ a\\ne a_1),
        \\quad \\|\\alpha\\|_1 \\le 1,\\qquad \\hat F(a) = (I-\\gamma\\hat Z(a_1))^{-1}(\\hat Z(a_1)-\\hat Z(a)).

    (Derivation of F and of the grid rule in the module docstring.)

    Args:
      basis: the orthonormal basis Ẑ was estimated in.
      Z_hat: [A, k, k] transition operators (:func:`estimate_transition_operator`).
      expert_action: index of the expert's action a₁ (after :func:`relabel_actions` for a
        state-dependent expert, 0).
      gamma: discount in [0, 1).
      grid: the states G [m, d] to enforce the margin on; default a cell-centred grid.
      num_grid: grid points per dimension when ``grid`` is None (default ``⌈1024^{1/d}⌉``;
        with ``lipschitz`` it is a lower bound).
      margin: τ > 0, in units of an ℓ1-normalized α.
      lipschitz: None (use ``num_grid``), a float L, or ``"auto"`` (L from :func:`lipschitz_bound`):
        the grid spacing is then ``≤ τ/(L√d)`` so the margin τ/2 holds on all of S.
      backend: LP backend, ``"highs"`` or ``"pdhg"``.
      tol, max_iters: passed to :func:`jaxeff._core.solve_lp`.
      max_grid_points: refuse Lipschitz grids larger than this.

    Returns:
      :class:`IRLResult` (``alpha`` NaN and ``feasible`` False when the LP is infeasible).

    Example:
      >>> import numpy as np
      >>> from jaxeff.irl import CosineBasis
      >>> Z = np.zeros((2, 2, 2)); Z[:, 0, 0] = 1.0        # both actions: s' ~ U[0, 1] ...
      >>> Z[1, 1, 0] = -0.3           # action 1 moves next-state mass to the right (cos(πs') < 0)
      >>> r = fit_reward(CosineBasis(2), Z, 0, 0.9, margin=0.1)
      >>> r.feasible, np.round(r.alpha, 3).tolist()
      (True, [0.0, 0.333])

    References:
      arXiv 2102.07937.
    """
    Z, expert_action = _check_problem(basis, Z_hat, expert_action, gamma)
    check_real("margin", margin, 0.0, None, low_inclusive=False)
    check_choice("backend", backend, LP_BACKENDS)
    num_grid = _check_num_grid(num_grid)
    if lipschitz is not None and not (isinstance(lipschitz, str) and lipschitz == "auto"):
        if isinstance(lipschitz, str) or not np.isscalar(lipschitz):
            raise ValueError(f"`lipschitz` must be None, a positive float or 'auto', got {lipschitz!r}.")
        check_real("lipschitz", lipschitz, 0.0, None)
    F = expert_advantage_operators(Z, expert_action, gamma)
    g, nums = _grid_for(basis, F, grid, num_grid, float(margin), lipschitz, max_grid_points)
    C = _constraint_rows(basis, F, g)  # [R, k]: rows (F(a)φ(s))ᵀ
    k = C.shape[1]
    R = C.shape[0]
    # x = [α⁺, α⁻] >= 0; -C(α⁺ - α⁻) <= -τ; 1ᵀx <= 1.
    A_ub = np.vstack([np.hstack([-C, C]), np.ones((1, 2 * k))])
    b_ub = np.concatenate([np.full(R, -float(margin)), [1.0]])
    lp = solve_lp(np.ones(2 * k), A_ub, b_ub, bounds=None, backend=backend, tol=tol, max_iters=max_iters)
    info = {"grid_per_dim": nums, "grid_size": int(g.shape[0])}
    if lp.status == LPStatus.OPTIMAL:
        alpha = lp.x[:k] - lp.x[k:]
        l1 = float(np.abs(alpha).sum())
        m = float(np.min(C @ alpha))
        # solvers satisfy rows to a feasibility tolerance (HiGHS 1e-7 absolute, PDHG relative
        # KKT error): accept the margin to 0.1 % relative.
        ok = l1 > 0 and m > 0 and m >= float(margin) * (1 - 1e-3)
        return IRLResult(alpha, bool(ok), m / l1 if l1 > 0 else float("nan"), lp.status, lp, R, info)
    best = _max_margin(C, backend, tol, max_iters)
    info["max_margin_lp"] = best
    t_star = float(best.objective) * -1.0 if best.status == LPStatus.OPTIMAL else float("nan")
    return IRLResult(np.full(k, np.nan), False, t_star, lp.status, lp, R, info)


def _max_margin(C, backend, tol, max_iters) -> LPResult:
    """``max t s.t. C α ≥ t, ‖α‖₁ ≤ 1`` (variables α⁺, α⁻ ≥ 0, t free)."""
    R, k = C.shape
    c = np.zeros(2 * k + 1)
    c[-1] = -1.0
    A_ub = np.vstack([np.hstack([-C, C, np.ones((R, 1))]), np.concatenate([np.ones(2 * k), [0.0]])[None]])
    b_ub = np.concatenate([np.zeros(R), [1.0]])
    bounds = [(0, None)] * (2 * k) + [(None, None)]
    return solve_lp(c, A_ub, b_ub, bounds=bounds, backend=backend, tol=tol, max_iters=max_iters)


def ng_russell_lp(
    basis: OrthonormalBasis,
    Z_hat: Any,
    expert_action: int,
    gamma: float,
    *,
    grid: Any = None,
    num_grid: int | None = None,
    penalty: float = 2.0,
    alpha_bound: float = 1.0,
    backend: str = "highs",
    tol: float | None = None,
    max_iters: int | None = None,
) -> IRLResult:
    """Ng & Russell (2000) LP IRL with linear function approximation, on the same basis and Ẑ.

    Reward ``R = αᵀφ`` with ``|α_i| ≤ alpha_bound``; with the expert's values of the basis
    rewards, ``E_{s'~P_{s,a₁}}[V^π(s')] - E_{s'~P_{s,a}}[V^π(s')] = αᵀF(a)φ(s)`` (same F as
    :func:`fit_reward`), and their §4 LP over sampled states ``S₀`` (here the grid) is

    .. math::

        \\max_\\alpha \\sum_{s\\in S_0} \\min_{a\\ne a_1} p\\bigl(\\alpha^\\top F(a)\\varphi(s)\\bigr),\\qquad
        p(x) = x \\text{ if } x\\ge 0,\\ \\text{penalty}\\cdot x \\text{ otherwise},

    written as an LP with one epigraph variable per state (``z_s ≤ x``, ``z_s ≤ penalty·x``).
    Unlike :func:`fit_reward` the constraints are soft: it returns a reward even when the
    expert cannot be made optimal everywhere.

    Returns:
      :class:`IRLResult`; ``feasible`` is True when the returned α ≠ 0 makes every
      ``αᵀF̂(a)φ(s) ≥ 0`` on the grid.

    Example:
      >>> import numpy as np
      >>> from jaxeff.irl import CosineBasis
      >>> Z = np.zeros((2, 2, 2)); Z[:, 0, 0] = 1.0; Z[1, 1, 0] = -0.3
      >>> r = ng_russell_lp(CosineBasis(2), Z, 0, 0.9)
      >>> r.feasible, float(r.alpha[1])
      (True, 1.0)

    References:
      Ng & Russell, "Algorithms for Inverse Reinforcement Learning", ICML 2000, §4 (no arXiv id).
    """
    Z, expert_action = _check_problem(basis, Z_hat, expert_action, gamma)
    check_real("penalty", penalty, 1.0, None)
    check_real("alpha_bound", alpha_bound, 0.0, None, low_inclusive=False)
    check_choice("backend", backend, LP_BACKENDS)
    num_grid = _check_num_grid(num_grid)
    F = expert_advantage_operators(Z, expert_action, gamma)
    g, nums = _grid_for(basis, F, grid, num_grid, 1.0, None, np.inf)
    m = g.shape[0]
    Am1 = F.shape[0]
    C = _constraint_rows(basis, F, g).reshape(Am1, m, -1)
    k = C.shape[-1]
    # variables [α (k, bounded), z (m, free)]; maximize Σ z  <=>  minimize -Σ z.
    rows, b = [], []
    eye_m = np.eye(m)
    for a in range(Am1):
        rows.append(np.hstack([-C[a], eye_m]))  # z_s - x_{s,a} <= 0
        rows.append(np.hstack([-penalty * C[a], eye_m]))  # z_s - penalty x_{s,a} <= 0
    A_ub = np.vstack(rows)
    b_ub = np.zeros(A_ub.shape[0])
    c = np.concatenate([np.zeros(k), -np.ones(m)])
    bounds = [(-alpha_bound, alpha_bound)] * k + [(None, None)] * m
    lp = solve_lp(c, A_ub, b_ub, bounds=bounds, backend=backend, tol=tol, max_iters=max_iters)
    info = {"grid_per_dim": nums, "grid_size": m}
    if lp.status != LPStatus.OPTIMAL:
        return IRLResult(np.full(k, np.nan), False, float("nan"), lp.status, lp, A_ub.shape[0], info)
    alpha = lp.x[:k]
    l1 = float(np.abs(alpha).sum())
    mins = float(np.min(C.reshape(-1, k) @ alpha))
    ok = l1 > 1e-9 and mins >= -1e-9
    return IRLResult(alpha, bool(ok), mins / l1 if l1 > 1e-9 else 0.0, lp.status, lp, A_ub.shape[0], info)
