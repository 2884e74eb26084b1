"""Offline teacher logits: run the teacher once, store its top-k log-probs, train from the store.

Distilling from a large teacher online costs a teacher forward pass per student step and the
teacher's weights in device memory. The store written here holds, for every token of a
tokenized corpus, the teacher's ``k`` largest log-probabilities at temperature ``T``

.. math::
    \\ell_i = \\frac{z_i}{T} - \\operatorname{logsumexp}_j \\frac{z_j}{T},\\qquad i \\in K
    \\ (\\text{the top-}k\\text{ ids}),

their int32 ids, and the log of the mass left outside them,
``log(1 - sum_{i in K} exp(l_i))``, computed exactly as a log-sum-exp over the non-top-k logits
(float32, no cancellation). The student is then trained with
:func:`~jaxeff.distill.fused_linear_topk_distill_loss` (``missing_mass=True``) on
:meth:`TeacherLogitStore.batch` without loading the teacher.

Layout of a store directory (all plain ``.npy``, opened with ``numpy.load(mmap_mode="r")``, so a
read touches only the rows it asks for)::

    store.json                       settings, shard list, "complete" flag
    shard-00000.tokens.npy           int32   [n, L]      the input token ids
    shard-00000.logprobs.npy         fp16 / bf16 (stored as uint16) / fp32   [n, L, k]
    shard-00000.ids.npy              int32   [n, L, k]
    shard-00000.rest.npy             float32 [n, L]      log of the mass outside the top-k

Bytes per token: ``k * (value bytes + 4) + 8`` (k=64 in fp16: 392 B/token against ``4 V`` for
full fp32 logits, 0.3% of V=32768's 128 KiB).

Shards are written one at a time and ``store.json`` is rewritten after each, so an interrupted
build resumes from the last finished shard (``resume=True``).

References:
  Hinton et al., arXiv:1503.02531 (soft targets); "Efficient AI in Practice: Training and
  Deployment of Efficient LLMs for Industry Applications", arXiv:2502.14305 (offline teacher
  logits in the compression pipeline); Liger-Kernel issue #441 (top-k distillation).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

__all__ = [
    "TeacherBatch",
    "TeacherLogitStore",
    "build_teacher_logit_store",
    "open_teacher_logit_store",
    "teacher_topk",
    "STORE_VALUE_DTYPES",
]

FORMAT_VERSION = 1
STORE_VALUE_DTYPES = ("float16", "bfloat16", "float32")
_INDEX = "store.json"
_PARTS = ("tokens", "logprobs", "ids", "rest")


class TeacherBatch(NamedTuple):
    """Rows of a store: ``tokens [B, L]`` int32, ``logprobs [B, L, k]`` float32, ``ids [B, L, k]``
    int32, ``rest_logmass [B, L]`` float32 (log of the teacher mass outside the top-k)."""

    tokens: Any
    logprobs: Any
    ids: Any
    rest_logmass: Any


def teacher_topk(logits: jax.Array, k: int, temperature: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``k`` log-probabilities of ``softmax(logits / temperature)`` and the log tail mass.

    Returns ``(logprobs [..., k] float32, ids [..., k] int32, rest_logmass [...] float32)``
    with ``rest_logmass = logsumexp(z_j / T, j not in top-k) - logsumexp(z / T)`` (``-inf`` when
    ``k`` is the whole vocabulary).

    Example:
      >>> lp, ids, rest = teacher_topk(jnp.log(jnp.array([0.5, 0.3, 0.2])), 2)
      >>> [round(float(v), 4) for v in jnp.exp(lp)], ids.tolist(), round(float(jnp.exp(rest)), 4)
      ([0.5, 0.3], [0, 1], 0.2)
    """
    if logits is None:
        raise ValueError("`logits` must be an array [..., V], got None.")
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"`logits` must have a non-empty vocabulary axis [..., V], got shape {logits.shape}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"`k` must be an integer in [1, V={logits.shape[-1]}], got {k!r}.")
    _check_temperature(temperature)
    z = logits.astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    top, ids = jax.lax.top_k(z, k)
    in_k = jnp.zeros(z.shape, bool)
    in_k = jnp.put_along_axis(in_k, ids, True, axis=-1, inplace=False)
    rest = jax.nn.logsumexp(jnp.where(in_k, -jnp.inf, z), axis=-1) - lse
    return top - lse[..., None], ids.astype(jnp.int32), rest


