"""Pruning schedules and :func:`sparsify`, an optax wrapper that prunes while training.

``sparsify(tx, schedule, scorer)`` returns an ``optax.GradientTransformationExtraArgs`` whose
state holds the current masks (a pytree shaped like the params, ``None`` for leaves that are
not pruned). At every step where ``schedule.update_at(count)`` is true the masks are recomputed
from the scores of the current params at sparsity ``schedule.sparsity_at(count)``; at every
step the gradients of pruned entries are zeroed before the inner transformation (so Adam /
momentum statistics do not build up there) and the emitted update of a pruned entry is
``-w`` so that ``optax.apply_updates`` leaves it at *exactly* zero (``w + (-w) == 0`` in IEEE
arithmetic), including the step where it is first pruned.

Schedules (:class:`PruningSchedule`):

* :func:`one_shot_schedule` ``(s, step)``: prune once to ``s`` at ``step``;
* :func:`periodic_schedule` ``(s, every, start, end)``: re-select the masks at constant ``s``
  every ``every`` steps (scores such as SNIP can then move weights in and out);
* :func:`cubic_schedule` ``(s_f, start, end, every, s_i)``: gradual pruning (Zhu & Gupta),

  .. math:: s_t = s_f + (s_i - s_f)\\,(1 - p_t)^3, \\quad p_t = \\mathrm{clip}((t - t_0) / (t_1 - t_0), 0, 1),

  which with ``s_i = 0`` is :math:`s_t = s_f (1 - (1 - p_t)^3)`;
* :func:`polynomial_schedule` ``(s_f, start, end, every, s_i, power)``: the same with any power
  :math:`p > 0` in place of 3 (Zhu & Gupta's general form; ``cubic_schedule`` is ``power=3``);
* :func:`constant_schedule` ``(s, start, end, every)``: constant sparsity from ``start``, masks
  selected once or every ``every`` steps.

References:
  jaxpruner (arXiv 2304.14082); Zhu & Gupta, "To prune, or not to prune" (arXiv 1710.01878).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxeff._core.validation import check_choice, check_key, check_number
from jaxeff.prune.masks import unstructured_mask
from jaxeff.prune.scores import default_prunable, magnitude_scores, random_scores, snip_scores

__all__ = [
    "PruningSchedule",
    "OneShotSchedule",
    "PeriodicSchedule",
    "CubicSchedule",
    "one_shot_schedule",
    "periodic_schedule",
    "cubic_schedule",
    "PolynomialSchedule",
    "ConstantSchedule",
    "polynomial_schedule",
    "constant_schedule",
    "SparsifyState",
    "sparsify",
]

PyTree = Any


def _is_none(x: Any) -> bool:
    return x is None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruningSchedule(abc.ABC):
    """When to (re)compute masks and at which sparsity. Both methods are jit-compatible."""

    @abc.abstractmethod
    def sparsity_at(self, step: jax.Array) -> jax.Array:
        """Target sparsity at optimizer step ``step``."""

    @abc.abstractmethod
    def update_at(self, step: jax.Array) -> jax.Array:
        """Whether masks are recomputed at step ``step`` (boolean)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShotSchedule(PruningSchedule):
    """Prune once, to ``sparsity``, at step ``step`` (0 = the first update)."""

    sparsity: float
    step: int = 0

    def __post_init__(self):
        check_number("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        _check_int("step", self.step, 0)

    def sparsity_at(self, step):
        return jnp.where(step >= self.step, jnp.float32(self.sparsity), jnp.float32(0.0))

    def update_at(self, step):
        return step == self.step


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeriodicSchedule(PruningSchedule):
    """Re-select masks at constant ``sparsity`` at steps ``start, start+every, ...`` (<= ``end``)."""

    sparsity: float
    every: int
    start: int = 0
    end: int | None = None

    def __post_init__(self):
        check_number("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        _check_int("every", self.every, 1)
        _check_int("start", self.start, 0)
        if self.end is not None:
            _check_int("end", self.end, self.start)

    def sparsity_at(self, step):
        return jnp.where(step >= self.start, jnp.float32(self.sparsity), jnp.float32(0.0))

    def update_at(self, step):
        ok = (step >= self.start) & ((step - self.start) % self.every == 0)
        if self.end is not None:
            ok = ok & (step <= self.end)
        return ok


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstantSchedule(PruningSchedule):
    """Constant target ``sparsity`` from step ``start`` on (0 before it).

    Masks are selected at ``start``; with ``every=None`` (default) they are then kept fixed
    (one-shot at ``start``), with an integer ``every`` they are re-selected at
    ``start, start + every, ...`` up to ``end`` (``None``: no end) -- the ``ConstantSparsity``
    schedule of TF Model Optimization (``begin_step``, ``end_step``, ``frequency``).
    """

    sparsity: float
    start: int = 0
    end: int | None = None
    every: int | None = None

    def __post_init__(self):
        _check_sparsity("sparsity", self.sparsity)
        _check_int("start", self.start, 0)
        if self.end is not None:
            _check_int("end", self.end, self.start)
        if self.every is not None:
            _check_int("every", self.every, 1)

    def sparsity_at(self, step):
        return jnp.where(step >= self.start, jnp.float32(self.sparsity), jnp.float32(0.0))

    def update_at(self, step):
        if self.every is None:
            return step == self.start
        ok = (step >= self.start) & ((step - self.start) % self.every == 0)
        if self.end is not None:
            ok = ok & (step <= self.end)
        return ok


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolynomialSchedule(PruningSchedule):
    """Gradual polynomial schedule (Zhu & Gupta) of power ``power`` between ``start`` and ``end``.

    .. math:: s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{n \\Delta t}\\right)^{p}

    with :math:`t_0` = ``start``, :math:`t_0 + n \\Delta t` = ``end``, :math:`\\Delta t` = ``every``,
    :math:`p` = ``power`` (``3`` is the paper's cubic schedule, ``1`` linear), the fraction
    clipped to ``[0, 1]`` (so :math:`s_t = s_f` after ``end``) and :math:`s_t = 0` before
    ``start``. Masks are recomputed at ``start, start + every, ...`` (<= ``end``) and at ``end``.
    """

    final_sparsity: float
    start: int
    end: int
    every: int = 1
    initial_sparsity: float = 0.0
    power: float = 3.0

    def __post_init__(self):
        _check_sparsity("final_sparsity", self.final_sparsity)
        _check_sparsity("initial_sparsity", self.initial_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"`initial_sparsity` must be in [0, final_sparsity={self.final_sparsity:g}], "
                             f"got {self.initial_sparsity!r}.")
        _check_int("start", self.start, 0)
        _check_int("end", self.end, self.start + 1)
        _check_int("every", self.every, 1)
        _check_power(self.power)

    def sparsity_at(self, step):
        p = jnp.clip((step - self.start) / (self.end - self.start), 0.0, 1.0).astype(jnp.float32)
        s = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** _power_exponent(self.power)
        return jnp.where(step >= self.start, s, 0.0).astype(jnp.float32)

    def update_at(self, step):
        on_grid = (step >= self.start) & (step <= self.end) & ((step - self.start) % self.every == 0)
        return on_grid | (step == self.end)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CubicSchedule(PolynomialSchedule):
    """Gradual cubic schedule :math:`s_t = s_f + (s_i - s_f)(1 - p_t)^3` between ``start`` and ``end``
    (the ``power=3`` :class:`PolynomialSchedule`)."""

    power: float = dataclasses.field(default=3.0, init=False)


def _power_exponent(power: float):
    """Integral powers as Python ints (exact repeated multiplication, as the cubic always was)."""
    return int(power) if float(power).is_integer() else float(power)


def _check_sparsity(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 <= float(v) < 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1), got {v!r}.")


def _check_power(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 < float(v) < float("inf")):
        raise ValueError(f"`power` must be a finite number > 0, got {v!r}.")


def _check_int(name: str, v: Any, low: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {v!r}.")


def one_shot_schedule(sparsity: float, step: int = 0) -> OneShotSchedule:
    """Prune once to ``sparsity`` (in ``[0, 1)``) at optimizer step ``step``.

    Example:
      >>> sch = one_shot_schedule(0.5, step=10)
      >>> bool(sch.update_at(10)), float(sch.sparsity_at(3))
      (True, 0.0)
    """
    check_number("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    _check_int("step", step, 0)
    return OneShotSchedule(sparsity=float(sparsity), step=step)


def periodic_schedule(sparsity: float, every: int, start: int = 0, end: int | None = None) -> PeriodicSchedule:
    """Recompute masks at constant ``sparsity`` every ``every`` steps from ``start`` to ``end``.

    Example:
      >>> sch = periodic_schedule(0.5, every=100)
      >>> [bool(sch.update_at(t)) for t in (0, 50, 100)]
      [True, False, True]
    """
    check_number("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    _check_int("every", every, 1)
    _check_int("start", start, 0)
    if end is not None:
        _check_int("end", end, start)
    return PeriodicSchedule(sparsity=float(sparsity), every=every, start=start, end=end)


def cubic_schedule(
    final_sparsity: float, start: int, end: int, every: int = 1, initial_sparsity: float = 0.0
) -> CubicSchedule:
    """Gradual pruning (Zhu & Gupta, arXiv 1710.01878): :math:`s_t = s_f + (s_i - s_f)(1 - p_t)^3`.

    Masks are updated every ``every`` steps in ``[start, end]`` (and at ``end``).

    Example:
      >>> sch = cubic_schedule(0.8, start=0, end=100)
      >>> round(float(sch.sparsity_at(50)), 4)   # 0.8 * (1 - 0.5**3)
      0.7
    """
    check_number("final_sparsity", final_sparsity, 0.0, 1.0, high_inclusive=False)
    check_number("initial_sparsity", initial_sparsity, 0.0, final_sparsity)
    _check_int("start", start, 0)
    _check_int("end", end, start + 1)
    _check_int("every", every, 1)
    return CubicSchedule(final_sparsity=float(final_sparsity), start=start, end=end, every=every,
                         initial_sparsity=float(initial_sparsity))


def polynomial_schedule(
    final_sparsity: float, start: int, end: int, every: int = 1, initial_sparsity: float = 0.0, power: float = 3.0
) -> PolynomialSchedule:
    """Gradual pruning with the Zhu-Gupta polynomial of power ``power`` (``3`` = cubic, ``1`` = linear):

    :math:`s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n \\Delta t))^{p}`, ``t0 = start``,
    ``t0 + n Δt = end``, ``Δt = every``; masks updated every ``every`` steps in ``[start, end]``
    (and at ``end``). ``power`` must be > 0; sparsities in ``[0, 1)`` with
    ``initial_sparsity <= final_sparsity``.

    Example:
      >>> sch = polynomial_schedule(0.8, start=0, end=100, power=1)
      >>> round(float(sch.sparsity_at(25)), 4)   # linear: 0.8 * 0.25
      0.2

    References:
      Zhu & Gupta, arXiv 1710.01878, eq. (1).
    """
    return PolynomialSchedule(final_sparsity=final_sparsity, start=start, end=end, every=every,
                              initial_sparsity=initial_sparsity, power=power)


def constant_schedule(sparsity: float, start: int = 0, end: int | None = None,
                      every: int | None = None) -> ConstantSchedule:
    """Constant ``sparsity`` from ``start``: masks chosen at ``start`` and kept (``every=None``)
    or re-selected every ``every`` steps up to ``end``.

    Example:
      >>> sch = constant_schedule(0.5, start=10)
      >>> float(sch.sparsity_at(9)), float(sch.sparsity_at(10)), bool(sch.update_at(20))
      (0.0, 0.5, False)
    """
    return ConstantSchedule(sparsity=sparsity, start=start, end=end, every=every)


class SparsifyState(NamedTuple):
    """State of :func:`sparsify`: step ``count`` (int32), current ``masks`` (bool / None
    pytree), the current target ``sparsity`` (float32) and the wrapped transformation's state."""

    count: jax.Array
    masks: PyTree
    sparsity: jax.Array
    inner_state: optax.OptState


def _place_masks(given: PyTree, default: PyTree, params: PyTree):
    """Put the leaves of ``given`` (mask or None per param leaf) into ``default``'s structure."""
    d_leaves, d_def = jax.tree_util.tree_flatten(default, is_leaf=_is_none)
    g_leaves = jax.tree_util.tree_leaves(given, is_leaf=_is_none)
    p_leaves = jax.tree_util.tree_leaves(params)
    if len(g_leaves) != len(d_leaves) or len(p_leaves) != len(d_leaves):
        raise ValueError(
            f"`masks` must have one leaf (boolean mask or None) per param leaf: got {len(g_leaves)} mask leaves "
            f"for {len(p_leaves)} params."
        )
    out, kept, total = [], 0, 0
    for g, p in zip(g_leaves, p_leaves):
        if g is None:
            out.append(None)
            continue
        if tuple(jnp.shape(g)) != tuple(jnp.shape(p)):
            raise ValueError(f"`masks` leaf of shape {tuple(jnp.shape(g))} does not match its param of shape "
                             f"{tuple(jnp.shape(p))}.")
        g = jnp.asarray(g, bool)
        out.append(g)
        kept = kept + jnp.sum(g.astype(jnp.int32))
        total += g.size
    s = (1.0 - jnp.asarray(kept, jnp.float32) / total) if total else jnp.zeros([], jnp.float32)
    return jax.tree_util.tree_unflatten(d_def, out), jnp.asarray(s, jnp.float32)


def sparsify(
    tx: optax.GradientTransformation,
    schedule: PruningSchedule | None = None,
    scorer: str | Callable[[PyTree, PyTree], PyTree] = "magnitude",
    *,
    distribution: str = "uniform",
    mask_fn: Callable[[PyTree, jax.Array], PyTree] | None = None,
    where: Callable[[tuple, Any], bool] | None = None,
    key: jax.Array | None = None,
    masks: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``tx`` so the params are pruned on ``schedule`` and pruned entries stay exactly zero.

    At step ``t`` (the state's ``count``):

    1. if ``schedule.update_at(t)``: ``scores = scorer(params, grads)``,
       ``masks = mask_fn(scores, schedule.sparsity_at(t))``;
    2. ``u = tx.update(where(masks, grads, 0), inner_state, params, **extra_args)``;
    3. emitted update ``where(masks, u, -params)`` (pruned entries land on exactly 0).

    Args:
      tx: any optax transformation (extra args are forwarded).
      schedule: a :class:`PruningSchedule` (see :func:`one_shot_schedule`,
        :func:`periodic_schedule`, :func:`cubic_schedule`, :func:`polynomial_schedule`,
        :func:`constant_schedule`).
      scorer: "magnitude" (:math:`|w|`), "snip" (:math:`|w g|`), "random", or a callable
        ``scorer(params, grads) -> scores`` returning a score pytree (arrays where pruned).
      distribution: sparsity distribution for the default unstructured masks:
        "uniform" | "global" | "erk" (see :func:`unstructured_mask`).
      mask_fn: ``mask_fn(scores, sparsity) -> masks`` replacing the default
        ``unstructured_mask(scores, sparsity, distribution=distribution)``, e.g.
        ``lambda s, _: nm_mask(s, 2, 4)`` for 2:4 or a :func:`structured_mask` partial.
      where: ``where(path, leaf) -> bool``: which param leaves are pruned (default: ``ndim >= 2``).
      key: ``jax.random.key`` for ``scorer="random"`` (folded with the step).
      masks: initial keep-masks, one leaf (boolean array shaped like the param, or ``None``)
        per param leaf, e.g. from :func:`~jaxeff.prune.prune_model` or
        :func:`~jaxeff.prune.group_masks` (the pure ``nnx.State`` layout works with
        ``nnx.Optimizer(model, tx, wrt=nnx.Param)``). Leaves with ``None`` are never pruned.
        With ``schedule=None`` the masks stay fixed: fine-tuning a one-shot pruned model keeps
        its zeros exactly.
    Returns:
      ``optax.GradientTransformationExtraArgs`` with :class:`SparsifyState`; the masks are
      ``state.masks``. ``update`` requires ``params``.

    Example:
      >>> tx = sparsify(optax.adam(1e-2), one_shot_schedule(0.5, step=0))
      >>> params = {"w": jnp.arange(1., 9.).reshape(2, 4)}
      >>> state = tx.init(params)
      >>> u, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
      >>> (optax.apply_updates(params, u)["w"] == 0).sum().item()
      4

    References:
      jaxpruner (arXiv 2304.14082); Zhu & Gupta (arXiv 1710.01878).
    """
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise ValueError(f"`tx` must be an optax.GradientTransformation (with init/update), got {type(tx).__name__}.")
    if schedule is None and masks is None:
        raise ValueError("`schedule` must be a PruningSchedule (e.g. one_shot_schedule(...)); it may be None only "
                         "when fixed `masks` are given.")
    if schedule is not None and not isinstance(schedule, PruningSchedule):
        raise ValueError(f"`schedule` must be a PruningSchedule (e.g. one_shot_schedule(...)), got {type(schedule)}.")
    if isinstance(scorer, str):
        check_choice("scorer", scorer, ("magnitude", "snip", "random"))
        if scorer == "random":
            check_key("key", key)
    elif not callable(scorer):
        raise ValueError(f"`scorer` must be 'magnitude', 'snip', 'random' or a callable, got {scorer!r}.")
    check_choice("distribution", distribution, ("uniform", "global", "erk"))
    if mask_fn is not None and distribution != "uniform":
        raise ValueError("pass either `mask_fn` or `distribution`, not both.")
    if mask_fn is None:
        mask_fn = functools.partial(unstructured_mask, distribution=distribution)
    where_fn = default_prunable if where is None else where
    inner = optax.with_extra_args_support(tx)

    def score(params, grads, count):
        if scorer == "magnitude":
            return magnitude_scores(params, where=where_fn)
        if scorer == "snip":
            return snip_scores(params, grads, where=where_fn)
        if scorer == "random":
            return random_scores(params, jax.random.fold_in(key, count), where=where_fn)
        return scorer(params, grads)

    def init_fn(params):
        init_masks = jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.ones(jnp.shape(p), bool) if where_fn(path, p) else None, params
        )
        s0 = jnp.zeros([], jnp.float32)
        if masks is not None:
            init_masks, s0 = _place_masks(masks, init_masks, params)
        return SparsifyState(
            count=jnp.zeros([], jnp.int32),
            masks=init_masks,
            sparsity=s0,
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("sparsify's update needs `params` (call tx.update(grads, state, params)).")
        count = state.count

        def new_masks():
            scores = score(params, updates, count)

            def align(m, s):
                if m is None:
                    return None
                if s is None:
                    raise ValueError("`scorer` returned None for a leaf that is pruned.")
                if s.shape != m.shape:
                    raise ValueError(f"`scorer` returned shape {s.shape} for a param of shape {m.shape}.")
                return s

            scores = jax.tree.map(align, state.masks, scores, is_leaf=_is_none)
            masks = mask_fn(scores, schedule.sparsity_at(count))
            return jax.tree.map(lambda m, new: None if m is None else new.astype(bool),
                                state.masks, masks, is_leaf=_is_none)

        if schedule is None:  # fixed masks
            masks, sparsity = state.masks, state.sparsity
        else:
            do = schedule.update_at(count)
            masks = jax.lax.cond(do, new_masks, lambda: state.masks)
            sparsity = jnp.where(do, schedule.sparsity_at(count), state.sparsity).astype(jnp.float32)

        def mask_grad(m, g):
            return g if m is None else jnp.where(m, g, jnp.zeros((), g.dtype))

        masked = jax.tree.map(mask_grad, masks, updates, is_leaf=_is_none)
        new_updates, inner_state = inner.update(masked, state.inner_state, params, **extra_args)

        def final(m, u, p):
            if m is None:
                return u
            return jnp.where(m, u, -p.astype(u.dtype))

        new_updates = jax.tree.map(final, masks, new_updates, params, is_leaf=_is_none)
        return new_updates, SparsifyState(optax.safe_increment(count), masks, sparsity, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
