"""On-policy distillation (GKD) helpers for Flax NNX students.

* :func:`sample_continuations`: jit-compiled sampling of ``max_new_tokens`` continuations of a
  batch of prompts with temperature / top-k / top-p, as one ``lax.scan``. With
  ``use_cache=True`` (the default for models laid out like :class:`jaxeff.models.CharLM`) a
  key/value cache makes every step O(context); otherwise each step re-runs the model on the
  fixed-size buffer (works for any causal ``model(tokens) -> logits``).
* :func:`mix_on_policy`: replace dataset sequences by student samples with probability ``lam``.
* :func:`on_policy_batch`: the GKD data step in one call: with probability ``lam`` the
  continuation after the prompt is sampled from the student (``lax.cond``: no sampling cost
  otherwise), and a mask of the tokens to distill on is returned.

A GKD step in a Flax loop::

    tokens, mask = on_policy_batch(student, batch, key, prompt_len=P, lam=0.5, max_new_tokens=N)
    def loss_fn(student):
        s = student(tokens[:, :-1]); t = jax.lax.stop_gradient(teacher(tokens[:, :-1]))
        return generalized_jsd(s, t, beta=0.5, where=mask[:, 1:])
    loss, grads = nnx.value_and_grad(loss_fn)(student); optimizer.update(student, grads)

References:
  Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
  Mistakes" (GKD), arXiv:2306.13649. "Efficient AI in Practice", arXiv:2502.14305 (on-policy
  forward KL, sampling temperature 0.8-0.9).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import numpy as np

from jaxeff._core.validation import (
    check_array,
    check_callable,
    check_choice,
    check_index_range,
    check_int,
    check_key,
    check_ndim,
    check_number,
    error_if,
)

__all__ = [
    "filter_logits",
    "sample_from_logits",
    "sample_continuations",
    "OnPolicySample",
    "mix_on_policy",
    "on_policy_batch",
]


def _check_filter_args(logits: Any, top_k: Any, top_p: Any) -> None:
    """Static checks shared by :func:`filter_logits` and :func:`sample_from_logits`."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ValueError(f"`top_k` must be an int >= 0 (0 or None: off), got {top_k!r}.")
    if top_p is not None:
        check_number("top_p", top_p, 0.0, 1.0, low_inclusive=False)
    check_array("logits", logits)
    if np.ndim(logits) < 1 or np.shape(logits)[-1] == 0:
        raise ValueError(f"`logits` must have a non-empty last (vocabulary) axis, got shape {np.shape(logits)}.")
    if 0 in np.shape(logits)[:-1]:
        raise ValueError(f"`logits` must hold at least one row (no zero-size leading axis), got shape "
                         f"{np.shape(logits)}.")


def filter_logits(logits: jax.Array, *, top_k: int | None = None, top_p: float | None = None) -> jax.Array:
    r"""Set logits outside the top-k and/or the top-p nucleus to ``-inf`` (last axis).

    Top-p keeps the smallest set of highest-probability tokens whose total probability reaches
    ``top_p`` (the token that crosses the threshold is kept; tokens tied with the last kept logit
    are kept too). Top-k is applied first when both are given.

    Args:
      logits: ``[..., V]``.
      top_k: keep the ``k`` largest (``None`` or ``0``: off).
      top_p: nucleus mass in (0, 1] (``None`` or 1: off).

    Returns:
      Filtered logits, same shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxeff.distill.on_policy import filter_logits
      >>> filter_logits(jnp.array([1.0, 3.0, 2.0]), top_k=2).tolist()
      [-inf, 3.0, 2.0]

    References:
      Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv:1904.09751.
    """
    _check_filter_args(logits, top_k, top_p)
    v = logits.shape[-1]
    if top_k is not None and top_k > 0:
        if top_k > v:
            raise ValueError(f"`top_k` ({top_k}) exceeds the vocabulary size {v}.")
        kth = jax.lax.top_k(logits, int(top_k))[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p is not None and top_p < 1.0:
        check_number("top_p", top_p, 0.0, 1.0, low_inclusive=False)
        srt = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt.astype(jnp.float32), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
        keep = before < top_p
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= thresh, logits, -jnp.inf)
    return logits


