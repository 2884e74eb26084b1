"""Estimating the transition operator Z(a) of an MDP in an orthonormal basis.

With an orthonormal basis ``φ`` of L²(S) the transition density expands as

.. math::

    P(s' \\mid s, a) = \\sum_{i,j} Z_{ij}(a)\\,\\varphi_i(s')\\,\\varphi_j(s),\\qquad
    Z_{ij}(a) = \\iint \\varphi_i(s')\\,\\varphi_j(s)\\,P(s' \\mid s, a)\\,ds'\\,ds
              = |S|\\;\\mathbb E_{s\\sim U(S),\\,s'\\sim P(\\cdot\\mid s,a)}\\bigl[\\varphi_i(s')\\varphi_j(s)\\bigr].

Index convention (used everywhere in :mod:`jaxeff.irl`): the **first** index ``i`` of
``Z_ij`` belongs to the next state s', the second ``j`` to the current state s. The
expectation operator ``(P^a f)(s) = E[f(s') | s, a]`` maps a function with coefficients ``c``
to coefficients ``Z(a)ᵀ c``, i.e. ``Z(a)ᵀ`` is the Galerkin matrix of ``P^a`` on the span
(this holds for any kernel, deterministic ones included, as ``Z_ij = ⟨φ_j, P^a φ_i⟩``).

Estimators (both unbiased):

* generative model (a ``sampler(key, s, a) -> s'`` for one state, vmapped here), with
  ``s_t ~ Unif(S)``: ``Ẑ(a) = (|S|/n) Σ_t φ(s'_t) φ(s_t)ᵀ``. All actions share the same
  states ``s_t`` (common random numbers: the differences ``Ẑ(a₁) - Ẑ(a)`` the LP uses have
  lower variance). The key of sample ``t`` is ``fold_in(key, t)``, so the estimate does not
  depend on ``batch_size`` or on how the samples are sharded over a mesh.
* recorded transitions ``(s_t, a_t, s'_t)`` whose states were drawn from a known density
  ``p``: ``Ẑ(a) = (1/n_a) Σ_{t: a_t = a} φ(s'_t) φ(s_t)ᵀ / p(s_t)`` (importance weighting; the
  uniform density ``1/|S|`` gives the formula above).

Hoeffding + a union bound over the ``k² |A|`` entries (each summand lies in
``±|S| B_i B_j`` with ``B_i = sup|φ_i|``) gives, with probability ≥ 1 - δ,

.. math::

    \\max_{a,i,j} |\\hat Z_{ij}(a) - Z_{ij}(a)| \\le |S|\\,B^2 \\sqrt{\\frac{2\\log(2k^2|A|/\\delta)}{n}},

i.e. ``n = O(k² log(k/δ))`` samples for an entrywise error making the k×k matrices accurate in
the ℓ1/ℓ∞ norms the LP needs (:func:`hoeffding_num_samples`).

References:
  Dexter, Bello & Honorio, arXiv 2102.07937 (the estimator and its Hoeffding sample bound).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxeff._core.sharding import axis_size, pad_to_multiple, shard_batch
from jaxeff._core.validation import check_key
from jaxeff.irl._checks import check_basis, check_callable, check_int, check_real
from jaxeff.irl.bases import OrthonormalBasis

__all__ = [
    "Transitions",
    "estimate_transition_operator",
    "hoeffding_error_bound",
    "hoeffding_num_samples",
    "relabel_actions",
    "sample_uniform_states",
]


class Transitions(NamedTuple):
    """Recorded transitions: ``states`` [n, d], ``actions`` [n] (int labels), ``next_states`` [n, d]."""

    states: Any
    actions: Any
    next_states: Any


def _check_basis(basis: Any) -> OrthonormalBasis:
    return check_basis(basis)


def _action_values(actions: Any) -> jax.Array:
    """``actions`` as action values [A]: an int A >= 1 means ``0..A-1``, else a non-empty 1-D array."""
    if isinstance(actions, (int, np.integer)) and not isinstance(actions, (bool, np.bool_)):
        if actions < 1:
            raise ValueError(f"`actions` must be a positive number of actions, got {actions}.")
        return jnp.arange(int(actions))
    if actions is None or isinstance(actions, (bool, np.bool_, str)):
        raise ValueError(f"`actions` must be an int A or a non-empty array [A] of action values, got {actions!r}.")
    acts = jnp.asarray(actions)
    if acts.ndim == 0 or acts.shape[0] < 1:
        raise ValueError(f"`actions` must be an int or a non-empty array of action values, got shape {acts.shape}.")
    return acts


def sample_uniform_states(basis: OrthonormalBasis, key: jax.Array, n: int) -> jax.Array:
    """``n`` states drawn uniformly from the basis' box, [n, d]."""
    basis = _check_basis(basis)
    check_key("key", key)
    n = check_int("n", n)
    lo, hi = basis.bounds
    u = jax.random.uniform(key, (n, basis.dim))
    return jnp.asarray(lo, u.dtype) + u * jnp.asarray(hi - lo, u.dtype)


