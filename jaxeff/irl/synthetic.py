"""Synthetic MDPs on [0, 1] whose kernel is exactly representable in a cosine basis.

The kernel is ``P(s'|s,a) = Σ_ij Z_ij(a) φ_i(s') φ_j(s)`` with the first k cosines and

* ``Z_0j(a) = δ_0j`` (so ``∫P(s'|s,a) ds' = 1``: only ``φ_0 = 1`` has a non-zero integral),
* ``Σ_{i≥1, j} |Z_ij(a)| ≤ mass ≤ ½`` (so ``P ≥ 1 - 2·mass > 0``, as ``|φ_iφ_j| ≤ 2``),

hence a valid density, with Z known in closed form. Next states are drawn exactly by inverse-CDF
bisection on ``CDF(x) = Σ_i (Z(a)φ(s))_i ∫_0^x φ_i``.

The expert plays action 0. Deviations are ``Z(a) = Z(0) - D_a`` with ``D_a = u_a e_0ᵀ + E_a``
(rows 0 zero), ``u_a`` aligned with ``c = (I - γZ(0))^{-T} α*`` for a random reward α*, so that
``α*ᵀF(a)φ(s) = cᵀD_aφ(s) = cᵀu_a + cᵀE_aφ(s)`` is positive: the expert is optimal for α*
with the margin ``min_{s,a} α*ᵀF(a)φ(s) / ‖α*‖₁`` (reported, evaluated on a fine grid).

References:
  arXiv 2102.07937 (synthetic experiments with known transition coefficients).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import check_key
from jaxeff.irl._checks import check_int, check_real, check_Z
from jaxeff.irl.bases import CosineBasis

__all__ = ["SyntheticIRLProblem", "synthetic_irl_problem", "contradictory_irl_problem", "cosine_kernel_sampler"]


class SyntheticIRLProblem(NamedTuple):
    """``basis``; exact ``Z`` [A, k, k]; ``alpha`` a reward making action 0 optimal; its
    ``margin``; a generative model ``sampler(key, s, a)``; ``gamma``."""

    basis: CosineBasis
    Z: np.ndarray
    alpha: np.ndarray
    margin: float
    sampler: Callable
    gamma: float


def cosine_kernel_sampler(basis: CosineBasis, Z: np.ndarray, *, iters: int = 26) -> Callable:
    """Exact sampler of ``P(s'|s,a) = Σ Z_ij(a) φ_i(s') φ_j(s)`` on the basis' interval (inverse CDF by bisection).

    ``basis`` is a :class:`CosineBasis`, ``Z`` [A, k, k] (finite) and ``iters`` (a positive
    int) the number of bisection steps.
    """
    if not isinstance(basis, CosineBasis):
        raise ValueError(f"`basis` must be a CosineBasis (its antiderivative gives the CDF), got {type(basis).__name__}.")
    Z = check_Z("Z", Z, basis.num_features, min_actions=1)
    iters = check_int("iters", iters)
    Zj = jnp.asarray(Z, jnp.float32)
    lo, L = basis.low, basis.length

    def sampler(key, s, a):
        s = jnp.reshape(s, (1,))
        coef = Zj[a] @ basis(s)  # density coefficients of s' | s, a
        u = jax.random.uniform(key, ())

        def cdf(x):
            return coef @ basis.antiderivative_1d((x - lo) / L)

        def body(_, ab):
            a_, b_ = ab
            mid = 0.5 * (a_ + b_)
            below = cdf(mid) < u
            return jnp.where(below, mid, a_), jnp.where(below, b_, mid)

        a_, b_ = jax.lax.fori_loop(0, iters, body, (jnp.asarray(lo, jnp.float32), jnp.asarray(lo + L, jnp.float32)))
        return jnp.reshape(0.5 * (a_ + b_), (1,))

    return sampler


def _scaled(x, total):
    return x * (total / np.abs(x).sum())


def _margin(basis, Z, alpha, gamma, num=4096):
    from jaxeff.irl.reward import expert_advantage_operators, state_grid

    F = expert_advantage_operators(Z, 0, gamma)
    Phi = np.asarray(basis.batch(jnp.asarray(state_grid(basis, num), jnp.float32)), np.float64)
    return float(np.min(np.einsum("i,aij,mj->am", alpha, F, Phi)) / np.abs(alpha).sum())


def synthetic_irl_problem(
    key: jax.Array,
    k: int,
    num_actions: int = 3,
    gamma: float = 0.9,
    *,
    mass: float = 0.45,
    noise: float = 0.2,
    deviation_scale: float = 1.0,
) -> SyntheticIRLProblem:
    """A random MDP on [0, 1] with an exact k-cosine kernel in which action 0 is optimal for a known reward.

    Args:
      key: PRNG key.
      k: number of cosines (≥ 2).
      num_actions: A ≥ 2.
      gamma: discount in [0, 1).
      mass: ℓ1 mass of the non-constant coefficients (≤ 0.5 keeps the density positive).
      noise: fraction of each deviation's mass in the state-dependent part E_a (the rest
        shifts next-state mass uniformly over s, against the reward).
      deviation_scale: λ ∈ (0, 1] multiplying every deviation ``D_a``. The same key gives the
        same base MDP, and since F(a) is linear in D_a the margin is exactly λ times the
        λ = 1 margin: a family of problems with controlled margins β.

    Returns:
      :class:`SyntheticIRLProblem` (its ``margin`` > 0; re-drawn until it is).

    Example:
      >>> import jax
      >>> p = synthetic_irl_problem(jax.random.key(0), 6)
      >>> p.Z.shape, p.margin > 0
      ((3, 6, 6), True)
    """
    check_key("key", key)
    k = check_int("k", k, low=2)
    num_actions = check_int("num_actions", num_actions, low=2)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    check_real("mass", mass, 0.0, 0.5, low_inclusive=False)
    check_real("noise", noise, 0.0, 1.0, high_inclusive=False)
    check_real("deviation_scale", deviation_scale, 0.0, 1.0, low_inclusive=False)
    basis = CosineBasis(k)
    for attempt in range(100):
        rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, attempt))).ravel())
        Z0 = np.zeros((k, k))
        Z0[1:] = _scaled(rng.normal(size=(k - 1, k)), mass / 2)
        Z0[0, 0] = 1.0
        alpha = rng.normal(size=k)
        alpha[0] = 0.0
        alpha /= np.abs(alpha).sum()
        c = np.linalg.solve((np.eye(k) - gamma * Z0).T, alpha)
        Zs = [Z0]
        for _ in range(num_actions - 1):
            D = np.zeros((k, k))
            r = rng.uniform(0.5, 1.0, size=k - 1) * np.abs(c[1:])
            D[1:, 0] = _scaled(np.sign(c[1:]) * r, (1 - noise) * mass / 2) if r.sum() > 0 else 0.0
            E = np.zeros((k, k))
            E[1:] = _scaled(rng.normal(size=(k - 1, k)), noise * mass / 2)
            Zs.append(Z0 - deviation_scale * (D + E))
        Z = np.stack(Zs)
        margin = _margin(basis, Z, alpha, gamma)
        if margin > 0:
            return SyntheticIRLProblem(basis, Z, alpha, margin, cosine_kernel_sampler(basis, Z), float(gamma))
    raise RuntimeError("could not draw a synthetic MDP with a positive margin; lower `noise`.")  # pragma: no cover


def contradictory_irl_problem(key: jax.Array, k: int, gamma: float = 0.9, *, mass: float = 0.45) -> SyntheticIRLProblem:
    """An MDP on [0, 1] where NO reward makes action 0 optimal with a positive margin.

    Actions 1 and 2 are mirror deviations, ``Z(1) = Z(0) - D`` and ``Z(2) = Z(0) + D``, so
    ``F(2) = -F(1)``: ``αᵀF(1)φ(s) ≥ τ > 0`` forces ``αᵀF(2)φ(s) ≤ -τ``. (Weak optimality,
    margin 0, remains possible, e.g. with α = 0 or a constant reward.) ``alpha`` is NaN and
    ``margin`` is the best achievable, 0. ``k`` (≥ 2), ``gamma`` and ``mass`` (in (0, 0.5]) are as
    in :func:`synthetic_irl_problem`.
    """
    check_key("key", key)
    k = check_int("k", k, low=2)
    check_real("gamma", gamma, 0.0, 1.0, high_inclusive=False)
    check_real("mass", mass, 0.0, 0.5, low_inclusive=False)
    basis = CosineBasis(k)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    Z0 = np.zeros((k, k))
    Z0[1:] = _scaled(rng.normal(size=(k - 1, k)), mass / 2)
    Z0[0, 0] = 1.0
    D = np.zeros((k, k))
    D[1:] = _scaled(rng.normal(size=(k - 1, k)), mass / 2)
    Z = np.stack([Z0, Z0 - D, Z0 + D])
    return SyntheticIRLProblem(basis, Z, np.full(k, np.nan), 0.0, cosine_kernel_sampler(basis, Z), float(gamma))
