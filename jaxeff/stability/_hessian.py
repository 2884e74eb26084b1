"""Matrix-free Hessian tools: HVP, Lanczos / power top eigenvalues, Hutchinson trace, SLQ density."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxeff._core.validation import (
    check_callable,
    check_choice,
    check_in_range,
    check_int,
    check_key,
    check_ndim,
    check_traced_in_range,
    is_traced,
)

__all__ = [
    "hvp",
    "HessianEigenResult",
    "top_eigenvalues",
    "hessian_trace",
    "SpectralDensity",
    "spectral_density",
    "lanczos_tridiag",
]


def _check_loss_params(loss_fn: Any, params: Any, loss_name: str = "loss_fn",
                       signature: str = "loss_fn(params, *args) -> scalar") -> None:
    check_callable(loss_name, loss_fn, f"a callable {signature}")
    if params is None or not jax.tree_util.tree_leaves(params):
        raise ValueError(f"`params` must be an array or a pytree with at least one array leaf, got {params!r}.")


def hvp(loss_fn: Callable[..., jax.Array], params: Any, v: Any, *args: Any) -> Any:
    r"""Hessian-vector product :math:`H v = \frac{d}{dt}\nabla_w L(w + t v)\big|_{t=0}` (forward-over-reverse).

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: parameter pytree ``w``.
      v: pytree with the structure of ``params``.
      *args: extra arguments of ``loss_fn`` (data), not differentiated.

    Returns:
      ``H v`` with the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> hvp(lambda w: jnp.sum(w ** 3), jnp.ones(2), jnp.array([1.0, 0.0]))
      Array([6., 0.], dtype=float32)

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", 1994; arXiv 2401.12332 (use).
    """
    check_callable("loss_fn", loss_fn, "a callable loss_fn(params, *args) -> scalar")
    if jax.tree.structure(v) != jax.tree.structure(params):
        raise ValueError(
            f"`v` must have the pytree structure of `params`: {jax.tree.structure(params)}, got {jax.tree.structure(v)}."
        )
    g = lambda p: jax.grad(loss_fn)(p, *args)  # noqa: E731
    return jax.jvp(g, (params,), (v,))[1]


def _flat_hvp(loss_fn, params, args):
    flat, unravel = ravel_pytree(params)

    def mv(x):
        return ravel_pytree(hvp(loss_fn, params, unravel(x.astype(flat.dtype)), *args))[0].astype(jnp.float32)

    return flat, unravel, mv


def lanczos_tridiag(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_iters: int):
    r"""``num_iters`` Lanczos steps with full re-orthogonalization from ``v0``.

    Returns ``(alphas [k], betas [k-1], V [k, p])`` with :math:`V A V^T \approx T` tridiagonal.
    After an (exact) breakdown the remaining basis vectors are zero and their alphas/betas 0.

    Args:
      matvec: ``matvec(v) -> A v`` for a symmetric operator ``A`` on vectors of shape ``(p,)``.
      v0: non-zero start vector, shape ``(p,)``, ``p >= 1``.
      num_iters: number of Lanczos steps ``k >= 1``.
    """
    check_callable("matvec", matvec, "a callable matvec(v) -> A @ v")
    if v0 is None:
        raise ValueError("`v0` must be a 1-D start vector of shape (p,), got None.")
    check_ndim("v0", v0, 1)
    v0 = jnp.asarray(v0)
    if v0.shape[0] < 1:
        raise ValueError(f"`v0` must hold at least one entry, got shape {tuple(v0.shape)}.")
    num_iters = check_int("num_iters", num_iters, 1)
    p = v0.shape[0]
    try:
        out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((p,), jnp.float32))
    except Exception as e:  # noqa: BLE001 - re-raised naming the arguments
        raise ValueError(f"`matvec` failed on a vector of the shape of `v0` ({p},): {type(e).__name__}: {e}") from e
    if getattr(out, "shape", None) != (p,):
        raise ValueError(f"`matvec` must map a vector of the shape of `v0` ({p},) to shape ({p},), "
                         f"got {getattr(out, 'shape', type(out).__name__)}.")
    v0 = v0.astype(jnp.float32)
    v0 = v0 / jnp.linalg.norm(v0)
    V = jnp.zeros((num_iters, p), jnp.float32).at[0].set(v0)
    alphas = jnp.zeros((num_iters,), jnp.float32)
    betas = jnp.zeros((num_iters,), jnp.float32)

    def body(i, carry):
        V, alphas, betas = carry
        v = V[i]
        w = matvec(v)
        alpha = jnp.vdot(w, v)
        # full re-orthogonalization against all previous vectors (twice for stability)
        for _ in range(2):
            w = w - V.T @ (V @ w)
        beta = jnp.linalg.norm(w)
        prev = jnp.where(i > 0, betas[jnp.maximum(i - 1, 0)], 0.0)
        ok = beta > 1e-5 * (jnp.abs(alpha) + prev) + 1e-30
        nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0)
        nxt = jnp.where(jnp.any(v != 0), nxt, 0.0)
        alive = jnp.any(v != 0)
        alphas = alphas.at[i].set(jnp.where(alive, alpha, 0.0))
        betas = betas.at[i].set(jnp.where(alive & ok, beta, 0.0))
        V = jax.lax.cond(i + 1 < num_iters, lambda V: V.at[i + 1].set(nxt), lambda V: V, V)
        return V, alphas, betas

    V, alphas, betas = jax.lax.fori_loop(0, num_iters, body, (V, alphas, betas))
    return alphas, betas[: num_iters - 1], V


def _tridiag_eigh(alphas, betas):
    T = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    return jnp.linalg.eigh(T)


class HessianEigenResult(NamedTuple):
    """Top eigenpairs: ``eigenvalues`` [k] descending and ``eigenvectors`` (params pytree, leading axis k)."""

    eigenvalues: jax.Array
    eigenvectors: Any


def _power_deflated(mv, p, keys, it, tol, shift=0.0):
    """Power iteration with deflation on ``B = H + shift I`` for ``len(keys)`` eigenpairs.

    Returns the Rayleigh quotients of the *unshifted* H (list) and the unit vectors (list).
    """
    shift = jnp.asarray(shift, jnp.float32)
    lams, mus, vecs = [], [], []
    for i in range(len(keys)):
        U = jnp.stack(vecs) if vecs else jnp.zeros((0, p), jnp.float32)
        M = jnp.stack(mus) if mus else jnp.zeros((0,), jnp.float32)

        def op(x, U=U, M=M):
            y = mv(x) + shift * x
            if U.shape[0]:
                y = y - U.T @ (M * (U @ x))
            return y

        v = jax.random.normal(keys[i], (p,), jnp.float32)
        v = v / jnp.linalg.norm(v)

        def cond(c):
            j, _, lam, lam_old = c
            return (j < it) & ((j < 2) | (jnp.abs(lam - lam_old) > tol * jnp.maximum(jnp.abs(lam), 1e-12)))

        def body(c, op=op):
            j, v, lam, _ = c
            w = op(v)
            new_lam = jnp.vdot(v, w)
            nrm = jnp.linalg.norm(w)
            v = jnp.where(nrm > 0, w / jnp.where(nrm > 0, nrm, 1.0), v)
            return j + 1, v, new_lam, lam

        _, v, _, _ = jax.lax.while_loop(cond, body, (0, v, jnp.float32(0.0), jnp.float32(jnp.inf)))
        mu = jnp.vdot(v, op(v))  # eigenvalue of the deflated, shifted operator
        mus.append(mu)
        lams.append(jnp.vdot(v, mv(v)))
        vecs.append(v)
    return lams, vecs


def top_eigenvalues(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    k: int = 1,
    method: str = "lanczos",
    *,
    args: Sequence[Any] = (),
    key: jax.Array | None = None,
    num_iters: int | None = None,
    tol: float = 1e-6,
    which: str = "largest",
) -> HessianEigenResult:
    r"""The ``k`` largest eigenvalues of the Hessian :math:`\nabla^2 L(w)` without forming it.

    ``which`` selects what "largest" means (same meaning for every method):

    * ``"largest"`` (default): the ``k`` algebraically largest eigenvalues
      :math:`\lambda_1 \ge \dots \ge \lambda_k` -- on an indefinite Hessian (a saddle) negative
      eigenvalues of large magnitude are *not* returned;
    * ``"magnitude"``: the ``k`` eigenvalues of largest :math:`|\lambda|` (what plain power
      iteration converges to), returned ordered by decreasing :math:`|\lambda|`.

    Both coincide for a positive semi-definite Hessian (e.g. at a minimum).

    * ``method="lanczos"``: ``num_iters`` (default ``min(p, max(3k, 40))``) Lanczos steps with
      full re-orthogonalization; the Ritz values of the tridiagonal matrix converge to the
      extreme eigenvalues (both ends); the ``k`` selected by ``which`` are returned.
    * ``method="power"``: power iteration with deflation
      :math:`v \leftarrow (B - \sum_{j<i}\mu_j u_j u_j^T) v/\|\cdot\|`, stopped when the
      Rayleigh quotient changes by less than ``tol`` (relative) or after ``num_iters``
      (default 500) steps per eigenpair. With ``which="magnitude"``, :math:`B = H`. With
      ``which="largest"``, :math:`B = H + \sigma I` with the shift
      :math:`\sigma = 1.01\max(0, -\hat\lambda_{\min})`, which makes :math:`B` positive
      semi-definite so its dominant eigenvalues are :math:`H`'s algebraically largest;
      :math:`\hat\lambda_{\min}` comes from two preliminary power runs (the dominant
      eigenvalue :math:`\lambda_d`, then the dominant one of :math:`H - \lambda_d I` when
      :math:`\lambda_d > 0`), so "largest" costs up to three power runs more than
      "magnitude" and, when :math:`\sigma > 0`, converges more slowly (ratio
      :math:`(\lambda_2+\sigma)/(\lambda_1+\sigma)`); use ``which="magnitude"`` for a Hessian
      known to be PSD. Returned eigenvalues are Rayleigh quotients of :math:`H` itself.

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the point ``w``.
      k: number of eigenpairs, ``1 <= k <= p``.
      method: "lanczos" or "power".
      args: extra (data) arguments of ``loss_fn``.
      key: PRNG key for the start vector(s); default ``jax.random.key(0)``.
      num_iters: iteration budget (see above).
      tol: power-iteration relative tolerance, in ``[0, 1)``.
      which: "largest" (default, algebraic) or "magnitude" (largest absolute value).

    Returns:
      :class:`HessianEigenResult`: eigenvalues descending (``"largest"``) or by decreasing
      magnitude (``"magnitude"``), unit eigenvectors as params pytrees. NaN eigenvalues when
      the Hessian-vector products are not finite.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.diag(jnp.arange(1.0, 6.0))
      >>> top_eigenvalues(lambda w: 0.5 * w @ A @ w, jnp.ones(5), 2).eigenvalues.round(4)
      Array([5., 4.], dtype=float32)

    References:
      Lanczos 1950; Yao et al., "PyHessian", arXiv 1912.07145; Ghorbani et al., arXiv 1901.10159.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable loss_fn(params, *args) -> scalar, got {type(loss_fn).__name__}.")
    if params is None or not jax.tree_util.tree_leaves(params):
        raise ValueError(f"`params` must be an array or a pytree with at least one array leaf, got {params!r}.")
    check_choice("method", method, ("lanczos", "power"))
    check_choice("which", which, ("largest", "magnitude"))
    if num_iters is not None and (isinstance(num_iters, bool) or not isinstance(num_iters, numbers.Integral)):
        raise ValueError(f"`num_iters` must be None or an integer >= 1, got {num_iters!r}.")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise ValueError(f"`tol` must be a number in [0, 1), got {tol!r}.")
    check_in_range("tol", tol, 0.0, 1.0, high_inclusive=False)
    flat, unravel, mv = _flat_hvp(loss_fn, params, tuple(args))
    p = flat.shape[0]
    if not isinstance(k, int) or k < 1 or k > p:
        raise ValueError(f"`k` must be an int in [1, {p}] (the number of parameters), got {k!r}.")
    key = jax.random.key(0) if key is None else key
    check_key("key", key)
    if method == "lanczos":
        it = min(p, max(3 * k, 40)) if num_iters is None else int(num_iters)
        if it < k or it > p:
            raise ValueError(f"`num_iters` must be in [k={k}, p={p}] for Lanczos, got {it}.")
        v0 = jax.random.normal(key, (p,), jnp.float32)
        a, b, V = lanczos_tridiag(mv, v0, it)
        evals, evecs = _tridiag_eigh(a, b)
        # NaN/inf Hessian-vector products are bad data: propagate instead of a plausible 0
        bad = ~(jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b)))
        evals = jnp.where(bad, jnp.nan, evals)
        order = jnp.argsort(-evals if which == "largest" else -jnp.abs(evals))[:k]
        vecs = (evecs[:, order].T @ V)
        vecs = vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True)
        return HessianEigenResult(evals[order], jax.vmap(unravel)(vecs.astype(flat.dtype)))

    it = 500 if num_iters is None else int(num_iters)
    if it < 1:
        raise ValueError(f"`num_iters` must be >= 1, got {it}.")
    keys = jax.random.split(key, k)
    if which == "magnitude":
        lams, vecs = _power_deflated(mv, p, keys, it, tol)
        lam_arr = jnp.stack(lams)
        order = jnp.argsort(-jnp.abs(lam_arr))
    else:
        kd, km = jax.random.split(jax.random.fold_in(key, 0x5EED))[:2]
        (lam_d,), _ = _power_deflated(mv, p, kd[None], it, tol)
        # when lam_d > 0 the dominant eigenvector of H - lam_d I is H's lam_min eigenvector
        # (its Rayleigh quotient on H, as returned, estimates lam_min); else lam_min = lam_d
        (lam_lo,), _ = _power_deflated(mv, p, km[None], it, tol, shift=-lam_d)
        lam_min = jnp.where(lam_d > 0, jnp.minimum(lam_lo, lam_d), lam_d)
        shift = 1.01 * jnp.maximum(0.0, -lam_min)
        lams, vecs = _power_deflated(mv, p, keys, it, tol, shift=shift)
        lam_arr = jnp.stack(lams)
        order = jnp.argsort(-lam_arr)
    V = jnp.stack(vecs)
    return HessianEigenResult(lam_arr[order], jax.vmap(unravel)(V[order].astype(flat.dtype)))


