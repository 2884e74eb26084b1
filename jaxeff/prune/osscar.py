"""OSSCAR: one-shot structured pruning of MLP neurons and attention heads by combinatorial search.

For a layer consuming the pruned groups (the MLP down-projection, or the attention output
projection) with Flax kernel ``W [k, d]`` and calibration inputs ``X [n, k]``, OSSCAR solves

.. math::

   \\min_{\\hat W}\\ \\tfrac12 \\operatorname{tr}\\big((\\hat W - W)^\\top H (\\hat W - W)\\big)
   \\quad \\text{s.t. at most ``keep`` groups of rows of } \\hat W \\text{ are nonzero},

with :math:`H = X^\\top X + \\lambda I`, :math:`\\lambda` = ``damp`` * mean(diag(XᵀX)) (for
``damp -> 0`` this is :math:`\\tfrac12\\lVert X\\hat W - XW\\rVert_F^2`). A group is one hidden
neuron (one row of ``W_down``; the matching column of ``W_up`` / ``W_gate`` is dropped with it)
or one attention head (``head_dim`` consecutive rows of ``W_o``). Three stages, all in float64
on the host (the reference implementation needs float64; the matrices are ``k x k``):

1. **Greedy backward removal** (OBS): removing group :math:`g` costs
   :math:`\\tfrac12 \\operatorname{tr}(\\hat W_g^\\top [(H_S^{-1})_{gg}]^{-1} \\hat W_g)`; remove the
   cheapest, update :math:`\\hat W \\leftarrow \\hat W - (H_S^{-1})_{:,g} [(H_S^{-1})_{gg}]^{-1} \\hat W_g`
   and downdate :math:`H_S^{-1}` by Woodbury, until ``keep`` groups remain.
2. **Local search**: the exact change of the objective for swapping a kept group ``i`` with a
   removed group ``j`` follows from Schur complements (removal of ``i`` as above, then adding
   ``j`` gains :math:`\\operatorname{tr}(R_j'^\\top S_j'^{-1} R_j')` with residual correlation
   :math:`R' = H(W - \\hat W')` and Schur complement :math:`S'_j`), evaluated for all pairs at
   once; the best ``t`` disjoint improving swaps are applied, and ``t`` is halved whenever the
   exact objective does not improve.
3. **Least-squares refit** of the kept rows, :math:`\\hat W_S = H_{SS}^{-1} (HW)_S`.

References:
  Meng, Behdin, Wang, Mazumder, "OSSCAR: One-Shot Structured Pruning in Vision and Language
  Models with Combinatorial Optimization" (arXiv 2403.12983); "Efficient AI in Practice"
  (arXiv 2502.14305); Hassibi & Stork, Optimal Brain Surgeon (1993).
"""
from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxeff._core.validation import check_int, check_number, check_same_shape
from jaxeff.prune._checks import check_host_finite, check_kernel, check_rows, float_dtype_of, require_array
from jaxeff.prune.oneshot import LayerHessian

__all__ = ["osscar", "osscar_heads", "least_squares_refit", "structured_reconstruction_error"]


def _hessian64(x_or_hessian: Any, k: int, name: str = "x") -> np.ndarray:
    require_array(name, x_or_hessian, f"calibration activations [n, {k}] or a LayerHessian")
    if isinstance(x_or_hessian, LayerHessian):
        h = np.asarray(x_or_hessian.h, np.float64)
        if h.shape != (k, k):
            raise ValueError(f"`{name}` Hessian must have shape ({k}, {k}), got {h.shape}.")
        check_host_finite(name, h, "the LayerHessian")
        return h
    x = np.asarray(x_or_hessian)
    if x.ndim < 2 or x.shape[-1] != k:
        raise ValueError(
            f"`{name}` (calibration activations) must have shape [n, {k}] (width = rows of the weight), got {x.shape}."
        )
    check_rows(name, x)
    x = x.reshape(-1, k).astype(np.float64)
    h = x.T @ x
    check_host_finite(name, h, "calibration activations")  # NaN/inf in x reach X^T X
    return h


