"""Quantize a Flax NNX model by module-path rules; QAT layers; save/load quantized models.

``quantize_model(model, rules)`` walks the model's ``nnx.Linear`` (and :class:`QATLinear`)
layers, names each by its dotted module path (``"blocks.0.mlp.up"``), takes the first
:class:`QuantRule` whose ``pattern`` fully matches (``re.fullmatch``) and replaces the layer
by a :class:`QuantizedLinear` holding the quantized kernel (codes, scales, zero points as
``QuantizedParam`` variables, so optimizers built with ``wrt=nnx.Param`` ignore them). The
new model keeps the call signature; unmatched layers are untouched (shared with the input
model, which is not modified).

Rules with ``"param"`` in ``targets`` also quantize free-standing ``nnx.Param`` arrays of
two or more dimensions that are not owned by a Linear/Embed layer (e.g. a learned position
table ``model.pos``), with RTN and one scale per row (shared along the last axis); they
become :class:`QuantizedTensor` variables that dequantize on access (``model.pos[...]``).

Quantized models are saved with :func:`save_quantized` as **safetensors** files (every
code/scale/zero-point array is a tensor, packed int4/nf4 as uint8, fp8 as F8_E4M3/F8_E5M2,
bf16 scales as BF16; the format/axis/group/shape metadata is JSON in the header metadata)
and read back bit-exactly by :func:`load_quantized`.

QAT: ``prepare_qat(model, rules)`` swaps matched layers for :class:`QATLinear` (float
kernel, fake-quantized in the forward pass with a straight-through estimator), which trains
with any ``nnx.Optimizer(model, optax_tx, wrt=nnx.Param)``; ``quantize_model`` then turns
the trained QAT layers into real quantized layers.

References:
    google/qwix (rules by module-path regex); Jacob et al., arXiv:1712.05877 (QAT).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxeff._core.validation import check_choice
from jaxeff.quant.fake import fake_quant
from jaxeff.quant.formats import FormatLike, QFormat, get_qformat
from jaxeff.quant.matmul import quantized_matmul
from jaxeff.quant.ptq import awq, gptq, quantease, rtn, smoothquant
from jaxeff.quant.qarray import (
    CALIBRATIONS,
    SCALE_DTYPES,
    QArray,
    ScaledQArray,
    _code_values,
    _scale_dtype_name,
    _scale_shape,
    quantize,
    unpack_int,
)

__all__ = [
    "QuantRule",
    "QuantizedParam",
    "QuantizedLinear",
    "QuantizedEmbed",
    "QuantizedTensor",
    "QATLinear",
    "prepare_qat",
    "quantize_model",
    "quant_weight_bytes",
    "save_quantized",
    "load_quantized",
    "QUANT_METHODS",
]

QUANT_METHODS = ("rtn", "gptq", "awq", "smoothquant", "quantease")
QUANT_TARGETS = ("linear", "embed", "param")


class QuantizedParam(nnx.Variable):
    """Variable type of quantized buffers (codes, scales, zero points, input scales)."""


class QuantizedTensor(QuantizedParam):
    """A variable holding a whole :class:`QArray`; reading it dequantizes.

    ``var[...]`` (or any index) and ``jnp.asarray(var)`` return the dequantized float array,
    so model code written for an ``nnx.Param`` (``self.pos[...][:T]``) runs unchanged;
    ``var.get_value()`` is the :class:`QArray` itself (its codes and scales are the state
    leaves, so ``quant_weight_bytes`` counts the quantized bytes).

    Example:
        >>> v = QuantizedTensor(quantize(jnp.ones((4, 8)), "int4", axis=1))
        >>> v[...].shape
        (4, 8)
    """

    def __getitem__(self, key):
        return self.get_value().dequantize()[key]

    def __jax_array__(self):
        return self.get_value().dequantize()

    @property
    def shape(self):
        return tuple(self.get_value().shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRule:
    """Which layers to quantize and how.

    Attributes:
        pattern: regex matched with ``re.fullmatch`` against the dotted module path
            (e.g. ``r"blocks\\.\\d+\\.mlp\\..*"``, ``".*"`` for every layer).
        weight_fmt: weight format name or :class:`QFormat`; None leaves matching layers float
            (use it to exclude layers before a catch-all rule).
        act_fmt: activation format for dynamic per-token quantization (W8A8), or None.
        method: "rtn", "gptq", "awq", "smoothquant" or "quantease".
        group_size: input rows per scale group (None: per output column).
        symmetric, calibration: weight quantizer settings (see :func:`quantize`).
        method_kwargs: extra keyword arguments for the method (e.g. ``{"act_order": True}``).
        scale_dtype: dtype the weight scales are stored in: "float32" (default), "bfloat16" or
            "float16" (scales are rounded up to it before coding, see :func:`quantize`).
        targets: what the rule may match: "linear" (``nnx.Linear`` kernels), "embed"
            (``nnx.Embed`` tables, RTN only, one scale per row), "param" (free-standing
            ``nnx.Param`` arrays of >= 2 dims such as a learned position table, RTN only, one
            scale per row of the last axis). Default ``("linear", "embed")``.
    """

    pattern: str = ".*"
    weight_fmt: FormatLike | None = "int8"
    act_fmt: FormatLike | None = None
    method: str = "rtn"
    group_size: int | None = None
    symmetric: bool = True
    calibration: str = "absmax"
    method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scale_dtype: Any = "float32"
    targets: tuple[str, ...] = ("linear", "embed")

    def __post_init__(self):
        object.__setattr__(self, "scale_dtype", _scale_dtype_name(self.scale_dtype))
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or any(t not in QUANT_TARGETS for t in targets):
            raise ValueError(f"`targets` must be a non-empty subset of {QUANT_TARGETS}, got {self.targets!r}.")
        object.__setattr__(self, "targets", targets)
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"`pattern` {self.pattern!r} is not a valid regex: {e}") from None
        if self.weight_fmt is not None:
            get_qformat(self.weight_fmt, "weight_fmt")
        if self.act_fmt is not None:
            get_qformat(self.act_fmt, "act_fmt")
        check_choice("method", self.method, QUANT_METHODS)
        check_choice("calibration", self.calibration, CALIBRATIONS)


class QuantizedLinear(nnx.Module):
    """Drop-in replacement of ``nnx.Linear`` with a quantized kernel.

    ``y = quantized_matmul(x [/ input_scale], W_q, act_fmt=act_fmt) + bias``.

    Example:
        >>> lin = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
        >>> q = QuantizedLinear.from_linear(lin, rtn(lin.kernel[...], "int8"))
        >>> q(jnp.ones((2, 16))).shape
        (2, 8)
    """

    def __init__(self, qweight: QArray | ScaledQArray, bias: jax.Array | None = None, *,
                 act_fmt: str | None = None, act_calibration: str = "absmax"):
        if isinstance(qweight, ScaledQArray):
            self.input_scale = QuantizedParam(qweight.input_scale)
            if act_fmt is None:
                act_fmt = qweight.act_fmt
            qweight = qweight.qweight
        else:
            self.input_scale = None
        self.qvalue = QuantizedParam(qweight.qvalue)
        self.scale = QuantizedParam(qweight.scale)
        self.zero_point = None if qweight.zero_point is None else QuantizedParam(qweight.zero_point)
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))
        self.fmt = qweight.fmt
        self.shape = tuple(qweight.shape)
        self.axis = tuple(qweight.axis)
        self.group_size = qweight.group_size
        self.dtype = qweight.dtype
        self.act_fmt = None if act_fmt is None else get_qformat(act_fmt, "act_fmt").name
        self.act_calibration = act_calibration

    @classmethod
    def from_linear(cls, linear: nnx.Module, qweight: QArray | ScaledQArray, *, act_fmt=None,
                    act_calibration: str = "absmax") -> "QuantizedLinear":
        bias = None if getattr(linear, "bias", None) is None else linear.bias[...]
        return cls(qweight, bias, act_fmt=act_fmt, act_calibration=act_calibration)

    @property
    def qweight(self) -> QArray | ScaledQArray:
        qa = QArray(qvalue=self.qvalue[...], scale=self.scale[...],
                    zero_point=None if self.zero_point is None else self.zero_point[...],
                    fmt=self.fmt, shape=self.shape, axis=self.axis, group_size=self.group_size,
                    dtype=self.dtype)
        if self.input_scale is None:
            return qa
        return ScaledQArray(qweight=qa, input_scale=self.input_scale[...], act_fmt=self.act_fmt)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = quantized_matmul(x, self.qweight, act_fmt=self.act_fmt,
                             act_calibration=self.act_calibration)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(jnp.result_type(x.dtype, jnp.dtype(self.dtype)))


class QuantizedEmbed(nnx.Module):
    """Drop-in replacement of ``nnx.Embed`` with a quantized table (one scale per row/group).

    ``embed(tokens) = (codes[tokens] - z[tokens]) * s[tokens]``: only the looked-up rows are
    unpacked and dequantized.

    Example:
        >>> emb = nnx.Embed(10, 8, rngs=nnx.Rngs(0))
        >>> QuantizedEmbed(quantize(emb.embedding[...], "int4", axis=1))(jnp.array([1, 2])).shape
        (2, 8)
    """

    def __init__(self, qtable: QArray):
        if qtable.ndim != 2 or qtable.axis != (1,):
            raise ValueError(
                f"`qtable` must be a 2-D QArray quantized along axis 1 (one scale per row), got "
                f"shape {qtable.shape} axis {qtable.axis}."
            )
        self.qvalue = QuantizedParam(qtable.qvalue)
        self.scale = QuantizedParam(qtable.scale)
        self.zero_point = None if qtable.zero_point is None else QuantizedParam(qtable.zero_point)
        self.fmt = qtable.fmt
        self.shape = tuple(qtable.shape)
        self.group_size = qtable.group_size
        self.dtype = qtable.dtype
        self.num_embeddings, self.features = self.shape

    @property
    def qtable(self) -> QArray:
        return QArray(qvalue=self.qvalue[...], scale=self.scale[...],
                      zero_point=None if self.zero_point is None else self.zero_point[...],
                      fmt=self.fmt, shape=self.shape, axis=(1,), group_size=self.group_size,
                      dtype=self.dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"`tokens` must be integers, got dtype {tokens.dtype}.")
        rows = self.qvalue[...][tokens]
        codes = unpack_int(rows, self.fmt, self.features) if self.fmt.packed else rows
        v = _code_values(codes, self.fmt)
        rep = 1 if self.group_size is None else self.group_size
        if self.zero_point is not None:
            v = v - jnp.repeat(self.zero_point[...][tokens], rep, axis=-1, total_repeat_length=self.features if self.group_size else None).astype(jnp.float32)
        s = self.scale[...][tokens].astype(jnp.float32)
        if self.group_size is not None:
            s = jnp.repeat(s, rep, axis=-1, total_repeat_length=self.features)
        return (v * s).astype(jnp.dtype(self.dtype))

    def attend(self, query: jax.Array) -> jax.Array:
        """``query @ table.T`` (tied output embedding)."""
        return query @ self.qtable.dequantize(query.dtype).T


class QATLinear(nnx.Module):
    """``nnx.Linear`` whose kernel (and optionally input) is fake-quantized in the forward pass.

    The float ``kernel``/``bias`` are ``nnx.Param`` and train with any optax optimizer; the
    gradient goes straight through the rounding (:func:`fake_quant`).
    """

    def __init__(self, kernel: jax.Array, bias: jax.Array | None, *, weight_fmt: FormatLike,
                 act_fmt: FormatLike | None = None, group_size: int | None = None,
                 symmetric: bool = True, calibration: str = "absmax", ste: str = "clipped",
                 scale_dtype: Any = "float32"):
        self.kernel = nnx.Param(jnp.asarray(kernel))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))
        self.weight_fmt = get_qformat(weight_fmt, "weight_fmt").name
        self.act_fmt = None if act_fmt is None else get_qformat(act_fmt, "act_fmt").name
        self.group_size = group_size
        self.symmetric = symmetric
        self.calibration = calibration
        self.ste = ste
        self.scale_dtype = _scale_dtype_name(scale_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = fake_quant(self.kernel[...], self.weight_fmt, axis=0, group_size=self.group_size,
                       symmetric=self.symmetric, calibration=self.calibration, ste=self.ste,
                       scale_dtype=self.scale_dtype)
        if self.act_fmt is not None:
            x = fake_quant(x, self.act_fmt, axis=-1, ste=self.ste)
        y = x @ w
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _set_child(root: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = root
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    last = path[-1]
    if isinstance(last, int):
        parent[last] = new
    else:
        setattr(parent, last, new)


def _as_rules(rules) -> list[QuantRule]:
    if isinstance(rules, QuantRule):
        return [rules]
    rules = list(rules)
    for i, r in enumerate(rules):
        if not isinstance(r, QuantRule):
            raise ValueError(f"`rules[{i}]` must be a QuantRule, got {type(r).__name__}.")
    return rules


def _match(rules: list[QuantRule], path: str, kind: str = "linear") -> QuantRule | None:
    for r in rules:
        if kind not in r.targets:
            continue
        if kind != "linear" and r.method != "rtn":
            continue  # tables have no layer inputs: only RTN rules apply to them
        if re.fullmatch(r.pattern, path):
            return r
    return None


_LAYER_KINDS = (nnx.Linear, nnx.Embed, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)


def _free_params(model: nnx.Module):
    """(module path, attribute, module, Param) of free-standing >= 2-D ``nnx.Param`` arrays."""
    out = []
    for p, m in nnx.iter_modules(model):
        if isinstance(m, _LAYER_KINDS + (QATLinear, QuantizedLinear, QuantizedEmbed)):
            continue
        for name, v in list(vars(m).items()):
            if type(v) is nnx.Param and np.ndim(v.get_value()) >= 2 and jnp.issubdtype(v.get_value().dtype, jnp.floating):
                out.append((tuple(p), name, m, v))
    return out


def _linear_layers(model: nnx.Module, kinds=(nnx.Linear, QATLinear)):
    return [(p, m) for p, m in nnx.iter_modules(model) if p and isinstance(m, kinds)]


def prepare_qat(model: nnx.Module, rules: QuantRule | Sequence[QuantRule]) -> nnx.Module:
    """A copy of ``model`` whose matched ``nnx.Linear`` layers are :class:`QATLinear`.

    Train the result as usual, e.g.::

        qat = prepare_qat(model, QuantRule(pattern=".*mlp.*", weight_fmt="int4", group_size=32))
        opt = nnx.Optimizer(qat, optax.adamw(1e-3), wrt=nnx.Param)
        grads = nnx.grad(loss_fn)(qat, batch); opt.update(qat, grads)
        qmodel = quantize_model(qat, rules)   # real int4 weights

    Args:
        model: Flax NNX module (not modified).
        rules: :class:`QuantRule` or a sequence (first full match wins; ``weight_fmt=None``
            skips).

    Returns:
        The QAT model (same call signature).
    """
    rules = _as_rules(rules)
    new = nnx.clone(model)
    for path, lin in _linear_layers(new, (nnx.Linear,)):
        r = _match(rules, _path_str(path))
        if r is None or r.weight_fmt is None:
            continue
        bias = None if getattr(lin, "bias", None) is None else lin.bias[...]
        _set_child(new, path, QATLinear(lin.kernel[...], bias, weight_fmt=r.weight_fmt,
                                        act_fmt=r.act_fmt, group_size=r.group_size,
                                        symmetric=r.symmetric, calibration=r.calibration,
                                        scale_dtype=r.scale_dtype))
    return new


def _calibration_input(data: Any, layer: str, method: str, in_features: int) -> jax.Array:
    """The calibration inputs of ``layer`` from ``data`` as ``[tokens, in_features]``, checked."""
    if data is None or layer not in data:
        raise ValueError(f"`calibration_data` has no inputs for layer {layer!r} (method {method!r}).")
    x = jnp.asarray(data[layer])
    if x.shape[-1] != in_features:
        raise ValueError(
            f"`calibration_data[{layer!r}]` must have last dimension {in_features} (the layer's input size), "
            f"got shape {tuple(x.shape)}."
        )
    return x.reshape(-1, in_features)


def _quantize_table(rule: QuantRule, a: jax.Array, axis: int) -> QArray:
    """RTN of an embedding table / free-standing param, scales shared along ``axis``."""
    return quantize(a, get_qformat(rule.weight_fmt, "weight_fmt"), axis=axis, group_size=rule.group_size,
                    symmetric=rule.symmetric, calibration=rule.calibration, scale_dtype=rule.scale_dtype)


def _quantize_kernel(rule: QuantRule, kernel: jax.Array, x: jax.Array | None):
    f = get_qformat(rule.weight_fmt, "weight_fmt")
    kw = dict(rule.method_kwargs)
    common = dict(symmetric=rule.symmetric, calibration=rule.calibration, scale_dtype=rule.scale_dtype)
    if rule.method == "rtn":
        return rtn(kernel, f, group_size=rule.group_size, **common, **kw)
    if rule.method == "gptq":
        return gptq(kernel, x, f, rule.group_size, **common, **kw)
    if rule.method == "quantease":
        return quantease(kernel, x, f, rule.group_size, **common, **kw)
    if rule.method == "awq":
        return awq(kernel, x, f, rule.group_size, **common, **kw)
    return smoothquant(kernel, x, f, rule.act_fmt, group_size=rule.group_size, **common, **kw)


def quantize_model(
    model: nnx.Module,
    rules: QuantRule | Sequence[QuantRule],
    *,
    calibration_data: Mapping[str, jax.Array] | Callable[[nnx.Module], Mapping[str, jax.Array]] | None = None,
    sequential: bool = False,
) -> nnx.Module:
    """Quantize the ``nnx.Linear`` (and ``nnx.Embed``) layers of ``model`` selected by ``rules``.

    ``nnx.Embed`` tables are matched only by rules with ``method="rtn"`` (the other methods
    need layer inputs, which a lookup table does not have) and are quantized with one scale
    per row (``axis=1``, optionally ``group_size`` features per scale). Free-standing
    ``nnx.Param`` arrays (>= 2-D, outside Linear/Embed layers, e.g. ``pos``) are matched only
    by RTN rules whose ``targets`` include ``"param"`` and become :class:`QuantizedTensor`
    (scales shared along the last axis, optionally in groups of ``group_size``).

    Args:
        model: a Flax NNX module (not modified; the result shares unmatched layers' arrays).
        rules: a :class:`QuantRule` or a sequence of them; for each layer the first rule whose
            ``pattern`` fully matches its dotted path applies (``weight_fmt=None`` skips).
        calibration_data: layer inputs ``{path: [N, in]}`` (e.g. from
            ``jaxeff.models.capture_linear_inputs``), or a function ``model -> that dict``;
            required by "gptq", "awq", "smoothquant" and "quantease".
        sequential: with a callable ``calibration_data``, recapture the inputs after each
            quantized layer, so later layers are calibrated on the already-quantized
            prefix (GPTQ's sequential mode); otherwise inputs of the float model are used.

    Returns:
        A new model in which matched layers are :class:`QuantizedLinear`.

    Example:
        >>> qm = quantize_model(model, [QuantRule(pattern="head", weight_fmt=None),
        ...                            QuantRule(pattern=".*", weight_fmt="int4", group_size=32)])
        >>> qm(tokens).shape == model(tokens).shape    # doctest: +SKIP
        True

    References:
        Frantar et al., arXiv:2210.17323 (sequential layer-wise calibration).
    """
    rules = _as_rules(rules)
    if calibration_data is not None and not (callable(calibration_data) or isinstance(calibration_data, Mapping)):
        raise ValueError("`calibration_data` must be a mapping {path: inputs} or a callable model -> mapping.")
    new = nnx.clone(model)
    for path, emb in _linear_layers(new, (nnx.Embed,)):
        r = _match(rules, _path_str(path), "embed")
        if r is not None and r.weight_fmt is not None:
            _set_child(new, path, QuantizedEmbed(_quantize_table(r, emb.embedding[...], axis=1)))
    for mpath, name, mod, var in _free_params(new):
        r = _match(rules, _path_str(mpath + (name,)), "param")
        if r is not None and r.weight_fmt is not None:
            a = var.get_value()
            setattr(mod, name, QuantizedTensor(_quantize_table(r, a, axis=a.ndim - 1)))
    todo = []
    for path, lin in _linear_layers(new):
        p = _path_str(path)
        r = _match(rules, p)
        if r is not None and r.weight_fmt is not None:
            todo.append((path, p, lin, r))
    needs = any(r.method != "rtn" for *_, r in todo)
    data = None
    if needs:
        if calibration_data is None:
            methods = sorted({r.method for *_, r in todo if r.method != "rtn"})
            raise ValueError(f"`calibration_data` is required for methods {methods}.")
        data = calibration_data(new) if callable(calibration_data) else calibration_data
    for path, p, lin, r in todo:
        kernel = lin.kernel[...]
        x = None if r.method == "rtn" else _calibration_input(data, p, r.method, kernel.shape[0])
        qw = _quantize_kernel(r, kernel, x)
        act = r.act_fmt if not isinstance(qw, ScaledQArray) or r.act_fmt is not None else qw.act_fmt
        bias = None if getattr(lin, "bias", None) is None else lin.bias[...]
        _set_child(new, path, QuantizedLinear(qw, bias, act_fmt=act))
        if sequential and callable(calibration_data) and needs:
            data = calibration_data(new)
    return new


def quant_weight_bytes(model_or_tree: Any) -> int:
    """Bytes of all ``nnx.Param`` and :class:`QuantizedParam` arrays of a model (or of every
    array leaf of a pytree; QArrays count codes + scales + zero points).

    Example:
        >>> quant_weight_bytes(nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
        40
    """
    tree = nnx.state(model_or_tree, _WEIGHTS) if isinstance(model_or_tree, nnx.Module) else model_or_tree
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


# --------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------
_META = "__jaxeff_quant_meta__"  # npz: the JSON metadata blob
_WEIGHTS = nnx.Any(nnx.Param, QuantizedParam)
_FORMAT_TAG = "jaxeff.quant"
_VERSION = 2
# numpy dtype name <-> safetensors dtype code
_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _layer_meta(m: nnx.Module) -> dict:
    if isinstance(m, QuantizedEmbed):
        return dict(kind="embed", fmt=m.fmt.name, shape=list(m.shape), axis=[1], group_size=m.group_size,
                    dtype=m.dtype)
    return dict(kind="linear", fmt=m.fmt.name, shape=list(m.shape), axis=list(m.axis), group_size=m.group_size,
                dtype=m.dtype, act_fmt=m.act_fmt, act_calibration=m.act_calibration)


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _qarray_meta(qa) -> dict:
    base = qa.qweight if isinstance(qa, ScaledQArray) else qa
    meta = dict(fmt=base.fmt.name, shape=list(base.shape), axis=list(base.axis), group_size=base.group_size,
                dtype=base.dtype, zero_point=base.zero_point is not None)
    if isinstance(qa, ScaledQArray):
        meta.update(scaled=True, act_fmt=qa.act_fmt)
    return meta


def _emit_qarray(arrays: dict, key: str, qa) -> None:
    base = qa.qweight if isinstance(qa, ScaledQArray) else qa
    arrays[key + ".qvalue"] = base.qvalue
    arrays[key + ".scale"] = base.scale
    if base.zero_point is not None:
        arrays[key + ".zero_point"] = base.zero_point
    if isinstance(qa, ScaledQArray):
        arrays[key + ".input_scale"] = qa.input_scale


def _check_tensor(arrays: dict, key: str, shape, dtypes) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"the file has no tensor {key!r} (corrupt file or a different model).")
    a = arrays[key]
    if tuple(a.shape) != tuple(shape) or a.dtype.name not in dtypes:
        raise ValueError(
            f"tensor {key!r} in the file has shape {tuple(a.shape)} dtype {a.dtype.name}, expected shape "
            f"{tuple(shape)} and dtype in {sorted(dtypes)} (corrupt or mismatched file)."
        )
    return a


def _read_qarray(arrays: dict, key: str, meta: dict, used: set):
    """Rebuild (and validate) the QArray / ScaledQArray stored under ``key``."""
    try:
        fmt = get_qformat(meta["fmt"])
        shape = tuple(int(d) for d in meta["shape"])
        axis = tuple(int(a) for a in meta["axis"])
        gs = meta["group_size"]
        dtype = jnp.dtype(meta["dtype"]).name
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad quantization metadata for {key!r} in the file: {e}") from None
    if any(a < 0 or a >= len(shape) for a in axis) or (gs is not None and (
            len(axis) != 1 or int(gs) < 1 or shape[axis[0]] % int(gs))):
        raise ValueError(f"bad quantization metadata for {key!r}: axis {axis} / group_size {gs} for shape {shape}.")
    gs = None if gs is None else int(gs)
    if fmt.packed:
        qshape, qdt = shape[:-1] + (-(-shape[-1] // fmt.values_per_byte),), {"uint8"}
    else:
        qshape, qdt = shape, {np.dtype(fmt.dtype).name}
    sshape = _scale_shape(shape, axis, gs)
    qv = _check_tensor(arrays, key + ".qvalue", qshape, qdt)
    sc = _check_tensor(arrays, key + ".scale", sshape, set(SCALE_DTYPES))
    used.update({key + ".qvalue", key + ".scale"})
    zp = None
    if meta.get("zero_point"):
        zp = _check_tensor(arrays, key + ".zero_point", sshape, {np.dtype(fmt.dtype).name})
        used.add(key + ".zero_point")
    qa = QArray(qvalue=jnp.asarray(qv), scale=jnp.asarray(sc), zero_point=None if zp is None else jnp.asarray(zp),
                fmt=fmt, shape=shape, axis=axis, group_size=gs, dtype=dtype)
    if meta.get("scaled"):
        ins = _check_tensor(arrays, key + ".input_scale", (shape[0],), {"float32", "bfloat16", "float16"})
        used.add(key + ".input_scale")
        act = meta.get("act_fmt")
        return ScaledQArray(qweight=qa, input_scale=jnp.asarray(ins),
                            act_fmt=None if act is None else get_qformat(act).name)
    return qa


def _walk_tree(tree, prefix=()):
    """(path tuple, leaf) over nested mappings / lists; QArray, ScaledQArray and arrays are leaves."""
    if isinstance(tree, (QArray, ScaledQArray)):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _walk_tree(v, prefix + (k,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _walk_tree(v, prefix + (i,))
    else:
        yield prefix, tree


def _encode_model(model: nnx.Module):
    layers = {_path_str(p): _layer_meta(m) for p, m in nnx.iter_modules(model)
              if isinstance(m, (QuantizedLinear, QuantizedEmbed))}
    arrays, tensors = {}, {}
    for path, leaf in _walk_tree(nnx.to_pure_dict(nnx.state(model, _WEIGHTS))):
        key = ".".join(_key_str(k) for k in path)
        if isinstance(leaf, (QArray, ScaledQArray)):
            tensors[key] = _qarray_meta(leaf)
            _emit_qarray(arrays, key, leaf)
        elif leaf is not None:
            arrays[key] = leaf
    return arrays, dict(kind="nnx", layers=layers, tensors=tensors)


def _encode_tree(tree) -> tuple[dict, dict]:
    if not isinstance(tree, Mapping):
        raise ValueError(f"`model` must be an nnx.Module or a nested dict of arrays/QArrays, got {type(tree).__name__}.")
    arrays, qarrays = {}, {}
    for path, leaf in _walk_tree(tree):
        if not path or not all(isinstance(k, str) and k and "." not in k for k in path):
            raise ValueError(f"`model` tree keys must be non-empty strings without '.', got path {path!r}.")
        key = ".".join(path)
        if isinstance(leaf, (QArray, ScaledQArray)):
            qarrays[key] = _qarray_meta(leaf)
            _emit_qarray(arrays, key, leaf)
        elif hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
            arrays[key] = leaf
        else:
            raise ValueError(f"`model` leaf {key!r} is not an array or QArray ({type(leaf).__name__}).")
    return arrays, dict(kind="tree", qarrays=qarrays)


def save_quantized(path: str | os.PathLike, model: nnx.Module | Mapping[str, Any], *,
                   file_format: str | None = None) -> None:
    """Save a quantized NNX model (or a pytree of QArrays, e.g. Linen params) bit-exactly.

    The default container is **safetensors**: every ``nnx.Param`` / :class:`QuantizedParam`
    array (or tree leaf) is a tensor named by its dotted path, and each quantized array
    contributes ``<path>.qvalue`` (packed uint8 for int2-4/nf4, int8/uint8, or F8_E4M3 /
    F8_E5M2 for fp8), ``<path>.scale`` (F32, BF16 or F16), optionally ``<path>.zero_point`` and
    ``<path>.input_scale`` (AWQ/SmoothQuant). The header metadata holds ``format =
    "jaxeff.quant"``, ``version`` and a JSON ``jaxeff`` entry with each quantized array's
    format, logical shape, axis, group size and dtype (and, for models, each quantized
    layer's activation format), so any safetensors reader sees plain tensors.

    Args:
        path: output file.
        model: an ``nnx.Module`` (typically from :func:`quantize_model`) or a nested dict
            whose leaves are arrays, :class:`QArray` or :class:`ScaledQArray` (e.g. from
            :func:`quantize_params`; keys must be strings without ".").
        file_format: "safetensors" (default) or "npz" (the same tensors and metadata in a
            numpy ``.npz``, fp8/bf16 stored as raw bits); None picks "npz" for a ``.npz``
            path and safetensors otherwise.

    Example:
        >>> save_quantized("/tmp/m.safetensors", qmodel)   # doctest: +SKIP
        >>> qmodel2 = load_quantized("/tmp/m.safetensors", float_model_skeleton)   # doctest: +SKIP
    """
    if file_format is None:
        file_format = "npz" if str(path).endswith(".npz") else "safetensors"
    check_choice("file_format", file_format, ("safetensors", "npz"))
    arrays, meta = _encode_model(model) if isinstance(model, nnx.Module) else _encode_tree(model)
    meta["version"] = _VERSION
    np_arrays = {}
    for k, v in arrays.items():
        a = np.asarray(jax.device_get(v))
        if a.dtype.name not in _ST_DTYPES:
            raise ValueError(f"`model` array {k!r} has dtype {a.dtype}, which cannot be saved.")
        np_arrays[k] = np.ascontiguousarray(a)
    if file_format == "npz":
        meta["dtypes"] = {k: a.dtype.name for k, a in np_arrays.items()}
        raw = {k: (a.view(np.uint8) if a.dtype.itemsize == 1 and a.dtype.kind not in "iub" else
                   a.view(np.uint16) if a.dtype.name == "bfloat16" else a) for k, a in np_arrays.items()}
        blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, **{_META: blob}, **raw)
        return
    import safetensors.numpy

    header = {"format": _FORMAT_TAG, "version": str(_VERSION), "jaxeff": json.dumps(meta)}
    safetensors.numpy.save_file(np_arrays, str(path), metadata=header)


def _read_file(path) -> tuple[dict, dict]:
    """(arrays by name, metadata dict) of a file written by :func:`save_quantized`."""
    p = str(path)
    if not os.path.isfile(p):
        raise ValueError(f"`path` {p!r} is not a file.")
    with open(p, "rb") as fh:
        data = fh.read()
    if data[:2] == b"PK":  # npz (zip)
        try:
            with np.load(p) as f:
                if _META not in f:
                    raise ValueError(f"`path` {p!r} is not a file written by save_quantized (no metadata).")
                meta = json.loads(bytes(f[_META]).decode())
                raw = {k: f[k] for k in f.files if k != _META}
        except ValueError:
            raise
        except Exception as e:  # zipfile / pickle errors of a corrupt file
            raise ValueError(f"`path` {p!r} is not a readable .npz file: {e}") from None
        if meta.get("version") != _VERSION:
            raise ValueError(f"`path` {p!r} was written by an older jaxeff (version {meta.get('version')}); re-save it.")
        arrays = {}
        for k, a in raw.items():
            name = meta.get("dtypes", {}).get(k)
            if name is None:
                raise ValueError(f"`path` {p!r}: tensor {k!r} has no dtype in the metadata (corrupt file).")
            arrays[k] = a.view(jnp.dtype(name)) if a.dtype != jnp.dtype(name) else a
        return arrays, meta
    import safetensors

    try:
        with safetensors.safe_open(p, framework="np") as f:
            header = f.metadata() or {}
        entries = safetensors.deserialize(data)
    except Exception as e:  # SafetensorError and friends: truncated / corrupt header or data
        raise ValueError(f"`path` {p!r} is not a valid safetensors file: {e}") from None
    if header.get("format") != _FORMAT_TAG or "jaxeff" not in header:
        raise ValueError(f"`path` {p!r} is a safetensors file but was not written by save_quantized "
                         f"(no '{_FORMAT_TAG}' metadata).")
    try:
        meta = json.loads(header["jaxeff"])
    except json.JSONDecodeError as e:
        raise ValueError(f"`path` {p!r} has corrupt jaxeff metadata: {e}") from None
    if meta.get("version") != _VERSION:
        raise ValueError(f"`path` {p!r} has unsupported jaxeff metadata version {meta.get('version')!r}.")
    arrays = {}
    for name, info in entries:
        code = info["dtype"]
        if code not in _ST_NAMES:
            raise ValueError(f"`path` {p!r}: tensor {name!r} has unsupported dtype {code}.")
        dt = jnp.dtype(_ST_NAMES[code])
        arrays[name] = np.frombuffer(bytes(info["data"]), dtype=dt).reshape(info["shape"])
    return arrays, meta


def _check_layer_fits(m: nnx.Module, lp: str, qa) -> None:
    """The layer ``m`` of the skeleton model must have the logical kernel/table shape of ``qa``."""
    if isinstance(m, (QuantizedLinear, QuantizedEmbed)):
        shape = tuple(m.shape)
    elif isinstance(m, (nnx.Linear, QATLinear)):
        shape = tuple(m.kernel.get_value().shape)
    elif isinstance(m, nnx.Embed):
        shape = tuple(m.embedding.get_value().shape)
    else:
        raise ValueError(f"`model` layer {lp!r} is a {type(m).__name__}, not a Linear/Embed the file quantizes.")
    if shape != tuple(qa.shape):
        raise ValueError(f"`model` layer {lp!r} has kernel shape {shape}, the file stores {tuple(qa.shape)}.")


def load_quantized(path: str | os.PathLike, model: nnx.Module | None = None):
    """Load what :func:`save_quantized` wrote (safetensors or npz), bit-exactly.

    Args:
        path: the file.
        model: for a saved NNX model, a model of the same architecture: the float model (its
            layers and parameters named in the file are replaced by :class:`QuantizedLinear`,
            :class:`QuantizedEmbed` and :class:`QuantizedTensor`) or a quantized one; not
            modified. For a saved tree, leave it None.

    Returns:
        The quantized model (a new one), or the nested dict of arrays and QArrays.

    Raises:
        ValueError: if the file is not a valid file written by :func:`save_quantized`
            (truncated, corrupt, other metadata), or if ``model`` does not fit it (missing
            layers, other shapes or dtypes, tensors the model has no place for).
    """
    arrays, meta = _read_file(path)
    used: set[str] = set()
    if meta.get("kind") == "tree":
        if model is not None:
            raise ValueError("`model` must be None for a file that holds a saved tree (not an NNX model).")
        out: dict = {}
        qmeta = meta.get("qarrays", {})
        items = [(k, _read_qarray(arrays, k, m, used)) for k, m in qmeta.items()]
        items += [(k, jnp.asarray(a)) for k, a in arrays.items() if k not in used and not any(
            k.startswith(q + ".") for q in qmeta)]
        for k, v in items:
            node = out
            parts = k.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = v
        return out
    if meta.get("kind") != "nnx":
        raise ValueError(f"`path` {str(path)!r} has unknown content kind {meta.get('kind')!r}.")
    if not isinstance(model, nnx.Module):
        raise ValueError("`model` must be an nnx.Module of the saved architecture for a saved NNX model.")
    new = nnx.clone(model)
    mods = dict((_path_str(p), (p, m)) for p, m in nnx.iter_modules(new) if p)
    for lp, lm in meta["layers"].items():
        if lp not in mods:
            raise ValueError(f"`model` has no layer {lp!r} that the file quantizes.")
        try:
            qmeta = dict(fmt=lm["fmt"], shape=lm["shape"], axis=lm["axis"], group_size=lm["group_size"],
                         dtype=lm["dtype"], zero_point=lp + ".zero_point" in arrays,
                         scaled=lp + ".input_scale" in arrays, act_fmt=lm.get("act_fmt"))
        except KeyError as e:
            raise ValueError(f"bad layer metadata for {lp!r} in the file: missing {e}") from None
        qa = _read_qarray(arrays, lp, qmeta, used)
        _check_layer_fits(mods[lp][1], lp, qa)
        if lm.get("kind") == "embed":
            _set_child(new, mods[lp][0], QuantizedEmbed(qa))
            continue
        bias = arrays.get(lp + ".bias")
        if bias is not None:
            used.add(lp + ".bias")
        _set_child(new, mods[lp][0], QuantizedLinear(qa, None if bias is None else jnp.asarray(bias),
                                                    act_fmt=lm.get("act_fmt"),
                                                    act_calibration=lm.get("act_calibration", "absmax")))
    # free-standing quantized tensors (QuantizedTensor)
    for tp, tm in meta.get("tensors", {}).items():
        mpath, _, name = tp.rpartition(".")
        owner = new if not mpath else mods.get(mpath, (None, None))[1]
        if owner is None or not hasattr(owner, name):
            raise ValueError(f"`model` has no parameter {tp!r} that the file quantizes.")
        qa = _read_qarray(arrays, tp, tm, used)
        cur = getattr(owner, name)
        cur_shape = tuple(cur.get_value().shape) if isinstance(cur, nnx.Variable) else None
        if cur_shape != tuple(qa.shape):
            raise ValueError(f"`model` parameter {tp!r} has shape {cur_shape}, the file stores {tuple(qa.shape)}.")
        setattr(owner, name, QuantizedTensor(qa))
    state = nnx.state(new, _WEIGHTS)
    pure = nnx.to_pure_dict(state)

    def fill(path, leaf):
        key = ".".join(_key_str(k) for k in path)
        if isinstance(leaf, (QArray, ScaledQArray)):
            return leaf  # QuantizedTensor already read from the file above
        if key in used:  # arrays of the quantized layers (read above, same values)
            return jnp.asarray(arrays[key])
        a = _check_tensor(arrays, key, np.shape(leaf), {np.dtype(leaf.dtype).name})
        used.add(key)
        return jnp.asarray(a)

    leaves = list(_walk_tree(pure))
    filled = {tuple(p): fill(p, v) for p, v in leaves if v is not None}

    def rebuild(tree, prefix=()):
        if isinstance(tree, (QArray, ScaledQArray)):
            return filled[prefix]
        if isinstance(tree, Mapping):
            return {k: rebuild(v, prefix + (k,)) for k, v in tree.items()}
        return filled.get(prefix, tree)

    extra = sorted(set(arrays) - used)
    if extra:
        raise ValueError(f"the file has tensors that `model` has no place for: {extra[:5]} (mismatched model).")
    nnx.replace_by_pure_dict(state, rebuild(pure))
    nnx.update(new, state)
    return new
