"""Orthonormal bases of L²(S) on a box S = [low, high]^d, as equinox modules.

Every basis maps one state ``s`` (shape ``[d]``; a scalar is accepted when d = 1) to its
``k`` features ``φ(s) = (φ_0(s), ..., φ_{k-1}(s))`` with

.. math::

    \\int_S \\varphi_i(s)\\,\\varphi_j(s)\\,ds = \\delta_{ij}

(Lebesgue measure on the box, *not* normalized to a probability), so that a transition
density ``P(s'|s,a)`` has the expansion ``Σ_ij Z_ij(a) φ_i(s') φ_j(s)`` used by
:func:`jaxeff.irl.estimate_transition_operator`. ``__call__`` works on one state and is
vmappable; ``basis.batch(states)`` is the vmapped form for ``[n, d]`` states.

Each basis also exposes the constants the guarantees of arXiv 2102.07937 are written in:
``sup_norms()`` (``B_j = sup_s |φ_j(s)|``, used by the Hoeffding bound) and ``grad_bounds()``
(``G_j = sup_s ‖∇φ_j(s)‖_2``, used to space the LP's grid from a Lipschitz bound).

* :class:`CosineBasis`: ``φ_0 = 1/√L``, ``φ_j(x) = √(2/L) cos(jπ(x-low)/L)`` (the
  eigenfunctions of the Neumann Laplacian); ``CosineBasis(k)`` is the first k cosines on [0, 1].
* :class:`FourierBasis`: ``1/√L``, then ``√(2/L) cos(2πm u)``, ``√(2/L) sin(2πm u)`` for
  m = 1, 2, ... with ``u = (x-low)/L`` (periodic functions).
* :class:`LegendreBasis`: ``√((2j+1)/L) P_j(2u - 1)`` with the Legendre polynomials P_j
  (three-term recurrence).
* :class:`TensorBasis`: products ``Π_t φ^{(t)}_{i_t}(s_t)`` of one-dimensional bases over
  multi-indices ``i`` with a total-degree (``Σ_t i_t ≤ D``), hyperbolic-cross
  (``Π_t (1 + i_t) ≤ D + 1``) or full (``max_t i_t ≤ D``) truncation.

References:
  Dexter, Bello & Honorio, "Inverse Reinforcement Learning in a Continuous State Space with
  Formal Guarantees", NeurIPS 2021, arXiv 2102.07937.
"""
from __future__ import annotations

import abc
import itertools
import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import check_choice
from jaxeff.irl._checks import check_int, check_real

__all__ = ["CosineBasis", "FourierBasis", "LegendreBasis", "TensorBasis", "OrthonormalBasis"]


