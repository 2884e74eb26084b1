"""Where a model's weights meet its activations: layer-kind-agnostic weight sites.

Every model-level transform (quantize by rules, QAT, SparseGPT/Wanda/OSSCAR, structured masks,
physical shrinking, calibration capture) needs the same three facts about a weight ``W``:
which of its axes are **contracted** with the layer input (``K``), which are **output**
features (``N``) and which are **batch** axes shared with the input (one matrix per index,
e.g. per expert), plus the layer inputs ``X`` laid out so that ``y = X @ W.reshape(K, N)``.
A :class:`WeightSite` holds those facts; :meth:`WeightSite.matrix` /
:meth:`WeightSite.unmatrix` move between the weight's own layout and ``[*batch, K, N]``, so
the matrix algorithms (GPTQ, SparseGPT, OSSCAR, ...) never see the layer kind.

Sites come from two sources:

* **statically**, from the layer classes whose semantics are known without running the model:
  ``nnx.Linear``, ``nnx.LinearGeneral`` (no batch axis), ``nnx.Einsum``, and any NNX module
  written in the "einsum layer" style of real model code (a string attribute holding a
  two-operand einsum equation and exactly one parameter of matching rank: the ``Einsum``
  modules of the Llama3/Qwen3/Gemma models in ``google-tunix``, Gemma's and MaxText's
  layers). :func:`register_layer_kind` adds a user-defined class;
* **by tracing** (as qwix intercepts ``dot_general`` by module path, but on the jaxpr, so no
  function is patched): :func:`trace_weight_uses` runs the model once under
  ``jax.make_jaxpr`` with every ``nnx.Param`` an explicit input and follows each parameter
  through dtype casts, transposes, sharding constraints and nested ``jit`` calls to the
  ``dot_general`` that consumes it. That recovers contracted/output/batch axes for any layer,
  user-defined ones included, and :func:`capture_inputs` evaluates the same jaxpr to record
  the activation operand of each such ``dot_general`` (the calibration data of GPTQ & co.).

References:
    google/qwix (rule-by-module-path interception of dot_general/einsum).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "WeightSite",
    "WeightUse",
    "einsum_site",
    "static_sites",
    "register_layer_kind",
    "trace_weight_uses",
    "find_weight_sites",
    "capture_inputs",
    "param_paths",
    "keypath_str",
    "ParamsFn",
    "path_str",
    "get_by_path",
]


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightSite:
    """A weight and how a layer contracts it with its input.

    Attributes:
        path: dotted path of the module that owns the weight (``""`` for the root), e.g.
            ``"layers.0.attn.q_einsum"``.
        name: attribute name of the weight in that module (``"kernel"``, ``"w"``).
        kind: how the site was found: ``"nnx.Linear"``, ``"nnx.LinearGeneral"``,
            ``"nnx.Einsum"``, ``"einsum"`` (einsum-style user module), ``"traced"``
            (found by :func:`trace_weight_uses`), ``"linen.Dense"`` ..., or ``"param"``
            (a plain parameter tree entry described by a rule).
        shape: the weight's shape.
        contract: weight axes contracted with the input, in the order the flattened ``K``
            uses them (ascending).
        out: weight axes that are output features (ascending).
        batch: weight axes shared with the input and the output (one matrix per index).
        equation: for einsum layers, the einsum equation with the weight as second operand
            (``"...d,dnh->...nh"``-style), used to run quantized einsums; None otherwise.
    """

    path: str
    name: str
    kind: str
    shape: tuple[int, ...]
    contract: tuple[int, ...]
    out: tuple[int, ...]
    batch: tuple[int, ...] = ()
    equation: str | None = None

    def __post_init__(self):
        axes = sorted(self.contract + self.out + self.batch)
        if axes != list(range(len(self.shape))):
            raise ValueError(
                f"weight site {self.full_path!r}: contract {self.contract}, out {self.out} and batch "
                f"{self.batch} must partition the axes of a weight of shape {self.shape}."
            )
        if not self.contract:
            raise ValueError(f"weight site {self.full_path!r} has no contracted axis (shape {self.shape}).")

    @property
    def full_path(self) -> str:
        """``"<module path>.<name>"`` (the parameter's own path)."""
        return f"{self.path}.{self.name}" if self.path else self.name

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[a] for a in self.contract)

    @property
    def out_features(self) -> int:
        return math.prod(self.shape[a] for a in self.out)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.batch)

    @property
    def is_matrix(self) -> bool:
        """True when the weight already is ``[K, N]`` (``nnx.Linear`` layout)."""
        return self.contract == (0,) and self.out == (1,) and not self.batch

    def matrix(self, w: jax.Array) -> jax.Array:
        """``w`` as ``[*batch, K, N]`` (batch axes first, then contracted, then output axes)."""
        if tuple(w.shape) != self.shape:
            raise ValueError(f"weight of {self.full_path!r} must have shape {self.shape}, got {tuple(w.shape)}.")
        perm = self.batch + self.contract + self.out
        return jnp.transpose(w, perm).reshape(*self.batch_shape, self.in_features, self.out_features)

    def unmatrix(self, m: jax.Array) -> jax.Array:
        """Inverse of :meth:`matrix`: ``[*batch, K, N]`` back to the weight's own layout."""
        want = (*self.batch_shape, self.in_features, self.out_features)
        if tuple(m.shape) != want:
            raise ValueError(f"matrix of {self.full_path!r} must have shape {want}, got {tuple(m.shape)}.")
        perm = self.batch + self.contract + self.out
        full = m.reshape(tuple(self.shape[a] for a in perm))
        return jnp.transpose(full, np.argsort(perm))

    def with_shape(self, shape: tuple[int, ...]) -> "WeightSite":
        """The same site for a resized weight (after pruning/shrinking)."""
        return dataclasses.replace(self, shape=tuple(int(s) for s in shape))


