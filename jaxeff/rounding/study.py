r"""The sigma_min study of "Stochastic rounding implicitly regularizes tall-and-thin matrices".

For a tall matrix :math:`A \in \mathbb{R}^{n \times d}` (:math:`n \gg d`) and its stochastic
rounding :math:`\tilde A` (independent entries, :math:`E \tilde A = A`), the paper shows that
with high probability

.. math::  \sigma_d(\tilde A) \gtrsim R\sqrt{n}\,(\sqrt{\nu} - \epsilon_{n,d}),
   \qquad \nu = \min_j \sum_i \mathrm{Var}(\tilde A_{ij}) / (n R^2),

i.e. roughly :math:`\sigma_{\min}(\tilde A) \gtrsim \sqrt{\min_j \sum_i \mathrm{Var}(\tilde A_{ij})}`
*regardless of* :math:`\sigma_{\min}(A)`, even for rank-deficient :math:`A`, with
:math:`\mathrm{Var}(\tilde a) = (\lceil a \rceil - a)(a - \lfloor a \rfloor)`.

Matrix builders follow the paper's protocol (§5): :func:`sr_test_matrix` (§5.1 rank-deficient
with ``sigma_min=0``; §5.3 full rank with ``sigma_min=1e-2``), :func:`sr_stack_copies` (n = k·n0
by stacking k copies / sqrt(k), same singular values), :func:`sr_controlled_variance_matrix`
(§5.2: duplicated column and digit p+1 set to 5 -- high variance -- or digits p+1..p+r all 1
or all 9 -- low variance). :func:`sigma_min_study` rounds a matrix to each format and reports
sigma_min of the SR matrix, of the round-to-nearest matrix, the bound and nu.

References:
  Dexter, Boutsikas, Ma, Ipsen, Drineas, arXiv:2403.12278 (§4, §5).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import (
    check_choice,
    check_finite,
    check_int,
    check_key,
    check_ndim,
    check_number,
    check_same_shape,
)
from jaxeff.rounding.core import round_to
from jaxeff.rounding.formats import FixedGrid, _to_format

__all__ = [
    "sr_variance",
    "sigma_min_bound",
    "sr_nu",
    "sr_test_matrix",
    "sr_stack_copies",
    "sr_controlled_variance_matrix",
    "sigma_min_study",
    "decimal_grids",
]


def _as_fmt(fmt: Any, name: str = "fmt"):
    if isinstance(fmt, (int, np.integer)) and not isinstance(fmt, bool):
        if not 0 <= int(fmt) <= 15:
            raise ValueError(f"`{name}` as a decimal precision p must be in [0, 15], got {int(fmt)}.")
        return FixedGrid(10.0 ** (-int(fmt)))
    return _to_format(fmt, name)


def _check_fmts(name: str, fmts: Any) -> list:
    if fmts is None or isinstance(fmts, (str, bytes)):
        raise ValueError(f"`{name}` must be a sequence of formats (or ints p), got {fmts!r}.")
    try:
        return list(fmts)
    except TypeError:
        raise ValueError(f"`{name}` must be a sequence of formats (or ints p), got {fmts!r}.") from None


def _check_matrix(name: str, A: Any) -> None:
    if A is None:
        raise ValueError(f"`{name}` must be a 2-D floating array, got None.")
    check_ndim(name, A, 2)
    if 0 in np.shape(A):
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(np.shape(A))}.")


def decimal_grids(ps: Sequence[int] = (1, 2, 3, 4, 5)) -> list[FixedGrid]:
    """The paper's grids :math:`F^p = \\{k \\cdot 10^{-p}\\}` for each precision p (ints in [0, 15])."""
    out = []
    for p in _check_fmts("ps", ps):
        if isinstance(p, bool) or not isinstance(p, (int, np.integer, float, np.floating)) or not float(p).is_integer():
            raise ValueError(f"`ps` must hold integer precisions p in [0, 15], got {p!r}.")
        out.append(_as_fmt(int(p), "ps"))
    return out


