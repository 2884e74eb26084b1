"""Oblivious multilevel hashing sketch for logistic regression (Munteanu, Omlor, Woodruff 2021).

The sketch is a random linear map S of Z = D_y X drawn without looking at the data (so it can
be built in one pass over a turnstile stream, or on shards and summed), followed by a uniform
sample of rows; the sketched loss is evaluated asymmetrically.

Construction (sketch size m, ``L = num_levels`` hashing levels, default 3 = the reference
code's ``h_max = 2``):

* N = ⌊m / (L + 1)⌋ buckets per level and a uniform block of U = m - L·N rows;
* every row i goes to exactly one level h ∈ {0, ..., L-1}, with probability
  :math:`p_h = b^{-h} / \\sum_{j<L} b^{-j}`, where :math:`b = (n/N)^{1/(L-1)}` so that the
  sparsest level receives about N rows (a sample) and level 0 almost all rows (a dense
  CountMin-type aggregation); within its level the row is hashed to one of the N buckets
  uniformly at random and added (no random signs: the loss is asymmetric, the hashing must
  keep large positive parts large). Bucket (h, j) carries weight :math:`1/p_h`;
* the uniform block is U distinct rows drawn uniformly at random, weight n/U each.

Sketched loss (the O(1)-approximation variant of MOW21: per level only the largest entries
count, so that the many small buckets of the heavy levels do not overestimate the loss):

.. math::

    \\tilde f(\\beta) = \\sum_h \\frac{1}{p_h} \\sum_{j \\in \\mathrm{top}_k(h)} \\ell\\big(-(SZ)_{hj}\\beta\\big)
      + \\frac{n}{U} \\sum_{i \\in U} \\ell(-z_i\\beta), \\qquad \\ell(v) = \\log(1 + e^v),

with :math:`\\mathrm{top}_k(h)` the k = ⌊``keep`` · N⌋ buckets of level h with the largest
:math:`-(SZ)_{hj}\\beta` (default ``keep = 0.25``, as in the authors' experiments).
:math:`\\tilde f` is convex (a sum of largest-k sums of convex functions);
:func:`fit_oblivious_sketch` minimises it with L-BFGS. ``keep=1`` gives the plain weighted
sum, i.e. :func:`~jaxeff.coreset.fit_logistic` on ``(sketch.X, sketch.y, sketch.weights)``.

Rows may be sharded over a mesh axis: each shard adds its rows into the same buckets and a
``psum`` adds the shards (levels and buckets are drawn per global row, so the result does not
depend on the sharding).

References:
  Munteanu, Omlor, Woodruff, "Oblivious sketching for logistic regression", ICML 2021,
  arXiv 2107.06615 (the sketch, the uniform block and the top-k evaluation; the authors'
  experiments use h_max = 2 and k = N/4). Munteanu, Omlor, Woodruff, ICLR 2023,
  arXiv 2304.00051 (almost linear constant-factor sketching).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxeff._core import check_in_range, check_key, is_traced
from jaxeff._core.validation import check_array, check_int, check_number
from jaxeff.coreset._common import check_rows_divisible, check_Xy, constrain, mesh_axis_of, psum, shard_index
from jaxeff.coreset.logistic import LogisticFit, LogisticFitStatus, _lbfgs_minimize

__all__ = ["ObliviousSketch", "oblivious_sketch", "oblivious_sketch_loss", "fit_oblivious_sketch",
           "oblivious_level_probabilities"]


class ObliviousSketch(NamedTuple):
    """Result of :func:`oblivious_sketch`.

    Attributes:
      X: sketched rows [L*N + U, d]: L levels of N hashed buckets of Z = D_y X, then U sampled
        rows of Z (labels already multiplied in).
      y: ones [L*N + U].
      weights: 1/p_h for the buckets of level h, n/U for the uniform rows.
      num_levels: L.
      buckets: N, buckets per level.
      keep: k, buckets per level that enter the sketched loss (the largest losses).
    """

    X: jax.Array
    y: jax.Array
    weights: jax.Array
    num_levels: int
    buckets: int
    keep: int


def oblivious_level_probabilities(n: int, m: int, num_levels: int = 3) -> tuple[np.ndarray, int, int]:
    """Level probabilities p_h, buckets per level N and uniform-block size U for an (n, m) sketch.

    Example:
      >>> p, N, U = oblivious_level_probabilities(10_000, 400)
      >>> N, U, round(float(p.sum()), 6)
      (100, 100, 1.0)
    """
    check_int("n", n, 1)
    check_int("m", m, 1)
    L = check_int("num_levels", num_levels, 1)
    N = max(int(m) // (L + 1), 1)
    U = max(int(m) - L * N, 1)
    b = (n / N) ** (1.0 / (L - 1)) if L > 1 else 1.0
    b = max(b, 1.0)
    p = b ** -np.arange(L, dtype=np.float64)
    return p / p.sum(), N, U


def _hashes(key, n, L, N, U, p):
    """Level [n], bucket [n] of every global row and the U uniform rows (same for any sharding)."""
    k1, k2, k3 = jax.random.split(key, 3)
    lev = jax.random.categorical(k1, jnp.log(jnp.asarray(p, jnp.float32)), shape=(n,)).astype(jnp.int32)
    bucket = jax.random.randint(k2, (n,), 0, N, dtype=jnp.int32)
    # U distinct rows, uniformly: the U largest of n i.i.d. uniforms (a top-k, not a full permutation)
    uni = jax.lax.top_k(jax.random.uniform(k3, (n,)), U)[1].astype(jnp.int32)
    return lev, bucket, uni


@functools.lru_cache(maxsize=None)
def _build(n, d, L, N, U, p_items, mesh, axis):
    p = np.asarray(p_items, np.float64)

    ax = None if mesh is None else axis

    def local(X, y, lev, bucket, uni):
        # rows with y = -1 go to a second copy of the buckets, subtracted afterwards: the same
        # sums of z_i = y_i x_i without materialising D_y X before the scatter-add
        seg = lev * N + bucket + jnp.where(y < 0, L * N, 0).astype(jnp.int32)
        S2 = jax.ops.segment_sum(X, seg, num_segments=2 * L * N)
        # the uniform block: each shard contributes the sampled rows it holds (exactly one
        # shard holds each row, the others add zeros), so the psum is the plain gather
        n_loc = X.shape[0]
        j = uni - shard_index(ax) * n_loc
        mine = (j >= 0) & (j < n_loc)
        jc = jnp.clip(j, 0, n_loc - 1)
        Zu = jnp.where(mine[:, None], y[jc][:, None] * X[jc], 0.0)
        return psum(S2[: L * N] - S2[L * N:], ax), psum(Zu, ax)

    def run(key, X, y):
        lev, bucket, uni = _hashes(key, n, L, N, U, p)
        if mesh is None:
            S, Zu = local(X, y, lev, bucket, uni)
        else:
            row = P(axis)
            specs = (row,) * 4 + (P(),)
            args = [constrain(a, mesh, sp) for a, sp in zip((X, y, lev, bucket, uni), specs)]
            S, Zu = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False)(*args)
        w = jnp.concatenate([jnp.repeat(jnp.asarray(1.0 / p, X.dtype), N), jnp.full((U,), n / U, X.dtype)])
        return jnp.concatenate([S, Zu], 0), w

    return jax.jit(run)


def oblivious_sketch(key: Any, X: Any, y: Any, m: int, *, num_levels: int = 3, keep: float = 0.25,
                     mesh: Any = None, axis: str | None = None) -> ObliviousSketch:
    """Build the multilevel hashing sketch of :math:`Z = D_y X` with ``m`` rows (module docstring).

    Args:
      key: a ``jax.random.key``.
      X: features [n, d] (rows may be sharded over a mesh axis).
      y: labels [n] in {-1, +1} ({0, 1} converted with a warning).
      m: sketch size: ``num_levels`` levels of N = m // (num_levels + 1) buckets plus
        m - num_levels·N uniformly sampled rows.
      num_levels: hashing levels L >= 1 (level h sub-samples rows at rate ∝ b^-h, b = (n/N)^(1/(L-1))).
      keep: fraction of each level's buckets (those with the largest loss) in the sketched loss.
      mesh, axis: the mesh and axis the rows are split over (default: from ``X.sharding``).

    Returns:
      :class:`ObliviousSketch`; minimise its loss with :func:`fit_oblivious_sketch`, evaluate it
      with :func:`oblivious_sketch_loss`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (4096, 3)); y = jnp.sign(X[:, 0] + 0.5)
      >>> sk = oblivious_sketch(jax.random.key(1), X, y, 256)
      >>> sk.X.shape, sk.num_levels, sk.buckets, sk.keep
      ((256, 3), 3, 64, 16)

    References:
      Munteanu, Omlor, Woodruff, arXiv 2107.06615.
    """
    check_key("key", key)
    X, y, _ = check_Xy(X, y)
    n, d = X.shape
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise ValueError(f"`m` must be a positive int (the sketch size), got {m!r}.")
    if not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise ValueError(f"`num_levels` must be a positive int, got {num_levels!r}.")
    if m < num_levels + 1:
        raise ValueError(f"`m` ({m}) must be at least num_levels + 1 = {num_levels + 1}.")
    check_number("keep", keep, 0.0, 1.0, low_inclusive=False)
    if m > n:
        raise ValueError(f"`m` ({m}) must be <= n ({n}).")
    p, N, U = oblivious_level_probabilities(n, int(m), int(num_levels))
    k = max(1, int(keep * N))
    mesh, axis = mesh_axis_of(X, mesh, axis)
    check_rows_divisible(n, mesh, axis)
    SZ, w = _build(n, d, int(num_levels), N, U, tuple(p.tolist()), mesh, axis)(key, X, y)
    return ObliviousSketch(SZ, jnp.ones((SZ.shape[0],), X.dtype), w, int(num_levels), N, k)


def _check_sketch(sketch: Any) -> None:
    if not isinstance(sketch, ObliviousSketch):
        raise TypeError(f"`sketch` must be an ObliviousSketch (the result of oblivious_sketch), "
                        f"got {type(sketch).__name__}.")


def _sketch_loss(beta, Z, w, L, N, k, l2):
    v = -(Z @ beta)
    lv = v[: L * N].reshape(L, N)
    top = jax.lax.top_k(lv, k)[0] if k < N else lv
    wl = w[: L * N].reshape(L, N)[:, :1]
    return (jnp.sum(wl * jax.nn.softplus(top)) + jnp.sum(w[L * N:] * jax.nn.softplus(v[L * N:]))
            + 0.5 * l2 * jnp.dot(beta, beta))


def oblivious_sketch_loss(sketch: ObliviousSketch, beta: Any, l2: float = 0.0) -> jax.Array:
    """The sketched loss: per level the k largest bucket losses, weighted, plus the uniform block.

    .. math:: \\sum_h \\tfrac{1}{p_h} \\sum_{j \\in \\mathrm{top}_k(h)} \\log(1 + e^{-(SZ)_{hj}\\beta})
              + \\tfrac{n}{U} \\sum_{i \\in U} \\log(1 + e^{-z_i\\beta}) + \\tfrac{l2}{2}\\|\\beta\\|^2

    Args:
      sketch: the result of :func:`oblivious_sketch`.
      beta: coefficients [d].
      l2: ridge strength.

    Returns:
      scalar estimate of the full loss (up to the sketch's constant-factor distortion).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (1024, 2)); y = jnp.sign(X[:, 0])
      >>> sk = oblivious_sketch(jax.random.key(1), X, y, 128)
      >>> float(oblivious_sketch_loss(sk, jnp.zeros(2))) > 0
      True

    References:
      Munteanu, Omlor, Woodruff, arXiv 2107.06615.
    """
    _check_sketch(sketch)
    check_array("beta", beta, f"an array of coefficients [{sketch.X.shape[1]}]")
    Z = sketch.X
    beta = jnp.asarray(beta, Z.dtype)
    if beta.shape != (Z.shape[1],):
        raise ValueError(f"`beta` must have shape ({Z.shape[1]},), got {beta.shape}.")
    check_number("l2", l2, 0.0)
    return _sketch_loss(beta, Z, sketch.weights, sketch.num_levels, sketch.buckets, sketch.keep, l2)


@functools.partial(jax.jit, static_argnames=("L", "N", "k", "max_steps"))
def _fit_sketch(Z, w, l2, beta0, tol, *, L, N, k, max_steps):
    def fval(b):
        return _sketch_loss(b, Z, w, L, N, k, l2)

    return _lbfgs_minimize(fval, beta0, max_steps, tol)


def fit_oblivious_sketch(sketch: ObliviousSketch, l2: float = 0.0, *, max_steps: int = 1000,
                         tol: float = 1e-10) -> LogisticFit:
    """Minimise :func:`oblivious_sketch_loss` (convex) with optax L-BFGS from beta = 0.

    Args:
      sketch: the result of :func:`oblivious_sketch`.
      l2: ridge strength.
      max_steps: iteration cap.
      tol: relative tolerance on the change of the sketched loss.

    Returns:
      :class:`~jaxeff.coreset.LogisticFit` (``loss`` is the sketched loss at ``beta``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (4096, 3)); y = jnp.sign(X[:, 0] + 0.3 * X[:, 1] + 0.5)
      >>> y = jnp.where(jax.random.uniform(jax.random.key(2), (4096,)) < 0.1, -y, y)
      >>> fit = fit_oblivious_sketch(oblivious_sketch(jax.random.key(1), X, y, 512))
      >>> fit.status.name
      'CONVERGED'

    References:
      Munteanu, Omlor, Woodruff, arXiv 2107.06615.
    """
    _check_sketch(sketch)
    check_number("l2", l2, 0.0)
    check_int("max_steps", max_steps, 1)
    check_number("tol", tol, 0.0)
    Z = sketch.X
    dt = Z.dtype
    b, f, status, it, gn = _fit_sketch(Z, sketch.weights, jnp.asarray(l2, dt), jnp.zeros((Z.shape[1],), dt),
                                       jnp.asarray(tol, dt), L=int(sketch.num_levels), N=int(sketch.buckets),
                                       k=int(sketch.keep), max_steps=int(max_steps))
    if not is_traced(status):
        status = LogisticFitStatus(int(status))
    return LogisticFit(b, f, status, it, gn)
