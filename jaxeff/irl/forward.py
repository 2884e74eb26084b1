"""The forward problem, to verify a recovered reward, and the Abbeel-Ng projection baseline.

* :func:`q_values_in_basis` / :func:`expert_optimal_fraction`: exact policy evaluation of the
  expert in the basis (``v = (I - γZ(a₁)ᵀ)^{-1}α``, ``Q(s,a) = αᵀφ(s) + γ vᵀZ(a)φ(s)``) and
  the fraction of states where the expert's action is greedy. By the policy-improvement
  theorem the expert is optimal iff that fraction is 1 over all of S (exact when Z is the
  true, finitely representable kernel).
* :func:`basis_value_iteration`: approximate value iteration in the basis,
  ``c ← Π(max_a [αᵀφ + γ (Z(a)ᵀc)ᵀφ])`` with the projection Π computed by the midpoint rule
  on a cell-centred grid (``Π f = (|S|/m) Σ_{s∈G} φ(s) f(s)``); returns the greedy policy.
* :func:`grid_value_iteration`: fitted value iteration on a grid with a generative model
  (multilinear interpolation of V at the sampled next states): solves the forward problem
  for an arbitrary reward without the basis, e.g. to re-solve MountainCar under a recovered
  reward.
* :func:`feature_expectations_in_basis` and :func:`projection_irl`: Abbeel & Ng's (2004)
  projection algorithm run in the basis model Ẑ (feature expectations
  ``μ(π) = E_{s₀∼U(S)} Σ_t γ^t φ(s_t)`` from the projected policy operator
  ``M_π = (|S|/m) Σ_{s∈G} φ(s) φ(s)ᵀ Z(π(s))ᵀ``).

References:
  Dexter, Bello & Honorio, arXiv 2102.07937; Abbeel & Ng, "Apprenticeship learning via inverse
  reinforcement learning", ICML 2004 (no arXiv id).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core import LPStatus
from jaxeff._core.validation import check_index_range, check_key
from jaxeff.irl._checks import check_basis, check_callable, check_int, check_real, check_Z
from jaxeff.irl.bases import OrthonormalBasis
from jaxeff.irl.estimate import _action_values
from jaxeff.irl.reward import IRLResult, _check_alpha, _check_problem, reward_margins, state_grid

__all__ = [
    "q_values_in_basis",
    "expert_optimal_fraction",
    "basis_value_iteration",
    "BasisVIResult",
    "feature_expectations_in_basis",
    "projection_irl",
    "grid_value_iteration",
    "GridVIResult",
    "grid_policy",
]


def _features(basis, states, name="states"):
    if states is None:
        raise ValueError(f"`{name}` must be an array of states [n, {basis.dim}], got None.")
    s = np.asarray(states, dtype=np.float64)
    if basis.dim == 1 and s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[1] != basis.dim:
        raise ValueError(f"`{name}` must have shape (n, {basis.dim}), got {np.shape(states)}.")
    if s.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one state, got shape {np.shape(states)}.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(s)))} NaN or inf value(s); expected finite states.")
    return np.asarray(basis.batch(jnp.asarray(s, jnp.float32)), np.float64)


def _default_num_grid(basis, num_grid):
    if num_grid is None:
        return max(4, int(math.ceil(1024 ** (1 / basis.dim))))
    return check_int("num_grid", num_grid)


def q_values_in_basis(basis: OrthonormalBasis, Z: Any, alpha: Any, gamma: float, expert_action: int, states: Any) -> np.ndarray:
    """Q-values of the expert policy (``a₁`` everywhere) under the reward ``αᵀφ``, [n, A].

    .. math::

        v = (I - \\gamma Z(a_1)^\\top)^{-1}\\alpha,\\qquad Q(s,a) = \\alpha^\\top\\varphi(s) + \\gamma\\, v^\\top Z(a)\\,\\varphi(s).

    Example:
      >>> import numpy as np
      >>> from jaxeff.irl import CosineBasis
      >>> Z = np.zeros((2, 2, 2)); Z[:, 0, 0] = 1.0; Z[1, 1, 0] = -0.3
      >>> q = q_values_in_basis(CosineBasis(2), Z, [0.0, 1.0], 0.9, 0, [[0.5]])
      >>> bool(q[0, 0] > q[0, 1])
      True
    """
    Z, e = _check_problem(basis, Z, expert_action, gamma, z_name="Z")
    alpha = _check_alpha(alpha, basis.num_features)
    Phi = _features(basis, states)
    v = np.linalg.solve(np.eye(Z.shape[-1]) - gamma * Z[e].T, alpha)
    return (Phi @ alpha)[:, None] + gamma * np.einsum("i,aij,nj->na", v, Z, Phi)


def expert_optimal_fraction(
    basis: OrthonormalBasis, Z: Any, alpha: Any, gamma: float, expert_action: int, states: Any, *, tol: float = 0.0
) -> float:
    """Fraction of ``states`` where the expert's action is greedy w.r.t. its own Q (within ``tol``).

    ``Q(s, a₁) ≥ max_a Q(s, a) - tol``; 1.0 on a dense set of states means the expert is
    (``tol``-approximately) optimal for the reward ``αᵀφ`` in the MDP given by ``Z``.
    An all-NaN ``alpha`` (the "no reward found" result of :func:`jaxeff.irl.fit_reward`)
    gives 0.0; an ``alpha`` with some (not all) NaN or any inf entries raises.
    """
    check_real("tol", tol, 0.0, None)
    Z, e = _check_problem(basis, Z, expert_action, gamma, z_name="Z")
    a = _check_alpha(alpha, basis.num_features)
    if np.all(np.isnan(a)):
        return 0.0
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"`alpha` contains {int(np.sum(~np.isfinite(a)))} NaN or inf value(s); expected finite reward "
            "coefficients (or all NaN for 'no reward found')."
        )
    Q = q_values_in_basis(basis, Z, alpha, gamma, expert_action, states)
    return float(np.mean(Q[:, expert_action] >= Q.max(axis=1) - tol))


class BasisVIResult(NamedTuple):
    """Approximate value iteration in the basis: ``coeffs`` [k] of V, ``q`` [m, A] and
    greedy ``policy`` [m] on ``grid`` [m, d]."""

    coeffs: np.ndarray
    q: np.ndarray
    policy: np.ndarray
    grid: np.ndarray


@partial(jax.jit, static_argnames=("num_iters",))
def _basis_vi(Phi, Z, alpha, gamma, w, num_iters):
    R = Phi @ alpha

    def q_of(c):
        return R[:, None] + gamma * jnp.einsum("mj,aij,i->ma", Phi, Z, c)

    def body(_, c):
        return w * Phi.T @ jnp.max(q_of(c), axis=1)

    c = jax.lax.fori_loop(0, num_iters, body, jnp.zeros_like(alpha))
    q = q_of(c)
    return c, q


def basis_value_iteration(
    basis: OrthonormalBasis, Z: Any, alpha: Any, gamma: float, *, num_grid: int | None = None, num_iters: int = 300
) -> BasisVIResult:
    """Projected value iteration in the basis for the reward ``αᵀφ`` and operators ``Z``.

    .. math::

        c \\leftarrow \\frac{|S|}{m}\\sum_{s\\in G}\\varphi(s)\\,\\max_a\\bigl[\\alpha^\\top\\varphi(s)
        + \\gamma\\,(Z(a)^\\top c)^\\top\\varphi(s)\\bigr].

    Example:
      >>> import numpy as np
      >>> from jaxeff.irl import CosineBasis
      >>> Z = np.zeros((2, 2, 2)); Z[:, 0, 0] = 1.0; Z[1, 1, 0] = -0.3
      >>> r = basis_value_iteration(CosineBasis(2), Z, [0.0, 1.0], 0.9)
      >>> int(r.policy.max())      # action 0 (the expert's) is greedy everywhere
      0
    """
    basis = check_basis(basis)
    Z = check_Z("Z", Z, basis.num_features, min_actions=1)
    alpha = _check_alpha(alpha, basis.num_features)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    num_iters = check_int("num_iters", num_iters)
    grid = state_grid(basis, _default_num_grid(basis, num_grid))
    Phi = jnp.asarray(_features(basis, grid), jnp.float32)
    w = basis.volume / grid.shape[0]
    c, q = _basis_vi(Phi, jnp.asarray(Z, jnp.float32), jnp.asarray(alpha, jnp.float32), gamma, w, num_iters)
    q = np.asarray(q, np.float64)
    return BasisVIResult(np.asarray(c, np.float64), q, np.argmax(q, axis=1), grid)


def feature_expectations_in_basis(
    basis: OrthonormalBasis, Z: Any, policy: Any, gamma: float, grid: Any
) -> np.ndarray:
    """``μ(π)_i = E_{s₀∼U(S)}[Σ_t γ^t φ_i(s_t)]`` in the basis model, [k].

    ``policy`` gives the action index at each point of the cell-centred ``grid`` [m, d]
    (an int gives a constant policy). With ``W = (|S|/m)ΦᵀΦ`` and
    ``M_π = (|S|/m) Σ_s φ(s) φ(s)ᵀ Z(π(s))ᵀ``, the values of the k basis rewards have
    coefficients ``(I - γM_π)^{-1} W`` and ``μ = ((I - γM_π)^{-1} W)ᵀ E_U[φ]``.
    """
    basis = check_basis(basis)
    Z = check_Z("Z", Z, basis.num_features, min_actions=1)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    Phi = _features(basis, grid, "grid")
    m = Phi.shape[0]
    if policy is None:
        raise ValueError(f"`policy` must be an action index (int) or an int array [m] = [{m}] over `grid`, got None.")
    pol = np.asarray(policy)
    if not np.issubdtype(pol.dtype, np.integer):
        raise ValueError(f"`policy` must hold integer action indices, got dtype {pol.dtype}.")
    if pol.shape not in ((), (m,)):
        raise ValueError(
            f"`policy` must be an int or have shape ({m},) (one action per point of `grid`), got {pol.shape}."
        )
    check_index_range("policy", pol, Z.shape[0], what="the action axis of `Z`")
    pol = np.broadcast_to(pol.astype(np.int64), (m,))
    w = basis.volume / m
    ZP = np.einsum("mij,mj->mi", Z[pol], Phi)  # Z(π(s)) φ(s): [m, k]
    M = w * Phi.T @ ZP  # Σ_s φ(s) (Z(π(s)) φ(s))ᵀ  = Σ φ φᵀ Z(π(s))ᵀ
    W = w * Phi.T @ Phi
    d_nu = Phi.mean(axis=0)
    C = np.linalg.solve(np.eye(Phi.shape[1]) - gamma * M, W)
    return C.T @ d_nu


def projection_irl(
    basis: OrthonormalBasis,
    Z_hat: Any,
    expert_action: int,
    gamma: float,
    *,
    num_grid: int | None = None,
    epsilon: float = 1e-3,
    max_iters: int = 30,
    vi_iters: int = 300,
) -> IRLResult:
    """Abbeel & Ng (2004) projection algorithm in the basis model ``Ẑ``.

    .. math::

        w^{(i)} = \\mu_E - \\bar\\mu^{(i-1)},\\quad \\pi^{(i)} = \\text{greedy for } w^{(i)\\top}\\varphi,\\quad
        \\bar\\mu^{(i)} = \\bar\\mu^{(i-1)} + \\frac{(\\mu^{(i)}-\\bar\\mu^{(i-1)})^\\top(\\mu_E-\\bar\\mu^{(i-1)})}
        {\\|\\mu^{(i)}-\\bar\\mu^{(i-1)}\\|^2}(\\mu^{(i)}-\\bar\\mu^{(i-1)}),

    stopping when ``t = ‖μ_E - μ̄‖₂ ≤ epsilon``. The first policy plays the first non-expert
    action everywhere; RL steps use :func:`basis_value_iteration`, feature expectations
    :func:`feature_expectations_in_basis`, on the same grid.

    Returns:
      :class:`IRLResult` with ``alpha = w / ‖w‖₁`` of the last iteration, ``feasible`` when it
      makes the expert optimal on the grid under Ẑ, ``status`` OPTIMAL if ``t ≤ epsilon`` else
      ITERATION_LIMIT, and ``info["t"]`` the history of t.

    References:
      Abbeel & Ng, ICML 2004 (apprenticeship learning via IRL, projection method).
    """
    Z, e = _check_problem(basis, Z_hat, expert_action, gamma)
    check_real("epsilon", epsilon, 0.0, None, low_inclusive=False)
    max_iters = check_int("max_iters", max_iters)
    vi_iters = check_int("vi_iters", vi_iters)
    grid = state_grid(basis, _default_num_grid(basis, num_grid))
    m = grid.shape[0]
    mu_E = feature_expectations_in_basis(basis, Z, e, gamma, grid)
    first = 1 if e == 0 else 0
    mu_bar = feature_expectations_in_basis(basis, Z, np.full(m, first), gamma, grid)
    ts = []
    w = mu_E - mu_bar
    status = LPStatus.ITERATION_LIMIT
    for _ in range(int(max_iters)):
        w = mu_E - mu_bar
        t = float(np.linalg.norm(w))
        ts.append(t)
        if t <= epsilon:
            status = LPStatus.OPTIMAL
            break
        pol = basis_value_iteration(basis, Z, w, gamma, num_grid=num_grid, num_iters=vi_iters).policy
        mu = feature_expectations_in_basis(basis, Z, pol, gamma, grid)
        dm = mu - mu_bar
        den = float(dm @ dm)
        if den <= 1e-30:
            break
        mu_bar = mu_bar + (dm @ (mu_E - mu_bar)) / den * dm
    l1 = float(np.abs(w).sum())
    if l1 == 0.0:
        alpha = np.zeros_like(w)
        return IRLResult(alpha, False, 0.0, status, None, 0, {"t": ts})
    alpha = w / l1
    marg = reward_margins(basis, Z, alpha, e, gamma, grid)
    mn = float(marg.min())
    return IRLResult(alpha, bool(mn >= 0), mn, status, None, 0, {"t": ts, "iterations": len(ts)})


class GridVIResult(NamedTuple):
    """Fitted value iteration on a grid: ``values`` [*num_per_dim], ``q`` [m, A], ``grid`` [m, d],
    ``low``/``high`` [d] of the box and ``num_per_dim``."""

    values: jax.Array
    q: jax.Array
    grid: jax.Array
    low: np.ndarray
    high: np.ndarray
    num_per_dim: tuple


def _interp(values, low, high, nums, x):
    """Multilinear interpolation of a cell-centred grid function at points x [n, d] (clamped)."""
    coords = [(x[:, t] - low[t]) / ((high[t] - low[t]) / nums[t]) - 0.5 for t in range(len(nums))]
    return jax.scipy.ndimage.map_coordinates(values, coords, order=1, mode="nearest")


def grid_value_iteration(
    sampler: Callable[[jax.Array, jax.Array, Any], jax.Array],
    reward_fn: Callable[[jax.Array], jax.Array],
    low: Any,
    high: Any,
    num_per_dim: int | tuple[int, ...],
    actions: Any,
    gamma: float,
    key: jax.Array,
    *,
    num_iters: int = 300,
    num_next: int = 1,
) -> GridVIResult:
    """Fitted value iteration on a cell-centred grid with a generative model.

    .. math::

        V_{t+1}(s) = \\max_a\\Bigl[R(s) + \\frac{\\gamma}{N}\\sum_{n=1}^{N} \\tilde V_t(s'_{n}(s,a))\\Bigr],\\qquad
        s'_n(s,a)\\sim P(\\cdot\\mid s,a),

    with ``Ṽ`` the multilinear interpolation of V (the next states are sampled once and reused).

    Args:
      sampler: ``sampler(key, s, a) -> s'`` for one state.
      reward_fn: ``R(s)`` for one state (e.g. ``lambda s: alpha @ basis(s)``).
      low, high: the box [d]; num_per_dim: grid points per dimension.
      actions: action values [A] (or an int A).
      gamma: discount in [0, 1).
      key: PRNG key for the next-state samples.
      num_iters: value-iteration sweeps; num_next: next-state samples per (s, a).

    Returns:
      :class:`GridVIResult`; :func:`grid_policy` turns it into a policy ``s -> action index``.
    """
    check_callable("sampler", sampler, "a generative model sampler(key, s, a) -> s'")
    check_callable("reward_fn", reward_fn, "a function R(s) for one state")
    check_key("key", key)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    for name, v in (("low", low), ("high", high)):
        if v is None:
            raise ValueError(f"`{name}` must be a [d] array (the box), got None.")
        if np.ndim(v) != 1 or np.shape(v)[0] < 1:
            raise ValueError(f"`{name}` must be a non-empty [d] array (the box), got shape {np.shape(v)}.")
    low = np.asarray(low, np.float64).reshape(-1)
    high = np.asarray(high, np.float64).reshape(-1)
    d = low.shape[0]
    if high.shape != (d,) or not np.all(np.isfinite(low) & np.isfinite(high)) or np.any(high <= low):
        raise ValueError(f"`low` and `high` must be finite [d] arrays with low < high, got {low} and {high}.")
    if num_per_dim is None or isinstance(num_per_dim, str):
        raise ValueError(f"`num_per_dim` must be an int >= 2 or {d} such ints, got {num_per_dim!r}.")
    nums = (num_per_dim,) * d if np.isscalar(num_per_dim) else tuple(num_per_dim)
    if len(nums) != d:
        raise ValueError(f"`num_per_dim` must be an int >= 2 or {d} such ints, got {num_per_dim!r}.")
    nums = tuple(check_int("num_per_dim", n, low=2) for n in nums)
    acts = _action_values(actions)
    num_iters = check_int("num_iters", num_iters)
    num_next = check_int("num_next", num_next)
    axes = [low[t] + (np.arange(nums[t]) + 0.5) * (high[t] - low[t]) / nums[t] for t in range(d)]
    grid = jnp.asarray(np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], 1), jnp.float32)
    V, q = _grid_vi(sampler, reward_fn, grid, acts, gamma, key, tuple(low), tuple(high), nums, num_iters, num_next)
    return GridVIResult(V.reshape(nums), q, grid, low, high, nums)


@partial(jax.jit, static_argnames=("sampler", "reward_fn", "low", "high", "nums", "num_iters", "num_next"))
def _grid_vi(sampler, reward_fn, grid, acts, gamma, key, low, high, nums, num_iters, num_next):
    m, d = grid.shape
    A = acts.shape[0]
    keys = jax.random.split(key, m * A * num_next).reshape(m, A, num_next)

    def nxt(kk, s, a):
        return jnp.reshape(sampler(kk, s, a), (d,))

    S_next = jax.vmap(lambda ks, s: jax.vmap(lambda ka, a: jax.vmap(lambda k1: nxt(k1, s, a))(ka))(ks, acts))(keys, grid)
    R = jax.vmap(reward_fn)(grid).reshape(m)
    flat = S_next.reshape(-1, d)

    def q_of(V):
        Vn = _interp(V.reshape(nums), low, high, nums, flat).reshape(m, A, num_next).mean(-1)
        return R[:, None] + gamma * Vn

    V = jax.lax.fori_loop(0, num_iters, lambda _, V: jnp.max(q_of(V), axis=1), jnp.zeros((m,), jnp.float32))
    return V, q_of(V)


def grid_policy(result: GridVIResult) -> Callable[[jax.Array], jax.Array]:
    """Greedy policy ``s -> argmax_a Q̃(s, a)`` from a :class:`GridVIResult` (multilinear
    interpolation of Q; jax-traceable, for one state [d])."""
    if not isinstance(result, GridVIResult):
        raise ValueError(f"`result` must be a GridVIResult from grid_value_iteration, got {type(result).__name__}.")
    A = result.q.shape[1]
    qs = result.q.reshape(*result.num_per_dim, A)
    low, high, nums = result.low, result.high, result.num_per_dim

    def policy(s):
        s = jnp.reshape(s, (1, -1))
        vals = jnp.stack([_interp(qs[..., a], low, high, nums, s)[0] for a in range(A)])
        return jnp.argmax(vals)

    return policy
