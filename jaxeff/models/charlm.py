"""A byte-level decoder-only transformer (Flax NNX) and an offline corpus for it."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sysconfig
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxeff._core.validation import check_choice, check_in_range, check_index_range, check_key

__all__ = [
    "CharLMConfig", "CharLM", "load_text_corpus", "lm_loss", "sample_batch", "train_lm",
    "evaluate_lm", "pretrained_charlm", "capture_linear_inputs", "param_count", "param_bytes",
    "greedy_generate", "CHARLM_PRESETS",
]


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("site-packages", "test/", "idlelib/", "lib2to3/tests")) or "/test" in rel:
            continue
        files.append(p)
    return files


def load_text_corpus(num_bytes: int = 2_000_000, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Python-standard-library source text as byte arrays ``(train_u8, val_u8)``.

    Files are assigned to validation by a hash of their relative path (``crc32(seed, path)``),
    so the split is deterministic, file-disjoint and independent of ``num_bytes``. Each split
    is the concatenation of its files (sorted by path) truncated to ``num_bytes`` for train and
    ``num_bytes * val_fraction`` for validation. Vocabulary: the 256 byte values.
    """
    check_in_range("num_bytes", num_bytes, 1024, None)
    check_in_range("val_fraction", val_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = [], []
    n_tr = n_va = 0
    cap_va = max(int(num_bytes * val_fraction), 1024)
    bucket = max(int(round(1 / val_fraction)), 2)
    for p in _stdlib_files():
        rel = p.relative_to(root).as_posix()
        is_val = zlib.crc32(f"{seed}:{rel}".encode()) % bucket == 0
        if (is_val and n_va >= cap_va) or (not is_val and n_tr >= num_bytes):
            if n_va >= cap_va and n_tr >= num_bytes:
                break
            continue
        data = p.read_bytes()
        if is_val:
            val.append(data)
            n_va += len(data)
        else:
            train.append(data)
            n_tr += len(data)
    tr = np.frombuffer(b"".join(train), dtype=np.uint8)[:num_bytes].copy()
    va = np.frombuffer(b"".join(val), dtype=np.uint8)[:cap_va].copy()
    if tr.size < 1024 or va.size < 256:
        raise RuntimeError(f"standard-library corpus too small under {root}: {tr.size} train, {va.size} val bytes")
    return tr, va


def sample_batch(data: np.ndarray | jax.Array, key: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
    """Random windows of ``seq_len + 1`` tokens: int32 ``[batch_size, seq_len + 1]``."""
    check_key("key", key)
    n = int(data.shape[0])
    if n <= seq_len + 1:
        raise ValueError(f"`data` has {n} tokens, fewer than `seq_len` + 2 = {seq_len + 2}.")
    starts = jax.random.randint(key, (batch_size,), 0, n - seq_len - 1)
    idx = starts[:, None] + jnp.arange(seq_len + 1)[None, :]
    return jnp.asarray(data)[idx].astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class CharLMConfig:
    """Hyper-parameters of :class:`CharLM`."""

    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 512
    max_len: int = 256

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"`d_model` ({self.d_model}) must be divisible by `num_heads` ({self.num_heads}).")
        for f in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"`{f}` must be >= 1, got {getattr(self, f)}.")


# Active capture dict (path -> list of inputs) while capture_linear_inputs runs.
_CAPTURE: dict[str, list] | None = None


def _lin(layer: Callable[[jax.Array], jax.Array], x: jax.Array, path: str) -> jax.Array:
    if _CAPTURE is not None:
        _CAPTURE.setdefault(path, []).append(x.reshape(-1, x.shape[-1]))
    return layer(x)


