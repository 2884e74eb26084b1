"""Offline teacher-logit store: top-k values against numpy, round trip through sharded files,
resume after an interruption, losses from the store equal the online top-k / dense losses."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.distill import forward_kl, fused_linear_topk_distill_loss
from jaxeff.distill.logit_store import (
    TeacherLogitStore,
    build_teacher_logit_store,
    open_teacher_logit_store,
    teacher_topk,
)

V, H, L = 40, 8, 6


def _teacher():
    k1, k2 = jax.random.split(jax.random.key(0))
    emb = jax.random.normal(k1, (V, H))
    head = 2.0 * jax.random.normal(k2, (H, V))
    return lambda t: jnp.tanh(emb[t]) @ head


def _tokens(n=11, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(n, L)).astype(np.int32)


def _np_topk(logits, k, tau):
    z = np.asarray(logits, np.float64) / tau
    lse = np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) + z.max(-1)
    ids = np.argsort(-z, -1, kind="stable")[..., :k]
    lp = np.take_along_axis(z, ids, -1) - lse[..., None]
    rest = np.log1p(-np.exp(lp).sum(-1))
    return lp, ids, rest


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_teacher_topk_matches_numpy(tau):
    z = 3 * jax.random.normal(jax.random.key(1), (5, 7, V))
    lp, ids, rest = teacher_topk(z, 9, tau)
    rlp, rids, rrest = _np_topk(z, 9, tau)
    np.testing.assert_array_equal(np.asarray(ids), rids)
    np.testing.assert_allclose(np.asarray(lp), rlp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rest), rrest, rtol=1e-4, atol=1e-5)
    _, _, full = teacher_topk(z, V, tau)
    assert np.all(np.isneginf(np.asarray(full)))


@pytest.mark.parametrize("value_dtype,tol", [("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_round_trip_over_shards(tmp_path, value_dtype, tol):
    teacher, toks = _teacher(), _tokens()
    st = build_teacher_logit_store(teacher, toks, tmp_path, k=5, temperature=2.0, value_dtype=value_dtype,
                                   batch_size=3, shard_sequences=4, teacher_name="tiny")
    assert isinstance(st, TeacherLogitStore) and len(st) == 11 and st.shard_sizes == (4, 4, 3)
    assert st.num_tokens == 11 * L and st.vocab_size == V and st.teacher == "tiny"
    assert st.bytes_per_token == 5 * ({"float32": 4, "float16": 2, "bfloat16": 2}[value_dtype] + 4) + 8
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "shard-00000.ids.npy"
    assert isinstance(st._shard(1)["ids"], np.memmap)  # memory-mapped reads
    rlp, rids, rrest = _np_topk(teacher(jnp.asarray(toks)), 5, 2.0)
    idx = np.array([10, 0, 5, 3, 4, 7])  # across shards, unsorted
    b = st.read(idx)
    np.testing.assert_array_equal(b.tokens, toks[idx])
    np.testing.assert_array_equal(b.ids, rids[idx])
    np.testing.assert_allclose(np.asarray(b.logprobs, np.float64), rlp[idx], rtol=tol, atol=tol)
    np.testing.assert_allclose(b.rest_logmass, rrest[idx], rtol=1e-4, atol=1e-5)
    jb = st.batch(slice(2, 6))
    assert jb.logprobs.dtype == jnp.float32 and jb.tokens.shape == (4, L)
    assert st.read(np.zeros(0, int)).logprobs.shape == (0, L, 5)
    seen = np.concatenate([np.asarray(bb.tokens) for bb in st.iter_batches(4, key=jax.random.key(0), drop_last=False)])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, toks))
    assert sum(1 for _ in st.iter_batches(4)) == 2
    reopened = open_teacher_logit_store(tmp_path)
    assert reopened == st


def test_loss_from_store_equals_online_losses(tmp_path):
    teacher, toks = _teacher(), _tokens(8)
    st = build_teacher_logit_store(teacher, toks, tmp_path / "k", k=6, temperature=1.5, value_dtype="float32",
                                   shard_sequences=3)
    hs = jax.random.normal(jax.random.key(3), (8, L, H))
    ws = jax.random.normal(jax.random.key(4), (H, V))
    b = st.batch(np.arange(8))
    got = st.loss(hs, ws, b)
    lp, ids, _ = teacher_topk(teacher(jnp.asarray(toks)), 6, 1.5)
    ref = fused_linear_topk_distill_loss(hs, ws, lp, ids, missing_mass=True, temperature=1.5)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    # k = V: the stored teacher is the whole distribution, the loss is the dense forward KL
    full = build_teacher_logit_store(teacher, toks, tmp_path / "full", k=V, temperature=1.5, value_dtype="float32")
    dense = forward_kl(hs @ ws, teacher(jnp.asarray(toks)), temperature=1.5)
    np.testing.assert_allclose(float(full.loss(hs, ws, full.batch(np.arange(8)))), float(dense), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        st.loss(hs, ws, b, temperature=1.0)
    # gradients flow to the student through the store loss and training lowers it
    g = jax.grad(lambda w: st.loss(hs, w, b))(ws)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0
    w = ws
    for _ in range(20):
        w = w - 0.5 * jax.grad(lambda w_: st.loss(hs, w_, b))(w)
    assert float(st.loss(hs, w, b)) < 0.9 * float(got)


def test_resume_after_interruption(tmp_path):
    teacher, toks = _teacher(), _tokens(10)
    ref = build_teacher_logit_store(teacher, toks, tmp_path / "ref", k=4, batch_size=2, shard_sequences=3)
    calls = {"n": 0}

    def flaky(t):  # traced once per jit; the failure comes from the host callback on the 3rd batch
        def boom(x):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("interrupted")
            return x

        y = teacher(t)
        return jax.pure_callback(boom, jax.ShapeDtypeStruct(y.shape, y.dtype), y)

    with pytest.raises(Exception, match="interrupted"):
        build_teacher_logit_store(flaky, toks, tmp_path / "run", k=4, batch_size=2, shard_sequences=3)
    meta = json.loads((tmp_path / "run" / "store.json").read_text())
    assert meta["complete"] is False and meta["shards"] == [3]
    with pytest.raises(ValueError, match="incomplete"):
        open_teacher_logit_store(tmp_path / "run")
    with pytest.raises(ValueError, match="not empty"):
        build_teacher_logit_store(teacher, toks, tmp_path / "run", k=4, batch_size=2, shard_sequences=3)
    with pytest.raises(ValueError, match="k is 4 there"):
        build_teacher_logit_store(teacher, toks, tmp_path / "run", k=5, batch_size=2, shard_sequences=3, resume=True)
    st = build_teacher_logit_store(teacher, toks, tmp_path / "run", k=4, batch_size=2, shard_sequences=3, resume=True)
    a, b = st.read(slice(None)), ref.read(slice(None))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again = build_teacher_logit_store(teacher, toks, tmp_path / "run", k=4, batch_size=2, shard_sequences=3,
                                      overwrite=True)
    assert len(again) == 10


def test_bad_input(tmp_path):
    teacher, toks = _teacher(), _tokens(4)
    bad = [
        (dict(k=0), "`k`"), (dict(k=V + 1), "exceeds"), (dict(temperature=0.0), "`temperature`"),
        (dict(temperature=float("nan")), "`temperature`"), (dict(value_dtype="int8"), "`value_dtype`"),
        (dict(batch_size=0), "`batch_size`"), (dict(shard_sequences=-1), "`shard_sequences`"),
        (dict(resume=True, overwrite=True), "exclusive"),
    ]
    for i, (kw, msg) in enumerate(bad):
        with pytest.raises(ValueError, match=msg):
            build_teacher_logit_store(teacher, toks, tmp_path / f"b{i}", **{"k": 4, **kw})
    with pytest.raises(ValueError, match="2-D integer"):
        build_teacher_logit_store(teacher, toks[0], tmp_path / "c")
    with pytest.raises(ValueError, match="2-D integer"):
        build_teacher_logit_store(teacher, toks.astype(np.float32), tmp_path / "d")
    with pytest.raises(ValueError, match=r"logits \[B, L, V\]"):
        build_teacher_logit_store(lambda t: teacher(t)[..., 0], toks, tmp_path / "e")
    st = build_teacher_logit_store(teacher, toks, tmp_path / "ok", k=3, shard_sequences=2)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        st.read([4])
    with pytest.raises(ValueError, match="1-D integer"):
        st.read(np.array([0.5]))
    (tmp_path / "ok" / "shard-00001.ids.npy").unlink()
    with pytest.raises(ValueError, match="shard-00001.ids.npy"):
        open_teacher_logit_store(tmp_path / "ok")
    with pytest.raises(ValueError, match="store.json is missing"):
        open_teacher_logit_store(tmp_path / "nowhere")