def _state_of(basis, key):
    lo, hi = basis.bounds
    u = jax.random.uniform(key, (basis.dim,))
    return jnp.asarray(lo, u.dtype) + u * jnp.asarray(hi - lo, u.dtype)


def _check_next_state(basis, sampler, actions):
    """Trace the sampler once to check it returns one state of the right shape."""
    s0 = jnp.zeros((basis.dim,), jnp.float32)
    try:
        out = jax.eval_shape(sampler, jax.random.key(0), s0, actions[0])
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"`sampler(key, s, a)` failed on a state of shape ({basis.dim},): {e}") from e
    shape = tuple(getattr(out, "shape", ()))
    if shape not in ((basis.dim,),) + (((),) if basis.dim == 1 else ()):
        raise ValueError(
            f"`sampler(key, s, a)` must return one next state of shape ({basis.dim},), got shape {shape}."
        )


def _sample_term(basis, sampler, actions, key):
    """``one(t, m) -> (m · φ(s'_t(a)) [A, k], φ(s_t) [k])`` for sample ``t`` (the outer product is
    formed per chunk as a matmul, so memory is O(batch · A · k), not O(batch · A · k²))."""
    k_state, k_next = jax.random.split(key)

    def one(t, m):
        s = _state_of(basis, jax.random.fold_in(k_state, t))
        phi = basis(s)

        def per_action(ai, a):
            kk = jax.random.fold_in(jax.random.fold_in(k_next, ai), t)
            sn = jnp.reshape(sampler(kk, s, a), (basis.dim,))
            return basis(sn)

        phin = jax.vmap(per_action)(jnp.arange(actions.shape[0]), actions)  # [A, k]
        return m * phin, phi

    return one


def _chunk_outer(fn, idx, mask):
    """Σ_t fn(t, m_t)[0]ᵀ-outer-fn(t, m_t)[1] over one chunk: einsum('bai,bj->aij')."""
    left, right = jax.vmap(fn)(idx, mask)  # [b, A, k], [b, k]
    return jnp.einsum("bai,bj->aij", left, right, precision=jax.lax.Precision.HIGHEST)