def sample_from_logits(
    key: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Sample token ids from ``logits [..., V]``: temperature, then top-k, then top-p.

    ``temperature == 0`` is greedy (argmax). Returns int32 ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxeff.distill.on_policy import sample_from_logits
      >>> int(sample_from_logits(jax.random.key(0), jnp.array([0.0, 5.0, 1.0]), temperature=0.0))
      1
    """
    check_key("key", key)
    check_number("temperature", temperature, 0.0, None)
    _check_filter_args(logits, top_k, top_p)
    logits = jnp.asarray(logits).astype(jnp.float32)
    # NaN or +inf logits give no distribution: refuse them (one reduction; -inf is a mask).
    logits = error_if(logits, jnp.any(jnp.isnan(logits) | (logits == jnp.inf)),
                      "`logits` contains NaN or +inf; expected finite logits (-inf masks a token).")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


class OnPolicySample(NamedTuple):
    """Sampled sequences: ``tokens [B, P+N]`` and ``completion_mask [B, P+N]`` (True on generated
    tokens up to and including ``eos_id``)."""

    tokens: jax.Array
    completion_mask: jax.Array


# ----------------------------------------------------------------------------------------------
# model access: plain (re-run the causal model) or a key/value cache for CharLM-like models


def _check_token_ids(name: str, model: Any, tokens: jax.Array) -> jax.Array:
    """Token ids must index the model's vocabulary ``[0, V)`` (``V``: the last axis of its logits,
    found with ``jax.eval_shape``, no compute). Concrete ids: ``ValueError`` now; traced ids: an
    ``equinox.error_if`` run-time check attached to the returned ``tokens``."""
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda st, tk: nnx.merge(graphdef, st)(tk), state, tokens)
    except Exception:  # noqa: BLE001 - a model that fails here fails with its own error later
        return tokens
    shape = getattr(out, "shape", None)
    if not shape:
        return tokens
    return check_index_range(name, tokens, int(shape[-1]), what="the vocabulary of `model` (its logits' last axis)")


def _supports_cache(model: Any) -> bool:
    try:
        blk = model.blocks[0]
        return all(hasattr(model, a) for a in ("embed", "pos", "ln_f", "head")) and all(
            hasattr(blk.attn, a) for a in ("q", "k", "v", "o", "num_heads")
        ) and hasattr(blk, "ln1") and hasattr(blk, "ln2") and hasattr(blk, "mlp")
    except Exception:
        return False


def _attend(q, k, v, valid):
    """q [B,Tq,h,d], k/v [B,L,h,d], valid [Tq, L] -> [B,Tq,h*d] (same math as CharLM attention)."""
    dh = q.shape[-1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(dh)
    s = jnp.where(valid, s, -jnp.inf)
    a = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", a, v)
    return y.reshape(*y.shape[:2], -1)


def _cached_forward(model, tokens, cache, start):
    """Run ``tokens [B, t]`` at positions ``start..start+t-1`` using/filling the K/V ``cache``.

    ``cache`` is a list of (K, V) of shape ``[B, L, h, d]``; returns (logits [B, t, V], cache).
    """
    b, t = tokens.shape
    pos_emb = jax.lax.dynamic_slice_in_dim(model.pos[...], start, t, axis=0)
    x = model.embed(tokens) + pos_emb
    new_cache = []
    for blk, (kc, vc) in zip(model.blocks, cache):
        attn = blk.attn
        hds = attn.num_heads
        h = blk.ln1(x)
        q, k, v = (lin(h).reshape(b, t, hds, -1) for lin in (attn.q, attn.k, attn.v))
        kc = jax.lax.dynamic_update_slice_in_dim(kc, k.astype(kc.dtype), start, axis=1)
        vc = jax.lax.dynamic_update_slice_in_dim(vc, v.astype(vc.dtype), start, axis=1)
        qpos = start + jnp.arange(t)
        valid = jnp.arange(kc.shape[1])[None, :] <= qpos[:, None]
        x = x + attn.o(_attend(q, kc, vc, valid))
        x = x + blk.mlp(blk.ln2(x))
        new_cache.append((kc, vc))
    return model.head(model.ln_f(x)), new_cache


def _init_cache(model, b, length, dtype):
    out = []
    for blk in model.blocks:
        d = blk.attn.q.out_features
        hds = blk.attn.num_heads
        z = jnp.zeros((b, length, hds, d // hds), dtype)
        out.append((z, z))
    return out


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "use_cache",
                                   "eos_id", "pad_id"))
def _sample_jit(graphdef, state, prompts, key, *, max_new_tokens, temperature, top_k, top_p, use_cache, eos_id,
                pad_id):
    model = nnx.merge(graphdef, state)
    b, p = prompts.shape
    length = p + max_new_tokens
    buf = jnp.concatenate([prompts, jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1)
    sample = partial(sample_from_logits, temperature=temperature, top_k=top_k, top_p=top_p)

    if use_cache:
        dtype = model.embed.embedding[...].dtype
        logits, cache = _cached_forward(model, prompts, _init_cache(model, b, length, dtype), 0)
        last = logits[:, -1]
    else:
        cache = None
        last = model(prompts)[:, -1]

    def step(carry, i):
        buf, cache, last, done, key = carry
        key, sub = jax.random.split(key)
        tok = sample(sub, last)
        tok = jnp.where(done, pad_id, tok)
        pos = p + i
        buf = jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], pos, axis=1)
        live = ~done
        if eos_id is not None:
            done = done | (tok == eos_id)
        if use_cache:
            nl, cache = _cached_forward(model, tok[:, None], cache, pos)
            nl = nl[:, 0]
        else:
            nl = model(buf)[:, pos]
        return (buf, cache, nl.astype(last.dtype), done, key), live

    init = (buf, cache, last, jnp.zeros((b,), bool), key)
    (buf, _, _, _, _), live = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    mask = jnp.concatenate([jnp.zeros((b, p), bool), live.T], axis=1)
    return OnPolicySample(buf, mask)


def sample_continuations(
    model: Any,
    prompts: Any,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool | str = "auto",
    eos_id: int | None = None,
    pad_id: int = 0,
) -> OnPolicySample:
    """Sample continuations of ``prompts [B, P]`` from a Flax NNX causal LM, jit-compiled.

    The model is split into (graphdef, state) and the whole generation is one jitted
    ``lax.scan`` over ``max_new_tokens`` steps. Parameters are read, never updated (samples carry
    no gradient).

    Args:
      model: an NNX module with ``model(tokens [B, T]) -> logits [B, T, V]`` (causal).
      prompts: int ``[B, P]`` (equal-length prompts).
      key: ``jax.random.key``.
      max_new_tokens: ``N``; ``P + N`` must fit the model's context (``model.cfg.max_len`` if any).
      temperature: sampling temperature (0 = greedy).
      top_k, top_p: optional filters (see :func:`filter_logits`).
      use_cache: True (key/value cache; needs a CharLM-like layout: ``embed``, ``pos``,
        ``blocks[i].{ln1, attn.{q,k,v,o,num_heads}, ln2, mlp}``, ``ln_f``, ``head``), False
        (re-run the model on the buffer every step), or "auto" (cache when supported).
      eos_id: stop a row after it emits this id (later positions get ``pad_id``, mask False).
      pad_id: filler id.

    Returns:
      :class:`OnPolicySample` ``(tokens [B, P+N] int32, completion_mask [B, P+N] bool)``.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from jaxeff.models import CharLM, CharLMConfig
      >>> from jaxeff.distill import sample_continuations
      >>> m = CharLM(CharLMConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_len=16), rngs=nnx.Rngs(0))
      >>> out = sample_continuations(m, jax.numpy.zeros((2, 4), int), jax.random.key(1), max_new_tokens=8, top_p=0.9)
      >>> out.tokens.shape, int(out.completion_mask.sum())
      ((2, 12), 16)

    References:
      Agarwal et al. (GKD), arXiv:2306.13649.
    """
    check_callable("model", model, "an NNX causal LM (callable on tokens [B, T])")
    check_key("key", key)
    check_array("prompts", prompts, "an integer array of token ids [B, P]")
    prompts = jnp.asarray(prompts)
    check_ndim("prompts", prompts, 2)
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"`prompts` must be integer token ids, got dtype {prompts.dtype}.")
    if prompts.shape[1] < 1:
        raise ValueError("`prompts` must hold at least one token per row.")
    if prompts.shape[0] < 1:
        raise ValueError(f"`prompts` must hold at least one row, got shape {prompts.shape}.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
    check_number("temperature", temperature, 0.0, None)
    if top_p is not None:
        check_number("top_p", top_p, 0.0, 1.0, low_inclusive=False)
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"`top_k` must be a non-negative int or None, got {top_k!r}.")
    max_len = getattr(getattr(model, "cfg", None), "max_len", None)
    if max_len is not None and prompts.shape[1] + max_new_tokens > max_len:
        raise ValueError(
            f"prompt length {prompts.shape[1]} + `max_new_tokens` {max_new_tokens} exceeds the model's max_len {max_len}."
        )
    check_choice("use_cache", use_cache, (True, False, "auto"))
    prompts = _check_token_ids("prompts", model, prompts)
    if use_cache == "auto":
        use_cache = _supports_cache(model)
    elif use_cache and not _supports_cache(model):
        raise ValueError("`use_cache=True` needs a CharLM-like model (embed, pos, blocks[i].attn.{q,k,v,o}, ln_f, head).")
    graphdef, state = nnx.split(model)
    return _sample_jit(graphdef, state, prompts.astype(jnp.int32), key, max_new_tokens=max_new_tokens,
                       temperature=float(temperature), top_k=top_k, top_p=None if top_p is None else float(top_p),
                       use_cache=bool(use_cache), eos_id=eos_id, pad_id=int(pad_id))


def mix_on_policy(
    key: jax.Array,
    data_tokens: jax.Array,
    student_tokens: jax.Array,
    lam: float,
    *,
    data_mask: jax.Array | None = None,
    student_mask: jax.Array | None = None,
    per_sequence: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Take each sequence from the student samples with probability ``lam``, else from the data.

    Args:
      key: ``jax.random.key``.
      data_tokens, student_tokens: ``[B, T]`` int.
      lam: probability of the student sample (GKD's on-policy fraction λ), in [0, 1].
      data_mask, student_mask: ``[B, T]`` masks of the tokens to train on (default all True).
      per_sequence: one coin per sequence (True) or one coin for the whole batch (as TRL's GKD).

    Returns:
      ``(tokens [B, T], mask [B, T], from_student [B] bool)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxeff.distill import mix_on_policy
      >>> t, m, s = mix_on_policy(jax.random.key(0), jnp.zeros((4, 3), int), jnp.ones((4, 3), int), 1.0)
      >>> int(t.sum()), bool(s.all())
      (12, True)
    """
    check_key("key", key)
    check_number("lam", lam, 0.0, 1.0)
    check_array("data_tokens", data_tokens)
    check_array("student_tokens", student_tokens)
    data_tokens, student_tokens = jnp.asarray(data_tokens), jnp.asarray(student_tokens)
    if data_tokens.shape != student_tokens.shape:
        raise ValueError(
            f"`data_tokens` {data_tokens.shape} and `student_tokens` {student_tokens.shape} must have the same shape."
        )
    b = data_tokens.shape[0]
    dm = jnp.ones(data_tokens.shape, bool) if data_mask is None else jnp.asarray(data_mask, bool)
    sm = jnp.ones(data_tokens.shape, bool) if student_mask is None else jnp.asarray(student_mask, bool)
    coin = jax.random.bernoulli(key, lam, (b,) if per_sequence else ())
    coin = jnp.broadcast_to(coin, (b,))
    tokens = jnp.where(coin[:, None], student_tokens, data_tokens)
    mask = jnp.where(coin[:, None], sm, dm)
    return tokens, mask, coin