class Attention(nnx.Module):
    """Causal multi-head self-attention with separate q, k, v, o ``nnx.Linear`` layers."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        init = nnx.initializers.normal(0.02)
        self.q = nnx.Linear(d_model, d_model, kernel_init=init, rngs=rngs)
        self.k = nnx.Linear(d_model, d_model, kernel_init=init, rngs=rngs)
        self.v = nnx.Linear(d_model, d_model, kernel_init=init, rngs=rngs)
        self.o = nnx.Linear(d_model, d_model, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def __call__(self, x: jax.Array, path: str = "attn") -> jax.Array:
        B, T, _ = x.shape
        h = self.num_heads
        q = _lin(self.q, x, f"{path}.q")
        k = _lin(self.k, x, f"{path}.k")
        v = _lin(self.v, x, f"{path}.v")
        dh = q.shape[-1] // h
        q, k, v = (a.reshape(B, T, h, dh) for a in (q, k, v))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(dh)
        causal = jnp.tril(jnp.ones((T, T), bool))
        s = jnp.where(causal, s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, T, h * dh)
        return _lin(self.o, y, f"{path}.o")


class MLP(nnx.Module):
    """``down(gelu(up(x)))``: hidden neurons are columns of ``up.kernel`` / rows of ``down.kernel``."""

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(d_model, d_ff, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def __call__(self, x: jax.Array, path: str = "mlp") -> jax.Array:
        return _lin(self.down, jax.nn.gelu(_lin(self.up, x, f"{path}.up")), f"{path}.down")


class Block(nnx.Module):
    def __init__(self, cfg: CharLMConfig, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = Attention(cfg.d_model, cfg.num_heads, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, rngs=rngs)

    def __call__(self, x: jax.Array, path: str) -> jax.Array:
        x = x + self.attn(self.ln1(x), f"{path}.attn")
        return x + self.mlp(self.ln2(x), f"{path}.mlp")


class CharLM(nnx.Module):
    """Byte-level decoder-only transformer (pre-LayerNorm, learned positions, GELU MLP).

    ``model(tokens [B, T]) -> logits [B, T, V]``; ``model.features(tokens) -> [B, T, d]`` are
    the final-normed hidden states with ``logits = features @ model.head.kernel``.
    """

    def __init__(self, cfg: CharLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.pos = nnx.Param(0.01 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model)))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                               kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def features(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"`tokens` must have shape [batch, time], got {tokens.shape}.")
        T = tokens.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"`tokens` has {T} positions, more than max_len={self.cfg.max_len}.")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"`tokens` must be integer ids, got dtype {tokens.dtype}.")
        tokens = check_index_range("tokens", tokens, self.cfg.vocab_size, what="the vocabulary")
        x = self.embed(tokens) + self.pos[...][:T]
        for i, blk in enumerate(self.blocks):
            x = blk(x, f"blocks.{i}")
        return self.ln_f(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return _lin(self.head, self.features(tokens), "head")


CHARLM_PRESETS: dict[str, dict[str, Any]] = {
    # model config, training steps, batch, seq_len, lr, corpus bytes
    "test": dict(cfg=CharLMConfig(d_model=64, num_layers=2, num_heads=4, d_ff=256, max_len=64),
                 steps=150, batch_size=32, seq_len=64, lr=3e-3, num_bytes=300_000),
    # the CharLM teacher the demo used before it moved to the Llama family (minutes on a 2-core CPU)
    "small": dict(cfg=CharLMConfig(d_model=128, num_layers=3, num_heads=4, d_ff=512, max_len=128),
                  steps=700, batch_size=32, seq_len=64, lr=3e-3, num_bytes=1_500_000),
    "full": dict(cfg=CharLMConfig(d_model=384, num_layers=6, num_heads=6, d_ff=1536, max_len=256),
                 steps=6000, batch_size=64, seq_len=256, lr=1e-3, num_bytes=20_000_000),
}


def param_count(model: nnx.Module) -> int:
    """Number of parameter scalars in ``model``'s ``nnx.Param`` leaves."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def param_bytes(model: nnx.Module) -> int:
    """Bytes held by every array leaf of the model's state (params and quantized buffers)."""
    total = 0
    for x in jax.tree.leaves(nnx.state(model)):
        if hasattr(x, "dtype") and hasattr(x, "size"):
            total += int(x.size) * jnp.dtype(x.dtype).itemsize
    return total