def _chunked_sum(fn, idx, mask, batch_size, out_shape):
    """Σ_t outer(fn(t, mask_t)) with the indices processed ``batch_size`` at a time (lax.scan)."""
    n = idx.shape[0]
    nb = -(-n // batch_size)
    pad = batch_size * nb - n
    idx = jnp.pad(idx, (0, pad))
    mask = jnp.pad(mask, (0, pad))  # padded samples weigh 0
    idx = idx.reshape(nb, batch_size)
    mask = mask.reshape(nb, batch_size)

    def body(acc, xs):
        ti, mi = xs
        return acc + _chunk_outer(fn, ti, mi), None

    acc, _ = jax.lax.scan(body, jnp.zeros(out_shape, jnp.float32), (idx, mask))
    return acc


def estimate_transition_operator(
    basis: OrthonormalBasis,
    source: Callable[..., jax.Array] | Transitions | tuple,
    actions: Any,
    num_samples: int | None = None,
    key: jax.Array | None = None,
    *,
    density: Callable[[jax.Array], jax.Array] | Any | None = None,
    batch_size: int = 2048,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> jax.Array:
    """Estimate ``Ẑ(a)`` for every action, [A, k, k] (first index: next state).

    .. math::

        \\hat Z_{ij}(a) = \\frac{|S|}{n}\\sum_{t=1}^n \\varphi_i(s'_t)\\,\\varphi_j(s_t),\\quad
        s_t \\sim U(S),\\; s'_t \\sim P(\\cdot\\mid s_t, a)
        \\qquad\\text{or}\\qquad
        \\hat Z_{ij}(a) = \\frac{1}{n_a}\\sum_{t:\\,a_t=a} \\frac{\\varphi_i(s'_t)\\,\\varphi_j(s_t)}{p(s_t)}.

    Args:
      basis: an orthonormal basis on the state box S.
      source: either a generative model ``sampler(key, s, a) -> s'`` for ONE state ``s`` [d]
        (vmapped and jit-compiled here; it must be jax-traceable), or recorded
        :class:`Transitions` ``(states [n, d], actions [n] int labels, next_states [n, d])``.
      actions: with a sampler: the action values passed to it (a sequence / array [A]) or an
        int A meaning ``0..A-1``. With transitions: the int number of actions A (labels
        ``0..A-1``).
      num_samples: with a sampler, the number n of states sampled (shared by all actions);
        must be at least ``k`` (otherwise ``Ẑ`` has rank < k). Ignored for transitions (every
        action must have at least ``k`` of them).
      key: PRNG key (sampler only).
      density: transitions only: the density ``p`` the states were drawn from, as a callable
        ``p(s)`` for one state, a scalar or an array [n]; default uniform ``1/|S|``.
      batch_size: samples processed at a time (memory is ``O(batch_size · A · k)``).
      mesh, axis: optionally split the samples over the devices of ``mesh`` along ``axis``
        (each device sums its share, then ``psum``); the result equals the one-device one.

    Returns:
      ``Ẑ`` [A, k, k] (float32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxeff.irl import CosineBasis
      >>> b = CosineBasis(4)
      >>> stay = lambda key, s, a: s                     # identity kernel: Z = I
      >>> Z = estimate_transition_operator(b, stay, 1, 20000, jax.random.key(0))
      >>> bool(jnp.abs(Z[0] - jnp.eye(4)).max() < 0.05)
      True

    References:
      arXiv 2102.07937 (estimator of Z with a generative model; Hoeffding sample complexity).
    """
    basis = _check_basis(basis)
    k = basis.num_features
    batch_size = check_int("batch_size", batch_size)
    if callable(source) and not isinstance(source, tuple):
        acts = _action_values(actions)
        check_key("key", key)
        if num_samples is None or isinstance(num_samples, bool) or int(num_samples) != num_samples:
            raise ValueError(f"`num_samples` must be an int with a sampler, got {num_samples!r}.")
        num_samples = int(num_samples)
        if num_samples < k:
            raise ValueError(
                f"`num_samples` ({num_samples}) must be at least the number of basis functions k={k}: "
                f"with n < k samples Ẑ has rank < k (the Hoeffding bound asks for O(k² log k))."
            )
        _check_next_state(basis, source, acts)
        return _estimate_generative(basis, source, acts, num_samples, key, batch_size, mesh, axis)
    if isinstance(source, tuple) and len(source) == 3:
        return _estimate_transitions(basis, Transitions(*source), actions, density, batch_size, mesh, axis)
    raise ValueError("`source` must be a sampler(key, s, a) -> s' or Transitions(states, actions, next_states).")


def _estimate_generative(basis, sampler, actions, num_samples, key, batch_size, mesh, axis):
    # One compiled program serves every n: n is traced, chunks are masked (idx < n).
    batch = batch_size
    n = jnp.asarray(num_samples, jnp.int32)
    if mesh is None:
        total = _generative_sum(basis, sampler, actions, key, n, batch)
    else:
        D = axis_size(mesh, axis)
        dev = shard_batch(jnp.arange(D, dtype=jnp.int32), mesh, axis)
        total = _generative_sum_sharded(basis, sampler, actions, key, n, dev, batch, mesh, axis)
    return total * (basis.volume / num_samples)


def _strided_chunks(basis, sampler, actions, key, n, batch, first, stride):
    """Σ over the chunks ``first, first + stride, ...`` of ``batch`` sample indices (< n)."""
    A, k = actions.shape[0], basis.num_features
    one = _sample_term(basis, sampler, actions, key)
    num_chunks = (n + batch - 1) // batch
    mine = (num_chunks - first + stride - 1) // stride

    def body(j, acc):
        idx = (first + j * stride) * batch + jnp.arange(batch, dtype=jnp.int32)
        mask = (idx < n).astype(jnp.float32)
        return acc + _chunk_outer(one, idx.astype(jnp.uint32), mask)

    return jax.lax.fori_loop(0, mine, body, jnp.zeros((A, k, k), jnp.float32))


@partial(jax.jit, static_argnames=("sampler", "batch"))
def _generative_sum(basis, sampler, actions, key, n, batch):
    return _strided_chunks(basis, sampler, actions, key, n, batch, 0, 1)


@partial(jax.jit, static_argnames=("sampler", "batch", "mesh", "axis"))
def _generative_sum_sharded(basis, sampler, actions, key, n, dev, batch, mesh, axis):
    D = axis_size(mesh, axis)

    def local(d):
        return jax.lax.psum(_strided_chunks(basis, sampler, actions, key, n, batch, d[0], D), axis)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis),), out_specs=P(), check_vma=False)(dev)


