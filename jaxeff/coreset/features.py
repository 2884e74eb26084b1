"""Feature-space sketching for logistic regression: project or select columns, fit, compare.

Instead of fewer rows, use fewer features: fit :math:`\\tilde\\gamma = \\arg\\min_\\gamma f(XS\\gamma)`
on the sketched design :math:`XS \\in \\mathbb R^{n\\times k}` and lift back
:math:`\\tilde\\beta = S\\tilde\\gamma \\in \\mathbb R^d` (so :math:`X\\tilde\\beta = XS\\tilde\\gamma`).
S is either a random projection (Gaussian, SRHT, CountSketch: *feature extraction*) or a
column selection (*feature selection*, by rank-k leverage scores of the columns, pivoted QR,
norms, or uniformly). DDKR'23 bound the forward error :math:`\\lVert\\tilde\\beta - \\beta^*\\rVert`
for such sketches in terms of how well the range of S captures the top singular subspace of X;
:func:`fit_sketched_features` reports that error, the loss ratio
:math:`f(\\tilde\\beta)/f(\\beta^*)` and, beside the measured error, the forward-error bound
(:func:`forward_error_bound`).

Forward-error bound (DKRD'23's argument: λ-strong convexity of the ridge-regularised loss and the
1/4-Lipschitz derivative of the logistic function; written here for any sketch S [d, k], weights w):
with :math:`P = SS^+` the orthogonal projector on range(S),
:math:`\\delta = \\lVert (I-P)\\beta^*\\rVert_2`,
:math:`\\eta = \\tfrac{\\max_i w_i}{4}\\lVert XS\\rVert_2 \\lVert X(I-P)\\beta^*\\rVert_2
+ \\lambda\\lVert (S^+ - S^\\top)\\beta^*\\rVert_2`,

.. math:: \\lVert\\tilde\\beta - \\beta^*\\rVert_2 \\le
          \\sqrt{\\delta^2 + \\left(\\lVert S\\rVert_2\\,\\eta/\\lambda\\right)^2}.

Proof: :math:`h(\\gamma) = L(XS\\gamma) + \\tfrac\\lambda2\\lVert\\gamma\\rVert^2` is λ-strongly convex,
so :math:`\\lVert\\tilde\\gamma-\\gamma_0\\rVert \\le \\lVert\\nabla h(\\gamma_0)\\rVert/\\lambda` at
:math:`\\gamma_0 = S^+\\beta^*`; with :math:`X^\\top\\nabla L(X\\beta^*) = -\\lambda\\beta^*`,
:math:`\\nabla h(\\gamma_0) = S^\\top X^\\top(\\nabla L(XP\\beta^*) - \\nabla L(X\\beta^*)) +
\\lambda(S^+ - S^\\top)\\beta^*`, whose norm is at most η (``∇L`` is (max w/4)-Lipschitz); finally
:math:`\\tilde\\beta-\\beta^* = S(\\tilde\\gamma-\\gamma_0) - (I-P)\\beta^*`, two orthogonal parts.
For a selection (or any S with orthonormal columns) :math:`S^+ = S^\\top`, η is the first term alone
and the bound is DKRD'23's form: the part of β* outside the sketch plus
:math:`\\lVert XS\\rVert\\lVert X(I-SS^\\top)\\beta^*\\rVert/(4\\lambda)`, i.e. how much of X the sketch misses,
over λ. It needs ``l2 > 0`` (λ = 0 gives ``inf``) and is evaluated at the fitted β*.

References:
  Dexter, Khanna, Raheel, Drineas, "Feature Space Sketching for Logistic Regression",
  arXiv 2303.14284. Boutsidis, Mahoney, Drineas, "Unsupervised feature selection for the
  k-means clustering problem" (rank-k leverage scores), arXiv 0812.2838. Tropp, "Improved
  analysis of the subsampled randomized Hadamard transform", arXiv 1011.1595.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec as P

from jaxeff._core import check_choice, check_in_range, check_key
from jaxeff._core.sharding import _is_explicit, place, row_mesh_axis
from jaxeff.coreset._common import check_X, check_Xy
from jaxeff.coreset.logistic import _loss, fit_logistic

__all__ = [
    "project_features",
    "select_features",
    "fit_sketched_features",
    "FeatureProjection",
    "FeatureSketchFit",
    "fwht",
    "forward_error_bound",
]

PROJECTIONS = ("gaussian", "srht", "countsketch")
SELECTIONS = ("leverage", "leverage_sampling", "pivoted_qr", "norm", "uniform")


class FeatureProjection(NamedTuple):
    """``X_sketch = X @ S`` [n, k] and the sketch matrix ``S`` [d, k]."""

    X_sketch: jax.Array
    S: jax.Array


class FeatureSketchFit(NamedTuple):
    """Result of :func:`fit_sketched_features`.

    Attributes:
      beta: the lifted solution :math:`\\tilde\\beta = S\\tilde\\gamma` [d].
      beta_star: the full-feature optimum [d].
      forward_error: :math:`\\lVert\\tilde\\beta - \\beta^*\\rVert_2`.
      relative_forward_error: forward_error / :math:`\\lVert\\beta^*\\rVert_2`.
      loss_ratio: :math:`f(\\tilde\\beta)/f(\\beta^*)` (>= 1 up to solver tolerance).
      S: the sketch / selection matrix [d, k].
      forward_error_bound: the bound on ``forward_error`` of :func:`forward_error_bound` (module
        docstring; ``inf`` when ``l2 == 0``).
    """

    beta: jax.Array
    beta_star: jax.Array
    forward_error: jax.Array
    relative_forward_error: jax.Array
    loss_ratio: jax.Array
    S: jax.Array
    forward_error_bound: jax.Array


def fwht(a: jax.Array) -> jax.Array:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of 2).

    Example:
      >>> import jax.numpy as jnp
      >>> fwht(jnp.array([1.0, 0.0, 0.0, 0.0])).tolist()
      [1.0, 1.0, 1.0, 1.0]

    References:
      arXiv 1011.1595.
    """
    if a is None:
        raise ValueError("`a` must be an array, got None.")
    a = jnp.asarray(a)
    if a.ndim < 1 or a.size == 0:
        raise ValueError(f"`a` must be a non-empty array with at least one axis, got shape {a.shape}.")
    if a.dtype == jnp.bool_:
        a = a.astype(jnp.result_type(float))
    D = a.shape[-1]
    if D & (D - 1):
        raise ValueError(f"the last axis of `a` must have a power-of-2 length, got {D}.")
    lead = a.shape[:-1]
    h = 1
    while h < D:
        b = a.reshape(*lead, D // (2 * h), 2, h)
        x, y = b[..., 0, :], b[..., 1, :]
        a = jnp.stack([x + y, x - y], axis=-2).reshape(*lead, D)
        h *= 2
    return a


def _sketch_matrix(key, d, k, kind, dtype):
    if kind == "gaussian":
        return jax.random.normal(key, (d, k), dtype) / np.sqrt(k)
    if kind == "countsketch":
        kb, ks = jax.random.split(key)
        b = jax.random.randint(kb, (d,), 0, k)
        s = jax.random.rademacher(ks, (d,), dtype=dtype)
        return jax.nn.one_hot(b, k, dtype=dtype) * s[:, None]
    # SRHT: S = sqrt(D/k) * (diag(signs) H / sqrt(D))[:d, cols], D = next power of 2 >= d
    D = 1 << max(int(np.ceil(np.log2(max(d, 1)))), 0)
    ks, kc = jax.random.split(key)
    signs = jax.random.rademacher(ks, (D,), dtype=dtype)
    cols = jax.random.choice(kc, D, (k,), replace=False)
    HD = fwht(jnp.eye(D, dtype=dtype) * signs[:, None]) / np.sqrt(D)  # rows: e_j^T diag(s) H
    return HD[:d, cols] * np.sqrt(D / k)


def project_features(key: Any, X: Any, k: int, kind: str = "gaussian") -> FeatureProjection:
    """Random projection of the feature space: ``X @ S`` with S a d x k sketch.

    * ``"gaussian"``: :math:`S_{jl} \\sim N(0, 1/k)`.
    * ``"srht"``: :math:`S = \\sqrt{D/k}\\,(\\mathrm{diag}(\\sigma) H_D/\\sqrt D)_{[1:d],\\,C}`, H the
      Walsh-Hadamard matrix, D = next power of 2, C k uniformly chosen columns (SRHT).
    * ``"countsketch"``: each feature j goes to one column h(j) with a random sign.
    All satisfy :math:`E[SS^\\top] = I_d` (SRHT exactly up to the padding rows).

    Args:
      key: a ``jax.random.key``.
      X: features [n, d].
      k: number of sketched features (1 <= k; k <= next power of 2 of d for SRHT).
      kind: "gaussian", "srht" or "countsketch".

    Returns:
      :class:`FeatureProjection` ``(X_sketch [n, k], S [d, k])``.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (10, 16))
      >>> project_features(jax.random.key(1), X, 4, "srht").X_sketch.shape
      (10, 4)

    References:
      Dexter, Khanna, Raheel, Drineas, arXiv 2303.14284; Tropp, arXiv 1011.1595.
    """
    check_key("key", key)
    X = check_X(X)
    check_choice("kind", kind, PROJECTIONS)
    d = X.shape[1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    if kind == "srht":
        D = 1 << int(np.ceil(np.log2(max(d, 1))))
        if k > D:
            raise ValueError(f"`k` ({k}) must be <= {D} (the padded dimension) for kind='srht'.")
    S = _sketch_matrix(key, d, int(k), kind, X.dtype)
    return FeatureProjection(X @ S, S)


def select_features(X: Any, k: int, method: str = "leverage", *, key: Any = None, rank: int | None = None) -> jax.Array:
    """Choose k columns of X (feature selection).

    * ``"leverage"``: the k largest rank-``rank`` column leverage scores
      :math:`\\ell_j = \\lVert V_{r}[j,:]\\rVert_2^2` (V_r the top-r right singular vectors, r = k by
      default), deterministic (Papailiopoulos, Kyrillidis, Boutsidis 2014).
    * ``"leverage_sampling"``: k distinct columns sampled with :math:`p_j \\propto \\ell_j` (needs ``key``).
    * ``"pivoted_qr"``: the first k pivots of a column-pivoted QR (scipy).
    * ``"norm"``: the k largest column norms.
    * ``"uniform"``: k uniformly random columns (needs ``key``).

    Args:
      X: features [n, d]; k: 1 <= k <= d; method: as above; key: for the random methods;
      rank: target rank for the leverage scores (default ``min(k, n, d)``).

    Returns:
      sorted column indices [k] (int32).

    Example:
      >>> import jax.numpy as jnp
      >>> X = jnp.array([[1.0, 0.0, 0.1], [0.0, 2.0, 0.1]])
      >>> select_features(X, 2, "norm").tolist()
      [0, 1]

    References:
      Dexter, Khanna, Raheel, Drineas, arXiv 2303.14284; Papailiopoulos, Kyrillidis, Boutsidis,
      "Provable deterministic leverage score sampling", arXiv 1404.1530.
    """
    X = check_X(X)
    check_choice("method", method, SELECTIONS)
    n, d = X.shape
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= d:
        raise ValueError(f"`k` must be an int in [1, {d}] (the number of columns of X), got {k!r}.")
    if method in ("leverage_sampling", "uniform"):
        check_key("key", key)
    if method == "pivoted_qr":
        import scipy.linalg

        _, _, piv = scipy.linalg.qr(np.asarray(X, np.float64), mode="economic", pivoting=True)
        return jnp.asarray(np.sort(piv[:k]), jnp.int32)
    if method == "norm":
        scores = jnp.sum(X * X, axis=0)
        return jnp.sort(jax.lax.top_k(scores, k)[1]).astype(jnp.int32)
    if method == "uniform":
        return jnp.sort(jax.random.choice(key, d, (k,), replace=False)).astype(jnp.int32)
    r = min(k, n, d) if rank is None else int(rank)
    check_in_range("rank", r, 1, min(n, d))
    mesh, _ = row_mesh_axis(X)
    if mesh is not None and _is_explicit(mesh):
        X = place(X, mesh, P())  # the SVD needs unsharded rows on an Explicit mesh (sharding in types)
    _, _, Vt = jnp.linalg.svd(X, full_matrices=False)
    lev = jnp.sum(Vt[:r] ** 2, axis=0)
    if method == "leverage":
        return jnp.sort(jax.lax.top_k(lev, k)[1]).astype(jnp.int32)
    g = jax.random.gumbel(key, (d,), X.dtype)
    return jnp.sort(jax.lax.top_k(jnp.log(jnp.maximum(lev, 1e-30)) + g, k)[1]).astype(jnp.int32)


def _spectral_norm(A):
    """Largest singular value via the eigenvalues of the smaller Gram matrix."""
    mesh, _ = row_mesh_axis(A)
    if mesh is not None and _is_explicit(mesh):  # rows sharded in the type: say where the Gram goes
        A = place(A, mesh, P()) if A.shape[0] < A.shape[1] else A
        G = jnp.matmul(A.T, A, out_sharding=NamedSharding(mesh, P())) if A.shape[0] >= A.shape[1] else A @ A.T
    else:
        G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(G)[-1], 0.0))