def path_str(path: Iterable[Any]) -> str:
    """Dotted string of an NNX/pytree path (``("layers", 0, "mlp")`` -> ``"layers.0.mlp"``)."""
    return ".".join(str(p) for p in path)


def get_by_path(root: Any, path: str) -> Any:
    """The attribute/item of ``root`` at a dotted ``path`` (integers index sequences)."""
    obj = root
    if not path:
        return obj
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj[part] if part in obj else obj[int(part)]
        elif part.lstrip("-").isdigit() and not hasattr(obj, part):
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------------
# Einsum equations
# --------------------------------------------------------------------------------------------
_EINSUM_RE = re.compile(r"^\s*([A-Za-z.]*)\s*,\s*([A-Za-z]+)\s*->\s*([A-Za-z.]*)\s*$")


def einsum_site(equation: str, shape: tuple[int, ...], *, path: str = "", name: str = "w",
                kind: str = "einsum") -> WeightSite:
    """The :class:`WeightSite` of the second operand of a two-operand einsum ``x, w -> y``.

    A weight letter that appears in the input but not the output is contracted; in the output
    but not the input it is an output feature; in both it is a batch axis. A weight letter in
    neither (summed over the weight alone) is not a linear layer and is refused.

    Example:
        >>> s = einsum_site("BTNH,NHD->BTD", (4, 8, 32))
        >>> s.contract, s.out
        ((0, 1), (2,))
    """
    m = _EINSUM_RE.match(equation.replace(" ", ""))
    if m is None:
        raise ValueError(f"einsum equation {equation!r} of {path or 'layer'!r} must be 'x,w->y' with one weight operand.")
    lhs, rhs, out = m.groups()
    if len(rhs) != len(shape):
        raise ValueError(
            f"einsum equation {equation!r} of {path or 'layer'!r} names {len(rhs)} weight axes, "
            f"but the weight has shape {tuple(shape)}."
        )
    if len(set(rhs)) != len(rhs):
        raise ValueError(f"einsum equation {equation!r} repeats a weight axis letter (a diagonal is not a layer).")
    contract, outs, batch = [], [], []
    for i, c in enumerate(rhs):
        in_x, in_y = c in lhs, c in out
        if in_x and not in_y:
            contract.append(i)
        elif in_y and not in_x:
            outs.append(i)
        elif in_x and in_y:
            batch.append(i)
        else:
            raise ValueError(
                f"einsum equation {equation!r}: weight axis {c!r} appears in neither input nor output "
                "(it is summed over the weight alone), which is not a linear layer."
            )
    return WeightSite(path=path, name=name, kind=kind, shape=tuple(int(s) for s in shape), contract=tuple(contract),
                      out=tuple(outs), batch=tuple(batch), equation=equation.replace(" ", ""))


# --------------------------------------------------------------------------------------------
# Static recognition of layer classes
# --------------------------------------------------------------------------------------------
_REGISTRY: list[tuple[type, Callable[[Any, str], "WeightSite | None"]]] = []