def _estimate_transitions(basis, tr, actions, density, batch_size, mesh, axis):
    k = basis.num_features
    if isinstance(actions, bool) or not isinstance(actions, (int, np.integer)) or actions < 1:
        raise ValueError(f"`actions` must be the int number of actions with recorded transitions, got {actions!r}.")
    A = int(actions)
    s = jnp.asarray(tr.states, jnp.float32)
    sn = jnp.asarray(tr.next_states, jnp.float32)
    if basis.dim == 1 and s.ndim == 1:
        s, sn = s[:, None], sn[:, None]
    if s.ndim != 2 or s.shape[1] != basis.dim:
        raise ValueError(f"`source.states` must have shape (n, {basis.dim}), got {tuple(s.shape)}.")
    if sn.shape != s.shape:
        raise ValueError(f"`source.next_states` must have the shape of `source.states` {tuple(s.shape)}, got {tuple(sn.shape)}.")
    a = np.asarray(tr.actions)
    if a.shape != (s.shape[0],) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"`source.actions` must be int labels of shape ({s.shape[0]},), got {a.dtype} {a.shape}.")
    if a.size and (a.min() < 0 or a.max() >= A):
        raise ValueError(f"`source.actions` must lie in [0, {A}) (the `actions` count), got range [{a.min()}, {a.max()}].")
    counts = np.bincount(a, minlength=A)
    if counts.min() < k:
        bad = int(np.argmin(counts))
        raise ValueError(
            f"action {bad} has {counts[bad]} transitions but at least k={k} (the number of basis "
            f"functions) are needed per action: too few samples for the basis size."
        )
    n = s.shape[0]
    if density is None:
        w = jnp.full((n,), basis.volume, jnp.float32)
    elif callable(density):
        p = jax.vmap(density)(s).reshape(n)
        w = 1.0 / p
    else:
        p = jnp.broadcast_to(jnp.asarray(density, jnp.float32), (n,))
        w = 1.0 / p
    if not bool(jnp.all(jnp.isfinite(w) & (w > 0))):
        raise ValueError("`density` must be finite and positive at every recorded state.")
    w = w / jnp.asarray(counts, jnp.float32)[jnp.asarray(a)]
    return _transitions_sum(basis, s, jnp.asarray(a, jnp.int32), sn, w, A, batch_size, mesh, axis)


def _transitions_sum(basis, s, a, sn, w, A, batch_size, mesh, axis):
    if mesh is None:
        return _transitions_partial(basis, s, a, sn, w, A, min(batch_size, s.shape[0]))
    D = axis_size(mesh, axis)
    s, _ = pad_to_multiple(s, D)
    sn, _ = pad_to_multiple(sn, D)
    a, _ = pad_to_multiple(a, D)
    w, _ = pad_to_multiple(w, D)  # padded rows weigh 0
    args = shard_batch((s, a, sn, w), mesh, axis)
    return _transitions_sharded(basis, *args, A, min(batch_size, s.shape[0] // D), mesh, axis)


def _transitions_local(basis, s, a, sn, w, A, batch_size):
    k = basis.num_features

    def fn(t, m):
        return m * jax.nn.one_hot(a[t], A)[:, None] * basis(sn[t])[None, :], basis(s[t])

    return _chunked_sum(fn, jnp.arange(s.shape[0]), w, batch_size, (A, k, k))


_transitions_partial = jax.jit(_transitions_local, static_argnames=("A", "batch_size"))


@partial(jax.jit, static_argnames=("A", "batch_size", "mesh", "axis"))
def _transitions_sharded(basis, s, a, sn, w, A, batch_size, mesh, axis):
    def local(s, a, sn, w):
        return jax.lax.psum(_transitions_local(basis, s, a, sn, w, A, batch_size), axis)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis),) * 4, out_specs=P(), check_vma=False)(s, a, sn, w)


