"""Bad-input fuzzing engine for the public API (used by tests/test_api_fuzz.py).

A *factory* (tests/_fuzz_factories.py) gives one valid call of a public callable as a
mapping ``argument name -> wrapper``; the wrapper says what kind of argument it is, and the
engine derives the bad-input *probes* from it, mutating one argument at a time:

* :class:`Arr`  floating data array: wrong rank, empty, NaN, inf, int / bool dtype, Python
  list, a size change on the axes that must match another argument (``mismatch``);
* :class:`Idx`  integer index array with an upper bound ``n``: out of range, negative, float;
* :class:`Hyp`  hyper-parameter of a given kind (``pos``, ``nonneg``, ``prob``, ``count``,
  ``count0``, ``choice``, ``range``): zero / negative / NaN / > 1 / unknown enum string ...;
* :class:`Key`  PRNG key: an int, a float array;
* :class:`Fix`  anything else (only the ``None`` probe).

Every argument also gets ``None`` (unless ``None`` is its default) and every call an unknown
keyword option. Each probe is classified:

* ``clear``    ValueError / TypeError (or a run-time ``equinox.error_if`` error) whose
  message names the argument;
* ``equiv``    an int / bool / list version of valid data accepted and giving the same result
  as the float array with the same values (legitimate promotion, counted as good);
* ``nan_out``  NaN / inf in the data propagated to the output (counted as good);
* ``obscure``  any other exception type, or a message that does not name the argument;
* ``silent``   accepted and returned (or a finite result for NaN data).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CLEAR, EQUIV, NAN_OUT, OBSCURE, SILENT = "clear", "equiv", "nan_out", "obscure", "silent"
GOOD = (CLEAR, EQUIV, NAN_OUT)
STATUSES = (CLEAR, EQUIV, NAN_OUT, OBSCURE, SILENT)

_NO_DEFAULT = object()


# --------------------------------------------------------------------------- wrappers
@dataclasses.dataclass
class Arr:
    """Floating data array. ``anyrank``: any rank is valid (no rank probes). ``mismatch``:
    axes whose size must agree with another argument. ``empty``: an empty leading axis must be
    refused. ``nan``: NaN / inf must propagate or raise. ``dtypes``: int/bool/list probes."""

    v: Any
    anyrank: bool = False
    mismatch: tuple = ()
    empty: bool = True
    nan: bool = True
    dtypes: bool = True
    rank: bool = True


@dataclasses.dataclass
class Idx:
    """Integer index array whose entries must lie in ``[0, n)`` (``ignore`` allowed too)."""

    v: Any
    n: int
    ignore: Any = None
    negative: bool = True


@dataclasses.dataclass
class Hyp:
    """Hyper-parameter. kinds: pos (>0), nonneg (>=0), prob ([0,1]), open01 ((0,1)),
    count (int >= 1), count0 (int >= 0), choice (enum string), range (lo/hi given), bool."""

    v: Any
    kind: str
    lo: Any = None
    hi: Any = None


@dataclasses.dataclass
class Key:
    v: Any


@dataclasses.dataclass
class Fix:
    v: Any
    none: bool = True


@dataclasses.dataclass
class Fresh:
    """A value rebuilt for every call (a model that a call may modify in place)."""

    make: Callable
    none: bool = True


def unwrap(w: Any) -> Any:
    if isinstance(w, Fresh):
        return w.make()
    return w.v if isinstance(w, (Arr, Idx, Hyp, Key, Fix)) else w


@dataclasses.dataclass
class Probe:
    label: str
    arg: str
    value: Any
    expect: str  # "error", "error_or_nan", "error_or_equiv"
    ref_value: Any = None  # for error_or_equiv: the float version of the same values
    names: tuple = ()


@dataclasses.dataclass
class Case:
    """A valid call: ``args`` (name -> wrapper; ``"*"`` holds a tuple of extra positionals),
    ``post`` (run on the output, e.g. init/update of a returned transformation)."""

    args: dict
    post: Callable | None = None
    related: tuple = ()  # argument names a mismatch message may name instead
    unknown_kwarg: bool = True


# --------------------------------------------------------------------------- probes
def _copy_np(x):
    return np.array(x, copy=True)


def _like(orig, new):
    return jnp.asarray(new) if isinstance(orig, jax.Array) else new


def _set_first(x, val):
    a = _copy_np(x)
    if a.size == 0:
        return a
    dt = a.dtype
    f = a.astype(np.float32)
    f.flat[0] = val
    return f.astype(dt)


def _shrink_axis(x, axis):
    a = np.asarray(x)
    n = a.shape[axis]
    if n > 1:
        return np.take(a, np.arange(n - 1), axis=axis)
    return np.concatenate([a, a], axis=axis)


def array_probes(name: str, w: Arr, related: tuple) -> list[Probe]:
    x = w.v
    a = np.asarray(x)
    out = []
    if w.rank and not w.anyrank:
        out.append(Probe("rank+1", name, _like(x, a[None]), "error"))
        if a.ndim >= 1:
            out.append(Probe("rank-1", name, _like(x, a[0]), "error"))
    for ax in w.mismatch:
        out.append(Probe(f"mismatch(axis={ax})", name, _like(x, _shrink_axis(a, ax)), "error",
                         names=related))
    if w.empty and a.ndim >= 1:
        out.append(Probe("empty", name, _like(x, a[:0]), "error"))
    if w.nan:
        out.append(Probe("nan", name, _like(x, _set_first(a, np.nan)), "error_or_nan"))
        out.append(Probe("inf", name, _like(x, _set_first(a, np.inf)), "error_or_nan"))
    if w.dtypes:
        r = np.round(a.astype(np.float32))
        out.append(Probe("int dtype", name, _like(x, r.astype(np.int32)), "error_or_equiv",
                         ref_value=_like(x, r.astype(a.dtype))))
        b = a.astype(np.float32) > 0
        out.append(Probe("bool dtype", name, _like(x, b), "error_or_equiv",
                         ref_value=_like(x, b.astype(a.dtype))))
        out.append(Probe("list", name, a.tolist(), "error_or_equiv", ref_value=x))
    return out


def index_probes(name: str, w: Idx) -> list[Probe]:
    a = np.asarray(w.v)
    out = []
    big = _copy_np(a)
    big.flat[0] = w.n
    out.append(Probe("index >= n", name, _like(w.v, big), "error"))
    if w.negative:
        neg = _copy_np(a)
        neg.flat[0] = -1 if w.ignore != -1 else -2
        out.append(Probe("index < 0", name, _like(w.v, neg), "error"))
    out.append(Probe("float indices", name, _like(w.v, a.astype(np.float32) + 0.5), "error"))
    return out


def hyper_probes(name: str, w: Hyp) -> list[Probe]:
    k = w.kind
    vals: list[tuple[str, Any]] = []
    if k == "pos":
        vals = [("zero", 0.0), ("negative", -1.0), ("nan", float("nan"))]
    elif k == "nonneg":
        vals = [("negative", -1.0), ("nan", float("nan"))]
    elif k == "prob":
        vals = [("> 1", 1.5), ("< 0", -0.5), ("nan", float("nan"))]
    elif k == "open01":
        vals = [("> 1", 1.5), ("< 0", -0.5), ("nan", float("nan"))]
    elif k == "count":
        vals = [("zero", 0), ("negative", -1), ("non-integer", 2.5)]
    elif k == "count0":
        vals = [("negative", -1), ("non-integer", 2.5)]
    elif k == "choice":
        vals = [("unknown option", "no-such-option")]
    elif k == "range":
        if w.lo is not None:
            vals.append(("below range", w.lo))
        if w.hi is not None:
            vals.append(("above range", w.hi))
    elif k == "bool":
        vals = [("non-bool", "yes")]
    else:
        raise ValueError(f"unknown Hyp kind {k!r}")
    return [Probe(f"{name}={lab}", name, v, "error") for lab, v in vals]


def key_probes(name: str, w: Key) -> list[Probe]:
    return [Probe("int key", name, 3, "error"),
            Probe("float array key", name, jnp.zeros((2,), jnp.float32), "error")]


def make_probes(fn: Callable, case: Case) -> list[Probe]:
    try:
        sig = inspect.signature(fn)
        defaults = {p.name: p.default for p in sig.parameters.values()}
    except (TypeError, ValueError):
        defaults = {}
    probes: list[Probe] = []
    arrays = tuple(n for n, w in case.args.items() if isinstance(w, (Arr, Idx)))
    for name, w in case.args.items():
        if name == "*":
            continue
        if isinstance(w, Arr):
            probes += array_probes(name, w, tuple(arrays) + case.related)
        elif isinstance(w, Idx):
            probes += index_probes(name, w)
        elif isinstance(w, Hyp):
            probes += hyper_probes(name, w)
        elif isinstance(w, Key):
            probes += key_probes(name, w)
        none_ok = defaults.get(name, _NO_DEFAULT) is None or (not isinstance(w, Fresh) and unwrap(w) is None)
        if isinstance(w, (Fix, Fresh)) and not w.none:
            none_ok = True
        if not none_ok:
            probes.append(Probe("None", name, None, "error"))
    if case.unknown_kwarg:
        probes.append(Probe("unknown kwarg", "no_such_option", 1, "error"))
    for p in probes:
        if not p.names:
            p.names = (p.arg,)
        else:
            p.names = tuple(dict.fromkeys((p.arg,) + tuple(p.names)))
    return probes


# --------------------------------------------------------------------------- running
def call(fn: Callable, case: Case, override: dict | None = None) -> Any:
    kw = {k: unwrap(w) for k, w in case.args.items() if k != "*"}
    if override:
        kw.update(override)
    extra = tuple(unwrap(w) for w in case.args.get("*", ()))
    out = fn(*extra, **kw) if extra else fn(**kw)
    if case.post is not None:
        out = case.post(out)
    return jax.block_until_ready(out) if _is_arrays(out) else out


def _is_arrays(out):
    try:
        leaves = jax.tree.leaves(out)
    except Exception:
        return False
    return all(isinstance(l, (jax.Array, np.ndarray, np.generic, int, float, bool)) for l in leaves)


def _names(msg: str, names) -> bool:
    for n in names:
        if len(n) <= 2:
            pat = rf"[`'\"]{re.escape(n)}[`'\"\[.]"
        else:
            pat = rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])"
        if re.search(pat, msg):
            return True
    return False


def classify_error(e: BaseException, names) -> str:
    msg = str(e)
    tname = type(e).__name__
    runtime_check = tname in ("JaxRuntimeError", "XlaRuntimeError", "EquinoxRuntimeError",
                              "_EquinoxRuntimeError") and "EquinoxRuntimeError" in msg + tname
    lp = tname == "LPError"
    if isinstance(e, (ValueError, TypeError)) or runtime_check or lp:
        if runtime_check:
            m = re.search(r"EquinoxRuntimeError: (.*)", msg)
            msg = m.group(1) if m else msg
        return CLEAR if _names(msg, names) else OBSCURE
    return OBSCURE


def _leaves(out):
    try:
        return jax.tree.leaves(out)
    except Exception:
        return [out]


def has_nonfinite(out) -> bool:
    for l in _leaves(out):
        try:
            a = np.asarray(l)
        except Exception:
            continue
        if a.dtype == object:
            continue
        try:
            if jnp.issubdtype(a.dtype, jnp.inexact) and not np.all(np.isfinite(a.astype(np.float64))):
                return True
        except TypeError:
            continue
    return False


def same_result(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        try:
            xa, ya = np.asarray(x), np.asarray(y)
        except Exception:
            if x != y:
                return False
            continue
        if xa.dtype == object or ya.dtype == object:
            if repr(x) != repr(y):
                return False
            continue
        if xa.shape != ya.shape:
            return False
        try:
            if not np.allclose(xa.astype(np.float64), ya.astype(np.float64), rtol=1e-4, atol=1e-5,
                               equal_nan=True):
                return False
        except (TypeError, ValueError):
            if not np.array_equal(xa, ya):
                return False
    return True


@dataclasses.dataclass
class Result:
    func: str
    family: str
    probe: str
    arg: str
    status: str
    detail: str


def run_probe(fn, case: Case, p: Probe) -> tuple[str, str]:
    try:
        out = call(fn, case, {p.arg: p.value})
    except Exception as e:  # noqa: BLE001 - classification is the point
        st = classify_error(e, p.names)
        return st, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if p.expect == "error_or_nan" and has_nonfinite(out):
        return NAN_OUT, "non-finite output"
    if p.expect == "error_or_equiv":
        try:
            ref = call(fn, case, {p.arg: p.ref_value})
        except Exception as e:  # noqa: BLE001
            return SILENT, f"accepted, while the float version raised {type(e).__name__}"
        if same_result(out, ref):
            return EQUIV, "same result as the float array"
        return SILENT, "accepted with a different result than the float array"
    return SILENT, "accepted"