def register_layer_kind(cls: type, describe: Callable[[Any, str], "WeightSite | None"]) -> None:
    """Teach every model-level transform a user-defined layer class.

    Args:
        cls: the layer class (instances and subclasses match).
        describe: ``describe(module, path) -> WeightSite`` (or None to leave a particular
            instance alone), e.g. ``lambda m, p: einsum_site(m.eq, m.w.shape, path=p, name="w")``.
    """
    if not isinstance(cls, type):
        raise ValueError(f"`cls` must be a class, got {cls!r}.")
    if not callable(describe):
        raise ValueError("`describe` must be a callable (module, path) -> WeightSite | None.")
    _REGISTRY.insert(0, (cls, describe))


def _param_value(v: Any):
    return v.get_value() if isinstance(v, nnx.Variable) else v


def _linear_site(m: nnx.Linear, path: str) -> WeightSite:
    return WeightSite(path=path, name="kernel", kind="nnx.Linear", shape=tuple(m.kernel.shape), contract=(0,), out=(1,))


def _linear_general_site(m: nnx.LinearGeneral, path: str) -> WeightSite:
    if m.batch_axis:
        raise ValueError(
            f"layer {path!r} (nnx.LinearGeneral) has batch_axis={dict(m.batch_axis)}: batched LinearGeneral "
            "kernels are not supported by the model-level transforms; describe it with register_layer_kind."
        )
    ni, no = len(m.in_features), len(m.out_features)
    return WeightSite(path=path, name="kernel", kind="nnx.LinearGeneral", shape=tuple(m.kernel.shape),
                      contract=tuple(range(ni)), out=tuple(range(ni, ni + no)))


def _einsum_module_site(m: Any, path: str) -> WeightSite | None:
    """An einsum-style module: one string attribute that is an equation, one matching param."""
    eqs = [(k, v) for k, v in vars(m).items() if isinstance(v, str) and _EINSUM_RE.match(v.replace(" ", ""))]
    if len(eqs) != 1:
        return None
    eq = eqs[0][1]
    rhs = _EINSUM_RE.match(eq.replace(" ", "")).group(2)
    params = [(k, v) for k, v in vars(m).items() if isinstance(v, nnx.Param) and np.ndim(_param_value(v)) == len(rhs)]
    if len(params) != 1:
        return None
    name, p = params[0]
    kind = "nnx.Einsum" if isinstance(m, nnx.Einsum) else "einsum"
    return einsum_site(eq, tuple(np.shape(_param_value(p))), path=path, name=name, kind=kind)


def _describe(m: Any, path: str) -> WeightSite | None:
    for cls, fn in _REGISTRY:
        if isinstance(m, cls):
            return fn(m, path)
    if isinstance(m, nnx.Linear):
        return _linear_site(m, path)
    if isinstance(m, nnx.LinearGeneral):
        return _linear_general_site(m, path)
    if isinstance(m, nnx.Module):
        return _einsum_module_site(m, path)
    return None


def static_sites(model: nnx.Module, *, skip: tuple[type, ...] = ()) -> dict[str, WeightSite]:
    """The weight sites of ``model``'s layers whose semantics are known from their class.

    Recognized: ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``, einsum-style modules
    (see the module docstring) and classes added with :func:`register_layer_kind`.

    Returns:
        ``{module path: WeightSite}`` in module order.
    """
    out = {}
    if isinstance(model, ParamsFn):
        return out  # a parameter tree has no layer classes: its sites come from tracing
    for p, m in nnx.iter_modules(model):
        if skip and isinstance(m, skip):
            continue
        s = _describe(m, path_str(p))
        if s is not None:
            out[s.path] = s
    return out


# --------------------------------------------------------------------------------------------
# Tracing: which dot_general consumes which parameter
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightUse:
    """One ``dot_general`` of a traced forward pass whose operand is a parameter.

    ``contract``/``batch`` are the parameter's own axes (after undoing transposes), ``out``
    the remaining ones; ``eqn_id`` identifies the equation for :func:`capture_inputs`.
    """

    param: str
    shape: tuple[int, ...]
    contract: tuple[int, ...]
    batch: tuple[int, ...]
    out: tuple[int, ...]
    eqn_id: int


