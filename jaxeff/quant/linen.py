"""Quantize a Flax **Linen** parameter pytree by path regex and run the module with it.

Linen modules keep their parameters outside the module, in a nested dict
``{"params": {"Dense_0": {"kernel": ..., "bias": ...}, ...}}``, so Linen support is a
transformation of that pytree:

* :func:`quantize_params` replaces the leaves selected by :class:`QuantRule` patterns with
  :class:`QArray` (or :class:`ScaledQArray` for AWQ / SmoothQuant). A leaf's path is the
  dotted module path (``"Dense_0"``, ``"Block_1.MlpBlock_0.Dense_1"``, without the
  ``params`` collection name); ``"linear"`` targets are 2-D ``kernel`` leaves (``[in, out]``,
  one scale per output column, any method), ``"embed"`` targets are 2-D ``embedding``
  leaves (one scale per row, RTN), ``"param"`` targets are other float leaves of >= 2 dims
  (one scale per row of the last axis, RTN). Everything else stays as it is.
* :func:`quantized_apply` runs ``module.apply`` on such a tree: every ``nn.Dense`` whose
  kernel is quantized computes ``quantized_matmul(x, kernel)`` (weight-only, or W8A8 when the
  rule gave ``act_fmt`` / SmoothQuant), and every other quantized leaf is dequantized
  (inside the caller's ``jit`` XLA fuses the dequantization into its consumer).
* :func:`dequantize_params` gives back a float tree, e.g. to call ``module.apply`` directly.
* :func:`capture_dense_inputs` records the inputs of every ``nn.Dense`` by module path: the
  ``calibration_data`` that GPTQ / AWQ / SmoothQuant / QuantEase rules need.

The quantized tree saves and loads bit-exactly with :func:`jaxeff.quant.save_quantized` /
:func:`jaxeff.quant.load_quantized` (safetensors).

References:
    google/qwix (rules by module-path regex over Linen and NNX models).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxeff.quant.formats import get_qformat
from jaxeff.quant.matmul import quantized_matmul
from jaxeff.quant.qarray import QArray, ScaledQArray

__all__ = ["quantize_params", "dequantize_params", "quantized_apply", "capture_dense_inputs"]

_Q = (QArray, ScaledQArray)


def _is_q(x) -> bool:
    return isinstance(x, _Q)


def _walk(tree, prefix=()):
    """Yield (key path tuple, leaf) over nested mappings; QArrays are leaves."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _walk(v, prefix + (k,))
    else:
        yield prefix, tree


def _rebuild(tree, fn, prefix=()):
    if isinstance(tree, Mapping):
        return {k: _rebuild(v, fn, prefix + (k,)) for k, v in tree.items()}
    return fn(prefix, tree)


def _params_root(variables):
    if not isinstance(variables, Mapping):
        raise ValueError(f"`params` must be a (nested) mapping of arrays, got {type(variables).__name__}.")
    return "params" in variables and isinstance(variables["params"], Mapping)


def quantize_params(
    params: Mapping[str, Any],
    rules,
    *,
    calibration_data: Mapping[str, jax.Array] | None = None,
) -> dict:
    """Quantize the leaves of a Linen parameter tree selected by ``rules``.

    Args:
        params: the variables dict (``{"params": {...}, ...}``; other collections are kept)
            or the ``params`` collection itself.
        rules: a :class:`~jaxeff.quant.QuantRule` or a sequence; for each leaf the first rule
            whose ``pattern`` fully matches the dotted module path and whose ``targets``
            include the leaf's kind applies (``weight_fmt=None`` leaves it float).
        calibration_data: ``{module path: inputs [..., in]}`` for rules with a method other
            than "rtn" (GPTQ, AWQ, SmoothQuant, QuantEase), e.g. captured with
            ``module.apply(..., capture_intermediates=...)`` or an interceptor.

    Returns:
        A new tree of the same structure with :class:`QArray` / :class:`ScaledQArray` leaves
        where rules matched. A rule's ``act_fmt`` (W8A8) is recorded by wrapping the kernel in
        a :class:`ScaledQArray` with unit ``input_scale``.

    Example:
        >>> import flax.linen as nn
        >>> mlp = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
        >>> v = mlp.init(jax.random.key(0), jnp.ones((1, 16)))
        >>> qv = quantize_params(v, QuantRule(pattern="layers_0", weight_fmt="int8"))
        >>> type(qv["params"]["layers_0"]["kernel"]).__name__
        'QArray'
    """
    from jaxeff.quant.model import _as_rules, _calibration_input, _match, _quantize_kernel, _quantize_table

    rules = _as_rules(rules)
    if calibration_data is not None and not isinstance(calibration_data, Mapping):
        raise ValueError("`calibration_data` must be a mapping {module path: inputs}.")
    wrapped = _params_root(params)
    root = params["params"] if wrapped else params
    for path, leaf in _walk(root):
        if not all(isinstance(k, str) for k in path):
            raise ValueError(f"`params` keys must be strings, got path {path!r}.")

    def fn(path, leaf):
        if _is_q(leaf) or not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        mod, name = ".".join(path[:-1]), path[-1]
        nd = np.ndim(leaf)
        kind = "linear" if (name == "kernel" and nd == 2) else "embed" if (name == "embedding" and nd == 2) else (
            "param" if nd >= 2 else None)
        if kind is None:
            return leaf
        r = _match(rules, mod if kind != "param" else ".".join(path), kind)
        if r is None or r.weight_fmt is None:
            return leaf
        if kind != "linear":
            return _quantize_table(r, leaf, axis=1 if kind == "embed" else nd - 1)
        x = None if r.method == "rtn" else _calibration_input(calibration_data, mod, r.method, leaf.shape[0])
        qw = _quantize_kernel(r, leaf, x)
        if r.act_fmt is not None and isinstance(qw, QArray):
            qw = ScaledQArray(qweight=qw, input_scale=jnp.ones((leaf.shape[0],), jnp.float32),
                              act_fmt=get_qformat(r.act_fmt, "act_fmt").name)
        return qw

    new_root = _rebuild(root, fn)
    if wrapped:
        out = dict(params)
        out["params"] = new_root
        return out
    return new_root