def _f(x):
    return x.astype(jnp.float32) if x.dtype not in (jnp.float32, jnp.float64) else x


def sr_variance(a: Any, fmt: Any) -> jax.Array:
    r"""Elementwise variance of stochastic rounding, :math:`(\lceil a \rceil - a)(a - \lfloor a \rfloor)`.

    Args:
      a: floating array.
      fmt: :class:`FloatFormat`, :class:`FixedGrid`, preset name, or an int p for the grid 10^-p.

    Returns:
      Array like ``a`` (float32, or float64 for float64 grids input).

    Example:
      >>> sr_variance(jnp.array([0.25]), FixedGrid(1.0))   # 0.75 * 0.25
      Array([0.1875], dtype=float32)

    References:
      arXiv:2403.12278, eq. (2).
    """
    fmt = _as_fmt(fmt)
    if a is None:
        raise ValueError("`a` must be a floating array, got None.")
    a = _f(jnp.asarray(a))
    lo = _f(round_to(a, fmt, "down"))
    hi = _f(round_to(a, fmt, "up"))
    return (hi - a) * (a - lo)


def sigma_min_bound(A: Any, fmt: Any) -> jax.Array:
    r"""The paper's lower-bound scale :math:`\sqrt{\min_j \sum_i \mathrm{Var}(\tilde A_{ij})}`.

    Example:
      >>> sigma_min_bound(jnp.full((100, 2), 0.5), FixedGrid(1.0))   # sqrt(100 * 0.25)
      Array(5., dtype=float32)
    """
    _check_matrix("A", A)
    v = sr_variance(A, fmt)
    return jnp.sqrt(jnp.min(jnp.sum(v, axis=0)))


def sr_nu(A: Any, A_rounded: Any, fmt: Any) -> jax.Array:
    r""":math:`\nu = \min_j \sum_i \mathrm{Var}(\tilde A_{ij}) / (n R^2)` with
    :math:`R = \max_{ij} |\tilde A_{ij} - A_{ij}|` measured on one draw (the paper's code).

    ``A`` and ``A_rounded`` must be non-empty (n, d) arrays of the same shape with finite
    values (checked eagerly; under ``jit`` NaN propagates to the result)."""
    _check_matrix("A", A)
    if A_rounded is None:
        raise ValueError("`A_rounded` must be an array of the shape of `A`, got None.")
    check_same_shape("A_rounded", A_rounded, "A", A)
    check_finite("A", A)
    check_finite("A_rounded", A_rounded)
    A = _f(jnp.asarray(A))
    R = jnp.max(jnp.abs(_f(jnp.asarray(A_rounded)) - A))
    v = jnp.min(jnp.sum(sr_variance(A, fmt), axis=0))
    nu = jnp.where(R > 0, v / (A.shape[0] * jnp.where(R > 0, R, 1) ** 2), 0.0)
    return jnp.where(jnp.isnan(R) | jnp.isnan(v), jnp.nan, nu)