def forward_error_bound(X: Any, S: Any, beta_star: Any, l2: float, weights: Any = None) -> jax.Array:
    """Bound on :math:`\\lVert S\\tilde\\gamma - \\beta^*\\rVert_2` for the sketched fit of
    :func:`fit_sketched_features` (formula and proof in the module docstring):
    :math:`\\sqrt{\\delta^2 + (\\lVert S\\rVert_2\\eta/\\lambda)^2}` with
    :math:`\\delta = \\lVert(I-P)\\beta^*\\rVert`,
    :math:`\\eta = \\tfrac{\\max w}{4}\\lVert XS\\rVert_2\\lVert X(I-P)\\beta^*\\rVert + \\lambda\\lVert(S^+-S^\\top)\\beta^*\\rVert`,
    :math:`P = SS^+`, λ = ``l2``.

    Args:
      X: features [n, d]; S: the sketch [d, k]; beta_star: the full-feature ridge optimum [d];
      l2: the ridge strength λ >= 0 used by both fits (0 gives ``inf``); weights: row weights [n]
      (default 1).

    Returns:
      the bound (scalar).

    Example:
      >>> import jax.numpy as jnp
      >>> X = jnp.eye(3); S = jnp.eye(3)[:, :2]
      >>> float(forward_error_bound(X, S, jnp.array([0.0, 0.0, 2.0]), 1.0))  # sqrt(2^2 + (1 * 0.25 * 2)^2)
      2.0615527629852295

    References:
      Dexter, Khanna, Raheel, Drineas, arXiv 2303.14284.
    """
    X = check_X(X)
    S = jnp.asarray(S, X.dtype)
    d = X.shape[1]
    if S.ndim != 2 or S.shape[0] != d:
        raise ValueError(f"`S` must have shape [d, k] with d = {d} (the columns of X), got {S.shape}.")
    b = jnp.asarray(beta_star, X.dtype)
    if b.shape != (d,):
        raise ValueError(f"`beta_star` must have shape ({d},), got {b.shape}.")
    l2 = float(l2)
    if not np.isfinite(l2) or l2 < 0:
        raise ValueError(f"`l2` must be a finite number >= 0, got {l2!r}.")
    w_max = jnp.asarray(1.0, X.dtype) if weights is None else jnp.max(jnp.asarray(weights, X.dtype))
    S_pinv = jnp.linalg.pinv(S)
    out = b - S @ (S_pinv @ b)  # (I - P) beta*
    delta = jnp.linalg.norm(out)
    eta = 0.25 * w_max * _spectral_norm(X @ S) * jnp.linalg.norm(X @ out) + l2 * jnp.linalg.norm((S_pinv - S.T) @ b)
    if l2 == 0:
        return jnp.asarray(jnp.inf, X.dtype)
    return jnp.sqrt(delta ** 2 + (_spectral_norm(S) * eta / l2) ** 2)


