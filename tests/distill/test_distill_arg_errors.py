"""Bad arguments of the distill losses and samplers fail with an error naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxeff.distill import (
    attention_transfer_loss,
    filter_logits,
    forward_kl,
    fused_linear_distill_loss,
    fused_linear_topk_distill_loss,
    generalized_jsd,
    hidden_state_loss,
    hinton_kd,
    mix_on_policy,
    on_policy_batch,
    reverse_kl,
    sample_continuations,
    sample_from_logits,
    skew_forward_kl,
    skew_reverse_kl,
    topk_kl,
    tvd,
)

S = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
T = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
LP, IDS = jax.lax.top_k(jax.nn.log_softmax(T), 3)
LABELS = jnp.array([0, 1, 5, 2])
HS = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
WS = jnp.asarray(np.random.default_rng(3).normal(size=(5, 6)), jnp.float32)
HT = jnp.asarray(np.random.default_rng(4).normal(size=(4, 3)), jnp.float32)
WT = jnp.asarray(np.random.default_rng(5).normal(size=(3, 6)), jnp.float32)


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, tvd, generalized_jsd, skew_forward_kl, skew_reverse_kl])
@pytest.mark.parametrize("kw, name", [
    ({"student_logits": None}, "student_logits"),
    ({"teacher_logits": None}, "teacher_logits"),
    ({"temperature": None}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
])
def test_divergences_refuse_none(fn, kw, name):
    args = {"student_logits": S, "teacher_logits": T, **kw}
    with pytest.raises(ValueError, match=name):
        fn(args.pop("student_logits"), args.pop("teacher_logits"), **args)


@pytest.mark.parametrize("fn, name", [(generalized_jsd, "beta"), (skew_forward_kl, "lam"), (skew_reverse_kl, "lam")])
def test_divergence_hyperparameter_none(fn, name):
    with pytest.raises(ValueError, match=name):
        fn(S, T, **{name: None})


@pytest.mark.parametrize("kw, name", [
    ({"student_logits": None}, "student_logits"),
    ({"teacher_logits": None}, "teacher_logits"),
    ({"labels": None}, "labels"),
    ({"alpha": None}, "alpha"),
    ({"temperature": None}, "temperature"),
    ({"student_logits": S[None]}, "student_logits"),  # rank+1: named as the logits, not as `labels`
    ({"student_logits": S[0]}, "student_logits"),
    ({"student_logits": S[:0]}, "student_logits"),
])
def test_hinton_kd_errors(kw, name):
    args = {"student_logits": S, "teacher_logits": T, "labels": LABELS, **kw}
    with pytest.raises(ValueError, match=name):
        hinton_kd(**args)


def test_hinton_kd_traced_alpha_still_works():
    f = jax.jit(lambda a: hinton_kd(S, T, LABELS, alpha=a))
    assert np.isclose(float(f(0.3)), float(hinton_kd(S, T, LABELS, alpha=0.3)), rtol=1e-6)


@pytest.mark.parametrize("kw, name", [
    ({"student_logits": None}, "student_logits"),
    ({"teacher_topk_logprobs": None}, "teacher_topk_logprobs"),
    ({"teacher_topk_ids": None}, "teacher_topk_ids"),
    ({"temperature": None}, "temperature"),
])
def test_topk_kl_errors(kw, name):
    args = {"student_logits": S, "teacher_topk_logprobs": LP, "teacher_topk_ids": IDS, **kw}
    with pytest.raises(ValueError, match=name):
        topk_kl(**args)


@pytest.mark.parametrize("kw, name", [
    ({"student_hidden": None}, "student_hidden"),
    ({"student_head": None}, "student_head"),
    ({"teacher_hidden": None}, "teacher_hidden"),
    ({"teacher_head": None}, "teacher_head"),
    ({"beta": None}, "beta"),
    ({"temperature": None}, "temperature"),
    ({"hard_weight": None}, "hard_weight"),
    ({"logit_softcap": "big"}, "logit_softcap"),
])
def test_fused_linear_distill_loss_errors(kw, name):
    args = {"student_hidden": HS, "student_head": WS, "teacher_hidden": HT, "teacher_head": WT, **kw}
    with pytest.raises(ValueError, match=name):
        fused_linear_distill_loss(**args)


@pytest.mark.parametrize("kw, name", [
    ({"student_hidden": None}, "student_hidden"),
    ({"teacher_topk_logprobs": None}, "teacher_topk_logprobs"),
    ({"teacher_topk_ids": None}, "teacher_topk_ids"),
    ({"temperature": None}, "temperature"),
])
def test_fused_linear_topk_distill_loss_errors(kw, name):
    args = {"student_hidden": HS, "student_head": WS, "teacher_topk_logprobs": LP, "teacher_topk_ids": IDS, **kw}
    with pytest.raises(ValueError, match=name):
        fused_linear_topk_distill_loss(**args)


@pytest.mark.parametrize("missing_mass", [False, True])
def test_fused_topk_nan_teacher_logprob_propagates(missing_mass):
    ref = fused_linear_topk_distill_loss(HS, WS, LP, IDS, missing_mass=missing_mass)
    assert np.isfinite(float(ref))
    bad = LP.at[0, 0].set(jnp.nan)
    assert np.isnan(float(fused_linear_topk_distill_loss(HS, WS, bad, IDS, missing_mass=missing_mass)))
    assert np.isnan(float(topk_kl(S, bad, IDS, missing_mass=missing_mass)))


@pytest.mark.parametrize("call, name", [
    (lambda: hidden_state_loss(None, HS), "student_hidden"),
    (lambda: hidden_state_loss(HS, None), "teacher_hidden"),
    (lambda: hidden_state_loss(HS, HS, eps=None), "eps"),
    (lambda: attention_transfer_loss(HS[None, None], HS[None, None], p=None), "p"),
])
def test_feature_losses_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: filter_logits(S[:0], top_k=2), "logits"),
    (lambda: filter_logits(None, top_k=2), "logits"),
    (lambda: sample_from_logits(jax.random.key(0), S[:0]), "logits"),
    (lambda: sample_from_logits(jax.random.key(0), S, temperature=None), "temperature"),
    (lambda: sample_from_logits(jax.random.key(0), S, top_p="x"), "top_p"),
])
def test_sampling_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()


class _TinyLM(nnx.Module):
    def __init__(self):
        self.emb = nnx.Embed(8, 4, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(4, 8, rngs=nnx.Rngs(1))

    def __call__(self, tokens):
        return self.head(self.emb(tokens))


LM = _TinyLM()
PROMPTS = jnp.array([[1, 2], [3, 4]], jnp.int32)
TOKENS = jnp.array([[1, 2, 3, 4], [3, 4, 5, 6]], jnp.int32)


@pytest.mark.parametrize("kw, name, exc", [
    ({"model": None}, "model", TypeError),
    ({"prompts": None}, "prompts", ValueError),
    ({"prompts": PROMPTS.at[0, 0].set(8)}, "prompts", ValueError),
    ({"prompts": PROMPTS.at[0, 0].set(-1)}, "prompts", ValueError),
    ({"prompts": PROMPTS[:0]}, "prompts", ValueError),
    ({"temperature": None}, "temperature", ValueError),
    ({"use_cache": None}, "use_cache", ValueError),
    ({"use_cache": "sometimes"}, "use_cache", ValueError),
])
def test_sample_continuations_errors(kw, name, exc):
    args = {"model": LM, "prompts": PROMPTS, "key": jax.random.key(0), "max_new_tokens": 2, **kw}
    with pytest.raises(exc, match=name):
        sample_continuations(**args)


@pytest.mark.parametrize("kw, name, exc", [
    ({"model": None}, "model", TypeError),
    ({"tokens": None}, "tokens", ValueError),
    ({"tokens": TOKENS.at[0, 0].set(8)}, "tokens", ValueError),
    ({"tokens": TOKENS.at[0, 0].set(-1)}, "tokens", ValueError),
    ({"tokens": TOKENS.astype(jnp.float32) + 0.5}, "tokens", ValueError),
    ({"prompt_len": None}, "prompt_len", ValueError),
    ({"prompt_len": 2.5}, "prompt_len", ValueError),
    ({"lam": None}, "lam", ValueError),
    ({"temperature": None}, "temperature", ValueError),
    ({"use_cache": None}, "use_cache", ValueError),
])
def test_on_policy_batch_errors(kw, name, exc):
    args = {"model": LM, "tokens": TOKENS, "key": jax.random.key(0), "prompt_len": 2, "lam": 0.5, **kw}
    with pytest.raises(exc, match=name):
        on_policy_batch(**args)


def test_on_policy_batch_valid_still_works():
    toks, mask = on_policy_batch(LM, TOKENS, jax.random.key(0), prompt_len=2, lam=1.0, use_cache=False)
    assert toks.shape == (2, 4) and int(mask.sum()) == 4
    assert int(toks.max()) < 8 and int(toks.min()) >= 0


@pytest.mark.parametrize("kw, name", [
    ({"data_tokens": None}, "data_tokens"),
    ({"student_tokens": None}, "student_tokens"),
    ({"lam": None}, "lam"),
])
def test_mix_on_policy_errors(kw, name):
    args = {"key": jax.random.key(0), "data_tokens": TOKENS, "student_tokens": TOKENS, "lam": 0.5, **kw}
    with pytest.raises(ValueError, match=name):
        mix_on_policy(**args)