def sr_test_matrix(key: jax.Array, n: int, d: int, *, sigma_min: float = 0.0, dtype: Any = None) -> jax.Array:
    r"""The paper's §5.1 / §5.3 test matrix: Gaussian, smallest singular value set, scaled into [-1, 1].

    :math:`G \sim N(0,1)^{n\times d} = U \Sigma V^T`; :math:`\Sigma_{dd} \leftarrow
    \text{sigma\_min}\cdot\max|G|`; :math:`A = U \Sigma V^T / \max|G|` (so
    :math:`\sigma_{\min}(A) = \text{sigma\_min}`), redrawn while some entry leaves [-1, 1].

    Args:
      key: ``jax.random.key``.
      n, d: shape (tall: n >= d).
      sigma_min: the smallest singular value of the result (0: rank deficient, §5.1; 1e-2: §5.3).
        It must stay below the other singular values and the entries inside [-1, 1]; a
        ``ValueError`` is raised when no draw in 100 attempts reaches it.
      dtype: float32 (default) or float64 (needs ``jax_enable_x64``).

    Example:
      >>> A = sr_test_matrix(jax.random.key(0), 200, 5, sigma_min=0.0)
      >>> float(jnp.linalg.svd(A, compute_uv=False)[-1]) < 1e-5
      True

    References:
      arXiv:2403.12278 §5.1, §5.3.
    """
    check_key("key", key)
    check_int("n", n, 1)
    check_int("d", d, 1)
    if int(n) < int(d) or int(d) < 1:
        raise ValueError(f"`n` ({n}) must be >= `d` ({d}) >= 1 (tall-and-thin).")
    check_number("sigma_min", sigma_min, 0.0, None)
    dtype = jnp.dtype(dtype or jnp.float32)
    for attempt in range(100):
        G = jax.random.normal(jax.random.fold_in(key, attempt), (int(n), int(d)), dtype)
        U, S, Vt = jnp.linalg.svd(G, full_matrices=False)
        mx = jnp.max(jnp.abs(G))
        target = sigma_min * mx
        if int(d) > 1 and float(target) > float(S[-2]):
            continue  # sigma_min would not be the smallest singular value of this draw
        S = S.at[-1].set(target)
        A = (U * S) @ Vt / mx
        if float(jnp.max(jnp.abs(A))) <= 1.0:
            return A
    raise ValueError(f"could not draw a matrix inside [-1, 1] with smallest singular value `sigma_min` = {sigma_min} "
                     "in 100 attempts; lower `sigma_min`.")


def sr_stack_copies(A: Any, k: int) -> jax.Array:
    r"""``k`` vertical copies of ``A`` divided by :math:`\sqrt{k}` (same singular values, k·n rows)."""
    _check_matrix("A", A)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive int (number of copies), got {k!r}.")
    A = jnp.asarray(A)
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.float32)  # int / bool input: the float32 matrix of the same values
    return jnp.tile(A, (int(k), 1)) / jnp.sqrt(jnp.asarray(int(k), A.dtype))


def sr_controlled_variance_matrix(
    key: jax.Array, n: int, d: int, p: int, variance: str = "high", *, r: int = 2, dtype: Any = None
) -> jax.Array:
    r"""The paper's §5.2 matrix: rank deficient (column 2 = column 1) with controlled SR variance.

    From :math:`G \sim N(0,1)^{n \times d} / \max|G|` each entry keeps its first ``p`` decimals
    (truncated toward zero) and gets decimal digit p+1 equal to 5 (``"high"``: the entry sits
    mid-way between grid points of :math:`10^{-p}`, maximal variance) or digits p+1..p+r all 1
    or all 9 (``"low"``, chosen per entry at random: close to a grid point). Then column 2 is
    set equal to column 1, so :math:`\sigma_{\min}(A) = 0`.

    Args:
      key: ``jax.random.key``.
      n, d: shape (d >= 2).
      p: grid precision (the matrix is meant for ``FixedGrid(10.0**-p)``).
      variance: ``"high"`` or ``"low"``.
      r: number of repeated digits for ``"low"`` (the paper uses 2).
      dtype: float32 (default) or float64.

    References:
      arXiv:2403.12278 §5.2.
    """
    check_key("key", key)
    check_choice("variance", variance, ("high", "low"))
    check_int("n", n, 1)
    check_int("d", d, 1)
    check_int("p", p, 1, 12)
    check_int("r", r, 1, 6)
    if int(d) < 2 or int(n) < int(d):
        raise ValueError(f"need `n` ({n}) >= `d` ({d}) >= 2.")
    dtype = jnp.dtype(dtype or jnp.float32)
    k1, k2 = jax.random.split(key)
    G = jax.random.normal(k1, (int(n), int(d)), dtype)
    G = G / jnp.max(jnp.abs(G))
    scale = 10.0 ** int(p)
    sgn = jnp.sign(G)
    trunc = jnp.floor(jnp.abs(G) * scale) / scale
    if variance == "high":
        tail = 5 * 10.0 ** (-(int(p) + 1))
        A = sgn * (trunc + tail)
    else:
        digit = jnp.where(jax.random.bernoulli(k2, 0.5, G.shape), 1.0, 9.0).astype(dtype)
        rep = sum(10.0 ** (-(int(p) + i)) for i in range(1, int(r) + 1))
        A = sgn * (trunc + digit * rep)
    A = A.at[:, 1].set(A[:, 0])
    return A.astype(dtype)


