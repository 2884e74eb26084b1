"""Oblivious sketch and feature-space sketching against dense numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxeff._core import shard_batch
from jaxeff.coreset import (
    fit_logistic,
    fit_sketched_features,
    fwht,
    logistic_loss,
    make_coreset_data,
    fit_oblivious_sketch,
    oblivious_sketch,
    oblivious_sketch_loss,
    project_features,
    select_features,
)
from jaxeff.coreset import oblivious as O


def _numpy_oblivious_reference(X, y, m, L, lev, bucket, uni):
    """Slow, loop-by-row construction of the MOW21 sketch from given hashes (float64)."""
    n, d = X.shape
    N = m // (L + 1)
    U = m - L * N
    b = (n / N) ** (1.0 / (L - 1))
    alpha = sum(b ** (-h) for h in range(L))
    p = [b ** (-h) / alpha for h in range(L)]
    S = np.zeros((L * N + U, d))
    w = np.zeros(L * N + U)
    for i in range(n):
        S[lev[i] * N + bucket[i]] += y[i] * X[i].astype(np.float64)
    for h in range(L):
        for j in range(N):
            w[h * N + j] = 1.0 / p[h]
    for t, i in enumerate(uni):
        S[L * N + t] = y[i] * X[i].astype(np.float64)
        w[L * N + t] = n / U
    return S, w, N, U, p


def _numpy_sketch_loss(S, w, L, N, k, beta):
    total = 0.0
    for h in range(L):
        losses = sorted((np.logaddexp(0.0, -S[h * N + j] @ beta) for j in range(N)), reverse=True)
        total += w[h * N] * sum(losses[:k])
    for t in range(L * N, S.shape[0]):
        total += w[t] * np.logaddexp(0.0, -S[t] @ beta)
    return total


def test_oblivious_sketch_equals_numpy_reference_and_sharded(mesh8):
    X, y = make_coreset_data("covertype", 1024, seed=1)
    key = jax.random.key(2)
    m, L = 80, 3
    sk = oblivious_sketch(key, X, y, m, num_levels=L)
    p, N, U = O.oblivious_level_probabilities(1024, m, L)
    lev, bucket, uni = (np.asarray(a) for a in O._hashes(key, 1024, L, N, U, p))
    assert len(set(uni.tolist())) == U  # distinct uniform rows
    S, w, N_ref, U_ref, p_ref = _numpy_oblivious_reference(X, y, m, L, lev, bucket, uni)
    assert (sk.buckets, sk.num_levels, sk.keep) == (N_ref, L, N_ref // 4)
    assert sk.X.shape == (m, 54) and U_ref == m - L * N_ref
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(sk.X), S, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(sk.weights), w, rtol=1e-5)
    Xs, ys = shard_batch((jnp.asarray(X), jnp.asarray(y)), mesh8)
    sk8 = oblivious_sketch(key, Xs, ys, m, num_levels=L)
    np.testing.assert_allclose(np.asarray(sk8.X), np.asarray(sk.X), rtol=1e-4, atol=1e-3)
    beta = np.random.default_rng(0).standard_normal(54) * 0.3
    direct = _numpy_sketch_loss(S, w, L, N_ref, N_ref // 4, beta)
    assert float(oblivious_sketch_loss(sk, jnp.asarray(beta, jnp.float32))) == pytest.approx(direct, rel=1e-4)
    # keep=1: every bucket counts, the plain weighted logistic loss of the sketch rows
    sk1 = oblivious_sketch(key, X, y, m, num_levels=L, keep=1.0)
    plain = float(logistic_loss(jnp.asarray(beta, jnp.float32), sk1.X, sk1.y, sk1.weights))
    assert float(oblivious_sketch_loss(sk1, jnp.asarray(beta, jnp.float32))) == pytest.approx(plain, rel=1e-5)


def test_oblivious_hash_distribution_and_unbiased_levels():
    n, m, L = 200_000, 4000, 3
    p, N, U = O.oblivious_level_probabilities(n, m, L)
    b = (n / N) ** 0.5
    np.testing.assert_allclose(p, np.array([1, 1 / b, 1 / b**2]) / (1 + 1 / b + 1 / b**2))
    assert n * p[-1] == pytest.approx(N * (1 - 1 / b), rel=0.05)  # the sparsest level: ~N rows
    lev, bucket, uni = (np.asarray(a) for a in O._hashes(jax.random.key(5), n, L, N, U, p))
    counts = np.bincount(lev, minlength=L)
    assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p)))
    bc = np.bincount(bucket, minlength=N)
    assert np.abs(bc - n / N).max() < 6 * np.sqrt(n / N)
    # every level's weighted bucket sum is an unbiased estimate of sum_i z_i (here z_i = x_i)
    X = np.random.default_rng(0).lognormal(size=(2000, 2)).astype(np.float32)
    y = np.ones(2000, np.float32)
    est = []
    for r in range(200):
        sk = oblivious_sketch(jax.random.key(r), X, y, 40, num_levels=L)
        Z, w = np.asarray(sk.X, np.float64), np.asarray(sk.weights, np.float64)
        est.append([(w[h * sk.buckets] * Z[h * sk.buckets:(h + 1) * sk.buckets].sum(0)) for h in range(L)]
                   + [(w[-1] * Z[L * sk.buckets:].sum(0))])
    est = np.asarray(est)  # [reps, L + 1, 2]
    truth = X.astype(np.float64).sum(0)
    mean, se = est.mean(0), est.std(0) / np.sqrt(est.shape[0]) + 1e-9
    assert np.all(np.abs(mean - truth) < 5 * se)


def test_oblivious_sketch_fit_minimises_sketched_loss():
    X, y = make_coreset_data("covertype", 20_000, seed=3)
    full = fit_logistic(X, y)
    sk = oblivious_sketch(jax.random.key(0), X, y, 2000)
    fit = fit_oblivious_sketch(sk)
    assert fit.status.name == "CONVERGED"
    f0 = float(oblivious_sketch_loss(sk, fit.beta))
    rng = np.random.default_rng(0)
    for _ in range(5):  # convex objective: random perturbations never go lower
        assert float(oblivious_sketch_loss(sk, fit.beta + 1e-2 * rng.standard_normal(54))) >= f0 * (1 - 1e-6)
    ratio = float(logistic_loss(fit.beta, X, y)) / float(full.loss)
    assert 1.0 - 1e-4 <= ratio < 1.2
    with pytest.raises(ValueError, match="m"):
        oblivious_sketch(jax.random.key(0), X, y, 0)
    with pytest.raises(ValueError, match="keep"):
        oblivious_sketch(jax.random.key(0), X, y, 100, keep=0.0)


def test_fwht_and_projections():
    H = scipy.linalg.hadamard(16).astype(np.float32)
    a = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fwht(jnp.asarray(a))), a @ H, rtol=1e-5, atol=1e-5)
    X = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    key = jax.random.key(0)
    for kind in ("gaussian", "srht", "countsketch"):
        P = project_features(key, X, 8, kind)
        assert P.X_sketch.shape == (20, 8) and P.S.shape == (16, 8)
        np.testing.assert_allclose(np.asarray(P.X_sketch), X @ np.asarray(P.S), rtol=1e-4, atol=1e-4)
    S = np.asarray(project_features(key, X, 8, "srht").S)
    np.testing.assert_allclose(S.T @ S, 2.0 * np.eye(8), atol=1e-5)  # (D/k) I: orthogonal columns
    S = np.asarray(project_features(key, X, 8, "countsketch").S)
    np.testing.assert_allclose(np.sum(S * S, 1), 1.0)
    # E[S S^T] = I for the Gaussian sketch
    Sg = np.asarray(project_features(jax.random.key(1), X[:, :4], 4000, "gaussian").S)
    np.testing.assert_allclose(Sg @ Sg.T, np.eye(4), atol=0.1)
    with pytest.raises(ValueError, match="kind"):
        project_features(key, X, 4, "fourier")
    with pytest.raises(ValueError, match="k"):
        project_features(key, X, 40, "srht")


def test_select_features_vs_numpy():
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((60, 12)) * rng.uniform(0.1, 3, 12)).astype(np.float32)
    _, _, Vt = np.linalg.svd(X.astype(np.float64), full_matrices=False)
    lev = np.sum(Vt[:4] ** 2, 0)
    np.testing.assert_array_equal(np.asarray(select_features(X, 4, "leverage")), np.sort(np.argsort(-lev)[:4]))
    _, _, piv = scipy.linalg.qr(X.astype(np.float64), pivoting=True)
    np.testing.assert_array_equal(np.asarray(select_features(X, 5, "pivoted_qr")), np.sort(piv[:5]))
    np.testing.assert_array_equal(np.asarray(select_features(X, 3, "norm")),
                                  np.sort(np.argsort(-np.sum(X * X, 0))[:3]))
    idx = np.asarray(select_features(X, 6, "leverage_sampling", key=jax.random.key(0)))
    assert len(set(idx.tolist())) == 6
    with pytest.raises(ValueError, match="key"):
        select_features(X, 3, "uniform")
    with pytest.raises(ValueError, match="k"):
        select_features(X, 13)


def test_fit_sketched_features():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 10)).astype(np.float32)
    y = np.where(X[:, 0] - X[:, 1] + rng.logistic(size=400) > 0, 1.0, -1.0)
    # k = d with an invertible sketch recovers the optimum
    r = fit_sketched_features(X, y, 10, method="gaussian", key=jax.random.key(0))
    assert float(r.relative_forward_error) < 1e-3
    assert float(r.loss_ratio) == pytest.approx(1.0, abs=1e-5)
    # fewer features: worse but >= 1, and selection of the informative columns is good
    r = fit_sketched_features(X, y, 3, method="norm", l2=0.1)
    assert float(r.loss_ratio) >= 1.0 - 1e-6
    fe = np.linalg.norm(np.asarray(r.beta) - np.asarray(r.beta_star))
    assert float(r.forward_error) == pytest.approx(fe, rel=1e-5)


def _np_forward_error_bound(X, S, b, lam, w):
    """The bound of features.forward_error_bound, by hand in float64 numpy (module docstring)."""
    X, S, b = (np.asarray(a, np.float64) for a in (X, S, b))
    Sp = np.linalg.pinv(S)
    out = b - S @ (Sp @ b)
    eta = np.max(w) / 4 * np.linalg.svd(X @ S, compute_uv=False)[0] * np.linalg.norm(X @ out) \
        + lam * np.linalg.norm((Sp - S.T) @ b)
    return np.sqrt(np.linalg.norm(out) ** 2 + (np.linalg.svd(S, compute_uv=False)[0] * eta / lam) ** 2)


@pytest.mark.parametrize("l2", [0.3, 3.0])
def test_feature_sketch_forward_error_below_bound(l2):
    rng = np.random.default_rng(7)
    n, d, k = 300, 16, 6
    X = (rng.standard_normal((n, d)) * np.logspace(0, -1, d)).astype(np.float32)
    y = np.where(X @ rng.standard_normal(d) + 0.5 * rng.logistic(size=n) > 0, 1.0, -1.0)
    w = rng.uniform(0.5, 2.0, n)
    for method in ("gaussian", "srht", "countsketch", "leverage", "pivoted_qr", "norm", "uniform"):
        r = fit_sketched_features(X, y, k, method=method, key=jax.random.key(2), l2=l2, weights=w)
        assert 0 < float(r.forward_error) < float(r.forward_error_bound), method
        ref = _np_forward_error_bound(X, r.S, r.beta_star, l2, w)
        assert float(r.forward_error_bound) == pytest.approx(ref, rel=1e-4), method


def test_forward_error_bound_hand_computation():
    from jaxeff.coreset.features import forward_error_bound

    # X = I_3, S keeps the first two features, beta* = (0, 0, 2), lambda = 1, unit weights:
    # delta = |(I-P) beta*| = 2; eta = 1/4 * |XS| (=1) * |X (I-P) beta*| (=2) + 0 = 1/2; |S| = 1
    b = forward_error_bound(np.eye(3), np.eye(3)[:, :2], np.array([0.0, 0.0, 2.0]), 1.0)
    assert float(b) == pytest.approx(np.sqrt(4 + 0.25), rel=1e-6)
    # a non-orthonormal S adds lambda |(S^+ - S^T) beta*|: S = 2 e_1, beta* = (1, 0)
    # S^+ = e_1^T / 2, S^T = 2 e_1^T -> (1/2 - 2) * 1; P beta* = beta*, delta = 0, X(I-P)beta* = 0
    # bound = |S| * lambda * 1.5 / lambda = 2 * 1.5 = 3
    b = forward_error_bound(np.eye(2), np.array([[2.0], [0.0]]), np.array([1.0, 0.0]), 0.5)
    assert float(b) == pytest.approx(3.0, rel=1e-6)
    assert np.isinf(float(forward_error_bound(np.eye(2), np.eye(2)[:, :1], np.ones(2), 0.0)))
    with pytest.raises(ValueError, match="l2"):
        forward_error_bound(np.eye(2), np.eye(2), np.ones(2), -1.0)
    with pytest.raises(ValueError, match="S"):
        forward_error_bound(np.eye(2), np.eye(3), np.ones(2), 1.0)
    with pytest.raises(ValueError, match="beta_star"):
        forward_error_bound(np.eye(2), np.eye(2), np.ones(3), 1.0)


def test_feature_sketching_on_sharded_rows(mesh8_kind):
    """Rows split over an Auto or Explicit 8-device mesh: same selection, projection, fit and bound."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    rng = np.random.default_rng(9)
    X = rng.standard_normal((256, 12)).astype(np.float32)
    y = np.where(X[:, 0] - X[:, 2] + rng.logistic(size=256) > 0, 1.0, -1.0).astype(np.float32)
    Xs, ys = (jax.device_put(jnp.asarray(a), NamedSharding(mesh8_kind, P("data"))) for a in (X, y))
    np.testing.assert_array_equal(np.asarray(select_features(Xs, 4, "leverage")), np.asarray(select_features(X, 4)))
    key = jax.random.key(3)
    np.testing.assert_allclose(np.asarray(project_features(key, Xs, 4, "srht").X_sketch),
                               np.asarray(project_features(key, X, 4, "srht").X_sketch), rtol=1e-4, atol=1e-4)
    ref = fit_sketched_features(X, y, 5, method="leverage", l2=0.5)
    got = fit_sketched_features(Xs, ys, 5, method="leverage", l2=0.5)
    np.testing.assert_allclose(np.asarray(got.beta), np.asarray(ref.beta), rtol=1e-3, atol=1e-4)
    assert float(got.forward_error_bound) == pytest.approx(float(ref.forward_error_bound), rel=1e-3)