def on_policy_batch(
    model: Any,
    tokens: Any,
    key: jax.Array,
    *,
    prompt_len: int,
    lam: float,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool | str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """GKD batch: with probability ``lam`` replace the continuation of every sequence by a student sample.

    The first ``prompt_len`` tokens of each dataset sequence are the prompt. With probability
    ``lam`` (one coin per batch, as in GKD) the next ``max_new_tokens`` tokens are sampled from
    ``model``; otherwise the dataset continuation is kept. Sampling runs under ``lax.cond``, so a
    batch that stays off-policy costs nothing.

    Args:
      model: NNX student (see :func:`sample_continuations`).
      tokens: dataset batch ``[B, T]`` with ``T >= prompt_len + max_new_tokens``.
      key: ``jax.random.key``.
      prompt_len: prompt length ``P >= 1``.
      lam: on-policy probability in [0, 1].
      max_new_tokens: continuation length (default ``T - P``).
      temperature, top_k, top_p, use_cache: sampling options.

    Returns:
      ``(tokens [B, P+N], loss_mask [B, P+N])``: the mask is True on the continuation tokens (the
      ones to distill on; logits predicting token ``i`` come from position ``i - 1``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxeff.models import CharLM, CharLMConfig
      >>> from jaxeff.distill import on_policy_batch
      >>> m = CharLM(CharLMConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_len=16), rngs=nnx.Rngs(0))
      >>> toks, mask = on_policy_batch(m, jnp.ones((2, 12), int), jax.random.key(0), prompt_len=4, lam=0.5)
      >>> toks.shape, int(mask.sum())
      ((2, 12), 16)

    References:
      Agarwal et al. (GKD), arXiv:2306.13649.
    """
    check_callable("model", model, "an NNX causal LM (callable on tokens [B, T])")
    check_key("key", key)
    check_number("lam", lam, 0.0, 1.0)
    check_number("temperature", temperature, 0.0, None)
    check_choice("use_cache", use_cache, (True, False, "auto"))
    check_array("tokens", tokens, "an integer array of token ids [B, T]")
    tokens = jnp.asarray(tokens)
    check_ndim("tokens", tokens, 2)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"`tokens` must be integer token ids, got dtype {tokens.dtype}.")
    b, t = tokens.shape
    check_int("prompt_len", prompt_len)
    if not 1 <= prompt_len < t:
        raise ValueError(f"`prompt_len` must be in [1, {t}) for tokens of shape {tokens.shape}, got {prompt_len}.")
    n = t - prompt_len if max_new_tokens is None else max_new_tokens
    if prompt_len + n > t:
        raise ValueError(f"`prompt_len` {prompt_len} + `max_new_tokens` {n} exceeds the sequence length {t}.")
    tokens = _check_token_ids("tokens", model, tokens[:, : prompt_len + n].astype(jnp.int32))
    k_coin, k_sample = jax.random.split(key)
    coin = jax.random.bernoulli(k_coin, lam)

    def student(_):
        return sample_continuations(model, tokens[:, :prompt_len], k_sample, max_new_tokens=n,
                                    temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache).tokens

    out = jax.lax.cond(coin, student, lambda _: tokens, None)
    mask = jnp.broadcast_to(jnp.arange(prompt_len + n) >= prompt_len, (b, prompt_len + n))
    return out, mask
