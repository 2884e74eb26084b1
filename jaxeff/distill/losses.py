"""Token-level distillation divergences on logits.

All functions take student and teacher logits ``[..., V]`` (any leading token axes), apply a
temperature, compute in float32 (bf16/fp16 inputs are upcast), and reduce over the valid
tokens selected by ``where`` (a boolean mask broadcastable to the leading axes):

* ``reduction="mean"``: sum over valid tokens divided by the number of valid tokens of the
  WHOLE batch (so chunking and gradient accumulation do not change the loss); 0 when no token
  is valid (with zero, NaN-free gradients).
* ``reduction="sum"``: sum over valid tokens.
* ``reduction="none"``: per-token losses (0 at masked tokens).

Notation: teacher ``p = softmax(z_t / tau)``, student ``q = softmax(z_s / tau)``. ``-inf``
logits mark masked vocabulary entries (probability exactly 0); they are handled exactly.

None of the divergences multiplies by ``tau**2`` (the convention of TRL and Liger-Kernel);
:func:`hinton_kd` does, as in Hinton et al.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import (
    check_array,
    check_index_range,
    check_number,
    check_ndim,
    check_shape,
    check_traced_in_range,
)
from jaxeff.distill._common import (
    _plogratio,
    as_f32,
    check_reduction,
    check_static_float,
    check_temperature,
    check_vocab,
    elementwise_divergence,
    reduce_tokens,
    token_mask,
    topk_membership,
)

__all__ = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "hinton_kd",
    "topk_kl",
]


def _prepare(student_logits, teacher_logits, temperature, where, reduction, axis):
    check_temperature(temperature)
    check_reduction(reduction)
    check_array("student_logits", student_logits)
    check_array("teacher_logits", teacher_logits)
    s = jnp.moveaxis(as_f32(student_logits), axis, -1)
    t = jnp.moveaxis(as_f32(teacher_logits), axis, -1)
    check_vocab("student_logits", s, "teacher_logits", t)
    mask = token_mask(where, s.shape[:-1])
    # Masked tokens get harmless logits so that garbage there (NaN, all -inf) cannot leak
    # into values or gradients (double-where).
    s = jnp.where(mask[..., None], s, 0.0)
    t = jnp.where(mask[..., None], t, 0.0)
    ls = jax.nn.log_softmax(s / temperature, axis=-1)
    lt = jax.nn.log_softmax(t / temperature, axis=-1)
    return ls, lt, mask


def _divergence(name, student_logits, teacher_logits, temperature, where, reduction, axis, **kw):
    ls, lt, mask = _prepare(student_logits, teacher_logits, temperature, where, reduction, axis)
    per_token = jnp.sum(elementwise_divergence(name, ls, lt, **kw), axis=-1)
    return check_temperature(temperature, reduce_tokens(per_token, mask, reduction))


def forward_kl(
    student_logits: Any,
    teacher_logits: Any,
    *,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Forward KL divergence KL(teacher ‖ student), the classic (mode-covering) KD loss.

    .. math:: \mathrm{KL}(p\,\|\,q) = \sum_v p_v (\log p_v - \log q_v),\quad
              p = \mathrm{softmax}(z_t/\tau),\ q = \mathrm{softmax}(z_s/\tau)

    Args:
      student_logits: ``[..., V]`` student logits (any float dtype; computed in fp32).
      teacher_logits: ``[..., V]`` teacher logits, same shape.
      temperature: ``tau > 0`` applied to both (no ``tau**2`` factor).
      where: optional boolean token mask broadcastable to the leading axes.
      reduction: "mean" (over valid tokens of the whole batch), "sum" or "none".
      axis: the vocabulary axis.

    Returns:
      A scalar (or per-token array for ``reduction="none"``), float32. ``+inf`` if the student
      gives probability 0 to a token the teacher supports.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import forward_kl
      >>> float(forward_kl(jnp.zeros((2, 4)), jnp.zeros((2, 4))))
      0.0

    References:
      Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
      "Efficient AI in Practice", arXiv:2502.14305.
    """
    return _divergence("forward_kl", student_logits, teacher_logits, temperature, where, reduction, axis)