# --------------------------------------------------------------------------------------------
# Training / evaluation
# --------------------------------------------------------------------------------------------
def lm_loss(model: Callable[[jax.Array], jax.Array], tokens: jax.Array) -> jax.Array:
    """Mean next-token cross entropy (nats) of ``model`` on ``tokens [B, T+1]``."""
    logits = model(tokens[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def train_lm(
    model: nnx.Module,
    train_data: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float = 1e-3,
    key: jax.Array,
    loss_fn: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
    tx: optax.GradientTransformation | None = None,
    progress: bool | str = False,
    warmup: int | None = None,
    mesh: Any = None,
    data_axis: str = "data",
) -> list[float]:
    """Train ``model`` in place with AdamW (cosine schedule) on random windows of ``train_data``.

    Args:
      loss_fn: ``loss_fn(model, tokens[B, T+1]) -> scalar``; default :func:`lm_loss`. A
        distillation loss closes over the teacher.
      tx: optax transformation; default AdamW(lr, cosine decay, warm-up, weight decay 0.01),
        gradient clipping 1.0.
      progress: show a tqdm bar (a string is used as its description).
      mesh: optional device mesh: the batch is split over ``data_axis`` and the parameters and
        optimizer state are replicated, so XLA runs the step data-parallel (same numbers as one
        device up to float reduction order). ``batch_size`` is the global batch.
    Returns:
      the per-step training losses.
    """
    check_key("key", key)
    check_in_range("steps", steps, 1, None)
    loss_fn = lm_loss if loss_fn is None else loss_fn
    if tx is None:
        warm = min(100, steps // 10) if warmup is None else warmup
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(warm, 1), steps, lr * 0.1)
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    data = jnp.asarray(train_data)
    sampler = jax.jit(lambda k: sample_batch(data, k, batch_size, seq_len))
    if mesh is not None:
        from jaxeff._core.sharding import replicate, shard_batch

        nnx.update(model, replicate(nnx.state(model), mesh))
        nnx.update(opt, replicate(nnx.state(opt), mesh))

    @nnx.jit
    def step(model, opt, tokens):
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
        opt.update(model, grads)
        return loss

    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=progress if isinstance(progress, str) else "train", leave=False)
    losses = []
    for i in it:
        tokens = sampler(jax.random.fold_in(key, i))
        if mesh is not None:
            tokens = shard_batch(tokens, mesh, data_axis)
        losses.append(step(model, opt, tokens))
    return [float(x) for x in jax.device_get(losses)]


@nnx.jit
def _batch_loss_sum(model, toks):
    logits = model(toks[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).sum()


def evaluate_lm(
    model: Callable[[jax.Array], jax.Array],
    val_data: np.ndarray,
    *,
    seq_len: int,
    batch_size: int = 32,
    num_batches: int | None = 8,
) -> dict[str, float]:
    """Validation loss (nats/byte), bits per byte and perplexity on contiguous windows.

    Uses non-overlapping windows from the start of ``val_data`` (deterministic);
    ``num_batches=None`` evaluates all full windows.
    """
    data = np.asarray(val_data)
    n_win = (data.shape[0] - 1) // seq_len
    if n_win < 1:
        raise ValueError(f"`val_data` ({data.shape[0]} tokens) is shorter than `seq_len` + 1.")
    if num_batches is not None:
        n_win = min(n_win, num_batches * batch_size)
    idx = np.arange(n_win)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    windows = jnp.asarray(data[idx].astype(np.int32))

    total = 0.0
    for s in range(0, n_win, batch_size):
        total += float(_batch_loss_sum(model, windows[s : s + batch_size]))
    loss = total / (n_win * seq_len)
    return {"loss": loss, "bpb": loss / math.log(2), "ppl": math.exp(loss)}


@nnx.jit(static_argnums=(3, 4, 5))
def _generate(model, buf, key, P, num_new, temperature):
    def body(i, carry):
        buf, key = carry
        pos = P + i
        logits = jax.lax.dynamic_index_in_dim(model(buf), pos - 1, axis=1, keepdims=False).astype(jnp.float32)
        if temperature > 0:
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, logits / temperature)
        else:
            nxt = jnp.argmax(logits, -1)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(jnp.int32), pos, axis=1), key

    buf, _ = jax.lax.fori_loop(0, num_new, body, (buf, key))
    return buf