def _np_value_dtype(name: str):
    return {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[name]


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
            or not np.isfinite(float(temperature)) or float(temperature) <= 0:
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")


def _check_store_args(k, temperature, value_dtype, shard_sequences, batch_size):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    _check_temperature(temperature)
    if value_dtype not in STORE_VALUE_DTYPES:
        raise ValueError(f"`value_dtype` must be one of {STORE_VALUE_DTYPES}, got {value_dtype!r}.")
    for name, v in (("shard_sequences", shard_sequences), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")


@dataclasses.dataclass(frozen=True)
class TeacherLogitStore:
    """A written store (see the module docstring), opened for memory-mapped reads.

    Attributes:
      path: the store directory.
      k, temperature, vocab_size, seq_len, value_dtype: the settings it was built with.
      shard_sizes: number of sequences in each shard.
      teacher: the free-text description given at build time.
    """

    path: Path
    k: int
    temperature: float
    vocab_size: int
    seq_len: int
    value_dtype: str
    shard_sizes: tuple[int, ...]
    teacher: str = ""

    def __len__(self) -> int:
        return int(sum(self.shard_sizes))

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per token: ``k * (value bytes + 4 id bytes) + 4 (rest) + 4 (token)``."""
        return self.k * (np.dtype(_np_value_dtype(self.value_dtype)).itemsize + 4) + 8

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        out = {}
        for part in _PARTS:
            f = self.path / f"shard-{s:05d}.{part}.npy"
            if not f.exists():
                raise ValueError(f"teacher logit store {self.path}: missing file {f.name}.")
            a = np.load(f, mmap_mode="r")
            if part == "logprobs" and self.value_dtype == "bfloat16":
                a = a.view(ml_dtypes.bfloat16)
            out[part] = a
        n = self.shard_sizes[s]
        expect = {"tokens": (n, self.seq_len), "logprobs": (n, self.seq_len, self.k),
                  "ids": (n, self.seq_len, self.k), "rest": (n, self.seq_len)}
        for part, shape in expect.items():
            if out[part].shape != shape:
                raise ValueError(f"teacher logit store {self.path}: shard-{s:05d}.{part}.npy has shape "
                                 f"{out[part].shape}, store.json says {shape}.")
        return out

    def read(self, indices: Any) -> TeacherBatch:
        """Rows ``indices`` (int array or slice over ``range(len(self))``) as numpy arrays
        (logprobs in their stored dtype), read from the memory-mapped shards."""
        n = len(self)
        idx = np.arange(n)[indices] if isinstance(indices, slice) else np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"`indices` must be a 1-D integer array or a slice, got {idx.dtype} {idx.shape}.")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"`indices` must lie in [0, {n}), got range [{idx.min()}, {idx.max()}].")
        starts = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        shard_of = np.searchsorted(starts, idx, side="right") - 1
        parts = {p: [] for p in _PARTS}
        order = []
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = idx[sel] - starts[s]
            sh = self._shard(int(s))
            for p in _PARTS:
                parts[p].append(np.asarray(sh[p][local]))
            order.append(sel)
        if not order:
            vdt = _np_value_dtype(self.value_dtype)
            L, k = self.seq_len, self.k
            return TeacherBatch(np.zeros((0, L), np.int32), np.zeros((0, L, k), vdt),
                                np.zeros((0, L, k), np.int32), np.zeros((0, L), np.float32))
        inv = np.argsort(np.concatenate(order), kind="stable")
        return TeacherBatch(*(np.concatenate(parts[p])[inv] for p in _PARTS))

    def batch(self, indices: Any) -> TeacherBatch:
        """:meth:`read` as device arrays, log-probs in float32 (what the losses take)."""
        b = self.read(indices)  # log-probs cross to the device in their stored (16-bit) dtype
        return TeacherBatch(jnp.asarray(b.tokens), jnp.asarray(b.logprobs).astype(jnp.float32),
                            jnp.asarray(b.ids), jnp.asarray(b.rest_logmass))

    def iter_batches(self, batch_size: int, *, key: jax.Array | None = None,
                     drop_last: bool = True) -> Iterator[TeacherBatch]:
        """Batches of ``batch_size`` sequences in store order, or shuffled by ``key``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        order = np.arange(len(self)) if key is None else np.asarray(jax.random.permutation(key, len(self)))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            yield self.batch(order[i:i + batch_size])

    def loss(self, student_hidden: Any, student_head: Any, batch: TeacherBatch, **kwargs) -> jax.Array:
        """:func:`~jaxeff.distill.fused_linear_topk_distill_loss` against ``batch`` at the store's
        temperature, with the missing-mass term (pass ``missing_mass=False`` to drop it).
        ``student_hidden`` is ``[B, L, H]`` for ``batch.tokens [B, L]``."""
        from jaxeff.distill.fused import fused_linear_topk_distill_loss

        if "temperature" in kwargs and float(kwargs["temperature"]) != self.temperature:
            raise ValueError(f"`temperature` {kwargs['temperature']} differs from the store's {self.temperature}: "
                             "the stored log-probs are at the store's temperature.")
        kwargs.setdefault("missing_mass", True)
        kwargs["temperature"] = self.temperature
        kwargs.setdefault("vocab_size", self.vocab_size if self.vocab_size <= np.shape(student_head)[1] else None)
        return fused_linear_topk_distill_loss(student_hidden, student_head, batch.logprobs, batch.ids, **kwargs)


def _read_index(path: Path) -> dict:
    f = path / _INDEX
    if not f.exists():
        raise ValueError(f"{path} is not a teacher logit store: {_INDEX} is missing.")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e}).") from None
    for key in ("format_version", "k", "temperature", "vocab_size", "seq_len", "value_dtype", "shards", "complete"):
        if key not in meta:
            raise ValueError(f"{f}: missing key {key!r}.")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version {meta['format_version']} is not {FORMAT_VERSION}.")
    if meta["value_dtype"] not in STORE_VALUE_DTYPES:
        raise ValueError(f"{f}: value_dtype {meta['value_dtype']!r} is not one of {STORE_VALUE_DTYPES}.")
    return meta


