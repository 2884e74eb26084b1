"""Number formats that :func:`jaxeff.rounding.round_to` rounds to.

* :class:`FloatFormat` -- a binary floating-point format with ``exp_bits`` exponent bits and
  ``man_bits`` stored mantissa bits (IEEE-like, OCP "fn"-like or "fnuz"-like special values),
  optional subnormals, saturating or non-saturating overflow.
* :class:`FixedGrid` -- the uniform grid ``{k * step : k integer}`` (the paper's decimal grids
  ``F^p = {k * 10^-p}``).

Presets: ``BF16``, ``FP16``, ``TF32``, ``E4M3`` (OCP float8_e4m3fn), ``E5M2`` (float8_e5m2) and the
small formats ``E3M4``, ``E4M3FNUZ``, ``E5M2FNUZ``, ``E3M2`` (fp6), ``E2M3`` (fp6), ``E2M1`` (fp4).

References:
  Connolly, Higham, Mary, "Stochastic rounding and its probabilistic backward error analysis",
  SIAM J. Sci. Comput. 2021. OCP 8-bit Floating Point Specification (OFP8) rev. 1.0, 2023.
  Micikevicius et al., "FP8 formats for deep learning", arXiv:2209.05433.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = [
    "FloatFormat",
    "FixedGrid",
    "BF16",
    "FP16",
    "TF32",
    "E4M3",
    "E5M2",
    "E3M4",
    "E4M3FNUZ",
    "E5M2FNUZ",
    "E3M2",
    "E2M3",
    "E2M1",
    "float_format",
    "representable_values",
]


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    r"""A binary floating-point format no wider than float32.

    A finite non-zero value is :math:`(-1)^s \, 2^{e} (1 + f/2^{m})` for a normal number with
    :math:`e_{min} \le e \le e_{max}` and :math:`0 \le f < 2^m`, or
    :math:`(-1)^s \, 2^{e_{min}} f / 2^{m}` for a subnormal, where :math:`m` = ``man_bits``,
    :math:`e_{min} = 1 - \text{bias}` and ``bias`` defaults to :math:`2^{\text{exp\_bits}-1} - 1`.

    Special values are encoded in one of three ways:

    * ``has_inf=True`` (IEEE 754, e.g. bf16, fp16, e5m2): the top exponent code holds +-inf and NaN.
    * ``has_inf=False, has_nan=True`` (OCP "fn", e.g. e4m3fn): the top exponent code holds finite
      values except the all-ones mantissa, which is NaN. With ``neg_zero=False`` ("fnuz") the only
      NaN is the negative-zero code and every other code is finite.
    * ``has_inf=False, has_nan=False`` (e.g. fp4 e2m1, fp6): every code is finite.

    Args:
      exp_bits: exponent bits, 2..8.
      man_bits: stored mantissa (fraction) bits, 1..23.
      subnormals: keep the subnormal range; when False the representable set is
        ``{0} U normals`` and values below the smallest normal round between 0 and it.
      saturate: overflow (and +-inf input for formats without inf) goes to +-max finite instead of
        +-inf (``has_inf``) or NaN (no inf).
      has_inf: whether the top exponent code is reserved for inf/NaN.
      has_nan: whether the format has a NaN (only meaningful when ``has_inf=False``).
      bias: exponent bias; default ``2**(exp_bits-1) - 1``.
      neg_zero: whether -0 exists (False for the "fnuz" formats, whose NaN takes its code).
      name: display name.

    Example:
      >>> from jaxeff.rounding import FloatFormat
      >>> fp6 = FloatFormat(3, 2, has_inf=False, has_nan=False, saturate=True)
      >>> fp6.max_finite, fp6.min_subnormal
      (28.0, 0.0625)

    References:
      OCP 8-bit Floating Point Specification (OFP8) 2023; arXiv:2209.05433.
    """

    exp_bits: int
    man_bits: int
    subnormals: bool = True
    saturate: bool = False
    has_inf: bool = True
    has_nan: bool = True
    bias: int | None = None
    neg_zero: bool = True
    name: str | None = None

    def __post_init__(self):
        for nm in ("exp_bits", "man_bits", "bias"):
            v = getattr(self, nm)
            if (v is not None or nm != "bias") and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise ValueError(f"`{nm}` must be an int, got {v!r}.")
        if not 2 <= self.exp_bits <= 8:
            raise ValueError(f"`exp_bits` must be in [2, 8] (formats no wider than float32), got {self.exp_bits}.")
        if not 1 <= self.man_bits <= 23:
            raise ValueError(f"`man_bits` must be in [1, 23] (formats no wider than float32), got {self.man_bits}.")
        if self.has_inf and not self.has_nan:
            raise ValueError("`has_nan` must be True when `has_inf` is True (IEEE encoding reserves NaN codes).")
        if self.has_inf and not self.neg_zero:
            raise ValueError("`neg_zero=False` (fnuz encoding) requires `has_inf=False`.")
        if not self.neg_zero and not self.has_nan:
            raise ValueError("`neg_zero=False` means NaN takes the -0 code; it requires `has_nan=True`.")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if not self.has_inf and not self.has_nan and not self.saturate:
            raise ValueError("a format without inf and NaN must saturate: pass `saturate=True`.")
        # every value must be exactly representable in float32
        if self.emin < -126:
            raise ValueError(
                f"`bias` {self.bias} gives a smallest normal exponent {self.emin} < -126 (float32's); "
                "use bias <= 127."
            )
        if self.emax > 127:
            raise ValueError(
                f"`bias` {self.bias} gives a largest exponent {self.emax} > 127: not representable in float32."
            )
        low = self.emin - self.man_bits if self.subnormals else self.emin
        if low < -149:
            raise ValueError(
                f"`bias` {self.bias} gives a smallest value 2^{low} below float32's 2^-149."
            )

    # ----- derived constants (Python numbers, static under jit) -----
    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number, ``1 - bias``."""
        return 1 - self.bias

    @property
    def _top_code(self) -> int:
        return 2**self.exp_bits - 1

    @property
    def _max_code(self) -> tuple[int, int]:
        """(biased exponent, mantissa) of the largest finite value."""
        m_all = 2**self.man_bits - 1
        if self.has_inf:
            return self._top_code - 1, m_all
        if self.has_nan and self.neg_zero:  # fn: all-ones code is NaN
            return self._top_code, m_all - 1
        return self._top_code, m_all  # all codes finite (fnuz: NaN is the -0 code)

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value."""
        return self._max_code[0] - self.bias

    @property
    def max_finite(self) -> float:
        e, f = self._max_code
        return float(2.0 ** (e - self.bias) * (1 + f / 2**self.man_bits))

    @property
    def min_normal(self) -> float:
        return float(2.0**self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (the smallest normal when ``subnormals=False``)."""
        return float(2.0 ** (self.emin - self.man_bits)) if self.subnormals else self.min_normal

    @property
    def eps(self) -> float:
        """Spacing of the values in [1, 2): ``2**-man_bits``."""
        return float(2.0**-self.man_bits)

    @property
    def dtype(self) -> Any:
        """The JAX dtype with exactly this value set and encoding, or None (results stay float32)."""
        for dt, fmt in _native_formats().items():
            if _same_values(fmt, self):
                return dt
        return None

    def __repr__(self) -> str:
        if self.name:
            return self.name
        return (
            f"FloatFormat(exp_bits={self.exp_bits}, man_bits={self.man_bits}, subnormals={self.subnormals}, "
            f"saturate={self.saturate}, has_inf={self.has_inf}, has_nan={self.has_nan}, bias={self.bias}, "
            f"neg_zero={self.neg_zero})"
        )


