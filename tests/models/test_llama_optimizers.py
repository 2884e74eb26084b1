"""mSAM and ``sparsify`` inside ``nnx.Optimizer`` on the jaxeff Llama family (GQA, SwiGLU, RMSNorm).

The mSAM step is checked against the update written out by hand with ``jax.grad`` on each
micro-batch (ascent step eps_j = rho g_j / ||g_j||, gradient at w + eps_j, averaged, plain SGD);
``sparsify(masks=...)`` around mSAM keeps the SparseGPT zeros through training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxeff.models import LlamaConfig, LlamaForCausalLM
from jaxeff.prune import prune_model, sparsify
from jaxeff.sam import msam, msam_nnx_loss_fn

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)
LR, RHO, M = 0.05, 0.05, 2


def _model():
    return LlamaForCausalLM(LlamaConfig(**CFG), rngs=nnx.Rngs(0))


def _loss(m, toks):
    logits = m(toks[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), toks[:, 1:]).mean()


def _toks(seed=0, B=4, T=9):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, CFG["vocab_size"])


def _step(model, tx, toks):
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(m, o, t):
        lval, g = nnx.value_and_grad(lambda mm: _loss(mm, t))(m)
        o.update(m, g, loss_fn=msam_nnx_loss_fn(m, _loss), batch=t)
        return lval

    return opt, step


def test_msam_step_on_llama_equals_by_hand():
    model, toks = _model(), _toks()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_p(p, t):
        return _loss(nnx.merge(graphdef, p, rest, copy=True), t)

    gs = []
    for j in range(M):  # disjoint micro-batches of the rows
        t = toks[j * (toks.shape[0] // M):(j + 1) * (toks.shape[0] // M)]
        g = jax.grad(loss_p)(params, t)
        n = optax.global_norm(g)
        eps = jax.tree.map(lambda x: RHO * x / (n + 1e-12), g)
        gs.append(jax.grad(loss_p)(jax.tree.map(jnp.add, params, eps), t))
    want = jax.tree.map(lambda p, *g: p - LR * sum(g) / M, params, *gs)
    opt, step = _step(model, msam(optax.sgd(LR), RHO, M), toks)
    step(model, opt, toks)
    got = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    # and it differs from a plain SGD step (the perturbation matters)
    g0 = jax.grad(loss_p)(params, toks)
    sgd = jax.tree.map(lambda p, g: p - LR * g, params, g0)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(sgd))) > 1e-5


def test_sparsify_around_msam_keeps_sparsegpt_masks_on_llama():
    model, toks = _model(), _toks()
    pruned, masks, summary = prune_model(model, {r".*(self_attn|mlp)\..*": 0.5}, example_inputs=(toks[:, :-1],))
    assert len(summary) == 2 * 7
    opt, step = _step(pruned, sparsify(msam(optax.adam(3e-3), RHO, M), masks=masks), toks)
    losses = [float(step(pruned, opt, toks)) for _ in range(6)]
    assert losses[-1] < losses[0]
    for i in range(2):
        for blk, name in (("self_attn", "k_proj"), ("mlp", "down_proj")):
            w = np.asarray(getattr(getattr(pruned.model.layers[i], blk), name).kernel[...])
            mk = np.asarray(masks["model"]["layers"][i][blk][name]["kernel"])
            assert np.all(w[~mk] == 0) and np.mean(w == 0) == pytest.approx(0.5)
            assert np.any(w[mk] != np.asarray(getattr(getattr(model.model.layers[i], blk), name).kernel[...])[mk])


def test_capture_linear_inputs_on_the_llama_family_by_hand():
    from jaxeff.models import capture_linear_inputs

    model, toks = _model(), _toks()
    x = toks[:, :-1]
    cap = capture_linear_inputs(model, x)
    assert len(cap) == 2 * 7 + 1
    h = model.hidden_states(x).reshape(-1, CFG["hidden_size"])  # lm_head's input: the final-norm output
    np.testing.assert_allclose(np.asarray(cap["lm_head"]), np.asarray(h), rtol=1e-6, atol=1e-6)
    # layer 0's q/k/v input: input_layernorm(embed(tokens)); down_proj's: silu(gate(u)) * up(u)
    lyr = model.model.layers[0]
    u = lyr.input_layernorm(model.model.embed_tokens(x)).reshape(-1, CFG["hidden_size"])
    np.testing.assert_allclose(np.asarray(cap["model.layers.0.self_attn.k_proj"]), np.asarray(u), rtol=1e-6, atol=1e-6)
    v = np.asarray(cap["model.layers.1.mlp.gate_proj"])
    l1 = model.model.layers[1].mlp
    np.testing.assert_allclose(np.asarray(cap["model.layers.1.mlp.down_proj"]),
                               np.asarray(jax.nn.silu(l1.gate_proj(jnp.asarray(v))) * l1.up_proj(jnp.asarray(v))),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="model must be an nnx.Module"):
        capture_linear_inputs(object(), x)