def greedy_generate(model: nnx.Module, prompt: jax.Array, num_new: int, *, temperature: float = 0.0,
                    key: jax.Array | None = None) -> jax.Array:
    """Generate ``num_new`` tokens after ``prompt [B, P]`` (greedy, or sampled if temperature > 0).

    Recomputes the causal forward pass over the (fixed-length, ``P + num_new``) buffer each step
    under ``lax.fori_loop``: simple and jit-compiled; no KV cache (see ``jaxeff.distill.on_policy`` for cached sampling).
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    B, P = prompt.shape
    L = model.cfg.max_len
    if P + num_new > L:
        raise ValueError(f"prompt length {P} + `num_new` {num_new} exceeds max_len {L}.")
    if temperature > 0:
        check_key("key", key)
    key = jax.random.key(0) if key is None else key
    buf = jnp.zeros((B, P + num_new), jnp.int32).at[:, :P].set(prompt)

    return _generate(model, buf, key, P, num_new, float(temperature))[:, : P + num_new]


# --------------------------------------------------------------------------------------------
# Calibration activations
# --------------------------------------------------------------------------------------------
def capture_linear_inputs(model: CharLM, tokens: jax.Array) -> dict[str, jax.Array]:
    """Inputs of every ``nnx.Linear`` of a :class:`CharLM` on ``tokens``, as ``{path: [N, in]}``.

    Paths are ``blocks.{i}.attn.{q,k,v,o}``, ``blocks.{i}.mlp.{up,down}`` and ``head``. Runs the
    forward pass eagerly (not under jit) once.

    Any other NNX model called as ``model(tokens)`` (e.g. :class:`~jaxeff.models.LlamaForCausalLM`,
    tunix models need more arguments: use ``jaxeff._core.layers.capture_inputs``) gets the generic
    capture of every weight site it multiplies (``nnx.Linear``, ``LinearGeneral``, ``Einsum``,
    einsum-style layers): ``{module path: [N, K]}`` in each weight's matrix layout.
    """
    if not isinstance(model, CharLM):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"capture_linear_inputs: model must be an nnx.Module, got {type(model).__name__}.")
        from jaxeff._core.layers import capture_inputs

        return capture_inputs(model, jnp.asarray(tokens))
    global _CAPTURE
    prev, _CAPTURE = _CAPTURE, {}
    try:
        model(jnp.asarray(tokens))
        out = {k: jnp.concatenate(v, 0) for k, v in _CAPTURE.items()}
    finally:
        _CAPTURE = prev
    return out


# --------------------------------------------------------------------------------------------
# Pre-trained teacher (disk cache)
# --------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    d = Path(os.environ.get("JAXEFF_CACHE", Path.home() / ".cache" / "jaxeff"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    flat = {}
    for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]:
        flat["/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = np.asarray(v)
    return flat


def _load_flat(model: nnx.Module, flat: dict[str, np.ndarray]) -> None:
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new = []
    for path, v in leaves:
        k = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        if k not in flat or flat[k].shape != np.shape(v):
            raise ValueError(f"cached parameter {k!r} missing or of the wrong shape")
        new.append(jnp.asarray(flat[k]))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new))
    nnx.update(model, state)


def pretrained_charlm(size: str = "small", seed: int = 0, *, progress: bool = False,
                      cache: bool = True) -> tuple[CharLM, np.ndarray, np.ndarray]:
    """A :class:`CharLM` teacher trained on the standard-library corpus, cached on disk.

    Args:
      size: "test" (seconds), "small" (minutes on a 2-core CPU), "full" (GPU/TPU); see
        ``CHARLM_PRESETS``.
      seed: initialization and data-order seed.
      cache: read/write ``$JAXEFF_CACHE`` (default ``~/.cache/jaxeff``).
    Returns:
      ``(model, train_u8, val_u8)``.
    """
    check_choice("size", size, tuple(CHARLM_PRESETS))
    p = CHARLM_PRESETS[size]
    train, val = load_text_corpus(p["num_bytes"], seed=0)
    model = CharLM(p["cfg"], rngs=nnx.Rngs(seed))
    tag = hashlib.sha1(repr((p, seed, train.size, int(train[:4096].sum()), jax.__version__)).encode()).hexdigest()[:12]
    path = _cache_dir() / f"charlm-{size}-{seed}-{tag}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as f:
                _load_flat(model, dict(f))
            return model, train, val
        except Exception:
            path.unlink(missing_ok=True)
    train_lm(model, train, steps=p["steps"], batch_size=p["batch_size"], seq_len=p["seq_len"], lr=p["lr"],
             key=jax.random.key(seed + 1), progress=f"teacher ({size})" if progress else False)
    if cache:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **_flat_state(model))
        os.replace(tmp, path)
    return model, train, val
