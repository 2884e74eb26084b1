"""Shared internals of :mod:`jaxeff.distill`: argument checks, token masks, reductions and the
element-wise (per vocabulary entry) form of every divergence.

Every divergence ``D(p, q)`` used here is a sum over the vocabulary of an element-wise function
of the two log-probabilities, ``D = sum_v f(log q_v, log p_v)``. That is what lets the fused,
chunked and vocab-sharded loss (:mod:`jaxeff.distill.fused`) reuse exactly the same formulas as
the plain losses on logits (:mod:`jaxeff.distill.losses`): a vocab shard only needs its local
slice of ``f`` plus a ``psum``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import (
    check_broadcastable,
    check_array,
    check_choice,
    check_number,
    check_traced_in_range,
    is_traced,
)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")
REDUCTIONS = ("mean", "sum", "none")


def check_temperature(temperature: Any, x: Any = None) -> Any:
    """``temperature > 0``: checked now when concrete; when traced, ``x`` (returned) carries an
    ``equinox.error_if`` run-time check (with ``x=None`` only a concrete value is checked)."""
    if x is None and is_traced(temperature):
        return None
    check_number("temperature", temperature)  # None / strings / arrays refused by name (tracers pass)
    return check_traced_in_range("temperature", x, temperature, 0.0, None, low_inclusive=False)


def check_static_float(name: str, value: Any) -> None:
    """Refuse a traced value for a hyper-parameter that selects the formula (must be static)."""
    if is_traced(value):
        raise ValueError(f"`{name}` must be a static Python float (it selects the formula at trace time); "
                         "got a traced value: mark it static or close over it.")


def check_reduction(reduction: str) -> None:
    check_choice("reduction", reduction, REDUCTIONS)


def check_vocab(student_name: str, s: Any, teacher_name: str, t: Any) -> None:
    """Student and teacher must share the vocabulary axis and the leading (token) axes."""
    check_array(student_name, s)
    check_array(teacher_name, t)
    if np.ndim(s) < 1 or np.ndim(t) < 1:
        raise ValueError(f"`{student_name}` and `{teacher_name}` must have a vocabulary (last) axis, got shapes "
                         f"{np.shape(s)} and {np.shape(t)}.")
    vs, vt = np.shape(s)[-1], np.shape(t)[-1]
    if vs != vt:
        raise ValueError(
            f"vocabulary mismatch: `{student_name}` has vocab size {vs} but `{teacher_name}` has vocab size "
            f"{vt}; pad the smaller head with -inf logits (or slice the larger one) so both index the same tokens."
        )
    if np.shape(s) != np.shape(t):
        raise ValueError(
            f"`{student_name}` and `{teacher_name}` must have the same shape, got {np.shape(s)} and {np.shape(t)}."
        )


def token_mask(where: Any, lead_shape: tuple[int, ...], name: str = "where") -> jax.Array:
    """Boolean mask of valid tokens with shape ``lead_shape`` (all True when ``where`` is None)."""
    if where is None:
        return jnp.ones(lead_shape, bool)
    check_broadcastable(name, where, lead_shape, "the token (leading) axes")
    w = jnp.asarray(where)
    if w.dtype != jnp.bool_:
        w = w != 0
    return jnp.broadcast_to(w, lead_shape)


def reduce_tokens(per_token: jax.Array, mask: jax.Array, reduction: str) -> jax.Array:
    """Reduce per-token losses: "mean" over valid tokens (0 when none), "sum", or "none"."""
    per_token = jnp.where(mask, per_token, 0.0)
    if reduction == "none":
        return per_token
    total = jnp.sum(per_token)
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)


def _log(x: float) -> float:
    return -math.inf if x == 0 else math.log(x)


def _mix_logprob(la: jax.Array, lb: jax.Array, wa: float) -> jax.Array:
    """log(wa * exp(la) + (1 - wa) * exp(lb)), stable, exact at wa in {0, 1}."""
    if wa == 0.0:
        return lb
    if wa == 1.0:
        return la
    # Where both are -inf the mixture is -inf; keep logaddexp's gradient finite there (double where).
    both = jnp.isneginf(la) & jnp.isneginf(lb)
    la_s = jnp.where(both, 0.0, la)
    lb_s = jnp.where(both, 0.0, lb)
    return jnp.where(both, -jnp.inf, jnp.logaddexp(la_s + _log(wa), lb_s + _log(1.0 - wa)))


def _plogratio(pa: jax.Array, la: jax.Array, lb: jax.Array) -> jax.Array:
    """Element-wise ``pa * (la - lb)`` with 0 where ``pa == 0`` (NaN-free values and gradients).

    NaN anywhere in ``pa``, ``la`` or ``lb`` is bad data, not a zero probability: it propagates
    (masked tokens are replaced before this is reached, so they stay exactly 0).
    """
    pos = pa > 0
    la_s = jnp.where(pos, la, 0.0)
    lb_s = jnp.where(pos, lb, 0.0)
    bad = jnp.isnan(pa) | jnp.isnan(la) | jnp.isnan(lb)
    return jnp.where(bad, jnp.nan, jnp.where(pos, pa * (la_s - lb_s), 0.0))


_JSD_EXP_MAX = 80.0  # |d| beyond this: expm1 would overflow float32; the logaddexp form is exact there


def _log1p_over(x: jax.Array) -> jax.Array:
    """``log1p(x) / x`` (1 at 0; a series below 1e-4, no subnormal division)."""
    small = jnp.abs(x) < 1e-4
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - x / 2.0 + x * x / 3.0, jnp.log1p(xs) / xs)


def _jsd_elementwise(ls: jax.Array, lt: jax.Array, p: jax.Array, q: jax.Array, beta: float,
                     normalized: bool) -> jax.Array:
    r"""Generalized JSD per vocabulary entry, accurate to float32 rounding for every ``beta`` in (0, 1).

    With ``d = log p - log q`` and ``m = beta p + (1-beta) q``, the two log-ratios
    ``A = log(m/p)`` and ``B = log(m/q)`` give

    .. math::
        f = -\beta\,p\,A - (1-\beta)\,q\,B,\qquad
        \frac{f}{\beta(1-\beta)} = -p\,\frac{A}{1-\beta} - q\,\frac{B}{\beta}.

    When a ratio is near 1 (``|x| < 1/2`` below) it is computed without cancellation as
    ``A = log1p(x_A)``, ``x_A = (1-beta) expm1(-d)`` and ``B = log1p(x_B)``,
    ``x_B = beta expm1(d)``, and the normalized terms as ``B/beta = expm1(d) log1p(x_B)/x_B``
    (likewise ``A/(1-beta)``): the textbook ``log p - log m`` loses every digit of the
    O(beta) difference as ``beta -> 0`` or ``1``. Otherwise (no cancellation possible)
    ``A = logaddexp(log beta, log(1-beta) - d)`` and ``B = logaddexp(log(1-beta), log beta + d)``.
    ``q = 0`` gives ``A = log beta``, ``p = 0`` gives ``B = log(1-beta)`` (exact, with
    zero-probability terms 0 and finite gradients). NaN inputs propagate.
    """
    dead_q = jnp.isneginf(ls)
    dead_p = jnp.isneginf(lt)
    d = lt - ls
    d = jnp.where(jnp.isfinite(d), d, 0.0)  # infinite cases replaced below (no inf/NaN in grads)
    small_d = jnp.abs(d) <= _JSD_EXP_MAX
    dc = jnp.where(small_d, d, 0.0)
    em = jnp.expm1(dc)    # p/q - 1
    en = jnp.expm1(-dc)   # q/p - 1
    xa = (1.0 - beta) * en
    xb = beta * em
    use_a = small_d & (jnp.abs(xa) < 0.5)
    use_b = small_d & (jnp.abs(xb) < 0.5)
    xa = jnp.where(use_a, xa, 0.0)
    xb = jnp.where(use_b, xb, 0.0)
    la, lb = math.log(beta), math.log1p(-beta)
    a_far = jnp.logaddexp(la, lb - d)  # log(m/p) with no cancellation possible
    b_far = jnp.logaddexp(lb, la + d)  # log(m/q)
    if normalized:
        a_n = jnp.where(use_a, en * _log1p_over(xa), a_far / (1.0 - beta))  # A / (1 - beta)
        b_n = jnp.where(use_b, em * _log1p_over(xb), b_far / beta)          # B / beta
        a_n = jnp.where(dead_q, la / (1.0 - beta), a_n)
        b_n = jnp.where(dead_p, lb / beta, b_n)
        fp, fq = -p * a_n, -q * b_n
    else:
        a = jnp.where(use_a, jnp.log1p(xa), a_far)
        b = jnp.where(use_b, jnp.log1p(xb), b_far)
        a = jnp.where(dead_q, la, a)
        b = jnp.where(dead_p, lb, b)
        fp, fq = -beta * p * a, -(1.0 - beta) * q * b
    f = jnp.where(p > 0, fp, 0.0) + jnp.where(q > 0, fq, 0.0)
    bad = jnp.isnan(ls) | jnp.isnan(lt)
    return jnp.where(bad, jnp.nan, f)


def elementwise_divergence(
    divergence: str,
    ls: jax.Array,
    lt: jax.Array,
    *,
    beta: float = 0.5,
    lam: float = 0.1,
    normalized: bool = False,
) -> jax.Array:
    """Per-vocabulary-entry contributions ``f_v`` with ``D(p, q) = sum_v f_v``.

    ``ls = log q`` (student) and ``lt = log p`` (teacher) are log-probabilities (``-inf`` allowed
    where a probability is exactly 0). Every formula is written so that 0-probability entries give
    0 and finite gradients.
    """
    q = jnp.exp(ls)
    p = jnp.exp(lt)
    if divergence == "forward_kl":
        return _plogratio(p, lt, ls)
    if divergence == "reverse_kl":
        return _plogratio(q, ls, lt)
    if divergence == "jsd":
        if normalized and beta == 0.0:
            return _plogratio(p, lt, ls)
        if normalized and beta == 1.0:
            return _plogratio(q, ls, lt)
        if beta in (0.0, 1.0):  # unnormalized JSD is identically 0 at the endpoints
            return jnp.where(jnp.isnan(ls) | jnp.isnan(lt), jnp.nan, jnp.zeros_like(ls + lt))
        return _jsd_elementwise(ls, lt, p, q, beta, normalized)
    if divergence == "tvd":
        return 0.5 * jnp.abs(p - q)
    if divergence == "skew_forward_kl":
        return _plogratio(p, lt, _mix_logprob(lt, ls, lam))
    if divergence == "skew_reverse_kl":
        return _plogratio(q, ls, _mix_logprob(ls, lt, lam))
    raise ValueError(f"`divergence` must be one of {list(DIVERGENCES)}, got {divergence!r}.")


def global_vocab(v_local: int, vocab_axis_name: Any, vocab_size: Any) -> int:
    """The number of real vocabulary entries of a (possibly vocab-sharded, padded) lm-head.

    ``v_local`` columns per shard times the size of ``vocab_axis_name`` (inside ``shard_map``)
    is the padded width; ``vocab_size`` (when given) must not exceed it.
    """
    width = int(v_local) * (1 if vocab_axis_name is None else int(jax.lax.axis_size(vocab_axis_name)))
    if vocab_size is None:
        return width
    if int(vocab_size) > width:
        raise ValueError(f"`vocab_size` ({vocab_size}) exceeds the vocabulary width of the head ({width} columns"
                         f"{'' if vocab_axis_name is None else ' over all shards'}).")
    return int(vocab_size)


def check_divergence_args(divergence: str, beta: Any, lam: Any) -> None:
    check_choice("divergence", divergence, DIVERGENCES)
    check_static_float("beta", beta)
    check_static_float("lam", lam)
    check_number("beta", beta, 0.0, 1.0)
    check_number("lam", lam, 0.0, 1.0)


def as_f32(x: Any) -> jax.Array:
    """Cast floating input to float32 (bf16/fp16 inputs are computed in fp32)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float64:
        return x.astype(jnp.float32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x


def apply_logit_transform(z: jax.Array, scale: Any, softcap: Any) -> jax.Array:
    """``softcap * tanh(scale * z / softcap)`` (each step skipped when None)."""
    if scale is not None:
        z = z * scale
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return z


def topk_membership(ids: jax.Array, keep: jax.Array, vocab: int, offset: Any = 0) -> jax.Array:
    """Boolean ``[..., vocab]`` mask, True at ``ids - offset`` where ``keep`` (out-of-range ids dropped)."""
    lead = ids.shape[:-1]
    flat_ids = (ids - offset).reshape(-1, ids.shape[-1])
    flat_keep = keep.reshape(-1, ids.shape[-1])
    eff = jnp.where(flat_keep & (flat_ids >= 0), flat_ids, vocab)  # `vocab` is out of bounds: dropped

    def one(i):
        return jnp.zeros((vocab,), bool).at[i].set(True, mode="drop")

    return jax.vmap(one)(eff).reshape(*lead, vocab)


__all__: list[str] = []
_ = Callable
