"""Samplers: probabilities vs dense numpy definitions, unbiasedness, sharded == unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff._core import shard_batch
from jaxeff.coreset import (
    CORESET_SAMPLERS,
    Coreset,
    augmented_sensitivity,
    coreset_probabilities,
    lewis_weights,
    logistic_loss,
    merge_and_reduce,
    sqrt_leverage,
    uniform,
)
from jaxeff.coreset import samplers as S


def _problem(n=400, d=4, seed=0, heavy=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if heavy:
        X[:, 1] = rng.standard_t(2, n)  # heavy tail so scores are far from uniform
    X[:, 0] = 1.0
    y = np.where(X @ rng.standard_normal(d) + rng.logistic(size=n) > 0, 1.0, -1.0)
    return X, y


def _np_leverage(A):
    Q, _ = np.linalg.qr(A)
    return np.sum(Q * Q, 1)


def _np_lewis(A, iters):
    v = np.ones(A.shape[0])
    for _ in range(iters):
        G = (A / v[:, None]).T @ A
        v = np.sqrt(np.einsum("ij,jk,ik->i", A, np.linalg.inv(G), A))
    return v


@pytest.mark.parametrize("weighted", [False, True])
def test_probabilities_match_dense_definitions(weighted):
    X, y = _problem()
    n = len(y)
    w = np.random.default_rng(5).uniform(0.5, 3.0, n) if weighted else np.ones(n)
    X64 = np.asarray(X, np.float64)
    A = (w * y)[:, None] * X64
    unif = w / w.sum()
    key = jax.random.key(0)
    kw = dict(sample_weights=w if weighted else None)
    ref = {
        "uniform": w,
        "sqrt_leverage": np.sqrt(_np_leverage(A)) + unif,
        "lewis_weights": _np_lewis(A, 20) + unif,
        "augmented_sensitivity": _np_lewis(A, 20) + _np_leverage(A) + unif,
    }
    for method, s in ref.items():
        p = coreset_probabilities(key, X.astype(np.float32), y, method, sketch_size=None, jl_dim=None,
                                  num_iters=20, **kw)
        np.testing.assert_allclose(np.asarray(p), s / s.sum(), rtol=2e-3, err_msg=method)
    # Lewis weights of an ℓ1 basis sum to the rank
    np.testing.assert_allclose(_np_lewis(A, 20).sum(), X.shape[1], rtol=1e-3)


def test_sketched_leverage_matches_numpy_with_same_randomness():
    X, y = _problem(600, 5)
    X = X.astype(np.float32)
    key = jax.random.key(3)
    sk, jl = 64, 20
    p = coreset_probabilities(key, X, y, "sqrt_leverage", sketch_size=sk, jl_dim=jl)
    k_score, _, _ = jax.random.split(key, 3)
    rand = S._randomness(k_score, "sqrt_leverage", 600, 5, jnp.float32, {"sketch_size": sk, "jl_dim": jl, "lewis_iters": 1})
    Smat = np.zeros((sk, 600))
    Smat[np.asarray(rand["cs_bucket"]), np.arange(600)] = np.asarray(rand["cs_sign"])
    A = y[:, None] * X.astype(np.float64)
    R = np.linalg.qr(Smat @ A, mode="r")
    lev = np.sum((A @ np.linalg.solve(R, np.asarray(rand["G"], np.float64))) ** 2, 1)
    s = np.sqrt(lev) + 1.0 / 600
    np.testing.assert_allclose(np.asarray(p), s / s.sum(), rtol=2e-3)
    # and the sketched scores are a constant-factor approximation of the exact ones
    exact = np.asarray(coreset_probabilities(key, X, y, "sqrt_leverage", sketch_size=None, jl_dim=None))
    ratio = np.asarray(p) / exact
    assert np.median(ratio) == pytest.approx(1.0, abs=0.25)
    assert np.quantile(ratio, 0.05) > 0.3 and np.quantile(ratio, 0.95) < 3.0


def test_sketched_lewis_matches_numpy_with_same_randomness():
    """The sketched Lewis iteration step by step in numpy (dense CountSketch matrix, same hashes)."""
    n, d, T, sk, jl = 800, 5, 4, 64, 20
    X, y = _problem(n, d, seed=4)
    X = X.astype(np.float32)
    key = jax.random.key(7)
    p = np.asarray(coreset_probabilities(key, X, y, "lewis_weights", sketch_size=sk, jl_dim=jl, num_iters=T))
    pa = np.asarray(coreset_probabilities(key, X, y, "augmented_sensitivity", sketch_size=sk, jl_dim=jl,
                                          num_iters=T))
    k_score, _, _ = jax.random.split(key, 3)
    rand = S._randomness(k_score, "lewis_weights", n, d, jnp.float32,
                         {"sketch_size": sk, "jl_dim": jl, "lewis_iters": T})
    Smat = np.zeros((sk, n))
    Smat[np.asarray(rand["cs_bucket"]), np.arange(n)] = np.asarray(rand["cs_sign"])
    Gs = np.asarray(rand["G_steps"], np.float64)
    A = y[:, None] * X.astype(np.float64)
    v = np.ones(n)
    for t in range(T):
        R = np.linalg.qr(Smat @ (A / np.sqrt(v)[:, None]), mode="r")
        q = np.sum((A @ np.linalg.solve(R, Gs[t])) ** 2, 1)
        if t == 0:
            lev = q
        v = np.sqrt(q)
    s = v + 1.0 / n
    np.testing.assert_allclose(p, s / s.sum(), rtol=5e-3)
    s = v + lev + 1.0 / n
    np.testing.assert_allclose(pa, s / s.sum(), rtol=5e-3)
    # a constant-factor approximation of the exact Lewis weights
    exact = np.asarray(coreset_probabilities(key, X, y, "lewis_weights", sketch_size=None, jl_dim=None,
                                             num_iters=30))
    r = p / exact
    assert np.median(r) == pytest.approx(1.0, abs=0.2)
    assert np.quantile(r, 0.02) > 0.4 and np.quantile(r, 0.98) < 2.5


def _cases(default):
    """All (method, replace) pairs; those not in ``default`` are marked slow."""
    out = []
    for method in CORESET_SAMPLERS:
        for replace in (True, False):
            marks = () if (method, replace) in default else (pytest.mark.slow,)
            out.append(pytest.param(method, replace, marks=marks, id=f"{method}-{replace}"))
    return out


@pytest.mark.parametrize("method,replace", _cases({("uniform", False), ("augmented_sensitivity", True),
                                                    ("augmented_sensitivity", False)}))
def test_coreset_loss_is_unbiased(method, replace):
    X, y = _problem(240, 3, seed=1)
    X = X.astype(np.float32)
    beta = jnp.array([0.3, -0.5, 0.8], jnp.float32)
    full = float(logistic_loss(beta, X, y))
    per_row = np.asarray(jax.nn.softplus(-(y * (X @ np.asarray(beta)))))
    fn = CORESET_SAMPLERS[method]
    reps = 200
    est = []
    for r in range(reps):
        idx, w = fn(jax.random.key(100 + r), X, y, 24, replace=replace)
        est.append(float(np.sum(np.asarray(w) * per_row[np.asarray(idx)])))
    est = np.array(est)
    se = est.std(ddof=1) / np.sqrt(reps)
    assert abs(est.mean() - full) < 4.5 * se + 1e-3 * full, (est.mean(), full, se)


@pytest.mark.parametrize("method,replace", _cases({("augmented_sensitivity", True),
                                                    ("augmented_sensitivity", False)}))
def test_sharded_equals_unsharded(method, replace, mesh8):
    X, y = _problem(800, 5, seed=2)
    X = X.astype(np.float32)
    key = jax.random.key(7)
    fn = CORESET_SAMPLERS[method]
    i1, w1 = fn(key, X, y, 60, replace=replace)
    Xs, ys = shard_batch((jnp.asarray(X), jnp.asarray(y, jnp.float32)), mesh8)
    i8, w8 = fn(key, Xs, ys, 60, replace=replace)
    # same per-row randomness: identical draws up to rounding of cumulative sums at bucket edges
    assert np.mean(np.asarray(i1) == np.asarray(i8)) >= 0.98
    same = np.asarray(i1) == np.asarray(i8)
    np.testing.assert_allclose(np.asarray(w1)[same], np.asarray(w8)[same], rtol=1e-4)
    p1 = coreset_probabilities(key, X, y, method)
    p8 = coreset_probabilities(key, Xs, ys, method)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p8), rtol=1e-4)


def test_block_shift_countsketch_hash_and_aligned_sharding(mesh8):
    """The block-shift CountSketch: explicit buckets follow (i mod s + t_{i//s}) mod s, the
    scatter-free sum equals the scatter of those buckets, and shards that start on a block
    boundary (the scatter-free path per shard) give the unsharded distribution."""
    n, d, s = 800, 5, 50
    bucket, sign, shift = S._cs_hash(jax.random.key(0), jax.random.key(1), n, s, jnp.float32)
    i = np.arange(n)
    np.testing.assert_array_equal(np.asarray(bucket), (i % s + np.asarray(shift)[i // s]) % s)
    assert set(np.unique(np.asarray(sign)).tolist()) == {-1.0, 1.0}
    assert abs(float(jnp.mean(sign))) < 0.15
    X, y = _problem(n, d, seed=5)
    X = jnp.asarray(X, jnp.float32)
    c = jnp.asarray(y, jnp.float32) * sign
    for rows in (n, 777):  # whole blocks, and a partial last block
        a = S._countsketch_shifted(X[:rows], c[:rows], shift, 0, s)
        b = S._countsketch_scatter(X[:rows], c[:rows], bucket[:rows], s)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    Xs, ys = shard_batch((X, jnp.asarray(y, jnp.float32)), mesh8)  # 100 rows per shard = 2 blocks
    for method in ("sqrt_leverage", "lewis_weights"):
        p1 = coreset_probabilities(jax.random.key(3), X, y, method, sketch_size=s)
        p8 = coreset_probabilities(jax.random.key(3), Xs, ys, method, sketch_size=s)
        np.testing.assert_allclose(np.asarray(p1), np.asarray(p8), rtol=1e-4, err_msg=method)


def test_sharded_draws_follow_the_distribution(mesh8):
    from scipy.stats import chisquare

    X, y = _problem(64, 3, seed=3)
    X = X.astype(np.float32)
    Xs, ys = shard_batch((jnp.asarray(X), jnp.asarray(y, jnp.float32)), mesh8)
    key = jax.random.key(11)
    p = np.asarray(coreset_probabilities(key, X, y, "lewis_weights"), np.float64)
    m = 40000
    idx, w = lewis_weights(key, Xs, ys, m)
    counts = np.bincount(np.asarray(idx), minlength=64)
    assert chisquare(counts, p / p.sum() * m).pvalue > 1e-4
    np.testing.assert_allclose(np.asarray(w), 1.0 / (m * p[np.asarray(idx)]), rtol=1e-3)


def test_without_replacement_properties():
    X, y = _problem(100, 3)
    idx, w = sqrt_leverage(jax.random.key(0), X, y, 30, replace=False)
    assert len(set(np.asarray(idx).tolist())) == 30
    assert np.all(np.asarray(w) >= 1.0 - 1e-6)
    idx, w = sqrt_leverage(jax.random.key(0), X, y, 100, replace=False)
    assert sorted(np.asarray(idx).tolist()) == list(range(100))
    np.testing.assert_allclose(np.asarray(w), 1.0)


def test_samplers_jit_inside_user_code():
    X, y = _problem(200, 3)
    X = jnp.asarray(X, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    f = jax.jit(lambda k: uniform(k, X, y, 10)[1].sum())
    assert float(f(jax.random.key(0))) == pytest.approx(200.0, rel=1e-5)


def test_bad_input():
    X, y = _problem(50, 3)
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="m"):
        uniform(k, X, y, 51, replace=False)
    with pytest.raises(ValueError, match="y"):
        sqrt_leverage(k, X, np.full(50, 2.0), 5)
    with pytest.raises(ValueError, match="length"):
        lewis_weights(k, X, y[:-2], 5)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        augmented_sensitivity(k, Xn, y, 5)
    with pytest.raises(ValueError, match="key"):
        uniform(0, X, y, 5)
    with pytest.raises(ValueError, match="m"):
        uniform(k, X, y, 0)
    with pytest.raises(ValueError, match="method"):
        coreset_probabilities(k, X, y, "nope")
    with pytest.warns(UserWarning, match="converting"):
        uniform(k, X, (y > 0).astype(int), 5)


def test_merge_and_reduce():
    X, y = _problem(800, 4, seed=4)
    X = X.astype(np.float32)
    parts = [Coreset(jnp.asarray(X[i::4]), jnp.asarray(y[i::4], jnp.float32), jnp.ones(200)) for i in range(4)]
    # m >= total: the union, exactly
    u = merge_and_reduce(parts, 800, key=jax.random.key(0))
    assert u.X.shape == (800, 4)
    np.testing.assert_allclose(np.asarray(u.weights), 1.0)
    beta = jnp.array([0.2, -0.4, 0.5, 0.1], jnp.float32)
    full = float(logistic_loss(beta, X, y))
    est = []
    for r in range(25):
        c = merge_and_reduce(parts, 60, key=jax.random.key(r))
        assert c.X.shape == (60, 4)
        est.append(float(logistic_loss(beta, *c)))
    est = np.array(est)
    assert abs(est.mean() - full) < 4.5 * est.std(ddof=1) / np.sqrt(len(est)) + 1e-3 * full
    with pytest.raises(ValueError, match="columns"):
        merge_and_reduce([parts[0], Coreset(jnp.ones((3, 2)), jnp.ones(3), jnp.ones(3))], 10, key=jax.random.key(0))


def test_two_level_inverse_cdf_equals_searchsorted():
    rng = np.random.default_rng(0)
    for n in (1000, 1024, 200):
        s = rng.exponential(size=n) * (rng.random(n) < 0.7)  # with zero-probability rows
        t = np.sort(rng.random(500)) * s.sum()
        got = np.asarray(S._inverse_cdf(jnp.asarray(s), jnp.asarray(t)))
        want = np.minimum(np.searchsorted(np.cumsum(s), t, side="right"), n - 1)
        assert np.mean(got == want) >= 0.99
        assert np.all(s[got] > 0)


def test_householder_r_matches_lapack():
    rng = np.random.default_rng(1)
    for s, d in ((300, 7), (5, 8)):
        A = rng.standard_normal((s, d)) * np.logspace(0, 2, d)
        R = np.asarray(S._householder_r(jnp.asarray(A, jnp.float32)), np.float64)
        assert R.shape == (d, d) and np.allclose(R, np.triu(R))
        np.testing.assert_allclose(R.T @ R, A.T @ A, rtol=1e-4, atol=1e-4 * np.abs(A.T @ A).max())


def _high_leverage_problem(n=3000, d=8, seed=11):
    """A few rows scaled far out, a block with very unequal column scales, heavy-tailed row norms."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    A[:15] *= 50.0
    A[15:30] = rng.standard_normal((15, d)) * np.logspace(0, 3, d)
    A *= np.exp(1.5 * rng.standard_normal((n, 1)))
    y = np.where(rng.standard_normal(n) > 0, 1.0, -1.0)
    return A, y


def test_lewis_default_iterations_converge_on_high_leverage_rows():
    """Default (convergence test) vs 100 exact numpy steps: every probability within 5 %."""
    A, y = _high_leverage_problem()
    n = len(y)
    ref = _np_lewis(A, 100) + 1.0 / n
    ref /= ref.sum()
    key = jax.random.key(0)
    p = np.asarray(coreset_probabilities(key, A.astype(np.float32), y, "lewis_weights", sketch_size=None,
                                         jl_dim=None))
    assert np.max(np.abs(p / ref - 1)) < 0.05
    pa = np.asarray(coreset_probabilities(key, A.astype(np.float32), y, "augmented_sensitivity",
                                          sketch_size=None, jl_dim=None))
    refa = _np_lewis(A, 100) + _np_leverage(A) + 1.0 / n
    assert np.max(np.abs(pa / (refa / refa.sum()) - 1)) < 0.05
    # the old fixed 4 plain steps are far off on these rows (what the convergence test fixes)
    p4 = np.asarray(coreset_probabilities(key, A.astype(np.float32), y, "lewis_weights", sketch_size=None,
                                          jl_dim=None, num_iters=4))
    assert np.max(np.abs(p4 / ref - 1)) > 0.1


def test_sketched_lewis_default_matches_converged_fixed_sketch():
    """Sketched default: one CountSketch hash and one JL matrix for every step; compare with 100 numpy
    steps of that same map (dense CountSketch matrix, same hashes)."""
    A, y = _high_leverage_problem(n=1200, d=5, seed=12)
    n, d, sk, jl = len(y), A.shape[1], 64, 20
    key = jax.random.key(5)
    X = (A / np.max(np.abs(A))).astype(np.float32)
    p = np.asarray(coreset_probabilities(key, X, y, "lewis_weights", sketch_size=sk, jl_dim=jl))
    k_score, _, _ = jax.random.split(key, 3)
    rand = S._randomness(k_score, "lewis_weights", n, d, jnp.float32,
                         {"sketch_size": sk, "jl_dim": jl, "lewis_iters": None})
    assert rand["G_steps"].shape == (1, d, jl)
    Smat = np.zeros((sk, n))
    Smat[np.asarray(rand["cs_bucket"]), np.arange(n)] = np.asarray(rand["cs_sign"])
    G = np.asarray(rand["G_steps"][0], np.float64)
    Z = y[:, None] * X.astype(np.float64)
    v = np.ones(n)
    for _ in range(100):
        R = np.linalg.qr(Smat @ (Z / np.sqrt(v)[:, None]), mode="r")
        v = np.sqrt(np.sum((Z @ np.linalg.solve(R, G)) ** 2, 1))
    s = v + 1.0 / n
    assert np.max(np.abs(p / (s / s.sum()) - 1)) < 0.05


def test_lewis_num_iters_validated():
    X, y = _problem(50, 3)
    with pytest.raises(ValueError, match="num_iters"):
        lewis_weights(jax.random.key(0), X, y, 5, num_iters=0)
    with pytest.raises(TypeError, match="num_iters"):
        lewis_weights(jax.random.key(0), X, y, 5, num_iters=2.5)