def hoeffding_error_bound(basis: OrthonormalBasis, num_samples: int, delta: float, num_actions: int) -> float:
    """Entrywise error ε with ``P(max |Ẑ - Z| > ε) ≤ δ`` for the generative-model estimator.

    .. math::

        \\varepsilon = |S|\\,B^2\\sqrt{2\\log(2k^2|A|/\\delta)/n},\\qquad B = \\max_i \\sup_s|\\varphi_i(s)|.

    Example:
      >>> from jaxeff.irl import CosineBasis
      >>> round(hoeffding_error_bound(CosineBasis(4), 10000, 0.05, 2), 4)
      0.0757
    """
    basis = _check_basis(basis)
    num_samples = check_int("num_samples", num_samples)
    check_real("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    num_actions = check_int("num_actions", num_actions)
    k = basis.num_features
    B = float(np.max(basis.sup_norms()))
    return basis.volume * B**2 * math.sqrt(2.0 * math.log(2.0 * k * k * num_actions / delta) / num_samples)


def hoeffding_num_samples(basis: OrthonormalBasis, epsilon: float, delta: float, num_actions: int) -> int:
    """Samples n with ``max |Ẑ - Z| ≤ epsilon`` with probability ≥ 1 - delta (Hoeffding + union bound).

    .. math::

        n = \\bigl\\lceil 2\\,|S|^2 B^4 \\log(2k^2|A|/\\delta) / \\varepsilon^2 \\bigr\\rceil = O(k^2\\log(k/\\delta))
        \\ \\text{for the entrywise accuracy } \\varepsilon \\sim \\beta/k \\text{ the LP margin needs.}

    Example:
      >>> from jaxeff.irl import CosineBasis
      >>> hoeffding_num_samples(CosineBasis(4), 0.1, 0.05, 2)
      5724
    """
    basis = _check_basis(basis)
    check_real("epsilon", epsilon, 0.0, None, low_inclusive=False)
    check_real("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    num_actions = check_int("num_actions", num_actions)
    k = basis.num_features
    B = float(np.max(basis.sup_norms()))
    return int(math.ceil(2.0 * basis.volume**2 * B**4 * math.log(2.0 * k * k * num_actions / delta) / epsilon**2))


def relabel_actions(
    sampler: Callable[[jax.Array, jax.Array, Any], jax.Array],
    expert_policy: Callable[[jax.Array], jax.Array],
    actions: Any,
) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """Relabel actions per state so that the expert always takes action 0 (the paper's "π(s) = a₁").

    Returns ``sampler'(key, s, j)`` for ``j ∈ {0..A-1}``: ``j = 0`` plays the expert's action
    ``actions[expert_policy(s)]``; ``j ≥ 1`` plays the j-th of the remaining actions in their
    original order. Estimating ``Z`` with ``sampler'`` and ``actions=A`` gives the operators of
    the relabeled MDP, for :func:`jaxeff.irl.fit_reward` with ``expert_action=0``.

    Args:
      sampler: generative model ``sampler(key, s, action_value) -> s'``.
      expert_policy: ``s -> index`` into ``actions`` (jax-traceable).
      actions: the action values [A] (or an int A meaning ``0..A-1``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> step = lambda key, s, a: s + a
      >>> rs = relabel_actions(step, lambda s: (s[0] > 0).astype(int), jnp.array([-1.0, 1.0]))
      >>> rs(None, jnp.array([2.0]), 0).tolist(), rs(None, jnp.array([2.0]), 1).tolist()
      ([3.0], [1.0])
    """
    check_callable("sampler", sampler, "a generative model sampler(key, s, a) -> s'")
    check_callable("expert_policy", expert_policy, "a function s -> index into `actions`")
    acts = _action_values(actions)

    def relabeled(key, s, j):
        e = jnp.asarray(expert_policy(s), jnp.int32).reshape(())
        j = jnp.asarray(j, jnp.int32)
        other = (j - 1) + (j - 1 >= e).astype(jnp.int32)
        idx = jnp.where(j == 0, e, other)
        return sampler(key, s, acts[idx])

    return relabeled