def hessian_trace(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    key: jax.Array,
    num_probes: int = 100,
    *,
    args: Sequence[Any] = (),
    probe_batch_size: int | None = None,
) -> jax.Array:
    r"""Hutchinson estimate of :math:`\mathrm{Tr}\,\nabla^2 L(w) = \mathbb{E}_v[v^T H v]`, Rademacher ``v``.

    Averages ``num_probes`` HVPs (computed ``probe_batch_size`` at a time with ``vmap``,
    default ``min(num_probes, 8)``); the standard deviation of the estimate is
    :math:`\sqrt{2(\|H\|_F^2-\sum_i H_{ii}^2)/\mathrm{num\_probes}}`.

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the point ``w``.
      key: PRNG key for the probes.
      num_probes: number of Rademacher probes (>= 1).
      args: extra (data) arguments of ``loss_fn``.
      probe_batch_size: probes evaluated together (memory/speed trade-off), an int >= 1 or
        None (default).

    Returns:
      Scalar float32 estimate of the trace.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> A = jnp.diag(jnp.arange(1.0, 6.0))
      >>> float(hessian_trace(lambda w: 0.5 * w @ A @ w, jnp.ones(5), jax.random.key(0), 10))
      15.0

    References:
      Hutchinson 1989; Avron & Toledo 2011; Yao et al., arXiv 1912.07145.
    """
    _check_loss_params(loss_fn, params)
    check_key("key", key)
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"`num_probes` must be a positive int, got {num_probes!r}.")
    if probe_batch_size is not None:
        check_int("probe_batch_size", probe_batch_size, 1)
    flat, _, mv = _flat_hvp(loss_fn, params, tuple(args))
    p = flat.shape[0]
    probes = jax.random.rademacher(key, (num_probes, p), jnp.float32)
    quad = jax.lax.map(lambda v: jnp.vdot(v, mv(v)), probes, batch_size=probe_batch_size or min(num_probes, 8))
    return jnp.mean(quad)


