"""Divergence losses on logits against plain numpy (float64) references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.distill import (
    attention_transfer_loss,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    hinton_kd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_kl,
    tvd,
)


# ---------------------------------------------------------------- numpy references (float64)
def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = np.max(z, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return z - m - np.log(np.sum(np.exp(z - m), -1, keepdims=True))


def np_kl(lp, lq):
    """sum p (log p - log q) with 0 log 0 = 0."""
    p = np.exp(lp)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(p > 0, p * (lp - lq), 0.0)
    return t.sum(-1)


def np_mix(la, lb, w):
    with np.errstate(divide="ignore"):
        return np.log(w * np.exp(la) + (1 - w) * np.exp(lb))


def np_div(name, zs, zt, tau=1.0, beta=0.5, lam=0.1, normalized=False):
    ls, lt = np_log_softmax(np.asarray(zs, np.float64) / tau), np_log_softmax(np.asarray(zt, np.float64) / tau)
    if name == "forward_kl":
        return np_kl(lt, ls)
    if name == "reverse_kl":
        return np_kl(ls, lt)
    if name == "jsd":
        if normalized and beta == 0:
            return np_kl(lt, ls)
        if normalized and beta == 1:
            return np_kl(ls, lt)
        lm = np_mix(lt, ls, beta)
        v = beta * np_kl(lt, lm) + (1 - beta) * np_kl(ls, lm)
        return v / (beta * (1 - beta)) if normalized else v
    if name == "tvd":
        return 0.5 * np.abs(np.exp(lt) - np.exp(ls)).sum(-1)
    if name == "skew_forward_kl":
        return np_kl(lt, np_mix(lt, ls, lam))
    if name == "skew_reverse_kl":
        return np_kl(ls, np_mix(ls, lt, lam))
    raise KeyError(name)


def np_reduce(per, mask, reduction):
    per = np.where(mask, per, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / max(mask.sum(), 1)


FNS = {
    "forward_kl": lambda s, t, **k: forward_kl(s, t, **k),
    "reverse_kl": lambda s, t, **k: reverse_kl(s, t, **k),
    "jsd": lambda s, t, **k: generalized_jsd(s, t, beta=0.3, **k),
    "tvd": lambda s, t, **k: tvd(s, t, **k),
    "skew_forward_kl": lambda s, t, **k: skew_forward_kl(s, t, lam=0.2, **k),
    "skew_reverse_kl": lambda s, t, **k: skew_reverse_kl(s, t, lam=0.2, **k),
}
NP_KW = {"jsd": dict(beta=0.3), "skew_forward_kl": dict(lam=0.2), "skew_reverse_kl": dict(lam=0.2)}
NAMES = list(FNS)


def _logits(seed, shape, scale=3.0):
    r = np.random.default_rng(seed)
    return (scale * r.standard_normal(shape)).astype(np.float32)


CASES = [(n, "mean") for n in NAMES] + [("forward_kl", "sum"), ("jsd", "none")] + [
    pytest.param(n, r, marks=pytest.mark.slow) for n in NAMES for r in ("sum", "none")
    if (n, r) not in (("forward_kl", "sum"), ("jsd", "none"))]


@pytest.mark.parametrize("name,reduction", CASES)
def test_matches_numpy_with_mask_and_temperature(name, reduction):
    zs, zt = _logits(0, (3, 5, 11)), _logits(1, (3, 5, 11))
    mask = np.random.default_rng(2).random((3, 5)) < 0.6
    got = FNS[name](zs, zt, temperature=1.7, where=mask, reduction=reduction)
    want = np_reduce(np_div(name, zs, zt, tau=1.7, **NP_KW.get(name, {})), mask, reduction)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
    assert got.dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_mask_broadcasts_over_leading_axes(name):
    zs, zt = _logits(3, (2, 4, 7)), _logits(4, (2, 4, 7))
    row = np.array([True, False, True, True])  # broadcast over the batch axis
    got = FNS[name](zs, zt, where=row)
    want = np_reduce(np_div(name, zs, zt, **NP_KW.get(name, {})), np.broadcast_to(row, (2, 4)), "mean")
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits(name):
    zs = _logits(5, (4, 9), scale=1.0) * 1e4
    zt = _logits(6, (4, 9), scale=1.0) * 1e4
    got = FNS[name](zs, zt, reduction="none")
    want = np_div(name, zs, zt, **NP_KW.get(name, {}))
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-3)
    g = jax.grad(lambda s: FNS[name](s, zt))(zs)
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", NAMES)
def test_neg_inf_masked_vocab(name):
    zs, zt = _logits(7, (5, 8)), _logits(8, (5, 8))
    zs[:, [1, 6]] = -np.inf  # masked vocabulary entries in both
    zt[:, [1, 6]] = -np.inf
    got = FNS[name](zs, zt, reduction="none")
    want = np_div(name, zs, zt, **NP_KW.get(name, {}))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
    g = jax.grad(lambda s: FNS[name](s, zt))(jnp.asarray(zs))
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[:, [1, 6]] == 0)
    # dropping the masked columns gives the same loss
    keep = [0, 2, 3, 4, 5, 7]
    np.testing.assert_allclose(np.asarray(got), np.asarray(FNS[name](zs[:, keep], zt[:, keep], reduction="none")),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_computed_in_fp32(name):
    zs = jnp.asarray(_logits(9, (6, 10))).astype(jnp.bfloat16)
    zt = jnp.asarray(_logits(10, (6, 10))).astype(jnp.bfloat16)
    got = FNS[name](zs, zt)
    assert got.dtype == jnp.float32
    want = np_reduce(np_div(name, np.asarray(zs.astype(jnp.float32)), np.asarray(zt.astype(jnp.float32)),
                            **NP_KW.get(name, {})), np.ones(6, bool), "mean")
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)
    g = jax.grad(lambda s: FNS[name](s, zt))(zs)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g.astype(jnp.float32))))


@pytest.mark.parametrize("name", NAMES)
def test_all_tokens_masked_gives_zero_no_nan(name):
    zs, zt = _logits(11, (3, 6)), _logits(12, (3, 6))
    zs[1] = np.nan  # garbage in a masked token must not leak
    zt[2] = -np.inf
    none = np.zeros(3, bool)
    val, g = jax.value_and_grad(lambda s: FNS[name](s, zt, where=none))(jnp.asarray(zs))
    assert float(val) == 0.0
    assert np.all(np.asarray(g) == 0)
    # partial mask: masked garbage rows do not affect the valid ones
    part = np.array([True, False, False])
    val, g = jax.value_and_grad(lambda s: FNS[name](s, zt, where=part))(jnp.asarray(zs))
    np.testing.assert_allclose(float(val), np_div(name, zs[:1], zt[:1], **NP_KW.get(name, {}))[0], rtol=2e-5)
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", NAMES)
def test_p_equals_q_is_zero(name):
    z = _logits(13, (4, 12))
    val, g = jax.value_and_grad(lambda s: FNS[name](s, z))(jnp.asarray(z))
    assert abs(float(val)) < 1e-6
    assert np.max(np.abs(np.asarray(g))) < 1e-5
    # shift invariance of logits
    assert abs(float(FNS[name](z + 5.0, z))) < 1e-5


@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("beta", [1e-6, 1e-4, 1e-2, 0.3, 1 - 1e-4, 1 - 1e-6])
def test_jsd_fp32_exact_to_rounding_near_beta_endpoints(beta, normalized):
    """Generalized JSD in float32 matches the float64 textbook formula to ~1e-6 relative for
    beta down to 1e-6 and up to 1 - 1e-6 (the log p - log m form lost 5.6e-3 at 1e-6), with
    peaked logits (log-ratios far beyond 80 included) and finite gradients."""
    rng = np.random.default_rng(7)
    zs = (rng.normal(size=(12, 300)) * 3).astype(np.float32)
    zt = (rng.normal(size=(12, 300)) * 3).astype(np.float32)
    zs[0, :5] += 120.0   # student sure of 5 tokens: teacher/student ratios of e^100 elsewhere
    zt[1, 7] += 150.0    # teacher one-hot-like
    zs[2, 3] = -np.inf   # a student zero
    zt[3, 9] = -np.inf   # a teacher zero
    got = float(generalized_jsd(jnp.asarray(zs), jnp.asarray(zt), beta=beta, normalized=normalized))
    ref = float(np.mean(np_div("jsd", zs, zt, beta=beta, normalized=normalized)))
    assert abs(got / ref - 1) < 1e-6, (got, ref)
    g = jax.grad(lambda s: generalized_jsd(s, jnp.asarray(zt), beta=beta, normalized=normalized))(jnp.asarray(zs))
    assert np.all(np.isfinite(np.asarray(g)))


def test_jsd_gradient_near_beta0_matches_finite_differences():
    """d/dz_s of the normalized JSD at beta = 1e-5 vs central differences of the float64 reference."""
    rng = np.random.default_rng(8)
    zs = (rng.normal(size=(3, 40)) * 2).astype(np.float32)
    zt = (rng.normal(size=(3, 40)) * 2).astype(np.float32)
    beta = 1e-5
    g = np.asarray(jax.grad(lambda s: generalized_jsd(s, jnp.asarray(zt), beta=beta, normalized=True))(jnp.asarray(zs)))
    eps = 1e-5
    fd = np.zeros(zs.shape)
    z64 = zs.astype(np.float64)
    for i in range(zs.shape[0]):
        for j in range(zs.shape[1]):
            e = np.zeros_like(z64)
            e[i, j] = eps
            fd[i, j] = (np.mean(np_div("jsd", z64 + e, zt, beta=beta, normalized=True))
                        - np.mean(np_div("jsd", z64 - e, zt, beta=beta, normalized=True))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-5 * np.abs(fd).max())


def test_divergences_agree_where_math_says_so():
    zs, zt = _logits(14, (8, 16)), _logits(15, (8, 16))
    fkl, rkl = float(forward_kl(zs, zt)), float(reverse_kl(zs, zt))
    # normalized JSD endpoints are FKL/RKL exactly, and continuous near them
    assert np.isclose(float(generalized_jsd(zs, zt, beta=0.0, normalized=True)), fkl, rtol=1e-6)
    assert np.isclose(float(generalized_jsd(zs, zt, beta=1.0, normalized=True)), rkl, rtol=1e-6)
    gaps = [abs(float(generalized_jsd(zs, zt, beta=b, normalized=True)) - fkl) for b in (1e-1, 1e-2, 1e-3)]
    assert gaps[0] > gaps[1] > gaps[2]
    ms, mt = zs / 3, zt / 3  # milder logits: close to the endpoints already at 1e-3
    assert np.isclose(float(generalized_jsd(ms, mt, beta=1e-3, normalized=True)), float(forward_kl(ms, mt)), rtol=2e-3)
    assert np.isclose(float(generalized_jsd(ms, mt, beta=1 - 1e-3, normalized=True)), float(reverse_kl(ms, mt)),
                      rtol=2e-3)
    # unnormalized JSD vanishes at the endpoints (no jump to FKL/RKL)
    assert float(generalized_jsd(zs, zt, beta=0.0)) == 0.0
    assert float(generalized_jsd(zs, zt, beta=1.0)) == 0.0
    # beta=1/2 JSD is symmetric and equals half-sum of KLs to the midpoint
    assert np.isclose(float(generalized_jsd(zs, zt)), float(generalized_jsd(zt, zs)), rtol=1e-5)
    # skew KLs: lam=0 is plain KL; lam=1 is 0; swapping roles maps skew FKL <-> skew RKL
    assert np.isclose(float(skew_forward_kl(zs, zt, lam=0.0)), fkl, rtol=1e-6)
    assert np.isclose(float(skew_reverse_kl(zs, zt, lam=0.0)), rkl, rtol=1e-6)
    assert abs(float(skew_forward_kl(zs, zt, lam=1.0))) < 1e-6
    assert np.isclose(float(skew_forward_kl(zs, zt, lam=0.3)), float(skew_reverse_kl(zt, zs, lam=0.3)), rtol=1e-6)
    # FKL and RKL swap under exchanging student/teacher; TVD symmetric and bounded by Pinsker
    assert np.isclose(float(forward_kl(zt, zs)), rkl, rtol=1e-6)
    t = float(tvd(zs, zt))
    assert np.isclose(t, float(tvd(zt, zs)), rtol=1e-6)
    per_tvd = np.asarray(tvd(zs, zt, reduction="none"))
    per_kl = np.asarray(forward_kl(zs, zt, reduction="none"))
    assert np.all(per_tvd <= np.sqrt(per_kl / 2) + 1e-6)


def test_tvd_zero_subgradient_at_ties():
    z = jnp.array([[1.0, 2.0, 3.0]])
    g = jax.grad(lambda s: tvd(s, z))(z)
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)  # p, q equal up to rounding


def test_hinton_kd_matches_numpy_and_tau_squared():
    zs, zt = _logits(16, (2, 5, 9)), _logits(17, (2, 5, 9))
    y = np.random.default_rng(18).integers(0, 9, (2, 5))
    y[0, 1] = -100
    mask = np.ones((2, 5), bool)
    mask[1, 4] = False
    tau, alpha = 2.5, 0.3
    got = hinton_kd(zs, zt, y, alpha, tau, where=mask)
    ce = -np.take_along_axis(np_log_softmax(zs), np.clip(y, 0, 8)[..., None], -1)[..., 0]
    per = alpha * ce + (1 - alpha) * tau**2 * np_div("forward_kl", zs, zt, tau=tau)
    valid = mask & (y != -100)
    np.testing.assert_allclose(float(got), np_reduce(per, valid, "mean"), rtol=2e-5)
    # alpha = 0 is tau^2 * forward KL
    np.testing.assert_allclose(float(hinton_kd(zs, zt, y, 0.0, tau)),
                               tau**2 * float(forward_kl(zs, zt, temperature=tau, where=y != -100)), rtol=1e-5)


@pytest.mark.parametrize("missing_mass", [False, True])
def test_topk_kl_matches_numpy(missing_mass):
    zs, zt = _logits(19, (7, 13)), _logits(20, (7, 13))
    tau, k = 1.3, 4
    lt = np_log_softmax(zt / tau)
    ids = np.argsort(-lt, -1)[:, :k]
    lp = np.take_along_axis(lt, ids, -1).astype(np.float32)
    got = topk_kl(zs, lp, ids, temperature=tau, missing_mass=missing_mass, reduction="none")
    ls = np_log_softmax(zs / tau)
    lsk = np.take_along_axis(ls, ids, -1)
    want = (np.exp(lp) * (lp - lsk)).sum(-1)
    if missing_mass:
        P, Q = np.exp(lp).sum(-1), np.exp(lsk).sum(-1)
        want = want + (1 - P) * np.log((1 - P) / (1 - Q))
        assert np.all(want >= 0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=5e-5, atol=1e-6)
    g = jax.grad(lambda s: topk_kl(s, lp, ids, temperature=tau, missing_mass=missing_mass))(jnp.asarray(zs))
    assert np.all(np.isfinite(np.asarray(g)))


def test_topk_kl_full_k_equals_forward_kl_and_padding():
    zs, zt = _logits(21, (5, 6)), _logits(22, (5, 6))
    lp, ids = jax.lax.top_k(jax.nn.log_softmax(jnp.asarray(zt)), 6)
    f = jax.jit(topk_kl, static_argnames="missing_mass")
    for mm in (False, True):
        np.testing.assert_allclose(float(f(zs, lp, ids, missing_mass=mm)), float(forward_kl(zs, zt)), rtol=1e-5)
    # -inf padded slots (a shorter top-k list) change nothing
    lp3, ids3 = lp[:, :3], ids[:, :3]
    lp_pad = jnp.concatenate([lp3, jnp.full((5, 3), -jnp.inf)], -1)
    ids_pad = jnp.concatenate([ids3, jnp.zeros((5, 3), ids3.dtype)], -1)
    for mm in (False, True):
        np.testing.assert_allclose(float(f(zs, lp_pad, ids_pad, missing_mass=mm)),
                                   float(topk_kl(zs, lp3, ids3, missing_mass=mm)), rtol=1e-6)


def test_bad_input_errors():
    a, b = jnp.zeros((3, 5)), jnp.zeros((3, 6))
    with pytest.raises(ValueError, match="vocab size 5.*vocab size 6"):
        forward_kl(a, b)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        tvd(a, a, temperature=-1.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(a, a, beta=1.5)
    with pytest.raises(ValueError, match="lam"):
        skew_forward_kl(a, a, lam=-0.1)
    with pytest.raises(ValueError, match="lam"):
        skew_reverse_kl(a, a, lam=2.0)
    with pytest.raises(ValueError, match="where"):
        forward_kl(a, a, where=jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="reduction"):
        forward_kl(a, a, reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        hinton_kd(a, a, jnp.zeros(3, int), 1.5, 1.0)
    with pytest.raises(ValueError, match="labels"):
        hinton_kd(a, a, jnp.zeros(4, int), 0.5, 1.0)
    with pytest.raises(ValueError, match="teacher_topk"):
        topk_kl(a, jnp.zeros((3, 2)), jnp.zeros((3, 3), int))


def test_losses_jit_and_grad():
    zs, zt = jnp.asarray(_logits(23, (4, 8))), jnp.asarray(_logits(24, (4, 8)))
    f = jax.jit(lambda s, t: generalized_jsd(s, t, beta=0.7, temperature=2.0))
    np.testing.assert_allclose(float(f(zs, zt)), float(np.mean(np_div("jsd", zs, zt, tau=2.0, beta=0.7))), rtol=2e-5)
    # gradient against central finite differences in float64 numpy
    g = np.asarray(jax.grad(lambda s: generalized_jsd(s, zt, beta=0.7, temperature=2.0))(zs))
    eps = 1e-4
    zs64 = np.asarray(zs, np.float64)
    i, j = 1, 3
    e = np.zeros_like(zs64)
    e[i, j] = eps
    fd = (np.mean(np_div("jsd", zs64 + e, zt, tau=2.0, beta=0.7)) - np.mean(np_div("jsd", zs64 - e, zt, tau=2.0, beta=0.7))) / (2 * eps)
    np.testing.assert_allclose(g[i, j], fd, rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------- feature losses
def test_hidden_state_loss_mse_cosine_projection():
    r = np.random.default_rng(25)
    hs, ht = r.standard_normal((2, 5, 6)).astype(np.float32), r.standard_normal((2, 5, 4)).astype(np.float32)
    P = r.standard_normal((6, 4)).astype(np.float32)
    mask = r.random((2, 5)) < 0.7
    ph = hs @ P
    mse = np_reduce(((ph - ht) ** 2).mean(-1), mask, "mean")
    np.testing.assert_allclose(float(hidden_state_loss(hs, ht, P, "mse", where=mask)), mse, rtol=1e-5)
    cos = (ph * ht).sum(-1) / (np.linalg.norm(ph, axis=-1) * np.linalg.norm(ht, axis=-1))
    np.testing.assert_allclose(float(hidden_state_loss(hs, ht, P, "cosine", where=mask)),
                               np_reduce(1 - cos, mask, "mean"), rtol=1e-5)
    # callable projection is the same as the matrix
    np.testing.assert_allclose(float(hidden_state_loss(hs, ht, lambda x: x @ P, "mse", where=mask)), mse, rtol=1e-5)
    # zero vectors: finite gradient
    z = jnp.zeros((3, 4))
    g = jax.grad(lambda a: hidden_state_loss(a, z, kind="cosine"))(z)
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(hs, ht)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(hs, ht, np.zeros((4, 6)))


def test_attention_transfer_matches_numpy():
    r = np.random.default_rng(26)
    fs = [r.standard_normal((3, 4, 4, 5)).astype(np.float32), r.standard_normal((3, 2, 2, 8)).astype(np.float32)]
    ft = [r.standard_normal((3, 4, 4, 7)).astype(np.float32), r.standard_normal((3, 2, 2, 3)).astype(np.float32)]

    def amap(f):
        a = (f**2).mean(-1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    per = sum(((amap(a) - amap(b)) ** 2).mean(-1) for a, b in zip(fs, ft))
    np.testing.assert_allclose(np.asarray(attention_transfer_loss(fs, ft, reduction="none")), per, rtol=1e-5)
    mask = np.array([True, False, True])
    np.testing.assert_allclose(float(attention_transfer_loss(fs, ft, where=mask)), per[mask].mean(), rtol=1e-5)
    # channels-first layout gives the same
    fs_cf = [np.moveaxis(a, -1, 1) for a in fs]
    ft_cf = [np.moveaxis(a, -1, 1) for a in ft]
    np.testing.assert_allclose(np.asarray(attention_transfer_loss(fs_cf, ft_cf, channel_axis=1, reduction="none")),
                               per, rtol=1e-5)
    with pytest.raises(ValueError, match="spatial"):
        attention_transfer_loss(fs[0], ft[1])


def test_losses_batch_sharded_equal_single_device(mesh8):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    zs, zt = _logits(27, (16, 4, 10)), _logits(28, (16, 4, 10))
    mask = np.random.default_rng(29).random((16, 4)) < 0.5
    f = jax.jit(jax.value_and_grad(lambda s, t, m: generalized_jsd(s, t, beta=0.2, where=m, temperature=1.5)))
    v1, g1 = f(zs, zt, mask)
    put = lambda x: jax.device_put(x, NamedSharding(mesh8, P("data")))
    v8, g8 = f(put(zs), put(zt), put(mask))
    np.testing.assert_allclose(float(v8), float(v1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-9)
