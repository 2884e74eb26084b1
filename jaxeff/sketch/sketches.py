"""Linear sketches as pytrees, with turnstile updates and merges.

A sketch is a random linear map :math:`S \\in \\mathbb{R}^{m \\times n}` defined entirely by a
PRNG key and its sizes: column :math:`S_{:,i}` is a deterministic function of ``(key, i)``.
So the same sketch can be applied to any block of rows (given the block's global row offset),
to single entries of a turnstile stream, on any shard or host, and the results add up:

.. math::

    S A = \\sum_{\\text{blocks } b} S_{:, b} A_b, \\qquad
    S (A + \\Delta e_i e_j^\\top) = S A + \\Delta\\, S_{:, i} e_j^\\top .

Four families (all :math:`\\mathbb{E}\\|Sx\\|^2 = \\|x\\|^2`):

* :class:`CountSketch`   one nonzero :math:`\\pm 1` per column, ``S A`` in ``O(nnz(A))``
  (Charikar-Chen-Farach-Colton; Clarkson-Woodruff arXiv 1207.6365).
* :class:`SparseJL`      ``s`` nonzeros :math:`\\pm 1/\\sqrt{s}` per column, one per block of
  ``m/s`` rows (OSNAP, Nelson-Nguyen arXiv 1211.1002; Kane-Nelson arXiv 1012.1577).
* :class:`GaussianSketch` i.i.d. :math:`N(0, 1/m)` entries.
* :class:`SRHT`          :math:`\\sqrt{n'/m}\\, P H D` with ``H`` the normalized Walsh-Hadamard
  matrix of size ``n' = 2^{\\lceil \\log_2 n \\rceil}``, ``D`` random signs and ``P`` ``m`` rows
  sampled without replacement (Ailon-Chazelle; Tropp arXiv 1011.1595); applied with a fast
  Walsh-Hadamard transform in ``O(n' d \\log n')``.

Sides: a *left* sketch compresses the rows of ``A`` (``n × d`` -> ``S A``, ``m × d``); a
*right* sketch compresses its columns (``p × n`` -> ``A Sᵀ``, ``p × m``), i.e. ``A T`` with
``T = Sᵀ``. :class:`SketchState` holds one sketch and its accumulated value and supports
:func:`update` (entries ``(i, j, Δ)``), :func:`update_rows` (blocks of rows) and :func:`merge`.

References:
  Clarkson & Woodruff, "Low Rank Approximation and Regression in Input Sparsity Time",
  arXiv 1207.6365. Nelson & Nguyen, "OSNAP", arXiv 1211.1002. Tropp, "Improved analysis of the
  subsampled randomized Hadamard transform", arXiv 1011.1595. Dexter, Drineas, Woodruff, Yasuda,
  "Sketching Algorithms for Sparse Dictionary Learning: PTAS and Turnstile Streaming",
  arXiv 2310.19068.
"""
from __future__ import annotations

import abc

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxeff._core.sharding import place, row_mesh_axis
from jaxeff._core.validation import check_array, check_choice, check_key, check_ndim, is_traced

__all__ = [
    "CountSketch",
    "SparseJL",
    "GaussianSketch",
    "SRHT",
    "SketchState",
    "make_sketch",
    "sketch_apply",
    "sketch_update",
    "sketch_update_rows",
    "sketch_merge",
    "sharded_sketch_apply",
]

SKETCH_KINDS = ("countsketch", "sparse_jl", "gaussian", "srht")
_DENSE_CHUNK = 2048


def _index_bits(key: jax.Array, idx: jax.Array, count: int) -> jax.Array:
    """``count`` uint32 words per index, a deterministic function of ``(key, index)``."""
    idx = jnp.asarray(idx, jnp.uint32).reshape(-1)
    return jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (count,), jnp.uint32))(idx)