_PASS_THROUGH = {"convert_element_type", "copy", "copy_p", "sharding_constraint", "reduce_precision",
                 "optimization_barrier", "mesh_cast", "reshard", "device_put"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr"}


def _sub_jaxpr(eqn):
    for k in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(k)
        if j is not None:
            return j
    return None


def normalize_example_inputs(example_inputs) -> tuple[tuple, dict] | None:
    """``example_inputs`` as ``(args, kwargs)``: a mapping is keyword arguments, a tuple/list the
    positional arguments, anything else one positional argument; None stays None."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def keypath_str(kp) -> str:
    """Dotted string of a ``jax.tree_util`` key path (Variable ``value`` keys dropped)."""
    parts = []
    for k in kp:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name in ("value", "raw_value", "_raw_value"):
                continue
            parts.append(k.name)
        else:
            parts.append(str(k))
    return ".".join(parts)


def param_paths(model: nnx.Module):
    """``(graphdef, param_state, rest_state, [param path strings], leaves, treedef)`` of a model."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [keypath_str(kp) for kp, _ in flat]
    return graphdef, params, rest, paths, [leaf for _, leaf in flat], treedef


@dataclasses.dataclass(frozen=True)
class ParamsFn:
    """A model given as a pure function of a parameter pytree: ``fn(params, *inputs, **kw)``.

    Lets :func:`find_weight_sites`, :func:`trace_weight_uses` and :func:`capture_inputs` work
    on models that are not NNX modules: a Linen module (``ParamsFn(lambda p, x:
    module.apply({"params": p}, x), variables["params"])``; ``nn.Dense``, ``nn.DenseGeneral``
    and ``nn.Einsum`` all reach a ``dot_general``) or a plain parameter tree with a forward
    function. Every array leaf with >= 2 dimensions is a candidate weight; site paths are the
    dotted key paths of the parent (``"Dense_0"``) and the leaf key is the site's ``name``
    (``"kernel"``).
    """

    fn: Callable[..., Any]
    params: Any


def _forward_fn(graphdef, rest, treedef, method, args, kwargs):
    def f(leaves):
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        m = nnx.merge(graphdef, params, rest)
        fn = m if method is None else getattr(m, method)
        return fn(*args, **kwargs)
    return f


class _Tracer:
    """Walks a closed jaxpr, tracking which variables are (transposed) views of parameters."""

    def __init__(self, names):
        self.names = names
        self.uses: list[WeightUse] = []
        self.other: dict[int, set] = {}  # param index -> primitives consuming it otherwise
        self._next = 0
        self.eqn_ids: dict[int, int] = {}  # id(eqn) -> eqn id
        self.perms: dict[tuple[int, int], tuple[int, ...]] = {}  # (eqn id, operand) -> param axis of each axis
        self._keep = []  # keep traced equations alive so their ids stay unique

    def eqn_id(self, eqn) -> int:
        k = id(eqn)
        if k not in self.eqn_ids:
            self._keep.append(eqn)
            self.eqn_ids[k] = self._next
            self._next += 1
        return self.eqn_ids[k]

    def walk(self, jaxpr, prov):
        """prov: {var: (param index, perm)} where var axis i is the param's axis perm[i]."""
        from jax.extend.core import Literal

        def get(v):
            return None if isinstance(v, Literal) else prov.get(v)

        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [get(v) for v in eqn.invars]
            if not any(p is not None for p in ins):
                continue
            eid = self.eqn_id(eqn)
            if name in _PASS_THROUGH and len(eqn.invars) >= 1 and ins[0] is not None:
                for o in eqn.outvars:
                    prov[o] = ins[0]
                continue
            if name == "transpose" and ins[0] is not None:
                idx, perm = ins[0]
                prov[eqn.outvars[0]] = (idx, tuple(perm[a] for a in eqn.params["permutation"]))
                continue
            if name == "dot_general":
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                for side, (c, b) in enumerate(((lc, lb), (rc, rb))):
                    p = ins[side]
                    if p is None:
                        continue
                    if ins[1 - side] is not None:  # param x param: not a layer
                        self.other.setdefault(p[0], set()).add("dot_general(param, param)")
                        continue
                    idx, perm = p
                    self.perms[(eid, side)] = perm
                    con = tuple(sorted(perm[a] for a in c))
                    bat = tuple(sorted(perm[a] for a in b))
                    outs = tuple(a for a in range(len(perm)) if a not in con and a not in bat)
                    self.uses.append(WeightUse(self.names[idx], tuple(int(s) for s in eqn.invars[side].aval.shape),
                                               con, bat, outs, eid))
                    # shape above is the permuted view; store the param's own shape instead
                    u = self.uses[-1]
                    own = [0] * len(perm)
                    for i, a in enumerate(perm):
                        own[a] = u.shape[i]
                    self.uses[-1] = dataclasses.replace(u, shape=tuple(own))
                continue
            sub = _sub_jaxpr(eqn) if name in _CALLS else None
            if sub is not None:
                inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
                # custom_jvp/vjp calls may have leading consts not in invars; align from the end
                off = len(inner.invars) - len(eqn.invars)
                if off >= 0:
                    sub_prov = {}
                    for v, p in zip(inner.invars[off:], ins):
                        if p is not None:
                            sub_prov[v] = p
                    self.walk(inner, sub_prov)
                    continue
            for p in ins:
                if p is not None:
                    self.other.setdefault(p[0], set()).add(name)


def _trace(model, args, kwargs, method):
    if isinstance(model, ParamsFn):
        flat, treedef = jax.tree_util.tree_flatten_with_path(model.params)
        names, leaves = [keypath_str(kp) for kp, _ in flat], [v for _, v in flat]

        def f(lv):
            return model.fn(jax.tree_util.tree_unflatten(treedef, lv), *args, **kwargs)
    else:
        graphdef, params, rest, names, leaves, treedef = param_paths(model)
        f = _forward_fn(graphdef, rest, treedef, method, args, kwargs)
    closed = jax.make_jaxpr(f)(leaves)
    t = _Tracer(names)
    jaxpr = closed.jaxpr
    prov = {}
    for i, v in enumerate(jaxpr.invars):
        if np.ndim(leaves[i]) >= 2:
            prov[v] = (i, tuple(range(np.ndim(leaves[i]))))
    t.walk(jaxpr, prov)
    return closed, t, names, leaves, f


def trace_weight_uses(model: nnx.Module, *args, method: str | None = None, **kwargs):
    """Every ``dot_general`` of ``model(*args, **kwargs)`` that consumes a >= 2-D ``nnx.Param``.

    Args:
        model: a Flax NNX module (not modified).
        *args, **kwargs: example inputs (only shapes and dtypes matter; nothing is computed).
        method: name of the model method to trace instead of ``__call__``.

    Returns:
        ``(uses, other)``: a list of :class:`WeightUse` and ``{param path: {primitive names}}``
        for parameters that are also consumed by something other than a matmul (an embedding
        gather, a norm scale, ...).
    """
    _, t, names, _, _ = _trace(model, args, kwargs, method)
    return t.uses, {names[i]: s for i, s in t.other.items()}


def find_weight_sites(model: nnx.Module, *args, method: str | None = None, **kwargs) -> dict[str, WeightSite]:
    """All weight sites of ``model``: static ones, plus traced ones when example inputs are given.

    Without example inputs only :func:`static_sites` are returned. With them the model is traced
    once (:func:`trace_weight_uses`); a parameter consumed by exactly one kind of contraction
    (same axes every time it is used) in a module that is not statically recognized becomes a
    ``"traced"`` site. Statically recognized sites are checked against the trace and a
    mismatch raises (it would mean the class is used in a way its description does not cover).

    Returns:
        ``{module path: WeightSite}`` (a module with two traced weights gets the key
        ``"<module path>"`` for the first and must be disambiguated by the caller through
        :attr:`WeightSite.full_path`; keys are then full parameter paths).
    """
    sites = static_sites(model)
    if not args and not kwargs:
        return sites
    uses, other = trace_weight_uses(model, *args, method=method, **kwargs)
    by_param: dict[str, list[WeightUse]] = {}
    for u in uses:
        by_param.setdefault(u.param, []).append(u)
    known = {s.full_path: s for s in sites.values()}
    for pname, us in by_param.items():
        shapes = {(u.contract, u.batch, u.out) for u in us}
        if pname in known:
            s = known[pname]
            if (s.contract, s.batch, s.out) not in shapes or len(shapes) != 1:
                raise ValueError(
                    f"weight {pname!r} ({s.kind}) is contracted on axes {sorted(shapes)} in the traced forward pass, "
                    f"but its layer class says contract={s.contract}, batch={s.batch}; describe the layer with "
                    "register_layer_kind."
                )
            continue
        if len(shapes) != 1:
            continue  # used with different axes (e.g. a tied table): not a single layer
        con, bat, out = next(iter(shapes))
        mpath, _, name = pname.rpartition(".")
        if not con:
            continue
        site = WeightSite(path=mpath, name=name, kind="traced", shape=us[0].shape, contract=con, out=out, batch=bat)
        key = mpath if mpath not in sites else pname
        sites[key] = site
    return sites


# --------------------------------------------------------------------------------------------
# Capture of layer inputs
# --------------------------------------------------------------------------------------------
def _activation_matrix(x, dims, w_contract_in_dot_order, w_batch_in_dot_order, site_contract, site_batch):
    """Lay out the activation operand of a dot as ``[*batch, N, K]`` with K in the site's order."""
    (xc, xb) = dims
    # order x's contracted axes like the site's (ascending weight axes)
    order_c = [xc[w_contract_in_dot_order.index(a)] for a in site_contract]
    order_b = [xb[w_batch_in_dot_order.index(a)] for a in site_batch]
    rest = [a for a in range(x.ndim) if a not in xc and a not in xb]
    xt = jnp.transpose(x, order_b + rest + order_c)
    bshape = tuple(x.shape[a] for a in order_b)
    k = math.prod(x.shape[a] for a in order_c)
    return xt.reshape(*bshape, -1, k)


def capture_inputs(model: nnx.Module, *args, sites: Mapping[str, WeightSite] | Iterable[WeightSite] | None = None,
                   method: str | None = None, **kwargs) -> dict[str, jax.Array]:
    """Inputs of every weight site on one forward pass, as ``{site path: X [*batch, N, K]}``.

    ``X`` is laid out so that ``X @ site.matrix(W)`` is the layer's (pre-bias) output:
    ``K`` runs over the weight's contracted axes in ascending order, ``N`` over every other
    input position (tokens). A weight used several times (a layer called twice) gets the rows
    of every call concatenated. The forward pass runs eagerly by interpreting the model's
    jaxpr, so it works for any layer, user-defined ones included; higher-order primitives
    (``scan``, ``while``, ``cond``) are run as a whole, so weights used only inside them are
    not captured and raise.

    Args:
        model: a Flax NNX module (not modified).
        *args, **kwargs: the calibration inputs of the model (e.g. token ids ``[B, T]``).
        sites: the sites to capture (default: :func:`find_weight_sites` with these inputs).
        method: model method to run instead of ``__call__``.

    Returns:
        ``{path: X}``, keyed like ``sites`` (module path).
    """
    if sites is None:
        sites = find_weight_sites(model, *args, method=method, **kwargs)
    items = list(sites.items()) if isinstance(sites, Mapping) else [(s.path, s) for s in sites]
    closed, t, names, leaves, _ = _trace(model, args, kwargs, method)
    want: dict[int, list[tuple[str, WeightSite, WeightUse]]] = {}
    by_param: dict[str, list[WeightUse]] = {}
    for u in t.uses:
        by_param.setdefault(u.param, []).append(u)
    for key, s in items:
        us = by_param.get(s.full_path)
        if not us:
            raise ValueError(
                f"no matmul consumes the weight {s.full_path!r} in the traced forward pass (it may run inside "
                "a scan/while loop, or the inputs do not reach it); its inputs cannot be captured."
            )
        for u in us:
            want.setdefault(u.eqn_id, []).append((key, s, u))
    rec: dict[str, list[jax.Array]] = {k: [] for k, _ in items}

    from jax.extend.core import Literal

    def run(jaxpr, consts, invals):
        env = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, x in zip(jaxpr.invars, invals):
            env[v] = x
        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            eid = t.eqn_ids.get(id(eqn))
            if eid is not None and eid in want and eqn.primitive.name == "dot_general":
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                wside = 0 if (eid, 0) in t.perms else 1
                xside = 1 - wside
                perm = t.perms[(eid, wside)]
                wc, wb = (lc, lb) if wside == 0 else (rc, rb)
                xc, xb = (lc, lb) if xside == 0 else (rc, rb)
                for key, s, u in want[eid]:
                    rec[key].append(_activation_matrix(
                        vals[xside], (list(xc), list(xb)), [perm[a] for a in wc], [perm[a] for a in wb],
                        s.contract, s.batch))
            sub = _sub_jaxpr(eqn) if eqn.primitive.name in _CALLS else None
            if sub is not None and eqn.primitive.name in ("pjit", "jit", "closed_call", "core_call"):
                inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
                cs = sub.consts if hasattr(sub, "consts") else ()
                outs = run(inner, cs, vals)
            else:
                bp = eqn.primitive.get_bind_params(eqn.params)
                subfuns, bind_params = bp if isinstance(bp, tuple) else ((), bp)  # jax < 0.8 returned a pair
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*subfuns, *vals, **bind_params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    run(closed.jaxpr, closed.consts, leaves)
    out = {}
    for k, xs in rec.items():
        out[k] = xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=-2)
    return out