def _same_values(a: FloatFormat, b: FloatFormat) -> bool:
    keys = ("exp_bits", "man_bits", "subnormals", "saturate", "has_inf", "has_nan", "bias", "neg_zero")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@dataclasses.dataclass(frozen=True)
class FixedGrid:
    r"""The uniform grid :math:`\{k \cdot \text{step} : k \in \mathbb{Z}\}`.

    Rounding is done in the input's floating precision: :math:`k = \lfloor x/\text{step} \rfloor`
    (corrected by one where the division rounded across a grid point), the neighbours are
    :math:`lo = \mathrm{fl}(k\,\text{step})` and :math:`hi = \mathrm{fl}((k+1)\,\text{step})` and the
    stochastic round-up probability is :math:`(x - lo)/(hi - lo)`.
    The paper's grids are ``FixedGrid(10.0 ** -p)``.

    Args:
      step: positive finite grid spacing.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxeff.rounding import FixedGrid, round_to
      >>> y = round_to(jnp.array([0.123, -0.456]), FixedGrid(0.01), "nearest")  # fl32 of [0.12, -0.46]

    References:
      Dexter, Boutsikas, Ma, Ipsen, Drineas, "Stochastic rounding implicitly regularizes
      tall-and-thin matrices", arXiv:2403.12278.
    """

    step: float

    def __post_init__(self):
        s = self.step
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise ValueError(f"`step` must be a Python/NumPy float, got {type(s).__name__}.")
        if not (math.isfinite(float(s)) and float(s) > 0):
            raise ValueError(f"`step` must be a positive finite number, got {s!r}.")
        object.__setattr__(self, "step", float(s))


