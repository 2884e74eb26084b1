"""Stability tools and mSAM on bad input: NaN propagates or raises, never a plausible number.

Regression tests: ``top_eigenvalues`` of a NaN Hessian returned [0.0] and stopped after 2
steps with ``tol=nan``; ``coherence`` of all-zero Hessians was NaN and of non-PSD input a
huge number; ``msam_gradient`` broadcast ``ascent_grads`` of the wrong shape;
``spectral_density(sigma=0)`` was NaN; ``sgd_stability(lr=-1)`` under jit was accepted.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.sam import msam_gradient
from jaxeff.stability import coherence, sgd_stability, spectral_density, top_eigenvalues

A = jnp.diag(jnp.arange(1.0, 6.0))


def quad(w):
    return 0.5 * w @ A @ w


def nan_quad(w):
    return 0.5 * w @ (A * jnp.nan) @ w


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_nan_hessian_is_nan(method):
    ev = top_eigenvalues(nan_quad, jnp.ones(5), 1, method).eigenvalues
    assert np.all(np.isnan(np.asarray(ev)))
    ev = top_eigenvalues(quad, jnp.ones(5), 2, method, num_iters=5 if method == "lanczos" else 500).eigenvalues
    np.testing.assert_allclose(np.asarray(ev), [5.0, 4.0], rtol=1e-3)


@pytest.mark.parametrize("tol", [float("nan"), -1e-3, float("inf")])
def test_top_eigenvalues_bad_tol(tol):
    with pytest.raises(ValueError, match="`tol`"):
        top_eigenvalues(quad, jnp.ones(5), 1, "power", tol=tol)


def test_coherence_all_zero_and_non_psd():
    e = jnp.zeros((3, 3)).at[0, 0].set(1.0)
    assert float(coherence(jnp.stack([e, e, jnp.zeros((3, 3))]))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="all zero"):
        coherence(jnp.zeros((4, 3, 3)))
    bad = jnp.stack([jnp.diag(jnp.array([1.0, -1.0, 0.5])), e])
    with pytest.raises(ValueError, match="positive semi-definite"):
        coherence(bad)
    asym = jnp.stack([e.at[0, 1].set(1.0), e])
    with pytest.raises(ValueError, match="symmetric"):
        coherence(asym)
    with pytest.raises(ValueError, match="`hessians`"):
        coherence(jnp.stack([e, e.at[1, 1].set(jnp.nan)]))
    # under jit the same conditions raise at run time
    f = jax.jit(coherence)
    assert float(f(jnp.stack([e, e]))) == pytest.approx(2.0)
    with pytest.raises(Exception, match="positive semi-definite"):
        jax.block_until_ready(f(bad))


def test_sgd_stability_lr_under_jit():
    H = jnp.stack([jnp.eye(2) * 2.0] * 4)
    f = jax.jit(lambda lr: sgd_stability(H, lr, 2).score)
    assert np.isfinite(float(f(0.5)))
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(Exception, match="lr"):
            jax.block_until_ready(f(bad))


def test_spectral_density_sigma():
    with pytest.raises(ValueError, match="`sigma`"):
        spectral_density(quad, jnp.ones(5), jax.random.key(0), num_iters=5, sigma=0.0)
    with pytest.raises(ValueError, match="`sigma`"):
        spectral_density(quad, jnp.ones(5), jax.random.key(0), num_iters=5, sigma=float("nan"))
    sd = spectral_density(quad, jnp.ones(5), jax.random.key(0), num_iters=5, sigma=0.1)
    assert np.all(np.isfinite(np.asarray(sd.density)))


def test_msam_gradient_ascent_grads_checked():
    loss = lambda w, b: jnp.mean((b["x"] @ w["a"] - b["y"]) ** 2)  # noqa: E731
    b = {"x": jnp.ones((8, 3)), "y": jnp.zeros(8)}
    w = {"a": jnp.ones(3)}
    g = jax.grad(loss)(w, b)
    ref = msam_gradient(loss, w, b, 0.05, 1)
    np.testing.assert_allclose(np.asarray(msam_gradient(loss, w, b, 0.05, 1, ascent_grads=g)["a"]),
                               np.asarray(ref["a"]), rtol=1e-6)
    with pytest.raises(ValueError, match="ascent_grads"):
        msam_gradient(loss, w, b, 0.05, 1, ascent_grads={"a": jnp.ones((1,))})
    with pytest.raises(ValueError, match="ascent_grads"):
        msam_gradient(loss, w, b, 0.05, 1, ascent_grads={"b": jnp.ones(3)})
    with pytest.raises(ValueError, match="ascent_grads"):
        msam_gradient(loss, w, b, 0.05, 4, ascent_grads=g)