def fit_sketched_features(
    X: Any,
    y: Any,
    k: int,
    *,
    method: str = "gaussian",
    key: Any = None,
    l2: float = 0.0,
    beta_star: Any = None,
    weights: Any = None,
    **fit_options: Any,
) -> FeatureSketchFit:
    """Fit logistic regression on k sketched/selected features and compare with the full fit.

    :math:`\\tilde\\gamma = \\arg\\min_\\gamma f(XS\\gamma) + \\tfrac{l2}{2}\\lVert\\gamma\\rVert^2`,
    :math:`\\tilde\\beta = S\\tilde\\gamma`; reports :math:`\\lVert\\tilde\\beta-\\beta^*\\rVert_2` and
    :math:`f(\\tilde\\beta)/f(\\beta^*)` (f with the same ``l2``), and the forward-error bound of
    :func:`forward_error_bound` beside the measured error.

    Args:
      X, y: the problem ([n, d], labels in {-1, +1}).
      k: number of features kept.
      method: a projection kind (``"gaussian"``, ``"srht"``, ``"countsketch"``) or a selection
        method of :func:`select_features`.
      key: ``jax.random.key`` (needed by every method except the deterministic selections).
      l2: ridge strength used for both fits (needed when the data are separable, e.g. d > n).
      beta_star: the full-feature optimum if already known (else it is fitted).
      weights: optional row weights.
      **fit_options: passed to :func:`fit_logistic`.

    Returns:
      :class:`FeatureSketchFit`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (300, 20)); y = jnp.sign(X[:, 0] + X[:, 1])
      >>> r = fit_sketched_features(X, y, 10, method="leverage", l2=1.0)
      >>> bool(r.loss_ratio >= 1 - 1e-5)
      True

    References:
      Dexter, Khanna, Raheel, Drineas, arXiv 2303.14284.
    """
    X, y, w = check_Xy(X, y, weights)
    d = X.shape[1]
    check_choice("method", method, PROJECTIONS + SELECTIONS)
    if method in PROJECTIONS:
        S = project_features(key, X, k, method).S
    else:
        idx = select_features(X, k, method, key=key)
        S = jax.nn.one_hot(idx, d, dtype=X.dtype).T  # [d, k] column selector
    if beta_star is None:
        beta_star = fit_logistic(X, y, w, l2, **fit_options).beta
    beta_star = jnp.asarray(beta_star, X.dtype)
    gamma = fit_logistic(X @ S, y, w, l2, **fit_options).beta
    # the sketched problem penalises |gamma|; lift to beta-space for the comparison
    beta = S @ gamma
    f_star = _loss(beta_star, X, y, w, l2)
    f_tilde = _loss(beta, X, y, w, l2)
    fe = jnp.linalg.norm(beta - beta_star)
    bound = forward_error_bound(X, S, beta_star, l2, w)
    return FeatureSketchFit(beta, beta_star, fe, fe / jnp.maximum(jnp.linalg.norm(beta_star), 1e-30),
                            f_tilde / f_star, S, bound)