def _smin(M: jax.Array) -> float:
    """Smallest singular value of a tall matrix via its d x d triangular QR factor
    (same singular values; avoids the n x n workspace some SVD back ends allocate)."""
    r = jnp.linalg.qr(M, mode="r")
    return float(jnp.linalg.svd(r, compute_uv=False)[-1])


def sigma_min_study(
    key: jax.Array,
    A: Any,
    fmts: Sequence[Any] = (1, 2, 3, 4, 5),
    *,
    num_draws: int = 1,
    noise: str = "hash",
) -> list[dict[str, Any]]:
    r"""Round ``A`` to each format and compare smallest singular values with the bound.

    For each format (an int p means the paper's grid :math:`10^{-p}`) reports

    * ``sigma_min_A``: :math:`\sigma_{\min}(A)`;
    * ``sigma_min_sr``: :math:`\sigma_{\min}(\mathrm{SR}(A))` for each of ``num_draws`` draws;
    * ``sigma_min_nearest``: :math:`\sigma_{\min}` of round-to-nearest (deterministic) ``A``;
    * ``bound``: :math:`\sqrt{\min_j \sum_i \mathrm{Var}(\tilde A_{ij})}`;
    * ``nu``: the normalized :math:`\nu` of the first draw;
    * ``ratio``: ``min(sigma_min_sr) / bound`` (the claim: of order one or larger).

    Args:
      key: ``jax.random.key``.
      A: tall matrix (n, d).
      fmts: formats, grids or ints p.
      num_draws: independent SR draws per format.
      noise: ``"hash"`` (default, the fast counter-based words) or ``"jax"``
        (``jax.random.bits``); see :func:`round_to`.

    Returns:
      One dict per format with the keys above plus ``"fmt"``.

    Example:
      >>> A = sr_test_matrix(jax.random.key(0), 1000, 10)
      >>> rows = sigma_min_study(jax.random.key(1), A, [2, 3])

    References:
      arXiv:2403.12278 §5.
    """
    check_key("key", key)
    check_ndim("A", A, 2)
    check_int("num_draws", num_draws, 1)
    fmts = _check_fmts("fmts", fmts)
    A = _f(jnp.asarray(A))
    if A.shape[0] < A.shape[1]:
        raise ValueError(f"`A` must be tall (n >= d), got shape {A.shape}.")
    s_a = _smin(A)
    rows = []
    for i, f in enumerate(fmts):
        fmt = _as_fmt(f)
        ks = jax.random.split(jax.random.fold_in(key, i), int(num_draws))
        draws = [_f(round_to(A, fmt, "stochastic", key=k, noise=noise)) for k in ks]
        near = _f(round_to(A, fmt, "nearest"))
        bound = float(sigma_min_bound(A, fmt))
        s_sr = [_smin(D) for D in draws]
        rows.append(
            {
                "fmt": f,
                "sigma_min_A": s_a,
                "sigma_min_sr": s_sr,
                "sigma_min_nearest": _smin(near),
                "bound": bound,
                "nu": float(sr_nu(A, draws[0], fmt)),
                "ratio": (min(s_sr) / bound) if bound > 0 else float("inf"),
            }
        )
    return rows