def _as_key(key: Any) -> jax.Array:
    check_key("key", key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def _check_size(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int >= {low}, got {v!r}.")
    if v < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {v!r}.")
    return int(v)


class _Sketch(eqx.Module):
    """Common base: ``S`` of shape ``(m, n)`` defined by ``key``; subclasses give its columns."""

    key: jax.Array
    m: int = eqx.field(static=True)
    n: int = eqx.field(static=True)

    # -- what subclasses define ------------------------------------------------------------
    @abc.abstractmethod
    def columns(self, idx: jax.Array) -> jax.Array:
        """Dense ``S[:, idx]`` of shape ``(m, len(idx))``."""

    def _left_block(self, X: jax.Array, offset: Any, aligned: bool) -> jax.Array:
        """``S[:, offset:offset+b] @ X`` for a block ``X`` of ``b`` rows (dense default)."""
        return _dense_left_block(self, X, offset)

    # -- public methods ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.m, self.n)

    def matrix(self) -> jax.Array:
        """The full ``(m, n)`` matrix ``S`` (for tests and small problems)."""
        return self.columns(jnp.arange(self.n))

    def apply(self, A: jax.Array, side: str = "left", *, offset: int = 0) -> jax.Array:
        """``S @ A`` (``side="left"``, ``A`` has ``n`` rows) or ``A @ S.T`` (``side="right"``,
        ``A`` has ``n`` columns). ``offset`` places a block of rows/columns of a larger matrix:
        the block covers global indices ``offset .. offset + b - 1``."""
        return sketch_apply(self, A, side, offset=offset)


def _dense_left_block(sk: _Sketch, X: jax.Array, offset: Any) -> jax.Array:
    """Chunked ``S[:, offset + arange(b)] @ X`` generating ``S``'s columns chunk by chunk."""
    b, d = X.shape
    c = min(_DENSE_CHUNK, b)
    nc = -(-b // c)
    Xp = jnp.pad(X, ((0, nc * c - b), (0, 0))).reshape(nc, c, d)
    base = jnp.asarray(offset, jnp.int32)

    def body(acc, inp):
        j, xc = inp
        idx = base + j * c + jnp.arange(c, dtype=jnp.int32)
        cols = sk.columns(jnp.minimum(idx, sk.n - 1))
        return acc + cols.astype(X.dtype) @ xc, None

    acc0 = jnp.zeros((sk.m, d), X.dtype)
    out, _ = lax.scan(body, acc0, (jnp.arange(nc, dtype=jnp.int32), Xp))
    return out


class _SparseSketch(_Sketch):
    """Sketches with ``s`` nonzeros per column: ``entries(idx) -> (rows (b, s), vals (b, s))``."""

    @abc.abstractmethod
    def entries(self, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Nonzero rows and values of the columns ``idx``: ``(rows (b, s), vals (b, s))``."""

    def columns(self, idx):
        idx = jnp.asarray(idx, jnp.int32).reshape(-1)
        rows, vals = self.entries(idx)
        b, s = rows.shape
        out = jnp.zeros((self.m, b), vals.dtype)
        cols = jnp.broadcast_to(jnp.arange(b)[:, None], (b, s))
        return out.at[rows.reshape(-1), cols.reshape(-1)].add(vals.reshape(-1))

    def _left_block(self, X, offset, aligned):
        b = X.shape[0]
        idx = jnp.asarray(offset, jnp.int32) + jnp.arange(b, dtype=jnp.int32)
        rows, vals = self.entries(idx)
        return _signed_segment_sum(X, rows, vals, self.m, self._magnitude)

    @property
    def _magnitude(self) -> float:
        """The common absolute value of the nonzeros (``vals = ±magnitude``)."""
        return 1.0


def _signed_segment_sum(X, rows, vals, m, magnitude):
    """``Σ_t segment_sum(X · vals[:, t], rows[:, t], m)`` for ``vals = ±magnitude``.

    Rows go to ``2m`` segments by (target row, sign) and the two halves are subtracted: one
    scatter of ``X`` per nonzero instead of materializing ``X · vals`` first (on CPU this is
    several times faster: the scatter reads ``X`` once and writes nothing of size ``n × d``).
    """
    out = jnp.zeros((m, X.shape[1]), X.dtype)
    for t in range(rows.shape[1]):  # s is small and static
        seg = 2 * rows[:, t] + (vals[:, t] < 0).astype(jnp.int32)
        o = jax.ops.segment_sum(X, seg, 2 * m).reshape(m, 2, X.shape[1])
        out = out + (o[:, 0] - o[:, 1])
    return out if magnitude == 1.0 else out * jnp.asarray(magnitude, X.dtype)


class CountSketch(_SparseSketch):
    """CountSketch: column ``i`` of ``S`` has a single entry ``σ(i) ∈ {±1}`` in row ``h(i)``.

    .. math::  (S A)_{r,:} = \\sum_{i: h(i) = r} \\sigma(i) A_{i,:}

    ``h`` and ``σ`` are derived from ``(key, i)`` with the threefry PRNG, so ``S A`` costs
    ``O(nnz(A))`` and the sketch never materializes.

    Args:
      key: ``jax.random.key``.
      m: sketch size (rows of ``S``).
      n: input dimension (columns of ``S``).

    Example:
      >>> S = CountSketch(jax.random.key(0), m=64, n=1000)
      >>> SA = S.apply(jnp.ones((1000, 8)))          # (64, 8)

    References:
      Clarkson & Woodruff, arXiv 1207.6365.
    """

    def __init__(self, key, m: int, n: int):
        self.key = _as_key(key)
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)

    def entries(self, idx):
        bits = _index_bits(self.key, idx, 2)
        rows = (bits[:, 0] % jnp.uint32(self.m)).astype(jnp.int32)[:, None]
        vals = jnp.where((bits[:, 1] & 1) == 1, 1.0, -1.0).astype(jnp.float32)[:, None]
        return rows, vals


class SparseJL(_SparseSketch):
    """Sparse Johnson-Lindenstrauss (OSNAP block construction): ``s`` nonzeros per column.

    The ``m`` rows are split into ``s`` blocks of ``m / s`` rows; column ``i`` has one entry
    ``±1/√s`` in each block, at a position and sign hashed from ``(key, i)``. ``s = 1`` is
    CountSketch; larger ``s`` gives JL guarantees with smaller ``m``.

    Args:
      key: ``jax.random.key``.
      m: sketch size; must be divisible by ``s``.
      n: input dimension.
      s: nonzeros per column (default 4).

    Example:
      >>> S = SparseJL(jax.random.key(0), m=64, n=1000, s=4)
      >>> S.apply(jnp.ones((1000, 3))).shape
      (64, 3)

    References:
      Nelson & Nguyen, arXiv 1211.1002; Kane & Nelson, arXiv 1012.1577.
    """

    s: int = eqx.field(static=True)

    def __init__(self, key, m: int, n: int, s: int = 4):
        self.key = _as_key(key)
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)
        self.s = _check_size("s", s)
        if self.m % self.s:
            raise ValueError(f"`m` ({self.m}) must be divisible by `s` ({self.s}).")

    def entries(self, idx):
        bits = _index_bits(self.key, idx, 2 * self.s)
        block = self.m // self.s
        pos = (bits[:, : self.s] % jnp.uint32(block)).astype(jnp.int32)
        rows = pos + (jnp.arange(self.s, dtype=jnp.int32) * block)[None, :]
        vals = jnp.where((bits[:, self.s :] & 1) == 1, 1.0, -1.0).astype(jnp.float32) / math.sqrt(self.s)
        return rows, vals

    @property
    def _magnitude(self) -> float:
        return 1.0 / math.sqrt(self.s)


class GaussianSketch(_Sketch):
    """Dense Gaussian sketch: ``S_{ri} ~ N(0, 1/m)`` i.i.d., column ``i`` drawn from
    ``fold_in(key, i)``; applied chunk by chunk so only ``m × chunk`` entries live at a time.

    .. math::  \\mathbb{E} \\|S x\\|^2 = \\|x\\|^2,\\quad
               \\Pr\\big[|\\|Sx\\|^2 - \\|x\\|^2| > \\varepsilon \\|x\\|^2\\big] \\le 2 e^{-m \\varepsilon^2/8}

    Example:
      >>> S = GaussianSketch(jax.random.key(0), m=32, n=500)
      >>> S.matrix().shape
      (32, 500)

    References:
      Johnson & Lindenstrauss (1984); Woodruff, "Sketching as a Tool for Numerical Linear
      Algebra", arXiv 1411.4357.
    """

    def __init__(self, key, m: int, n: int):
        self.key = _as_key(key)
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)

    def columns(self, idx):
        idx = jnp.asarray(idx, jnp.uint32).reshape(-1)
        cols = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(self.key, i), (self.m,)))(idx)
        return cols.T / math.sqrt(self.m)


def _fwht(x: jax.Array) -> jax.Array:
    """Unnormalized Walsh-Hadamard transform along axis 0 (length a power of two), Sylvester
    ordering: ``(H x)_p = Σ_i (-1)^{popcount(p & i)} x_i``."""
    L = x.shape[0]
    rest = x.shape[1:]
    h = 1
    while h < L:
        y = x.reshape((L // (2 * h), 2, h) + rest)
        a, b = y[:, 0], y[:, 1]
        x = jnp.stack([a + b, a - b], axis=1).reshape((L,) + rest)
        h *= 2
    return x


def _parity(v: jax.Array) -> jax.Array:
    return (lax.population_count(v) & 1).astype(jnp.int32)


class SRHT(_Sketch):
    """Subsampled randomized Hadamard transform ``S = √(n'/m) P H D``.

    ``n' = 2^⌈log₂ n⌉`` (rows of ``A`` beyond ``n`` are zero padding), ``D`` random signs,
    ``H`` the orthonormal Walsh-Hadamard matrix, ``P`` selects ``m`` distinct rows. Entry-wise

    .. math::  S_{ri} = \\frac{1}{\\sqrt m} D_i (-1)^{\\mathrm{popcount}(P_r \\wedge i)}

    ``S A`` is computed with a fast Walsh-Hadamard transform, ``O(n' d \\log n')``; a row block
    whose length ``b`` is a power of two and whose offset is a multiple of ``b`` (the case of
    data sharded evenly over a mesh axis) uses the Kronecker identity
    ``H_{n'} = H_{n'/b} ⊗ H_b`` and needs only a length-``b`` transform.

    Example:
      >>> S = SRHT(jax.random.key(0), m=16, n=100)
      >>> S.apply(jnp.eye(100)).shape
      (16, 100)

    References:
      Ailon & Chazelle (2006); Tropp, arXiv 1011.1595.
    """

    rows: jax.Array  # (m,) int32, sampled rows of H
    n_pad: int = eqx.field(static=True)

    def __init__(self, key, m: int, n: int):
        key = _as_key(key)
        self.key = key
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)
        self.n_pad = 1 << max(0, (self.n - 1).bit_length())
        if self.m > self.n_pad:
            raise ValueError(
                f"`m` ({self.m}) must be <= {self.n_pad} (n={self.n} padded to a power of two) for SRHT."
            )
        self.rows = jax.random.choice(jax.random.fold_in(key, 1), self.n_pad, (self.m,), replace=False).astype(
            jnp.int32
        )

    def _signs(self, idx):
        bits = _index_bits(jax.random.fold_in(self.key, 0), idx, 1)
        return jnp.where((bits[:, 0] & 1) == 1, 1.0, -1.0).astype(jnp.float32)

    def columns(self, idx):
        idx = jnp.asarray(idx, jnp.int32).reshape(-1)
        par = _parity(self.rows[:, None] & idx[None, :])
        return (1.0 - 2.0 * par) * self._signs(idx)[None, :] / math.sqrt(self.m)

    def _left_block(self, X, offset, aligned):
        b = X.shape[0]
        if not aligned:
            return _dense_left_block(self, X, offset)
        L = min(1 << max(0, (b - 1).bit_length()), self.n_pad)  # offset is a multiple of L
        idx = jnp.asarray(offset, jnp.int32) + jnp.arange(b, dtype=jnp.int32)
        DX = X * self._signs(idx)[:, None].astype(X.dtype)
        DX = jnp.pad(DX, ((0, L - b), (0, 0)))
        HX = _fwht(DX)  # (L, d)
        lo = self.rows & (L - 1)
        g = jnp.asarray(offset, jnp.int32) // L
        hi_sign = 1.0 - 2.0 * _parity((self.rows >> int(round(math.log2(L)))) & g)
        return HX[lo] * hi_sign[:, None].astype(X.dtype) / math.sqrt(self.m)


_KIND_CLASSES = {"countsketch": CountSketch, "sparse_jl": SparseJL, "gaussian": GaussianSketch, "srht": SRHT}


def make_sketch(kind: str, key, m: int, n: int, **kwargs: Any) -> _Sketch:
    """Build a sketch by name: ``kind`` in ``("countsketch", "sparse_jl", "gaussian", "srht")``.

    Example:
      >>> S = make_sketch("gaussian", jax.random.key(0), 16, 100)
    """
    check_choice("kind", kind, SKETCH_KINDS)
    if kind == "sparse_jl":
        s = kwargs.pop("s", None)
        if s is None:
            s = max(d for d in (1, 2, 4) if m % d == 0)
        return SparseJL(key, m, n, s=s, **kwargs)
    return _KIND_CLASSES[kind](key, m, n, **kwargs)


# ------------------------------------------------------------------------------------------
# apply


def _check_sketch(sk: Any) -> None:
    if not isinstance(sk, _Sketch):
        raise ValueError(
            f"`sketch` must be one of CountSketch, SparseJL, GaussianSketch, SRHT; got {type(sk).__name__}."
        )


@functools.partial(jax.jit, static_argnames=("side", "aligned"))
def _apply_jit(sk, A, offset, side, aligned):
    if side == "left":
        return sk._left_block(A, offset, aligned)
    return sk._left_block(A.T, offset, aligned).T


def sketch_apply(sketch: _Sketch, A: jax.Array, side: str = "left", *, offset: int = 0) -> jax.Array:
    """Apply a sketch: ``S @ A`` (``side="left"``) or ``A @ S.T`` (``side="right"``).

    With ``offset``, ``A`` is the block of global rows (left) / columns (right)
    ``offset .. offset + b - 1`` of a larger matrix with ``n`` rows/columns, and the result is
    that block's contribution: summing blocks' results gives the sketch of the whole matrix.

    Args:
      sketch: a :class:`CountSketch`, :class:`SparseJL`, :class:`GaussianSketch` or :class:`SRHT`.
      A: ``(b, d)`` for the left side, ``(p, b)`` for the right side, ``offset + b <= n``.
      side: ``"left"`` or ``"right"``.
      offset: global index of ``A``'s first row (left) or column (right).

    Returns:
      ``(m, d)`` (left) or ``(p, m)`` (right).

    Example:
      >>> S = CountSketch(jax.random.key(0), 8, 100)
      >>> A = jnp.ones((100, 3))
      >>> jnp.allclose(sketch_apply(S, A), S.matrix() @ A)
      Array(True, dtype=bool)
    """
    _check_sketch(sketch)
    check_choice("side", side, ("left", "right"))
    check_array("A", A, "a 2-D array")
    A = jnp.asarray(A)
    check_ndim("A", A, 2)
    if A.size == 0:
        raise ValueError(f"`A` must be non-empty, got shape {A.shape}.")
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.float32)
    b = A.shape[0] if side == "left" else A.shape[1]
    what = "rows" if side == "left" else "columns"
    if not is_traced(offset):
        if (offset is None or isinstance(offset, (bool, np.bool_, str, bytes)) or np.ndim(offset) != 0
                or not jnp.issubdtype(jnp.result_type(offset), jnp.integer)):
            raise ValueError(f"`offset` must be an int (the global index of the block's first {what[:-1]}), "
                             f"got {offset!r}.")
        offset = int(offset)
        if offset < 0 or offset + b > sketch.n:
            raise ValueError(
                f"`A` has {b} {what} at `offset` {offset}, but the sketch has input dimension n={sketch.n}; "
                f"expected offset >= 0 and offset + {b} <= {sketch.n}."
            )
    aligned = (not is_traced(offset)) and offset % (1 << max(0, (b - 1).bit_length())) == 0
    mesh, axis = row_mesh_axis(A)
    if mesh is not None and A.shape[0] % mesh.shape[axis] == 0:
        # rows of A split over a mesh axis (Auto or Explicit, concrete or traced)
        if side == "left" and not is_traced(offset) and offset == 0 and b == sketch.n:
            return _sharded_apply_fn(mesh, axis)(sketch, A)
        if side == "right":  # rows are sketched independently: each device does its own
            return _right_sharded_fn(mesh, axis, aligned)(sketch, A, jnp.asarray(offset, jnp.int32))
    return _apply_jit(sketch, A, jnp.asarray(offset, jnp.int32), side, aligned)


@functools.lru_cache(maxsize=32)
def _right_sharded_fn(mesh, axis, aligned):
    P = jax.P

    def local(sk, Al, off):
        return sk._left_block(Al.T, off, aligned).T

    def run(sk, A, off):
        sk_spec = jax.tree.map(lambda _: P(), sk)
        A = _reshard(A, mesh, P(axis, None))
        sk = jax.tree.map(lambda x: _reshard(x, mesh, P()), sk)
        off = _reshard(off, mesh, P())
        return jax.shard_map(local, mesh=mesh, in_specs=(sk_spec, P(axis, None), P()), out_specs=P(axis, None),
                             check_vma=False)(sk, A, off)

    return jax.jit(run)


def sharded_sketch_apply(sketch: _Sketch, A: jax.Array, mesh: jax.sharding.Mesh, axis: str = "data") -> jax.Array:
    """Left sketch ``S @ A`` of ``A`` whose rows are split over mesh axis ``axis``.

    Each device sketches its own rows (global offset ``axis_index · n_local``) and the
    partial sketches are combined with one ``psum``; the result is replicated and equals the
    unsharded ``S @ A`` up to float summation order. Works on Auto and Explicit meshes;
    :func:`sketch_apply` takes this path by itself for an ``A`` whose rows are sharded.

    Example:
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> S = CountSketch(jax.random.key(0), 8, 64)
      >>> SA = sharded_sketch_apply(S, jnp.ones((64, 4)), mesh)
    """
    _check_sketch(sketch)
    check_array("A", A, "a 2-D array")
    A = jnp.asarray(A)
    check_ndim("A", A, 2)
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.float32)  # as sketch_apply
    if A.shape[0] != sketch.n:
        raise ValueError(f"`A` must have n={sketch.n} rows, got shape {A.shape}.")
    if not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
        raise ValueError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if axis not in mesh.shape:
        raise ValueError(f"`axis` {axis!r} is not a mesh axis; mesh axes are {tuple(mesh.shape)}.")
    G = mesh.shape[axis]
    if A.shape[0] % G:
        raise ValueError(f"`A` rows ({A.shape[0]}) must be divisible by the {G} devices of mesh axis {axis!r}.")
    return _sharded_apply_fn(mesh, axis)(sketch, A)


def _reshard(x, mesh, spec):
    """Place ``x`` with ``spec`` inside jit on either an Explicit or an Auto mesh."""
    return place(x, mesh, spec)


@functools.lru_cache(maxsize=32)
def _sharded_apply_fn(mesh, axis):
    P = jax.P

    def local(sk, Al):
        b = Al.shape[0]
        off = lax.axis_index(axis) * b
        aligned = b & (b - 1) == 0
        return lax.psum(sk._left_block(Al, off, aligned), axis)

    def run(sk, A):
        sk_spec = jax.tree.map(lambda _: P(), sk)
        A = _reshard(A, mesh, P(axis, None))
        sk = jax.tree.map(lambda x: _reshard(x, mesh, P()), sk)
        return jax.shard_map(local, mesh=mesh, in_specs=(sk_spec, P(axis, None)), out_specs=P(), check_vma=False)(
            sk, A
        )

    return jax.jit(run)


# ------------------------------------------------------------------------------------------
# turnstile state


class SketchState(eqx.Module):
    """A sketch together with its accumulated value, updated under turnstile streams.

    ``side="left"``: the stream describes ``A ∈ R^{n × dim}`` and ``value = S A`` (``m × dim``).
    ``side="right"``: the stream describes ``A ∈ R^{dim × n}`` and ``value = A Sᵀ`` (``dim × m``).
    Both are linear in ``A``, so entry updates and merges are additions.

    Example:
      >>> st = SketchState.zeros(CountSketch(jax.random.key(0), 16, 100), dim=5)
      >>> st = sketch_update(st, jnp.array([3, 7]), jnp.array([0, 4]), jnp.array([1.0, -2.0]))
      >>> st.value.shape
      (16, 5)
    """

    sketch: _Sketch
    value: jax.Array
    side: str = eqx.field(static=True)

    @classmethod
    def zeros(cls, sketch: _Sketch, dim: int, side: str = "left", dtype=jnp.float32) -> "SketchState":
        """An empty state (the sketch of the zero matrix); ``dim`` is the unsketched size."""
        _check_sketch(sketch)
        check_choice("side", side, ("left", "right"))
        dim = _check_size("dim", dim)
        shape = (sketch.m, dim) if side == "left" else (dim, sketch.m)
        return cls(sketch, jnp.zeros(shape, dtype), side)

    @classmethod
    def of(cls, sketch: _Sketch, A: jax.Array, side: str = "left") -> "SketchState":
        """The state holding the sketch of a full matrix ``A``."""
        return cls(sketch, sketch_apply(sketch, A, side), side)

    @property
    def dim(self) -> int:
        return self.value.shape[1] if self.side == "left" else self.value.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the state (the accumulated sketch plus the sketch's own arrays)."""
        return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(self)
                       if hasattr(x, "dtype") and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key))) + 8

    def update(self, rows, cols, deltas) -> "SketchState":
        return sketch_update(self, rows, cols, deltas)

    def update_rows(self, rows, X) -> "SketchState":
        return sketch_update_rows(self, rows, X)

    def merge(self, other: "SketchState") -> "SketchState":
        return sketch_merge(self, other)


def _check_state(state: Any, name: str = "state") -> None:
    if not isinstance(state, SketchState):
        raise ValueError(f"`{name}` must be a SketchState, got {type(state).__name__}.")


def _check_index(name: str, idx: jax.Array, upper: int) -> None:
    if is_traced(idx):
        return
    a = np.asarray(idx)
    if a.size and (a.min() < 0 or a.max() >= upper):
        raise ValueError(f"`{name}` must lie in [0, {upper}), got values in [{a.min()}, {a.max()}].")


@jax.jit
def _update_jit(state, rows, cols, deltas):
    sk, V = state.sketch, state.value
    deltas = deltas.astype(V.dtype)
    # `sk_idx` indexes the sketched dimension, `other` the kept one.
    sk_idx, other = (rows, cols) if state.side == "left" else (cols, rows)
    if isinstance(sk, _SparseSketch):
        r, v = sk.entries(sk_idx)  # (b, s)
        contrib = v.astype(V.dtype) * deltas[:, None]
        o = jnp.broadcast_to(other[:, None], r.shape)
        if state.side == "left":
            V = V.at[r.reshape(-1), o.reshape(-1)].add(contrib.reshape(-1))
        else:
            V = V.at[o.reshape(-1), r.reshape(-1)].add(contrib.reshape(-1))
    else:
        cols_m = sk.columns(sk_idx).astype(V.dtype) * deltas[None, :]  # (m, b)
        if state.side == "left":
            V = V.at[:, other].add(cols_m)
        else:
            V = V.at[other].add(cols_m.T)
    return SketchState(sk, V, state.side)


def sketch_update(state: SketchState, rows, cols, deltas) -> SketchState:
    """Batched turnstile update: ``A[rows[t], cols[t]] += deltas[t]`` for every ``t``.

    Left state: ``(S A)[:, j] += Δ · S[:, i]``; right state: ``(A Sᵀ)[i, :] += Δ · S[:, j]ᵀ``.
    Costs ``O(b · nnz(S[:, i]))`` (``O(b)`` for CountSketch). Repeated indices accumulate.

    Args:
      state: a :class:`SketchState`.
      rows, cols: int arrays of shape ``(b,)``; rows in ``[0, n)`` and cols in ``[0, dim)`` for a
        left state (``[0, dim)`` and ``[0, n)`` for a right state).
      deltas: ``(b,)`` increments (negative values delete).

    Returns:
      The updated state (a new pytree; jit-compiled).

    Example:
      >>> S = GaussianSketch(jax.random.key(1), 8, 10)
      >>> st = sketch_update(SketchState.zeros(S, 3), jnp.array([2]), jnp.array([1]), jnp.array([5.0]))
      >>> bool(jnp.allclose(st.value[:, 1], 5.0 * S.matrix()[:, 2]))
      True
    """
    _check_state(state)
    check_array("rows", rows, "a 1-D integer array")
    check_array("cols", cols, "a 1-D integer array")
    check_array("deltas", deltas, "a 1-D array")
    rows = jnp.asarray(rows)
    cols = jnp.asarray(cols)
    deltas = jnp.asarray(deltas)
    for nm, x in (("rows", rows), ("cols", cols), ("deltas", deltas)):
        check_ndim(nm, x, 1)
    if not (rows.shape == cols.shape == deltas.shape):
        raise ValueError(
            f"`rows`, `cols` and `deltas` must have the same shape, got {rows.shape}, {cols.shape}, {deltas.shape}."
        )
    for nm, x in (("rows", rows), ("cols", cols)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"`{nm}` must have an integer dtype, got {x.dtype}.")
    n_rows, n_cols = (state.sketch.n, state.dim) if state.side == "left" else (state.dim, state.sketch.n)
    _check_index("rows", rows, n_rows)
    _check_index("cols", cols, n_cols)
    if not is_traced(deltas) and not bool(jnp.all(jnp.isfinite(deltas))):
        raise ValueError("`deltas` contains NaN or inf values; expected finite values.")
    return _update_jit(state, rows.astype(jnp.int32), cols.astype(jnp.int32), deltas)


@jax.jit
def _update_rows_jit(state, rows, X):
    sk, V = state.sketch, state.value
    X = X.astype(V.dtype)
    if state.side == "left":
        if isinstance(sk, _SparseSketch):
            r, v = sk.entries(rows)
            V = V + _signed_segment_sum(X, r, v, sk.m, sk._magnitude)
        else:
            V = V + sk.columns(rows).astype(V.dtype) @ X
    else:
        V = V.at[rows].add(sk._left_block(X.T, 0, True).T)
    return SketchState(sk, V, state.side)


def sketch_update_rows(state: SketchState, rows, X) -> SketchState:
    """Add whole rows: ``A[rows[t], :] += X[t]`` (insert a row into an empty slot, or delete
    one with ``-X``). Left state: ``S A += S[:, rows] X``; right state: ``(A Sᵀ)[rows] += X Sᵀ``.

    Args:
      state: a :class:`SketchState`.
      rows: ``(b,)`` row indices (in ``[0, n)`` for a left state, ``[0, dim)`` for a right one).
      X: ``(b, dim)`` for a left state, ``(b, n)`` for a right state.

    Example:
      >>> S = CountSketch(jax.random.key(0), 4, 6)
      >>> st = sketch_update_rows(SketchState.zeros(S, 2), jnp.array([1, 5]), jnp.ones((2, 2)))
    """
    _check_state(state)
    check_array("rows", rows, "a 1-D integer array")
    check_array("X", X, "a 2-D array")
    rows = jnp.asarray(rows)
    X = jnp.asarray(X)
    check_ndim("rows", rows, 1)
    check_ndim("X", X, 2)
    if not jnp.issubdtype(rows.dtype, jnp.integer):
        raise ValueError(f"`rows` must have an integer dtype, got {rows.dtype}.")
    width = state.dim if state.side == "left" else state.sketch.n
    if X.shape != (rows.shape[0], width):
        raise ValueError(f"`X` must have shape ({rows.shape[0]}, {width}), got {X.shape}.")
    _check_index("rows", rows, state.sketch.n if state.side == "left" else state.dim)
    if not is_traced(X) and not bool(jnp.all(jnp.isfinite(X))):
        raise ValueError("`X` contains NaN or inf values; expected finite values.")
    return _update_rows_jit(state, rows.astype(jnp.int32), X)


def _same_sketch(a: _Sketch, b: _Sketch) -> bool:
    if type(a) is not type(b):
        return False
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        return False
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if is_traced(x) or is_traced(y):
            continue
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if x.shape != y.shape or not bool(jnp.all(x == y)):
            return False
    return True


@jax.jit
def _merge_jit(a, b):
    return SketchState(a.sketch, a.value + b.value, a.side)


def sketch_merge(a: SketchState, b: SketchState) -> SketchState:
    """Merge two states of the same sketch (same kind, sizes and key), e.g. built on
    different shards or hosts: the sketch of ``A_a + A_b`` is ``value_a + value_b``.

    Raises ValueError when the sketches differ (a merge of different sketches is meaningless).

    Example:
      >>> S = CountSketch(jax.random.key(0), 8, 20)
      >>> A = jnp.arange(60.0).reshape(20, 3)
      >>> top = SketchState.of(S, A.at[10:].set(0)); bot = SketchState.of(S, A.at[:10].set(0))
      >>> bool(jnp.allclose(sketch_merge(top, bot).value, S.apply(A)))
      True
    """
    _check_state(a, "a")
    _check_state(b, "b")
    if a.side != b.side or a.value.shape != b.value.shape:
        raise ValueError(
            f"`a` and `b` must be states of the same side and shape, got {a.side} {a.value.shape} "
            f"and {b.side} {b.value.shape}."
        )
    if not _same_sketch(a.sketch, b.sketch):
        raise ValueError("`a` and `b` were built with different sketches (kind, sizes or key); they cannot be merged.")
    return _merge_jit(a, b)


# Names fixed by the issue, available as ``jaxeff.sketch.apply/update/update_rows/merge``
# (kept out of ``__all__`` so that the top-level namespace stays specific).
apply = sketch_apply
update = sketch_update
update_rows = sketch_update_rows
merge = sketch_merge
