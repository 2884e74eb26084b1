"""Number formats for quantization: signed/unsigned integers of 2..8 bits and fp8.

A :class:`QFormat` describes the grid a tensor is rounded to. Integer formats ``intN`` hold
the integers ``[-2^(N-1), 2^(N-1)-1]`` and ``uintN`` the integers ``[0, 2^N-1]``; formats of
4 bits or fewer are stored packed (two 4-bit or four 2-bit codes per byte, see
:func:`jaxeff.quant.pack_int`). Floating formats are the OCP fp8 types as jnp dtypes:
``e4m3`` (``jnp.float8_e4m3fn``, max 448, no inf) and ``e5m2`` (``jnp.float8_e5m2``, max
57344). The codebook format ``nf4`` (QLoRA's 4-bit NormalFloat) stores 4-bit indices into
:data:`NF4_CODEBOOK` (16 values in ``[-1, 1]``, quantiles of a standard normal, with an
exact zero), packed two per byte like int4, with one absmax scale per group.

References:
    Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433.
    Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314 (NF4).
"""
from __future__ import annotations

import dataclasses
from typing import Union

import jax.numpy as jnp
import numpy as np

__all__ = ["QFormat", "get_qformat", "QFORMAT_NAMES", "NF4_CODEBOOK"]

# QLoRA's NormalFloat4 (arXiv:2305.14314, Appendix E): the 16 values are
# ``q_i / max|q|`` with 8 positive quantiles ``Phi^-1(linspace(delta, 1/2, 9)[:-1])``, 7
# negative ones ``-Phi^-1(linspace(delta, 1/2, 8)[:-1])`` and 0, ``delta = 0.9677083``
# (tests rebuild it from that construction with scipy).
NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QFormat:
    """A quantization grid.

    Attributes:
        name: canonical name ("int8", "uint4", "e4m3", ...).
        kind: "int", "float" (fp8) or "codebook" (nf4: 4-bit indices into a value table).
        bits: bits per value (2..8).
        signed: whether negative values are representable.

    Example:
        >>> get_qformat("int4").qmax
        7
    """

    name: str
    kind: str
    bits: int
    signed: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string, got {self.name!r}.")
        if self.kind not in ("int", "float", "codebook"):
            raise ValueError(f"`kind` must be one of ['int', 'float', 'codebook'], got {self.kind!r}.")
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 2 <= self.bits <= 8:
            raise ValueError(f"`bits` must be an int in [2, 8], got {self.bits!r}.")
        if self.kind != "int" and self.bits != {"float": 8, "codebook": 4}[self.kind]:
            raise ValueError(f"`bits` must be {8 if self.kind == 'float' else 4} for kind {self.kind!r}, got {self.bits}.")

    @property
    def is_int(self) -> bool:
        return self.kind == "int"

    @property
    def is_float(self) -> bool:
        """An fp8 format (codes are fp8 values)."""
        return self.kind == "float"

    @property
    def is_codebook(self) -> bool:
        """A codebook format (codes are indices into :attr:`codebook`)."""
        return self.kind == "codebook"

    @property
    def codebook(self) -> np.ndarray | None:
        """The sorted float32 value table of a codebook format (None otherwise)."""
        return NF4_CODEBOOK if self.name == "nf4" else None

    @property
    def qmin(self) -> int | float:
        """Smallest representable value (integer code for int formats)."""
        if self.is_int:
            return -(2 ** (self.bits - 1)) if self.signed else 0
        if self.is_codebook:
            return float(self.codebook[0])
        return -float(jnp.finfo(self.dtype).max)

    @property
    def qmax(self) -> int | float:
        """Largest representable value (integer code for int formats)."""
        if self.is_int:
            return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1
        if self.is_codebook:
            return float(self.codebook[-1])
        return float(jnp.finfo(self.dtype).max)

    @property
    def sym_max(self) -> int | float:
        """The value absmax calibration maps the largest magnitude to (qmax for int/fp)."""
        return self.qmax

    @property
    def dtype(self):
        """Unpacked storage dtype: int8/uint8 for integers (uint8 indices for codebooks), the fp8
        jnp dtype for floats."""
        if self.is_codebook:
            return jnp.uint8
        if self.kind == "float":
            return {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}[self.name]
        return jnp.int8 if self.signed else jnp.uint8

    @property
    def container_bits(self) -> int:
        """Bits of the packed slot: 2 for 2-bit, 4 for 3/4-bit (and nf4), 8 otherwise."""
        if self.is_float or self.bits > 4:
            return 8
        return 2 if self.bits <= 2 else 4

    @property
    def packed(self) -> bool:
        return self.container_bits < 8

    @property
    def values_per_byte(self) -> int:
        return 8 // self.container_bits

    @property
    def ml_dtype(self):
        """The numpy (ml_dtypes) dtype of the format, for reference checks."""
        return np.dtype(self.dtype)


def _build() -> dict[str, QFormat]:
    out: dict[str, QFormat] = {}
    for b in range(2, 9):
        out[f"int{b}"] = QFormat(name=f"int{b}", kind="int", bits=b, signed=True)
        out[f"uint{b}"] = QFormat(name=f"uint{b}", kind="int", bits=b, signed=False)
    out["e4m3"] = QFormat(name="e4m3", kind="float", bits=8, signed=True)
    out["e5m2"] = QFormat(name="e5m2", kind="float", bits=8, signed=True)
    out["nf4"] = QFormat(name="nf4", kind="codebook", bits=4, signed=True)
    return out


_FORMATS = _build()
_ALIASES = {
    "fp8": "e4m3",
    "float8_e4m3fn": "e4m3",
    "e4m3fn": "e4m3",
    "fp8_e4m3": "e4m3",
    "float8_e5m2": "e5m2",
    "fp8_e5m2": "e5m2",
    "normalfloat4": "nf4",
}
QFORMAT_NAMES = tuple(_FORMATS) + tuple(_ALIASES)

FormatLike = Union[str, QFormat]


def get_qformat(fmt: FormatLike, name: str = "fmt") -> QFormat:
    """Resolve a format name (or a :class:`QFormat`, or an fp8 jnp dtype) to a QFormat.

    Raises:
        ValueError: naming ``name`` when the format or bit width is unsupported.

    Example:
        >>> get_qformat("e4m3").dtype
        <class 'jax.numpy.float8_e4m3fn'>
    """
    if isinstance(fmt, QFormat):
        return fmt
    if not isinstance(fmt, str):
        try:
            fmt = np.dtype(fmt).name
        except TypeError:
            raise ValueError(
                f"`{name}` must be a QFormat or one of {sorted(_FORMATS)}, got {fmt!r}."
            ) from None
    key = fmt.lower()
    key = _ALIASES.get(key, key)
    if key not in _FORMATS:
        raise ValueError(
            f"`{name}` must be one of {sorted(_FORMATS)} (int2..int8, uint2..uint8, e4m3, e5m2, nf4), "
            f"got {fmt!r}."
        )
    return _FORMATS[key]