def _weight64(name: str, w: Any) -> np.ndarray:
    check_kernel(name, w)
    W = np.asarray(w, np.float64)
    check_host_finite(name, W)
    return W


def _damped(h: np.ndarray, damp: float) -> np.ndarray:
    lam = damp * float(np.mean(np.diag(h)))
    if lam <= 0:
        lam = damp
    return h + lam * np.eye(h.shape[0])


def _rows(groups: np.ndarray, gs: int) -> np.ndarray:
    return (np.asarray(groups)[:, None] * gs + np.arange(gs)[None, :]).reshape(-1)


def _refit(H: np.ndarray, B: np.ndarray, kept: np.ndarray, gs: int) -> np.ndarray:
    """Optimal ``W_hat = H_SS^{-1} B_S`` on the kept groups (zero elsewhere)."""
    rows = _rows(np.sort(kept), gs)
    W_hat = np.zeros_like(B)
    if rows.size:
        cf = scipy.linalg.cho_factor(H[np.ix_(rows, rows)], lower=True)
        W_hat[rows] = scipy.linalg.cho_solve(cf, B[rows])
    return W_hat


def _objective(H: np.ndarray, W: np.ndarray, W_hat: np.ndarray) -> float:
    D = W_hat - W
    return 0.5 * float(np.sum(D * (H @ D)))


def _greedy(H: np.ndarray, W: np.ndarray, gs: int, keep: int) -> np.ndarray:
    k = H.shape[0]
    G = k // gs
    cf = scipy.linalg.cho_factor(H, lower=True)
    Hinv = scipy.linalg.cho_solve(cf, np.eye(k))
    Hinv = 0.5 * (Hinv + Hinv.T)
    W_hat = W.copy()
    alive = np.ones(G, bool)
    for _ in range(G - keep):
        groups = np.nonzero(alive)[0]
        if gs == 1:
            cost = 0.5 * np.sum(W_hat[groups] ** 2, axis=1) / np.diag(Hinv)[groups]
        else:
            idx = _rows(groups, gs).reshape(len(groups), gs)
            M = Hinv[idx[:, :, None], idx[:, None, :]]  # [g, gs, gs]
            Wg = W_hat[idx]  # [g, gs, d]
            cost = 0.5 * np.einsum("gad,gad->g", Wg, np.linalg.solve(M, Wg))
        g = groups[int(np.argmin(cost))]
        rows = np.arange(g * gs, (g + 1) * gs)
        Minv = np.linalg.inv(Hinv[np.ix_(rows, rows)])
        Hc = Hinv[:, rows]
        W_hat -= Hc @ (Minv @ W_hat[rows])
        Hinv -= Hc @ Minv @ Hinv[rows, :]
        W_hat[rows] = 0.0
        Hinv[rows, :] = 0.0
        Hinv[:, rows] = 0.0
        alive[g] = False
    return np.nonzero(alive)[0]