class SpectralDensity(NamedTuple):
    """SLQ output: ``density`` on ``grid`` (integrates to ~1), Gauss quadrature ``nodes``/``weights`` [probes, iters]."""

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array


def spectral_density(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    key: jax.Array,
    *,
    num_probes: int = 5,
    num_iters: int = 60,
    args: Sequence[Any] = (),
    grid: jax.Array | None = None,
    num_points: int = 512,
    sigma: float | None = None,
) -> SpectralDensity:
    r"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

    For each Gaussian probe :math:`v` (normalized), ``num_iters`` Lanczos steps give
    :math:`T = Q\Theta Q^T`; the Gauss quadrature nodes :math:`\theta_k` with weights
    :math:`\tau_k = Q_{1k}^2` satisfy :math:`v^T f(H) v \approx \sum_k \tau_k f(\theta_k)`, and

    .. math:: \phi(t) \approx \frac{1}{n_v}\sum_{l=1}^{n_v}\sum_k \tau^{(l)}_k\,
              \mathcal{N}(t;\theta^{(l)}_k, \sigma^2).

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the point ``w``.
      key: PRNG key for the probes.
      num_probes: number of random start vectors.
      num_iters: Lanczos steps per probe (<= p).
      args: extra (data) arguments of ``loss_fn``.
      grid: points at which to evaluate the density; default ``num_points`` points spanning
        the nodes with a margin.
      num_points: grid size when ``grid`` is None (an int >= 1).
      sigma: Gaussian smoothing width > 0 (finite); default 1% of the node range.

    Returns:
      :class:`SpectralDensity`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> A = jnp.diag(jnp.arange(1.0, 6.0))
      >>> sd = spectral_density(lambda w: 0.5 * w @ A @ w, jnp.ones(5), jax.random.key(0), num_iters=5)

    References:
      Ghorbani, Krishnan, Xiao, "An Investigation into Neural Net Optimization via Hessian
      Eigenvalue Density", arXiv 1901.10159; Lin, Saad, Yang, SIAM Review 2016.
    """
    _check_loss_params(loss_fn, params)
    check_key("key", key)
    if grid is None:
        check_int("num_points", num_points, 1)
    else:
        check_ndim("grid", grid, 1)
    flat, _, mv = _flat_hvp(loss_fn, params, tuple(args))
    p = flat.shape[0]
    if not isinstance(num_iters, int) or num_iters < 1 or num_iters > p:
        raise ValueError(f"`num_iters` must be an int in [1, {p}], got {num_iters!r}.")
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"`num_probes` must be a positive int, got {num_probes!r}.")
    if sigma is not None and not is_traced(sigma) and not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"`sigma` must be a positive finite smoothing width, got {sigma!r}.")
    probes = jax.random.normal(key, (num_probes, p), jnp.float32)

    def one(v):
        a, b, _ = lanczos_tridiag(mv, v, num_iters)
        th, Q = _tridiag_eigh(a, b)
        return th, Q[0] ** 2

    nodes, weights = jax.lax.map(one, probes)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.maximum(hi - lo, 1e-6)
    s = 0.01 * width if sigma is None else jnp.float32(sigma)
    if grid is None:
        grid = jnp.linspace(lo - 0.05 * width - 3 * s, hi + 0.05 * width + 3 * s, num_points)
    grid = jnp.asarray(grid, jnp.float32)
    gauss = jnp.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / s) ** 2) / (s * jnp.sqrt(2 * jnp.pi))
    density = jnp.sum(weights[..., None] * gauss, axis=(0, 1)) / num_probes
    if sigma is not None:
        density = check_traced_in_range("sigma", density, sigma, 0.0, None, low_inclusive=False)
    return SpectralDensity(grid, density, nodes, weights)