def reverse_kl(
    student_logits: Any,
    teacher_logits: Any,
    *,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Reverse KL divergence KL(student ‖ teacher) (mode-seeking).

    .. math:: \mathrm{KL}(q\,\|\,p) = \sum_v q_v (\log q_v - \log p_v)

    Args and Returns as :func:`forward_kl`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import reverse_kl
      >>> round(float(reverse_kl(jnp.array([0.0, 0.0]), jnp.array([0.0, 1.0]))), 4)
      0.1201

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", arXiv:2306.08543.
    """
    return _divergence("reverse_kl", student_logits, teacher_logits, temperature, where, reduction, axis)


def generalized_jsd(
    student_logits: Any,
    teacher_logits: Any,
    *,
    beta: float = 0.5,
    normalized: bool = False,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence of GKD, optionally normalized to interpolate FKL↔RKL.

    .. math::
        M = \beta p + (1-\beta) q,\qquad
        \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(p\,\|\,M) + (1-\beta)\,\mathrm{KL}(q\,\|\,M)

    ``JSD_beta`` tends to 0 at both ``beta = 0`` and ``beta = 1`` (with ``normalized=False`` the
    endpoints return exactly that 0; TRL and Liger instead special-case them to FKL/RKL, which
    makes their loss jump). With ``normalized=True`` the loss is

    .. math:: \mathrm{JSD}_\beta / (\beta (1-\beta))

    which is continuous on [0, 1]: ``JSD_beta/beta -> KL(p‖q)`` as ``beta -> 0`` and
    ``JSD_beta/(1-beta) -> KL(q‖p)`` as ``beta -> 1``, so the normalized family equals forward KL
    at ``beta = 0`` and reverse KL at ``beta = 1`` exactly (it is ``4 JSD`` at ``beta = 1/2``).

    Args:
      beta: mixture weight of the teacher, in [0, 1].
      normalized: divide by ``beta (1 - beta)`` as described above.
      Other args and Returns as :func:`forward_kl`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import generalized_jsd, forward_kl
      >>> s, t = jnp.array([1.0, 0.0, -1.0]), jnp.array([0.0, 2.0, 0.0])
      >>> bool(jnp.isclose(generalized_jsd(s, t, beta=0.0, normalized=True), forward_kl(s, t)))
      True

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
      Mistakes" (GKD), arXiv:2306.13649.
    """
    check_static_float("beta", beta)
    check_number("beta", beta, 0.0, 1.0)
    return _divergence(
        "jsd", student_logits, teacher_logits, temperature, where, reduction, axis, beta=float(beta),
        normalized=bool(normalized),
    )


def tvd(
    student_logits: Any,
    teacher_logits: Any,
    *,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Total variation distance, with zero subgradient where ``p_v = q_v``.

    .. math:: \mathrm{TVD}(p, q) = \tfrac12 \sum_v |p_v - q_v|

    Args and Returns as :func:`forward_kl` (values in [0, 1]).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import tvd
      >>> float(tvd(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0])))
      1.0

    References:
      Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation",
      arXiv:2307.15190.
    """
    return _divergence("tvd", student_logits, teacher_logits, temperature, where, reduction, axis)


def skew_forward_kl(
    student_logits: Any,
    teacher_logits: Any,
    *,
    lam: float = 0.1,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Skew forward KL of DistiLLM: the teacher against a teacher/student mixture.

    .. math:: \mathrm{SKL}_\lambda(p, q) = \mathrm{KL}(p\,\|\,\lambda p + (1-\lambda) q)

    ``lam = 0`` is forward KL; ``lam = 1`` gives 0. Bounded by ``-log(lam)`` for ``lam > 0``.

    Args:
      lam: skew weight in [0, 1].
      Other args and Returns as :func:`forward_kl`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import skew_forward_kl, forward_kl
      >>> s, t = jnp.array([3.0, 0.0]), jnp.array([0.0, 3.0])
      >>> bool(skew_forward_kl(s, t, lam=0.1) < forward_kl(s, t))
      True

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      arXiv:2402.03898.
    """
    check_static_float("lam", lam)
    check_number("lam", lam, 0.0, 1.0)
    return _divergence(
        "skew_forward_kl", student_logits, teacher_logits, temperature, where, reduction, axis, lam=float(lam)
    )