def _swap_gains(H: np.ndarray, B: np.ndarray, kept: np.ndarray, out: np.ndarray, gs: int):
    """Exact increase of :math:`G(S) = tr(B_S^T H_SS^{-1} B_S)` for every swap (j in, i out)."""
    S = _rows(kept, gs)
    O = _rows(out, gs)
    n_in, n_out = len(kept), len(out)
    cf = scipy.linalg.cho_factor(H[np.ix_(S, S)], lower=True)
    HinvSS = scipy.linalg.cho_solve(cf, np.eye(S.size))
    WS = HinvSS @ B[S]  # [|S|, d]
    R_O = B[O] - H[np.ix_(O, S)] @ WS  # residual correlation of the removed rows
    C_O = H[np.ix_(O, S)] @ HinvSS  # [|O|, |S|]
    d = B.shape[1]
    ii = np.arange(n_in)
    Mi = HinvSS.reshape(n_in, gs, n_in, gs)[ii, :, ii, :]  # [n_in, gs, gs]
    Mi_inv = np.linalg.inv(Mi)
    Wi = WS.reshape(n_in, gs, d)
    Z = Mi_inv @ Wi  # [n_in, gs, d]
    loss_i = np.einsum("iad,iad->i", Wi, Z)
    Rj = R_O.reshape(n_out, gs, d)
    jj = np.arange(n_out)
    Sj = (H[np.ix_(O, O)] - C_O @ H[np.ix_(S, O)]).reshape(n_out, gs, n_out, gs)[jj, :, jj, :]
    C = C_O.reshape(n_out, gs, n_in, gs).transpose(0, 2, 1, 3)  # [n_out, n_in, gs, gs]
    A = np.einsum("jad,jbd->jab", Rj, Rj)
    P = np.einsum("jad,ibd->jiab", Rj, Z)
    Q = np.einsum("iad,ibd->iab", Z, Z)
    PCt = P @ np.swapaxes(C, -1, -2)
    RR = A[:, None] + PCt + np.swapaxes(PCt, -1, -2) + C @ Q[None] @ np.swapaxes(C, -1, -2)
    Sp = Sj[:, None] + C @ Mi_inv[None] @ np.swapaxes(C, -1, -2)
    if gs == 1:
        gain_add = RR[..., 0, 0] / Sp[..., 0, 0]
    else:
        gain_add = np.trace(np.linalg.solve(Sp, RR), axis1=-2, axis2=-1)
    return gain_add - loss_i[None, :]  # [n_out, n_in]