@jax.jit
def _batch_features(basis, states):
    return jax.vmap(basis)(states)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` (number of basis functions) must be a positive int, got {k!r}.")
    return int(k)


def _check_box(low: float, high: float) -> tuple[float, float]:
    check_real("low", low)
    check_real("high", high)
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"the box must satisfy finite `low` < `high`, got low={low}, high={high}.")
    return low, high


class OrthonormalBasis(eqx.Module):
    """Common interface: ``k`` functions orthonormal on the box ``[low, high]`` (per dimension)."""

    @abc.abstractmethod
    def __call__(self, s: jax.Array) -> jax.Array:
        """Features ``[k]`` of one state ``s`` ``[d]``."""

    @property
    @abc.abstractmethod
    def num_features(self) -> int:
        """Abstract: defined by every concrete basis."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Abstract: defined by every concrete basis."""

    @property
    @abc.abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Abstract: defined by every concrete basis."""

    @property
    def volume(self) -> float:
        """Lebesgue measure |S| of the box."""
        lo, hi = self.bounds
        return float(np.prod(hi - lo))

    def _state(self, s: jax.Array) -> jax.Array:
        """Validate one state's shape (static) and return it as a float vector [d]."""
        s = jnp.asarray(s)
        if not jnp.issubdtype(s.dtype, jnp.floating):
            s = s.astype(jnp.float32)
        if self.dim == 1 and s.ndim == 0:
            s = s[None]
        if s.shape != (self.dim,):
            raise ValueError(
                f"`s` must be one state of shape ({self.dim},) for this {self.dim}-dimensional basis "
                f"(use basis.batch for [n, {self.dim}] states), got shape {s.shape}."
            )
        return s

    def batch(self, states: jax.Array) -> jax.Array:
        """Features of a batch: ``states`` [n, d] (or [n] when d = 1) -> [n, k]."""
        states = jnp.asarray(states)
        if self.dim == 1 and states.ndim == 1:
            states = states[:, None]
        if states.ndim != 2 or states.shape[1] != self.dim:
            raise ValueError(
                f"`states` must have shape (n, {self.dim}) for this {self.dim}-dimensional basis, "
                f"got {states.shape}."
            )
        return _batch_features(self, states)

    @abc.abstractmethod
    def sup_norms(self) -> np.ndarray:
        """Abstract: defined by every concrete basis."""

    @abc.abstractmethod
    def grad_bounds(self) -> np.ndarray:
        """Abstract: defined by every concrete basis."""


class _Basis1D(OrthonormalBasis):
    k: int = eqx.field(static=True)
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)

    def __init__(self, k: int, low: float = 0.0, high: float = 1.0):
        self.k = _check_k(k)
        self.low, self.high = _check_box(low, high)

    @property
    def num_features(self) -> int:
        return self.k

    @property
    def dim(self) -> int:
        return 1

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.low]), np.array([self.high])

    @property
    def length(self) -> float:
        return self.high - self.low

    def _u(self, s: jax.Array) -> jax.Array:
        s = self._state(s)
        return (s[0] - self.low) / self.length

    def __call__(self, s: jax.Array) -> jax.Array:
        return self.features_1d(self._u(s))

    @abc.abstractmethod
    def features_1d(self, u: jax.Array) -> jax.Array:
        """Features of the normalized coordinate ``u = (x - low) / L`` (scalar) -> [k]."""


class CosineBasis(_Basis1D):
    """The first ``k`` cosines, orthonormal on ``[low, high]`` (default [0, 1]).

    .. math::

        \\varphi_0(x) = 1/\\sqrt{L},\\qquad
        \\varphi_j(x) = \\sqrt{2/L}\\,\\cos\\bigl(j\\pi (x - \\mathrm{low})/L\\bigr),\\quad L = \\mathrm{high} - \\mathrm{low}.

    Args:
      k: number of functions.
      low, high: the interval.

    Example:
      >>> import jax.numpy as jnp
      >>> b = CosineBasis(4)
      >>> [round(float(v), 4) for v in b(jnp.array([0.0]))]
      [1.0, 1.4142, 1.4142, 1.4142]

    References:
      arXiv 2102.07937 (trigonometric bases for the transition kernel).
    """

    def features_1d(self, u):
        j = jnp.arange(self.k, dtype=u.dtype)
        scale = jnp.where(j == 0, 1.0, math.sqrt(2.0)) / math.sqrt(self.length)
        return scale * jnp.cos(j * jnp.pi * u)

    def sup_norms(self) -> np.ndarray:
        return np.where(np.arange(self.k) == 0, 1.0, math.sqrt(2.0)) / math.sqrt(self.length)

    def grad_bounds(self) -> np.ndarray:
        j = np.arange(self.k)
        return math.sqrt(2.0 / self.length) * j * np.pi / self.length

    def antiderivative_1d(self, u: jax.Array) -> jax.Array:
        """``∫_low^x φ_j`` for ``u = (x-low)/L`` (used for exact inverse-CDF sampling)."""
        j = jnp.arange(self.k, dtype=u.dtype)
        safe = jnp.where(j == 0, 1.0, j)
        tail = math.sqrt(2.0 * self.length) * jnp.sin(j * jnp.pi * u) / (safe * jnp.pi)
        return jnp.where(j == 0, u * math.sqrt(self.length), tail)


class FourierBasis(_Basis1D):
    """The real Fourier basis, orthonormal on ``[low, high]``: ``1, cos, sin`` pairs.

    .. math::

        \\varphi_0 = 1/\\sqrt{L},\\quad \\varphi_{2m-1}(x) = \\sqrt{2/L}\\cos(2\\pi m u),\\quad
        \\varphi_{2m}(x) = \\sqrt{2/L}\\sin(2\\pi m u),\\qquad u = (x - \\mathrm{low})/L.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(v), 4) for v in FourierBasis(3)(jnp.array([0.125]))]
      [1.0, 1.0, 1.0]

    References:
      arXiv 2102.07937.
    """

    def features_1d(self, u):
        j = jnp.arange(self.k)
        m = ((j + 1) // 2).astype(u.dtype)
        ang = 2.0 * jnp.pi * m * u
        val = jnp.where(j % 2 == 1, jnp.cos(ang), jnp.sin(ang))
        val = jnp.where(j == 0, 1.0 / math.sqrt(2.0), val)
        return math.sqrt(2.0 / self.length) * val

    def sup_norms(self) -> np.ndarray:
        return np.where(np.arange(self.k) == 0, 1.0, math.sqrt(2.0)) / math.sqrt(self.length)

    def grad_bounds(self) -> np.ndarray:
        m = (np.arange(self.k) + 1) // 2
        return math.sqrt(2.0 / self.length) * 2.0 * np.pi * m / self.length


class LegendreBasis(_Basis1D):
    """Normalized Legendre polynomials, orthonormal on ``[low, high]``.

    .. math::

        \\varphi_j(x) = \\sqrt{(2j+1)/L}\\;P_j(2u - 1),\\qquad
        (j+1)P_{j+1}(t) = (2j+1)\\,t\\,P_j(t) - j\\,P_{j-1}(t).

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(v), 4) for v in LegendreBasis(3)(jnp.array([1.0]))]
      [1.0, 1.7321, 2.2361]

    References:
      arXiv 2102.07937.
    """

    def features_1d(self, u):
        t = 2.0 * u - 1.0
        vals = [jnp.ones_like(t)]
        if self.k > 1:
            vals.append(t)
        for j in range(1, self.k - 1):
            vals.append(((2 * j + 1) * t * vals[j] - j * vals[j - 1]) / (j + 1))
        p = jnp.stack(vals[: self.k])
        norm = jnp.sqrt((2.0 * jnp.arange(self.k, dtype=u.dtype) + 1.0) / self.length)
        return norm * p

    def sup_norms(self) -> np.ndarray:
        return np.sqrt((2.0 * np.arange(self.k) + 1.0) / self.length)

    def grad_bounds(self) -> np.ndarray:
        j = np.arange(self.k)
        # sup |P_j'| on [-1, 1] is P_j'(1) = j(j+1)/2; d t / d x = 2 / L.
        return self.sup_norms() * j * (j + 1) / self.length


def _multi_indices(max_index: Sequence[int], degree: int, truncation: str) -> np.ndarray:
    ranges = [range(m) for m in max_index]
    out = []
    for idx in itertools.product(*ranges):
        if truncation == "total":
            ok = sum(idx) <= degree
        elif truncation == "hyperbolic":
            ok = math.prod(1 + i for i in idx) <= degree + 1
        else:
            ok = max(idx) <= degree
        if ok:
            out.append(idx)
    out.sort(key=lambda t: (sum(t), t))
    return np.asarray(out, dtype=np.int32).reshape(-1, len(max_index))


class TensorBasis(OrthonormalBasis):
    """Tensor products of one-dimensional bases on a d-dimensional box, with a truncation.

    .. math::

        \\varphi_{\\mathbf i}(s) = \\prod_{t=1}^{d} \\varphi^{(t)}_{i_t}(s_t),\\qquad
        \\mathbf i \\in \\{\\textstyle\\sum_t i_t \\le D\\}\\ (\\text{total}),\\;
        \\{\\textstyle\\prod_t (1+i_t) \\le D+1\\}\\ (\\text{hyperbolic}),\\;
        \\{\\max_t i_t \\le D\\}\\ (\\text{full}).

    Products of orthonormal families on the factors are orthonormal on the product box.

    Args:
      bases: one 1-D basis per dimension (e.g. ``[CosineBasis(8, -1.2, 0.6), CosineBasis(8, -.07, .07)]``),
        or a single 1-D basis used for every dimension together with ``dim``.
      degree: the truncation level D (each factor must have at least D + 1 functions).
      truncation: ``"total"`` (default), ``"hyperbolic"`` or ``"full"``.
      dim: number of dimensions when ``bases`` is a single basis.

    Example:
      >>> b = TensorBasis(CosineBasis(4), degree=3, dim=2)
      >>> b.num_features, b.dim
      (10, 2)

    References:
      arXiv 2102.07937.
    """

    factors: tuple = eqx.field(static=True)
    indices: tuple = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    truncation: str = eqx.field(static=True)

    def __init__(self, bases, degree: int, truncation: str = "total", *, dim: int | None = None):
        check_choice("truncation", truncation, ["total", "hyperbolic", "full"])
        if bases is None:
            raise ValueError("`bases` must be a 1-D basis or a non-empty sequence of 1-D bases "
                             "(CosineBasis, FourierBasis, LegendreBasis), got None.")
        if isinstance(bases, _Basis1D):
            if dim is None:
                raise ValueError("`dim` must be a positive int when `bases` is a single 1-D basis.")
            bases = [bases] * check_int("dim", dim)
        try:
            bases = tuple(bases)
        except TypeError:
            raise ValueError("`bases` must be a 1-D basis or a non-empty sequence of 1-D bases "
                             f"(CosineBasis, FourierBasis, LegendreBasis), got {type(bases).__name__}.") from None
        if not bases or not all(isinstance(b, _Basis1D) for b in bases):
            raise ValueError("`bases` must be a 1-D basis or a non-empty sequence of 1-D bases "
                             "(CosineBasis, FourierBasis, LegendreBasis).")
        if dim is not None and int(dim) != len(bases):
            raise ValueError(f"`dim` ({dim}) must equal the number of `bases` ({len(bases)}).")
        degree = check_int("degree", degree, low=0)
        for t, b in enumerate(bases):
            if b.k < degree + 1:
                raise ValueError(
                    f"`bases[{t}]` has {b.k} functions but `degree` {degree} needs at least {degree + 1}."
                )
        idx = _multi_indices([b.k for b in bases], degree, truncation)
        self.factors = bases
        self.indices = tuple(map(tuple, idx.tolist()))
        self.degree = degree
        self.truncation = truncation

    @property
    def num_features(self) -> int:
        return len(self.indices)

    @property
    def dim(self) -> int:
        return len(self.factors)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([b.low for b in self.factors]), np.array([b.high for b in self.factors]))

    @property
    def index_array(self) -> np.ndarray:
        """The multi-indices, [k, d]."""
        return np.asarray(self.indices, dtype=np.int32).reshape(-1, self.dim)

    def __call__(self, s):
        s = self._state(s)
        idx = jnp.asarray(self.index_array)
        out = None
        for t, b in enumerate(self.factors):
            f = b.features_1d((s[t] - b.low) / b.length)[idx[:, t]]
            out = f if out is None else out * f
        return out

    def sup_norms(self) -> np.ndarray:
        idx = self.index_array
        return np.prod([b.sup_norms()[idx[:, t]] for t, b in enumerate(self.factors)], axis=0)

    def grad_bounds(self) -> np.ndarray:
        idx = self.index_array
        sups = [b.sup_norms()[idx[:, t]] for t, b in enumerate(self.factors)]
        total = np.zeros(len(idx))
        for t, b in enumerate(self.factors):
            g = b.grad_bounds()[idx[:, t]]
            others = np.prod([sups[u] for u in range(self.dim) if u != t], axis=0) if self.dim > 1 else 1.0
            total += (g * others) ** 2
        return np.sqrt(total)