def dequantize_params(params: Mapping[str, Any], dtype: Any = None) -> dict:
    """The tree with every :class:`QArray` / :class:`ScaledQArray` leaf dequantized.

    Args:
        params: a tree from :func:`quantize_params` (or :func:`load_quantized`).
        dtype: output dtype of the dequantized leaves (default: each leaf's original dtype).
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"`params` must be a (nested) mapping, got {type(params).__name__}.")
    return _rebuild(params, lambda p, v: v.dequantize(dtype) if _is_q(v) else v)


def quantized_apply(module: nn.Module, variables: Mapping[str, Any], *args, method: Any = None,
                    **kwargs):
    """``module.apply(variables, *args)`` where ``variables`` may hold quantized leaves.

    ``nn.Dense`` layers with a quantized kernel run :func:`quantized_matmul` on it (weight-only
    dequantize-in-kernel, or int8 x int8 with dynamic per-token activation scales for W8A8
    kernels); every other quantized leaf is dequantized first. Wrap the call in ``jax.jit``.

    Args:
        module: the Linen module.
        variables: ``{"params": tree, ...}`` as returned by :func:`quantize_params`.
        *args, method, **kwargs: forwarded to ``module.apply``.

    Example:
        >>> import flax.linen as nn
        >>> mlp = nn.Dense(4)
        >>> v = mlp.init(jax.random.key(0), jnp.ones((1, 16)))
        >>> qv = quantize_params(v, QuantRule(weight_fmt="int8", act_fmt="int8"))
        >>> quantized_apply(mlp, qv, jnp.ones((2, 16))).shape
        (2, 4)
    """
    if not _params_root(variables):
        raise ValueError("`variables` must be a dict with a 'params' collection (as from module.init).")
    qparams = variables["params"]

    def lookup(path):
        node = qparams
        for k in path:
            if not isinstance(node, Mapping) or k not in node:
                return None
            node = node[k]
        return node

    def interceptor(next_fun, args_, kwargs_, context):
        mod = context.module
        if type(mod) is nn.Dense and context.method_name == "__call__" and mod.scope is not None:
            k = lookup(tuple(mod.scope.path) + ("kernel",))
            if _is_q(k):
                (x,) = args_
                y = quantized_matmul(x, k)
                if mod.use_bias:
                    y = y + mod.get_variable("params", "bias")
                dt = mod.dtype or jnp.result_type(x.dtype, jnp.dtype(k.qweight.dtype if isinstance(k, ScaledQArray) else k.dtype))
                return y.astype(dt)
        return next_fun(*args_, **kwargs_)

    float_vars = dict(variables)
    float_vars["params"] = dequantize_params(qparams)
    with nn.intercept_methods(interceptor):
        return module.apply(float_vars, *args, method=method, **kwargs)


def capture_dense_inputs(module: nn.Module, variables: Mapping[str, Any], *args, method: Any = None,
                         **kwargs) -> dict[str, jax.Array]:
    """Inputs ``[N, in]`` of every ``nn.Dense`` call during ``module.apply(variables, *args)``.

    Keys are the dotted module paths used by :func:`quantize_params` (repeated calls of one
    layer are concatenated along the token axis). Run it eagerly (not under ``jit``).

    Example:
        >>> import flax.linen as nn
        >>> mlp = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
        >>> v = mlp.init(jax.random.key(0), jnp.ones((1, 16)))
        >>> {k: x.shape for k, x in capture_dense_inputs(mlp, v, jnp.ones((5, 16))).items()}
        {'layers_0': (5, 16), 'layers_2': (5, 32)}
    """
    if not _params_root(variables):
        raise ValueError("`variables` must be a dict with a 'params' collection (as from module.init).")
    seen: dict[str, list] = {}

    def interceptor(next_fun, args_, kwargs_, context):
        mod = context.module
        if isinstance(mod, nn.Dense) and context.method_name == "__call__" and mod.scope is not None:
            x = args_[0]
            seen.setdefault(".".join(mod.scope.path), []).append(jnp.reshape(x, (-1, x.shape[-1])))
        return next_fun(*args_, **kwargs_)

    with nn.intercept_methods(interceptor):
        module.apply(dequantize_params(variables) if any(_is_q(l) for _, l in _walk(variables)) else variables,
                     *args, method=method, **kwargs)
    return {k: jnp.concatenate(v, axis=0) for k, v in seen.items()}