BF16 = FloatFormat(8, 7, name="BF16")
FP16 = FloatFormat(5, 10, name="FP16")
TF32 = FloatFormat(8, 10, name="TF32")
E4M3 = FloatFormat(4, 3, has_inf=False, name="E4M3")
E5M2 = FloatFormat(5, 2, name="E5M2")
E3M4 = FloatFormat(3, 4, name="E3M4")
E4M3FNUZ = FloatFormat(4, 3, has_inf=False, bias=8, neg_zero=False, name="E4M3FNUZ")
E5M2FNUZ = FloatFormat(5, 2, has_inf=False, bias=16, neg_zero=False, name="E5M2FNUZ")
E3M2 = FloatFormat(3, 2, has_inf=False, has_nan=False, saturate=True, name="E3M2")
E2M3 = FloatFormat(2, 3, has_inf=False, has_nan=False, saturate=True, name="E2M3")
E2M1 = FloatFormat(2, 1, has_inf=False, has_nan=False, saturate=True, name="E2M1")


def _native_formats() -> dict[Any, FloatFormat]:
    """JAX dtypes whose conversion from float32 XLA implements, with their formats."""
    return {
        jnp.dtype(jnp.bfloat16): BF16,
        jnp.dtype(jnp.float16): FP16,
        jnp.dtype(jnp.float8_e4m3fn): E4M3,
        jnp.dtype(jnp.float8_e5m2): E5M2,
        jnp.dtype(jnp.float8_e3m4): E3M4,
        jnp.dtype(jnp.float8_e4m3fnuz): E4M3FNUZ,
        jnp.dtype(jnp.float8_e5m2fnuz): E5M2FNUZ,
        jnp.dtype(jnp.float4_e2m1fn): E2M1,
    }


_ALIASES = {
    "bf16": BF16, "bfloat16": BF16, "fp16": FP16, "float16": FP16, "half": FP16, "tf32": TF32,
    "e4m3": E4M3, "fp8": E4M3, "e4m3fn": E4M3, "float8_e4m3fn": E4M3, "e5m2": E5M2, "float8_e5m2": E5M2,
    "e3m4": E3M4, "float8_e3m4": E3M4, "e4m3fnuz": E4M3FNUZ, "float8_e4m3fnuz": E4M3FNUZ,
    "e5m2fnuz": E5M2FNUZ, "float8_e5m2fnuz": E5M2FNUZ, "e3m2": E3M2, "fp6_e3m2": E3M2,
    "e2m3": E2M3, "fp6_e2m3": E2M3, "e2m1": E2M1, "fp4": E2M1, "float4_e2m1fn": E2M1,
}


def float_format(spec: Any) -> FloatFormat | FixedGrid:
    """Normalize a format spec: a :class:`FloatFormat`/:class:`FixedGrid`, a preset name
    (``"bf16"``, ``"fp16"``, ``"tf32"``, ``"e4m3"``, ``"e5m2"``, ``"e2m1"``, ...) or a JAX dtype
    (``jnp.bfloat16``, ``jnp.float8_e4m3fn``, ...).

    Example:
      >>> float_format("bf16") is BF16
      True
    """
    return _to_format(spec, "spec")


def _to_format(spec: Any, name: str = "fmt") -> FloatFormat | FixedGrid:
    """:func:`float_format` whose errors name the caller's argument ``name``."""
    if isinstance(spec, (FloatFormat, FixedGrid)):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key in _ALIASES:
            return _ALIASES[key]
        raise ValueError(f"`{name}` must be a FloatFormat, FixedGrid, dtype or one of {sorted(_ALIASES)}, got {spec!r}.")
    try:
        dt = jnp.dtype(spec)
    except TypeError:
        dt = None
    if dt is not None:
        natives = _native_formats()
        if dt in natives:
            return natives[dt]
    raise ValueError(f"`{name}` must be a FloatFormat, FixedGrid, a preset name or a low-precision dtype, got {spec!r}.")


def representable_values(fmt: FloatFormat) -> np.ndarray:
    """All finite values of ``fmt`` (sorted, float64, one zero), by enumerating every code.

    This is the slow reference the tests check :func:`round_to` against; it decodes each bit
    pattern independently of the fast rounding kernel.
    """
    fmt = _to_format(fmt, "fmt")
    if not isinstance(fmt, FloatFormat):
        raise ValueError("`fmt` must be a FloatFormat.")
    if fmt.exp_bits + fmt.man_bits > 16:
        raise ValueError("enumeration is only offered for formats of at most 17 bits (exp_bits + man_bits <= 16).")
    vals = []
    m = fmt.man_bits
    for e in range(2**fmt.exp_bits):
        for f in range(2**m):
            if fmt.has_inf and e == 2**fmt.exp_bits - 1:
                continue
            if (not fmt.has_inf) and fmt.has_nan and fmt.neg_zero and e == 2**fmt.exp_bits - 1 and f == 2**m - 1:
                continue
            if e == 0:
                if not fmt.subnormals and f != 0:
                    continue
                v = 2.0 ** (fmt.emin - m) * f
            else:
                v = 2.0 ** (e - fmt.bias) * (1 + f / 2**m)
            vals.append(v)
            vals.append(-v)
    return np.unique(np.array(vals, dtype=np.float64))