def _local_search(H, W, B, kept, gs, iters, swap_size, G):
    kept = np.sort(kept)
    obj = _objective(H, W, _refit(H, B, kept, gs))
    n_in, n_out = len(kept), G - len(kept)
    if iters <= 0 or n_in == 0 or n_out == 0:
        return kept, 0
    t = max(1, min(swap_size if swap_size is not None else max(1, n_in // 8), n_in, n_out))
    accepted = 0
    for _ in range(iters):
        out = np.setdiff1d(np.arange(G), kept)
        delta = _swap_gains(H, B, kept, out, gs)  # increase of G(S) = 2 * decrease of objective
        tol = 1e-12 * max(abs(obj), 1e-300)
        order = np.argsort(-delta, axis=None)
        used_j, used_i, pairs = set(), set(), []
        for flat in order:
            j, i = divmod(int(flat), n_in)
            if delta[j, i] <= tol or len(pairs) >= t:
                break
            if j in used_j or i in used_i:
                continue
            used_j.add(j)
            used_i.add(i)
            pairs.append((j, i))
        if not pairs:
            break
        new = kept.copy()
        for j, i in pairs:
            new[i] = out[j]
        new = np.sort(new)
        new_obj = _objective(H, W, _refit(H, B, new, gs))
        if new_obj < obj - 1e-14 * abs(obj):
            kept, obj = new, new_obj
            accepted += len(pairs)
        else:
            if t == 1:
                break
            t = max(1, t // 2)
    return kept, accepted


def _blas_limit(k: int):
    """Single-threaded BLAS for small matrices (many tiny LAPACK calls; threads only contend)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas") if k <= 1024 else contextlib.nullcontext()


def _osscar_groups(w, x_or_hessian, keep, gs, **kw):
    with _blas_limit(int(np.shape(w)[0]) if np.ndim(w) == 2 else 0):
        return _osscar_groups_impl(w, x_or_hessian, keep, gs, **kw)


def _osscar_groups_impl(w, x_or_hessian, keep, gs, *, damp, local_search_iters, swap_size, name_keep, name_x,
                        name_w):
    W = _weight64(name_w, w)
    k = W.shape[0]
    G = k // gs
    if not isinstance(keep, (int, np.integer)) or isinstance(keep, bool):
        raise ValueError(f"`{name_keep}` must be an integer, got {keep!r}.")
    if not 1 <= keep <= G:
        raise ValueError(f"`{name_keep}` must be in [1, {G}] (the number of groups), got {keep}.")
    check_number("damp", damp, 0.0, low_inclusive=False)
    if not isinstance(local_search_iters, (int, np.integer)) or local_search_iters < 0:
        raise ValueError(f"`local_search_iters` must be a non-negative integer, got {local_search_iters!r}.")
    if swap_size is not None and (not isinstance(swap_size, (int, np.integer)) or swap_size < 1):
        raise ValueError(f"`swap_size` must be a positive integer or None, got {swap_size!r}.")
    H = _damped(_hessian64(x_or_hessian, k, name_x), damp)
    B = H @ W
    kept = _greedy(H, W, gs, keep)
    kept, _ = _local_search(H, W, B, kept, gs, int(local_search_iters), swap_size, G)
    W_hat = _refit(H, B, kept, gs)
    return jnp.asarray(W_hat.astype(float_dtype_of(w))), jnp.asarray(np.sort(kept).astype(np.int32))


def osscar(
    w_down: jax.Array,
    x: jax.Array | LayerHessian,
    keep: int,
    *,
    damp: float = 0.01,
    local_search_iters: int = 50,
    swap_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """OSSCAR structured pruning of MLP hidden neurons (see the module docstring for the math).

    Args:
      w_down: down-projection kernel ``[k, d]`` (row ``i`` = hidden neuron ``i``).
      x: the down-projection's calibration inputs (post-activation hidden states) ``[n, k]``
        (or ``[..., k]``), or a :class:`~jaxeff.prune.LayerHessian` of them.
      keep: number of neurons to keep, ``1 <= keep <= k``.
      damp: relative ridge :math:`\\lambda / \\mathrm{mean}(\\mathrm{diag}(X^\\top X))`, > 0.
      local_search_iters: maximum local-search rounds (0 = greedy removal + refit only).
      swap_size: swaps tried per round at the start (halved when a round does not improve);
        default ``max(1, keep // 8)``.
    Returns:
      ``(w_new [k, d], kept_indices [keep] int32 sorted)``: the rows not in ``kept_indices`` are
      exactly zero, the kept rows are the least-squares refit. Remove the neurons for real
      with :func:`jaxeff.prune.shrink`.

    Example:
      >>> x = jax.nn.gelu(jax.random.normal(jax.random.key(0), (256, 32)))
      >>> w = jax.random.normal(jax.random.key(1), (32, 8))
      >>> w_new, kept = osscar(w, x, keep=16)
      >>> kept.shape, int((jnp.abs(w_new).sum(1) > 0).sum())
      ((16,), 16)

    References:
      Meng et al., "OSSCAR" (arXiv 2403.12983).
    """
    return _osscar_groups(w_down, x, keep, 1, damp=damp, local_search_iters=local_search_iters,
                          swap_size=swap_size, name_keep="keep", name_x="x", name_w="w_down")


def osscar_heads(
    w_o: jax.Array,
    x: jax.Array | LayerHessian,
    keep: int,
    num_heads: int,
    *,
    damp: float = 0.01,
    local_search_iters: int = 50,
    swap_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """OSSCAR over attention heads: groups are the ``head_dim`` rows of ``W_o`` of one head.

    Args:
      w_o: attention output-projection kernel ``[num_heads * head_dim, d]`` (heads concatenated
        along the input axis, head ``h`` = rows ``h*head_dim:(h+1)*head_dim``).
      x: calibration inputs of the output projection (concatenated head outputs)
        ``[n, num_heads * head_dim]`` or a :class:`~jaxeff.prune.LayerHessian`.
      keep: number of heads to keep, ``1 <= keep <= num_heads``.
      num_heads: number of heads (must divide ``w_o.shape[0]``).
      damp, local_search_iters, swap_size: as in :func:`osscar`.
    Returns:
      ``(w_new [num_heads*head_dim, d], kept_heads [keep] int32 sorted)`` with the rows of
      removed heads exactly zero.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (128, 32))
      >>> w = jax.random.normal(jax.random.key(1), (32, 16))
      >>> w_new, heads = osscar_heads(w, x, keep=2, num_heads=4)
      >>> heads.shape
      (2,)

    References:
      Meng et al., "OSSCAR" (arXiv 2403.12983).
    """
    check_kernel("w_o", w_o)
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"`num_heads` must be a positive integer, got {num_heads!r}.")
    if np.shape(w_o)[0] % num_heads:
        raise ValueError(f"`num_heads` ({num_heads}) must divide the rows of `w_o` ({np.shape(w_o)[0]}).")
    gs = np.shape(w_o)[0] // num_heads
    return _osscar_groups(w_o, x, keep, gs, damp=damp, local_search_iters=local_search_iters,
                          swap_size=swap_size, name_keep="keep", name_x="x", name_w="w_o")


def least_squares_refit(
    w: jax.Array, x: jax.Array | LayerHessian, kept: Any, *, group_size: int = 1, damp: float = 0.01
) -> jax.Array:
    """Refit the kept groups of rows of ``w [k, d]`` by (ridge) least squares, zero the rest.

    :math:`\\hat W_S = H_{SS}^{-1} (H W)_S` with :math:`H = X^\\top X + \\lambda I` (float64);
    the baseline "magnitude selection + refit" uses this with the groups of largest norm.

    Args:
      w: kernel ``[k, d]``; x: inputs ``[n, k]`` (or ``[..., k]``) or a LayerHessian; kept: kept group indices
      (integers in ``[0, k / group_size)``) or a boolean mask of length ``k / group_size``;
      group_size: rows per group (1 for neurons, head_dim for heads); damp: as in :func:`osscar`.
    Returns:
      ``w_new [k, d]``.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (64, 8)); w = jnp.ones((8, 2))
      >>> least_squares_refit(w, x, [0, 1]).shape
      (8, 2)
    """
    W = _weight64("w", w)
    k = W.shape[0]
    group_size = check_int("group_size", group_size, 1)
    if k % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide the rows of `w` ({k}).")
    kept = np.asarray(kept)
    if kept.dtype == np.bool_:
        if kept.shape != (k // group_size,):
            raise ValueError(f"`kept` as a boolean mask must have shape ({k // group_size},) (one entry per group), "
                             f"got {kept.shape}.")
        kept = np.flatnonzero(kept)
    elif kept.size and not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(f"`kept` must hold integer group indices or be a boolean mask, got dtype {kept.dtype}.")
    kept = np.unique(kept.astype(np.int64))
    if kept.size and (kept.min() < 0 or kept.max() >= k // group_size):
        raise ValueError(f"`kept` indices must be in [0, {k // group_size}), got {kept.tolist()}.")
    check_number("damp", damp, 0.0, low_inclusive=False)
    H = _damped(_hessian64(x, k), damp)
    W_hat = _refit(H, H @ W, kept, group_size)
    return jnp.asarray(W_hat.astype(float_dtype_of(w)))


def structured_reconstruction_error(w: jax.Array, w_new: jax.Array, x: jax.Array, *, relative: bool = True) -> float:
    """:math:`\\lVert X \\hat W - X W\\rVert_F^2` (divided by :math:`\\lVert XW\\rVert_F^2` if ``relative``), float64.

    Args:
      w: original kernel ``[k, d]``; w_new: pruned / refit kernel of the same shape;
      x: calibration inputs ``[n, k]`` (or ``[..., k]``, flattened to rows as in :func:`osscar`).

    Example:
      >>> structured_reconstruction_error(jnp.ones((2, 1)), jnp.ones((2, 1)), jnp.ones((3, 2)))
      0.0
    """
    check_kernel("w", w)
    require_array("w_new", w_new, f"a kernel of the shape of `w` {tuple(np.shape(w))}")
    check_same_shape("w_new", w_new, "w", w)
    require_array("x", x, f"calibration activations [n, {np.shape(w)[0]}]")
    k = np.shape(w)[0]
    if np.ndim(x) < 2 or np.shape(x)[-1] != k:
        raise ValueError(f"`x` (calibration activations) must have shape [n, {k}] (width = rows of `w`), "
                         f"got {tuple(np.shape(x))}.")
    check_rows("x", x)
    W = np.asarray(w, np.float64)
    Wn = np.asarray(w_new, np.float64)
    X = np.asarray(x, np.float64).reshape(-1, k)
    err = float(np.sum((X @ (Wn - W)) ** 2))
    if relative:
        err /= max(float(np.sum((X @ W) ** 2)), 1e-300)
    return err
