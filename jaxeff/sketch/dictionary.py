"""r-sparse dictionary learning: batched OMP codes and least-squares / K-SVD dictionary updates.

Problem (rows of ``D ∈ R^{k×d}`` are the atoms, codes ``X ∈ R^{n×k}``):

.. math::  \\min_{D,\\, X:\\ \\|X_i\\|_0 \\le r} \\| X D - A \\|_F^2

k-means is the special case ``r = 1`` with 0/1 codes.

* :func:`omp` — batched orthogonal matching pursuit in its Gram form ("Batch-OMP",
  Rubinstein-Zibulevsky-Elad): with ``G = D Dᵀ`` and ``B = A Dᵀ`` precomputed, each of the ``r``
  steps picks the atom of largest normalized residual correlation
  ``|B_i − x_S G_{S,:}| / ‖d_j‖`` and re-solves the ``|S| × |S|`` normal equations
  ``G_{SS} x_S = B_{i,S}`` for every row at once (rows processed ``chunk_size`` at a time).
* :func:`dictionary_learning` — alternate OMP codes with a dictionary update: ``"ksvd"``
  (approximate K-SVD: one power step per atom on the residual restricted to its support, atoms
  updated in sequence) or ``"lstsq"`` (``D = (XᵀX + λI)⁻¹ XᵀA``). Unused atoms are re-seeded at the
  worst-represented rows; atoms are kept at unit norm.

References:
  Pati, Rezaiifar, Krishnaprasad (1993), OMP; Aharon, Elad, Bruckstein, "K-SVD" (2006);
  Rubinstein, Zibulevsky, Elad, "Efficient Implementation of the K-SVD Algorithm using Batch
  Orthogonal Matching Pursuit" (2008); Dexter et al., arXiv 2310.19068.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxeff._core.validation import check_choice, check_key
from jaxeff.sketch.kmeans import (
    _all_gather,
    _check_data,
    _check_int,
    _data_mesh,
    _dev_index,
    _gather_rows,
    _psum,
    _row_map,
)

P = jax.P

__all__ = ["DictionaryLearningResult", "omp", "dictionary_learning"]


class DictionaryLearningResult(NamedTuple):
    """``dictionary`` (k, d) unit-norm atoms, ``codes`` (n, k) with ≤ r nonzeros per row,
    ``cost`` = ‖codes · dictionary − A‖_F²."""

    dictionary: jax.Array
    codes: jax.Array
    cost: jax.Array


def _omp_chunk(G, B, norms, r):
    """Batch-OMP for one chunk: ``G`` (k, k), ``B`` (c, k). Returns idx (c, r), coef (c, r)."""
    c, k = B.shape
    eye = jnp.eye(r, dtype=B.dtype)
    ridge = 1e-7 * jnp.max(jnp.diag(G))
    rows = jnp.arange(c)

    def step(t, carry):
        idx, coef, sel = carry
        corr = B - jnp.einsum("cr,crk->ck", coef, G[idx])
        score = jnp.where(sel, -jnp.inf, jnp.abs(corr) / norms[None, :])
        j = jnp.argmax(score, axis=1).astype(jnp.int32)
        idx = idx.at[:, t].set(j)
        sel = sel.at[rows, j].set(True)
        active = jnp.arange(r) <= t
        both = active[:, None] & active[None, :]
        Gs = G[idx[:, :, None], idx[:, None, :]]
        Gs = jnp.where(both[None], Gs + ridge * eye[None], eye[None])
        rhs = jnp.where(active[None, :], jnp.take_along_axis(B, idx, axis=1), 0.0)
        coef = jnp.linalg.solve(Gs, rhs[..., None])[..., 0]
        return idx, coef, sel

    init = (jnp.zeros((c, r), jnp.int32), jnp.zeros((c, r), B.dtype), jnp.zeros((c, k), bool))
    idx, coef, _ = lax.fori_loop(0, r, step, init)
    return idx, coef


@functools.partial(jax.jit, static_argnames=("r", "chunk"))
def _omp_jit(D, A, r, chunk):
    n, d = A.shape
    k = D.shape[0]
    G = D @ D.T
    norms = jnp.sqrt(jnp.maximum(jnp.diag(G), 1e-30))
    nc = -(-n // chunk)
    Ap = jnp.pad(A, ((0, nc * chunk - n), (0, 0))).reshape(nc, chunk, d)

    def one(Ac):
        idx, coef = _omp_chunk(G, Ac @ D.T, norms, r)
        X = jnp.zeros((chunk, k), A.dtype).at[jnp.arange(chunk)[:, None], idx].add(coef)
        return X

    X = lax.map(one, Ap).reshape(nc * chunk, k)[:n]
    return X


def omp(D: jax.Array, A: jax.Array, r: int, *, chunk_size: int = 2048,
        mesh: jax.sharding.Mesh | None = None, axis: str = "data") -> jax.Array:
    """Batched orthogonal matching pursuit: an ``r``-sparse code of every row of ``A``.

    For each row ``a``: ``S = ∅``; repeat ``r`` times: add
    ``j = argmax_{j ∉ S} |⟨a − x_S D_S, d_j⟩| / ‖d_j‖`` to ``S`` and set
    ``x_S = argmin ‖x_S D_S − a‖² = (D_S D_Sᵀ)⁻¹ D_S aᵀ``.

    Args:
      D: ``(k, d)`` dictionary, one atom per row (need not be normalized).
      A: ``(n, d)`` signals.
      r: sparsity, ``1 <= r <= k``.
      chunk_size: rows solved at once (memory ``O(chunk_size · r · k)``).
      mesh, axis: rows of ``A`` split over mesh axis ``axis`` (default: read from ``A``'s
        sharding, Auto or Explicit mesh); ``D`` is replicated and each device codes its rows
        (no communication). The codes come back sharded like ``A``.

    Returns:
      ``(n, k)`` codes ``X`` with at most ``r`` nonzeros per row, ``X D ≈ A``.

    Example:
      >>> D = jnp.eye(4)
      >>> [round(float(v), 3) for v in omp(D, jnp.array([[0.0, 3.0, 0.0, -1.0]]), 2)[0]]
      [0.0, 3.0, 0.0, -1.0]

    References:
      Pati et al. (1993); Rubinstein, Zibulevsky, Elad (2008) Batch-OMP.
    """
    A = _check_data("A", A)
    D = _check_data("D", D)
    if D.shape[1] != A.shape[1]:
        raise ValueError(f"`D` must have {A.shape[1]} columns like `A`, got shape {D.shape}.")
    k = D.shape[0]
    r = _check_int("r", r)
    if r > k:
        raise ValueError(f"`r` ({r}) must be <= the number of atoms k={k} of `D`.")
    chunk_size = _check_int("chunk_size", chunk_size)
    mesh, axis = _data_mesh(A, mesh, axis)
    if mesh is None:
        return _omp_jit(D.astype(A.dtype), A, r, min(chunk_size, A.shape[0]))
    chunk = min(chunk_size, A.shape[0] // mesh.shape[axis])
    return _omp_sharded_fn(mesh, axis, r, chunk)(D.astype(A.dtype), A)


def _normalize_rows(D):
    nrm = jnp.linalg.norm(D, axis=1, keepdims=True)
    return D / jnp.maximum(nrm, 1e-12)


def _worst_rows(A, R, k, axis=None):
    """k rows of ``A`` with the largest residual norms, normalized (re-seeding unused atoms).

    Sharded (``axis``): each device proposes its local top ``min(k, n_local)`` rows, the
    candidates are gathered in device order and the global top k taken (ties go to the lower
    global index, as on one device)."""
    err = jnp.sum(R * R, axis=1)
    nloc = A.shape[0]
    kk = min(k, nloc)
    val, idx = lax.top_k(err, kk)
    if axis is None:
        return _normalize_rows(A[idx]), idx
    off = _dev_index(axis) * nloc
    cand_v = _all_gather(val, axis).reshape(-1)
    cand_i = _all_gather(idx.astype(jnp.int32) + off, axis).reshape(-1)
    _, pos = lax.top_k(cand_v, k)
    gidx = cand_i[pos]
    return _normalize_rows(_gather_rows(A, gidx, off, axis)), gidx


def _replace_mask(D, X, axis=None):
    """Atoms to re-seed: unused ones, and the later of two near-duplicate atoms (|cos| > 0.99)."""
    unused = _psum(jnp.sum(X != 0, axis=0), axis) == 0
    Dn = _normalize_rows(D)
    G = jnp.abs(Dn @ Dn.T)
    dup = jnp.any(jnp.tril(G > 0.99, k=-1), axis=1)
    return unused | dup


def _ksvd_update(A, D, X, axis=None):
    """Approximate K-SVD sweep (one power step per atom, sequential over atoms)."""
    k = D.shape[0]
    R = A - X @ D
    worst, _ = _worst_rows(A, R, k, axis)
    unused = _replace_mask(D, X, axis)
    rank = jnp.clip(jnp.cumsum(unused) - 1, 0, k - 1)

    def atom(j, carry):
        D, X, R = carry
        dj = D[j]
        # a re-seeded atom gives its contribution back to the residual and starts unused
        R = jnp.where(unused[j], R + jnp.outer(X[:, j], dj), R)
        g = jnp.where(unused[j], 0.0, X[:, j])
        supp = (g != 0).astype(A.dtype)
        gg = _psum(jnp.dot(g, g), axis)
        dnew = _psum(R.T @ g, axis) + dj * gg
        nrm = jnp.linalg.norm(dnew)
        dnew = jnp.where(nrm > 0, dnew / jnp.maximum(nrm, 1e-30), dj)
        gnew = (R @ dnew + g * jnp.dot(dj, dnew)) * supp
        R = R + jnp.outer(g, dj) - jnp.outer(gnew, dnew)
        dnew = jnp.where(unused[j], worst[rank[j]], dnew)
        return D.at[j].set(dnew), X.at[:, j].set(gnew), R

    D, X, R = lax.fori_loop(0, k, atom, (D, X, R))
    return D


def _lstsq_update(A, D, X, axis=None):
    k = D.shape[0]
    XtX = _psum(X.T @ X, axis)
    lam = 1e-6 * jnp.maximum(jnp.trace(XtX) / k, 1e-12)
    Dn = jnp.linalg.solve(XtX + lam * jnp.eye(k, dtype=A.dtype), _psum(X.T @ A, axis))
    R = A - X @ Dn
    worst, _ = _worst_rows(A, R, k, axis)
    unused = _replace_mask(Dn, X, axis)
    rank = jnp.clip(jnp.cumsum(unused) - 1, 0, k - 1)
    Dn = jnp.where(unused[:, None], worst[rank], Dn)
    return _normalize_rows(Dn)


def _dl_local(key, A, D0, *, k, r, n_iter, update, chunk, axis, n_glob):
    """Dictionary learning on the local rows ``A`` (all rows when ``axis`` is None); every
    reduction over rows is a ``psum`` over ``axis``, so the result is the single-device one."""
    nloc = A.shape[0]
    off = _dev_index(axis) * nloc
    if D0 is None:
        idx = jax.random.choice(key, n_glob, (k,), replace=False)
        D0 = A[idx] if axis is None else _gather_rows(A, idx.astype(jnp.int32), off, axis)
        nrm = jnp.linalg.norm(D0, axis=1, keepdims=True)
        fallback = jax.random.normal(jax.random.fold_in(key, 1), D0.shape, A.dtype)
        D0 = jnp.where(nrm > 1e-12, D0, fallback)
    D = _normalize_rows(D0)
    upd = _ksvd_update if update == "ksvd" else _lstsq_update

    def it(D, _):
        X = _omp_jit(D, A, r, chunk)
        D = upd(A, D, X, axis)
        return D, None

    D, _ = lax.scan(it, D, None, length=n_iter)
    X = _omp_jit(D, A, r, chunk)
    cost = _psum(jnp.sum((X @ D - A) ** 2), axis)
    return D, X, cost


@functools.partial(jax.jit, static_argnames=("k", "r", "n_iter", "update", "chunk"))
def _dl_jit(key, A, D0, *, k, r, n_iter, update, chunk):
    return _dl_local(key, A, D0, k=k, r=r, n_iter=n_iter, update=update, chunk=chunk, axis=None,
                     n_glob=A.shape[0])


@functools.lru_cache(maxsize=32)
def _dl_sharded_fn(mesh, axis, k, r, n_iter, update, chunk, n_glob, has_init):
    def local(key, Al, D0):
        return _dl_local(key, Al, D0, k=k, r=r, n_iter=n_iter, update=update, chunk=chunk, axis=axis,
                         n_glob=n_glob)

    row, rep = P(axis, None), P()
    run = _row_map(local, mesh, axis, (rep, row, rep), (rep, row, rep))
    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _omp_sharded_fn(mesh, axis, r, chunk):
    return jax.jit(_row_map(lambda D, Al: _omp_jit(D, Al, r, chunk), mesh, axis, (P(), P(axis, None)),
                            P(axis, None)))


def dictionary_learning(
    key: jax.Array,
    A: jax.Array,
    k: int,
    r: int,
    *,
    n_iter: int = 20,
    update: str = "ksvd",
    init: jax.Array | None = None,
    chunk_size: int = 2048,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> DictionaryLearningResult:
    """r-sparse dictionary learning by alternating OMP codes and dictionary updates.

    .. math::  \\min_{D \\in R^{k×d},\\ \\|X_i\\|_0 \\le r} \\|X D - A\\|_F^2

    Args:
      key: ``jax.random.key`` (picks the ``k`` initial atoms among the rows of ``A``).
      A: ``(n, d)`` data, ``k <= n``.
      k: number of atoms.
      r: nonzeros per code, ``1 <= r <= k``.
      n_iter: alternations (OMP + dictionary update).
      update: ``"ksvd"`` (approximate K-SVD) or ``"lstsq"`` (least-squares MOD update).
      init: optional ``(k, d)`` initial dictionary.
      chunk_size: rows per OMP block.
      mesh, axis: rows of ``A`` split over mesh axis ``axis`` (default: read from ``A``'s
        sharding, Auto or Explicit mesh). OMP runs on each device's rows; the dictionary
        update's sums over rows (``Xᵀ X``, ``Xᵀ A``, ``Rᵀ g``, usage counts, the worst-fit rows
        used for re-seeding) are collectives, so the result is the single-device one up to
        float summation order. Codes come back sharded like ``A``.

    Returns:
      :class:`DictionaryLearningResult` ``(dictionary (k, d), codes (n, k), cost)``; codes are
      recomputed by OMP on the final dictionary.

    Example:
      >>> A = jax.random.normal(jax.random.key(1), (200, 16))
      >>> res = dictionary_learning(jax.random.key(0), A, k=8, r=2, n_iter=5)
      >>> res.codes.shape, int(jnp.max(jnp.sum(res.codes != 0, axis=1))) <= 2
      ((200, 8), True)

    References:
      Aharon, Elad, Bruckstein (2006) K-SVD; Engan et al. (1999) MOD; Rubinstein et al. (2008);
      arXiv 2310.19068.
    """
    check_key("key", key)
    A = _check_data("A", A)
    n, d = A.shape
    k = _check_int("k", k)
    if k > n:
        raise ValueError(f"`k` ({k}) must be <= the number of rows of `A` ({n}).")
    r = _check_int("r", r)
    if r > k:
        raise ValueError(f"`r` ({r}) must be <= `k` ({k}).")
    n_iter = _check_int("n_iter", n_iter, low=0)
    check_choice("update", update, ("ksvd", "lstsq"))
    chunk_size = _check_int("chunk_size", chunk_size)
    D0 = None
    if init is not None:
        D0 = _check_data("init", init).astype(A.dtype)
        if D0.shape != (k, d):
            raise ValueError(f"`init` must have shape ({k}, {d}), got {D0.shape}.")
    mesh, axis = _data_mesh(A, mesh, axis)
    if mesh is None:
        D, X, cost = _dl_jit(key, A, D0, k=k, r=r, n_iter=n_iter, update=update, chunk=min(chunk_size, n))
    else:
        chunk = min(chunk_size, n // mesh.shape[axis])
        fn = _dl_sharded_fn(mesh, axis, k, r, n_iter, update, chunk, n, D0 is not None)
        D, X, cost = fn(key, A, D0)
    return DictionaryLearningResult(D, X, cost)