def skew_reverse_kl(
    student_logits: Any,
    teacher_logits: Any,
    *,
    lam: float = 0.1,
    temperature: float = 1.0,
    where: Any = None,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""Skew reverse KL of DistiLLM: the student against a student/teacher mixture.

    .. math:: \mathrm{SRKL}_\lambda(p, q) = \mathrm{KL}(q\,\|\,\lambda q + (1-\lambda) p)

    ``lam = 0`` is reverse KL; ``lam = 1`` gives 0.

    Args:
      lam: skew weight in [0, 1].
      Other args and Returns as :func:`forward_kl`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import skew_reverse_kl
      >>> float(skew_reverse_kl(jnp.ones(3), jnp.ones(3)))
      0.0

    References:
      Ko et al., "DistiLLM", arXiv:2402.03898.
    """
    check_static_float("lam", lam)
    check_number("lam", lam, 0.0, 1.0)
    return _divergence(
        "skew_reverse_kl", student_logits, teacher_logits, temperature, where, reduction, axis, lam=float(lam)
    )


def _label_logprob(logp: jax.Array, labels: jax.Array) -> jax.Array:
    safe = jnp.clip(labels, 0, logp.shape[-1] - 1)
    return jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


def hinton_kd(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    alpha: float = 0.5,
    temperature: float = 1.0,
    *,
    where: Any = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    axis: int = -1,
) -> jax.Array:
    r"""Hinton et al.'s knowledge distillation loss: hard-label CE plus ``tau**2``-scaled soft KL.

    .. math::
        \mathcal L = \alpha\,\mathrm{CE}(y, \mathrm{softmax}(z_s))
                   + (1-\alpha)\,\tau^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t/\tau)\,\|\,
                     \mathrm{softmax}(z_s/\tau)\big)

    The CE term uses temperature 1. The ``tau**2`` factor keeps the soft term's gradient
    magnitude independent of ``tau`` (Hinton et al., Sec. 2). Liger-Kernel and TRL omit it; to get
    their convention use :func:`forward_kl` and add the CE yourself. Tokens whose label equals
    ``ignore_index`` are excluded from both terms (and from the mean's denominator).

    Args:
      student_logits, teacher_logits: ``[..., V]`` logits.
      labels: ``[...]`` integer targets in ``[0, V)`` (or ``ignore_index``). A label outside
        ``[0, V)`` on a valid token raises (``ValueError``; under ``jit`` an
        ``equinox.error_if`` run-time error); labels of masked tokens are not read.
      alpha: weight of the hard-label term, in [0, 1] (may be traced; checked at run time).
      temperature: ``tau > 0`` of the soft term (may be traced; checked at run time).
      where, reduction, axis: as :func:`forward_kl`.
      ignore_index: label value meaning "no target for this token": such tokens are excluded
        from both terms and from the mean's denominator (PyTorch's ``ignore_index``
        convention; default -100).

    Returns:
      The loss (float32), reduced as requested.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill import hinton_kd
      >>> z = jnp.array([[2.0, 0.0, 0.0]])
      >>> round(float(hinton_kd(z, z, jnp.array([0]), alpha=1.0)), 4)
      0.2395

    References:
      Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
    """
    check_number("alpha", alpha, 0.0, 1.0)  # a traced alpha is checked at run time below
    check_temperature(temperature)
    check_array("student_logits", student_logits)
    check_array("teacher_logits", teacher_logits)
    check_array("labels", labels, "an integer array of class ids")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must be integer class ids, got dtype {labels.dtype}.")
    s = jnp.moveaxis(as_f32(student_logits), axis, -1)
    # the logits first, so a bad `student_logits` is named as such (not as a `labels` mismatch)
    check_vocab("student_logits", s, "teacher_logits", jnp.moveaxis(as_f32(teacher_logits), axis, -1))
    check_shape("labels", labels, s.shape[:-1])
    valid = token_mask(where, s.shape[:-1]) & (labels != ignore_index)
    ls, lt, mask = _prepare(student_logits, teacher_logits, temperature, valid, reduction, axis)
    s = jnp.where(mask[..., None], s, 0.0)
    ce = -_label_logprob(jax.nn.log_softmax(s, axis=-1), labels)
    kl = jnp.sum(elementwise_divergence("forward_kl", ls, lt), axis=-1)
    per_token = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    out = reduce_tokens(per_token, mask, reduction)
    out = check_index_range("labels", jnp.where(valid, labels, 0), s.shape[-1], out,
                            what="the vocabulary of `student_logits`")
    out = check_traced_in_range("alpha", out, alpha, 0.0, 1.0)
    return check_temperature(temperature, out)


def topk_kl(
    student_logits: Any,
    teacher_topk_logprobs: Any,
    teacher_topk_ids: Any,
    *,
    temperature: float = 1.0,
    missing_mass: bool = False,
    where: Any = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Forward KL against a sparse (top-k) teacher: the offline-teacher distillation loss.

    With ``K`` the teacher's top-k token ids and ``p_i`` the teacher probabilities of those ids:

    .. math::
        \sum_{i \in K} p_i (\log p_i - \log q_i)
        \;+\; [\text{missing\_mass}]\;(1-P)\log\frac{1-P}{1-Q},\qquad
        P = \textstyle\sum_{i\in K} p_i,\ Q = \sum_{i \in K} q_i

    The missing-mass term treats all tokens outside ``K`` as one bucket, which makes the loss a
    proper KL between two distributions over ``|K| + 1`` outcomes (so it is >= 0 and 0 iff the
    student matches the teacher on ``K``). ``log(1 - Q)`` is computed as a log-sum-exp over the
    student's non-top-k logits, so it stays accurate when ``Q`` is close to 1.

    ``teacher_topk_logprobs`` must be log-probabilities of the full-vocabulary teacher at the
    same temperature (e.g. ``lax.top_k(log_softmax(z_t / tau), k)`` stored offline); the
    temperature is applied to the student logits here. Entries with log-prob ``-inf`` (padding of
    a shorter top-k list) contribute nothing. Ids must be distinct within a token.

    Args:
      student_logits: ``[..., V]``.
      teacher_topk_logprobs: ``[..., k]`` float.
      teacher_topk_ids: ``[..., k]`` integer ids in ``[0, V)`` (checked where the log-prob is
        finite and the token valid; under ``jit`` with ``equinox.error_if``).
      temperature, where, reduction: as :func:`forward_kl`.
      missing_mass: add the tail-bucket term.

    Returns:
      The loss (float32), reduced as requested.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxeff.distill import topk_kl, forward_kl
      >>> zs, zt = jnp.array([0.5, 0.1, -1.0]), jnp.array([1.0, 0.0, 0.2])
      >>> lp, ids = jax.lax.top_k(jax.nn.log_softmax(zt), 3)
      >>> bool(jnp.isclose(topk_kl(zs, lp, ids), forward_kl(zs, zt)))
      True

    References:
      Liger-Kernel issue #441 (offline teacher log-probs); DistillKit sparse-logit distillation;
      "Efficient AI in Practice", arXiv:2502.14305.
    """
    check_temperature(temperature)
    check_reduction(reduction)
    check_array("student_logits", student_logits)
    check_array("teacher_topk_logprobs", teacher_topk_logprobs)
    check_array("teacher_topk_ids", teacher_topk_ids, "an integer array of token ids")
    s = as_f32(student_logits)
    lp = as_f32(teacher_topk_logprobs)
    ids = jnp.asarray(teacher_topk_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"`teacher_topk_ids` must be integer token ids, got dtype {ids.dtype}.")
    check_ndim("student_logits", s, range(1, 64))
    if lp.shape != ids.shape:
        raise ValueError(
            f"`teacher_topk_logprobs` and `teacher_topk_ids` must have the same shape, got {lp.shape} and {ids.shape}."
        )
    if lp.shape[:-1] != s.shape[:-1]:
        raise ValueError(
            f"`teacher_topk_logprobs` leading axes {lp.shape[:-1]} must match the token axes of "
            f"`student_logits` {s.shape[:-1]}."
        )
    if lp.shape[-1] > s.shape[-1]:
        raise ValueError(
            f"top-k size {lp.shape[-1]} of `teacher_topk_logprobs` exceeds the student vocab size {s.shape[-1]}."
        )
    mask = token_mask(where, s.shape[:-1])
    s = jnp.where(mask[..., None], s, 0.0)
    lp = jnp.where(mask[..., None], lp, 0.0)
    ls = jax.nn.log_softmax(s / temperature, axis=-1)
    ls_k = jnp.take_along_axis(ls, jnp.clip(ids, 0, s.shape[-1] - 1), axis=-1)
    p_k = jnp.exp(lp)
    pos = p_k > 0
    per_token = jnp.sum(_plogratio(p_k, lp, ls_k), axis=-1)
    if missing_mass:
        in_k = topk_membership(ids, pos, s.shape[-1])
        # log(1 - Q) as a logsumexp over the student's tail (exact when Q ~ 1).
        log_tail_q = jax.nn.logsumexp(jnp.where(in_k, -jnp.inf, ls), axis=-1)
        # When K covers the whole vocabulary the teacher tail is exactly 0 (1 - P is rounding noise).
        tail_empty = jnp.all(in_k, axis=-1)
        sum_p = jnp.clip(jnp.sum(p_k, axis=-1), 0.0, 1.0)
        tail_p = jnp.where(tail_empty, 0.0, 1.0 - sum_p)
        log_tail_p = jnp.log1p(-jnp.where(tail_empty, 0.0, sum_p))
        per_token = per_token + _plogratio(tail_p, log_tail_p, log_tail_q)
    out = reduce_tokens(per_token, mask, reduction)
    used = mask[..., None] & ~jnp.isneginf(lp)
    out = check_index_range("teacher_topk_ids", jnp.where(used, ids, 0), s.shape[-1], out,
                            what="the vocabulary of `student_logits`")
    return check_temperature(temperature, out)


_ = np
