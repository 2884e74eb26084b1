"""top_eigenvalues(which=...) on indefinite Hessians vs numpy.linalg.eigvalsh (issue 17 defect 10)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.stability import top_eigenvalues


def _quad(evals, seed=0):
    """0.5 w^T A w with A = Q diag(evals) Q^T (dense, symmetric)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(evals), len(evals))))
    A = (Q * np.asarray(evals, np.float64)) @ Q.T
    A = 0.5 * (A + A.T)
    Aj = jnp.asarray(A, jnp.float32)
    return (lambda w: 0.5 * w @ Aj @ w), A


# indefinite: the most negative eigenvalue dominates in magnitude
INDEF = [-9.0, -6.0, -1.0, 0.3, 1.0, 2.0, 3.0, 5.0]


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("k", [1, 3])
def test_largest_is_algebraic_on_indefinite(method, k):
    loss, A = _quad(INDEF)
    want = np.sort(np.linalg.eigvalsh(A))[::-1][:k]
    res = top_eigenvalues(loss, jnp.zeros(len(INDEF)), k, method, num_iters=None if method == "lanczos" else 4000,
                          tol=1e-10)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), want, rtol=2e-3, atol=2e-3)
    res2 = top_eigenvalues(loss, jnp.zeros(len(INDEF)), k, method, which="largest",
                           num_iters=None if method == "lanczos" else 4000, tol=1e-10)
    np.testing.assert_allclose(np.asarray(res2.eigenvalues), np.asarray(res.eigenvalues))
    # eigenvectors: A u = lambda u
    V = np.asarray(res.eigenvectors, np.float64)
    for lam, u in zip(np.asarray(res.eigenvalues), V):
        assert np.linalg.norm(A @ u - lam * u) < 0.05 * max(1.0, abs(lam))


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_magnitude_on_indefinite(method):
    loss, A = _quad(INDEF)
    ev = np.linalg.eigvalsh(A)
    want = ev[np.argsort(-np.abs(ev))][:3]  # -9, -6, 5
    res = top_eigenvalues(loss, jnp.zeros(len(INDEF)), 3, method, which="magnitude",
                          num_iters=None if method == "lanczos" else 4000, tol=1e-10)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_largest_on_negative_definite(method):
    evals = [-8.0, -5.0, -3.0, -2.0, -1.5, -1.0]
    loss, A = _quad(evals, seed=3)
    res = top_eigenvalues(loss, jnp.zeros(len(evals)), 2, method,
                          num_iters=None if method == "lanczos" else 4000, tol=1e-10)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [-1.0, -1.5], rtol=3e-3, atol=3e-3)


def test_psd_both_which_agree():
    loss, A = _quad([0.5, 1.0, 2.0, 4.0, 7.0])
    for method in ("lanczos", "power"):
        a = top_eigenvalues(loss, jnp.zeros(5), 2, method, which="largest", num_iters=None if method == "lanczos" else 3000,
                            tol=1e-10).eigenvalues
        b = top_eigenvalues(loss, jnp.zeros(5), 2, method, which="magnitude",
                            num_iters=None if method == "lanczos" else 3000, tol=1e-10).eigenvalues
        np.testing.assert_allclose(np.asarray(a), [7.0, 4.0], rtol=1e-3)
        np.testing.assert_allclose(np.asarray(b), [7.0, 4.0], rtol=1e-3)


@pytest.mark.parametrize("bad", ["smallest", "LARGEST", None, 1])
def test_which_validated(bad):
    loss, _ = _quad([1.0, 2.0])
    with pytest.raises(ValueError, match="`which`"):
        top_eigenvalues(loss, jnp.zeros(2), 1, which=bad)


@pytest.mark.parametrize("kw,name", [(dict(loss_fn=None), "loss_fn"), (dict(params=None), "params"),
                                     (dict(num_iters=2.5), "num_iters"), (dict(tol=None), "tol"),
                                     (dict(tol="1e-6"), "tol")])
def test_bad_arguments_named(kw, name):
    loss, _ = _quad([1.0, 2.0])
    args = dict(loss_fn=loss, params=jnp.zeros(2), k=1)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        top_eigenvalues(**args)