def open_teacher_logit_store(path: str | os.PathLike) -> TeacherLogitStore:
    """Open a finished store for reading (ValueError if unfinished, missing or inconsistent)."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a store directory path, got {path!r}.")
    path = Path(path)
    meta = _read_index(path)
    if not meta["complete"]:
        raise ValueError(f"teacher logit store {path} is incomplete ({len(meta['shards'])} shards written): "
                         "finish it with build_teacher_logit_store(..., resume=True).")
    store = _store_from_meta(path, meta)
    for s in range(len(store.shard_sizes)):
        store._shard(s)  # every file present, every shape as recorded
    return store


def _store_from_meta(path: Path, meta: dict) -> TeacherLogitStore:
    return TeacherLogitStore(path=path, k=int(meta["k"]), temperature=float(meta["temperature"]),
                             vocab_size=int(meta["vocab_size"]), seq_len=int(meta["seq_len"]),
                             value_dtype=meta["value_dtype"], shard_sizes=tuple(int(n) for n in meta["shards"]),
                             teacher=str(meta.get("teacher", "")))


def _atomic_save(f: Path, a: np.ndarray) -> None:
    tmp = f.with_name(f.name + ".tmp.npy")
    np.save(tmp, a)
    os.replace(tmp, f)


def _write_index(path: Path, meta: dict) -> None:
    tmp = path / (_INDEX + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / _INDEX)


def build_teacher_logit_store(
    teacher: Callable[[jax.Array], jax.Array],
    tokens: Any,
    path: str | os.PathLike,
    *,
    k: int = 64,
    temperature: float = 1.0,
    value_dtype: str = "float16",
    batch_size: int = 8,
    shard_sequences: int = 1024,
    teacher_name: str = "",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TeacherLogitStore:
    """Run ``teacher`` once over ``tokens`` and write its top-k log-probs to ``path``.

    Args:
      teacher: ``tokens [B, L] int32 -> logits [B, L, V]`` (e.g. a
        :class:`~jaxeff.models.LlamaForCausalLM`); called under ``jax.jit`` per batch of
        ``batch_size`` sequences (the last batch is padded, its padding dropped).
      tokens: ``[N, L]`` integer token ids (numpy array or memmap; read batch by batch).
      path: directory to create (it must not hold files unless ``resume`` or ``overwrite``).
      k: top-k size, ``1 <= k <= V``.
      temperature: the distillation temperature ``T`` (> 0) the log-probs are taken at.
      value_dtype: ``"float16"`` (default: 11-bit mantissa, log-prob error <= 2^-11 relative),
        ``"bfloat16"`` or ``"float32"``.
      shard_sequences: sequences per shard file.
      teacher_name: free text recorded in ``store.json``.
      resume: keep the shards a previous build with the same settings finished and write the rest.
      overwrite: delete an existing store at ``path`` first.
      progress: show a tqdm bar.

    Returns:
      The opened :class:`TeacherLogitStore`.

    Example:
      >>> import tempfile
      >>> W = jax.random.normal(jax.random.key(0), (16, 50))
      >>> toks = np.arange(24).reshape(3, 8) % 16
      >>> st = build_teacher_logit_store(lambda t: W[t], toks, tempfile.mkdtemp(), k=4)
      >>> len(st), st.k, st.bytes_per_token
      (3, 4, 32)
    """
    _check_store_args(k, temperature, value_dtype, shard_sequences, batch_size)
    if not callable(teacher):
        raise TypeError(f"`teacher` must be a callable tokens [B, L] -> logits [B, L, V], got {type(teacher).__name__}.")
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a directory path, got {path!r}.")
    if tokens is None:
        raise ValueError("`tokens` must be a 2-D integer array [num_sequences, seq_len], got None.")
    toks = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if toks.ndim != 2 or not np.issubdtype(toks.dtype, np.integer):
        raise ValueError(f"`tokens` must be a 2-D integer array [num_sequences, seq_len], got {toks.dtype} {toks.shape}.")
    n, seq_len = toks.shape
    if n == 0 or seq_len == 0:
        raise ValueError(f"`tokens` must hold at least one token, got shape {toks.shape}.")
    for name, v in (("resume", resume), ("overwrite", overwrite), ("progress", progress)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"`{name}` must be True or False, got {v!r}.")
    if resume and overwrite:
        raise ValueError("`resume` and `overwrite` are exclusive.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    existing = [p for p in path.iterdir()]
    meta = None
    if existing and overwrite:
        for p in existing:
            if p.is_file() and (p.name.startswith("shard-") or p.name.startswith(_INDEX)):
                p.unlink()
        if any(p for p in path.iterdir()):
            raise ValueError(f"`path` {path} holds files that are not a teacher logit store's; not overwriting them.")
    elif existing:
        if not resume:
            raise ValueError(f"`path` {path} is not empty: pass resume=True to continue a build or overwrite=True.")
        meta = _read_index(path)

    jit_teacher = jax.jit(lambda t: teacher(t))
    probe = jax.eval_shape(jit_teacher, jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32))
    if len(probe.shape) != 3 or probe.shape[:2] != (batch_size, seq_len):
        raise ValueError(f"`teacher` must map tokens [B, L] to logits [B, L, V]; for [{batch_size}, {seq_len}] "
                         f"it returned {probe.shape}.")
    vocab = int(probe.shape[-1])
    if k > vocab:
        raise ValueError(f"`k` ({k}) exceeds the teacher's vocabulary size {vocab}.")
    settings = dict(format_version=FORMAT_VERSION, k=int(k), temperature=float(temperature), vocab_size=vocab,
                    seq_len=int(seq_len), value_dtype=value_dtype, shard_sequences=int(shard_sequences),
                    num_sequences=int(n), teacher=str(teacher_name))
    if meta is not None:
        for key_, v in settings.items():
            if meta.get(key_) != v:
                raise ValueError(f"cannot resume the store at {path}: {key_} is {meta.get(key_)!r} there, {v!r} now.")
        done = list(meta["shards"])
    else:
        done = []
    meta = dict(settings, shards=done, complete=False)
    _write_index(path, meta)

    tau = float(temperature)

    @jax.jit
    def top(t):
        return teacher_topk(jit_teacher(t), k, tau)

    vdt = _np_value_dtype(value_dtype)
    starts = list(range(0, n, shard_sequences))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="teacher logits", unit="seq", initial=sum(done))
    for s, a in enumerate(starts):
        if s < len(done):
            continue
        b = min(a + shard_sequences, n)
        out = {p: [] for p in ("logprobs", "ids", "rest")}
        for i in range(a, b, batch_size):
            chunk = np.asarray(toks[i:min(i + batch_size, b)])
            if chunk.min() < 0 or chunk.max() >= vocab:  # an embedding lookup would clamp silently
                raise ValueError(f"`tokens` rows {i}..{i + chunk.shape[0] - 1} hold ids outside [0, {vocab}) (the "
                                 f"teacher's vocabulary): min {int(chunk.min())}, max {int(chunk.max())}.")
            chunk = chunk.astype(np.int32)
            m = chunk.shape[0]
            if m < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - m, seq_len), np.int32)])
            lp, ids, rest = jax.device_get(top(jnp.asarray(chunk)))
            out["logprobs"].append(np.asarray(lp[:m]).astype(vdt))
            out["ids"].append(np.asarray(ids[:m]))
            out["rest"].append(np.asarray(rest[:m], np.float32))
            if bar is not None:
                bar.update(m)
        lp = np.concatenate(out["logprobs"])
        if value_dtype == "bfloat16":
            lp = lp.view(np.uint16)
        _atomic_save(path / f"shard-{s:05d}.tokens.npy", np.asarray(toks[a:b], np.int32))
        _atomic_save(path / f"shard-{s:05d}.logprobs.npy", lp)
        _atomic_save(path / f"shard-{s:05d}.ids.npy", np.concatenate(out["ids"]))
        _atomic_save(path / f"shard-{s:05d}.rest.npy", np.concatenate(out["rest"]))
        meta["shards"].append(b - a)
        _write_index(path, meta)
    if bar is not None:
        bar.close()
    meta["complete"] = True
    _write_index(path, meta)
    return open_teacher_logit_store(path)
