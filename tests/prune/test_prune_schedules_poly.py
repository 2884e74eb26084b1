"""Zhu-Gupta polynomial and constant pruning schedules (issue 17 defect 9).

Checked against a plain-python transcription of Zhu & Gupta eq. (1),
s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^p, and inside ``sparsify``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxeff
from jaxeff.prune import (
    ConstantSchedule,
    CubicSchedule,
    PolynomialSchedule,
    PruningSchedule,
    constant_schedule,
    cubic_schedule,
    polynomial_schedule,
    sparsify,
)


def zhu_gupta(t, s_f, t0, n, dt, s_i=0.0, p=3.0):
    """Plain-python eq. (1): 0 before t0, the polynomial on [t0, t0 + n dt], s_f after."""
    if t < t0:
        return 0.0
    frac = min((t - t0) / (n * dt), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** p


def zhu_gupta_updates(t, t0, n, dt):
    end = t0 + n * dt
    return t0 <= t <= end and ((t - t0) % dt == 0 or t == end)


CASES = [
    # (s_f, t0, n, dt, s_i, p)
    (0.8, 10, 10, 10, 0.0, 1.0),
    (0.9, 0, 8, 5, 0.3, 2.0),
    (0.5, 3, 20, 1, 0.0, 0.5),
    (0.95, 7, 4, 25, 0.1, 4.5),
    (0.7, 0, 12, 3, 0.0, 3.0),
]


@pytest.mark.parametrize("s_f,t0,n,dt,s_i,p", CASES)
def test_polynomial_matches_formula(s_f, t0, n, dt, s_i, p):
    sch = polynomial_schedule(s_f, start=t0, end=t0 + n * dt, every=dt, initial_sparsity=s_i, power=p)
    assert isinstance(sch, PolynomialSchedule) and isinstance(sch, PruningSchedule)
    ts = list(range(0, t0 + n * dt + 15))
    got = np.asarray(jax.jit(jax.vmap(sch.sparsity_at))(jnp.asarray(ts)))
    want = np.array([zhu_gupta(t, s_f, t0, n, dt, s_i, p) for t in ts])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    upd = [bool(sch.update_at(t)) for t in ts]
    assert upd == [zhu_gupta_updates(t, t0, n, dt) for t in ts]


def test_cubic_is_power_three():
    c = cubic_schedule(0.8, start=5, end=65, every=6, initial_sparsity=0.2)
    pz = polynomial_schedule(0.8, start=5, end=65, every=6, initial_sparsity=0.2, power=3)
    assert isinstance(c, CubicSchedule) and isinstance(c, PolynomialSchedule) and c.power == 3
    ts = jnp.arange(80)
    np.testing.assert_array_equal(np.asarray(jax.vmap(c.sparsity_at)(ts)), np.asarray(jax.vmap(pz.sparsity_at)(ts)))
    np.testing.assert_array_equal(np.asarray(jax.vmap(c.update_at)(ts)), np.asarray(jax.vmap(pz.update_at)(ts)))
    # the class still constructs directly, without a power argument
    d = CubicSchedule(final_sparsity=0.5, start=0, end=10)
    assert abs(float(d.sparsity_at(5)) - 0.5 * (1 - 0.5**3)) < 1e-7


def test_constant_schedule_values():
    once = constant_schedule(0.6, start=4)
    ts = list(range(30))
    assert [float(once.sparsity_at(t)) for t in ts] == [0.0] * 4 + [pytest.approx(0.6)] * 26
    assert [t for t in ts if bool(once.update_at(t))] == [4]
    rep = constant_schedule(0.6, start=4, end=20, every=5)
    assert [t for t in ts if bool(rep.update_at(t))] == [4, 9, 14, 19]
    forever = ConstantSchedule(sparsity=0.3, every=7)
    assert [t for t in ts if bool(forever.update_at(t))] == [0, 7, 14, 21, 28]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(power=0), "power"),
        (dict(power=-1.0), "power"),
        (dict(power=float("nan")), "power"),
        (dict(power=float("inf")), "power"),
        (dict(power="3"), "power"),
        (dict(power=True), "power"),
        (dict(final_sparsity=1.0), "final_sparsity"),
        (dict(final_sparsity=-0.1), "final_sparsity"),
        (dict(initial_sparsity=0.9), "initial_sparsity"),  # > final 0.5
        (dict(initial_sparsity=-0.2), "initial_sparsity"),
        (dict(end=10), "end"),  # == start
        (dict(start=-1), "start"),
        (dict(every=0), "every"),
        (dict(every=2.5), "every"),
    ],
)
def test_polynomial_validation(kwargs, name):
    base = dict(final_sparsity=0.5, start=10, end=20, every=1, initial_sparsity=0.0, power=2.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`") as e:
        polynomial_schedule(**base)
    assert repr(kwargs[next(iter(kwargs))]) in str(e.value)
    with pytest.raises(ValueError, match=f"`{name}`"):
        PolynomialSchedule(**base)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=-0.5), "sparsity"),
        (dict(sparsity="0.5"), "sparsity"),
        (dict(start=-3), "start"),
        (dict(end=2), "end"),  # < start 5
        (dict(every=0), "every"),
    ],
)
def test_constant_validation(kwargs, name):
    base = dict(sparsity=0.5, start=5)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        constant_schedule(**base)
    with pytest.raises(ValueError, match=f"`{name}`"):
        ConstantSchedule(**base)


def test_exported_top_level():
    for n in ("PolynomialSchedule", "ConstantSchedule", "polynomial_schedule", "constant_schedule"):
        assert getattr(jaxeff, n) is getattr(jaxeff.prune, n)
        assert n in jaxeff.__all__ and n in jaxeff.prune.__all__


def _run(schedule, steps, scorer="magnitude", key=None):
    params = {"w": jax.random.normal(jax.random.key(0), (16, 25)) + 3.0, "b": jnp.ones(25)}
    tx = sparsify(optax.sgd(1e-3), schedule, scorer, key=key)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    step = jax.jit(lambda p, s: tx.update(grads, s, p))
    hist = []
    for _ in range(steps):
        u, state = step(params, state)
        params = optax.apply_updates(params, u)
        hist.append((params, state))
    return hist


@pytest.mark.parametrize("p", [1.0, 2.0, 0.5])
def test_polynomial_inside_sparsify(p):
    t0, n, dt, s_f = 2, 4, 3, 0.8
    sch = polynomial_schedule(s_f, start=t0, end=t0 + n * dt, every=dt, power=p)
    hist = _run(sch, t0 + n * dt + 4)
    size = 16 * 25
    last = 0.0
    for t, (params, state) in enumerate(hist):
        if zhu_gupta_updates(t, t0, n, dt):
            last = zhu_gupta(t, s_f, t0, n, dt, 0.0, p)
        assert abs(float(state.sparsity) - last) < 1e-6, (t, float(state.sparsity), last)
        zeros = int((params["w"] == 0).sum())
        assert zeros == round(last * size), (t, zeros, last)
        assert int((params["b"] == 0).sum()) == 0  # 1-d leaves are not pruned
    assert abs(float(hist[-1][1].sparsity) - s_f) < 1e-6


def test_constant_inside_sparsify():
    hist = _run(constant_schedule(0.5, start=2), 8, "random", key=jax.random.key(1))
    m2 = np.asarray(hist[2][1].masks["w"])
    assert [int((h[0]["w"] == 0).sum()) for h in hist] == [0, 0] + [200] * 6
    for h in hist[3:]:
        np.testing.assert_array_equal(np.asarray(h[1].masks["w"]), m2)  # fixed after the one selection
    hist = _run(constant_schedule(0.5, start=2, every=2), 8, "random", key=jax.random.key(1))
    masks = [np.asarray(h[1].masks["w"]) for h in hist]
    assert all((~m).sum() == 200 for m in masks[2:])
    np.testing.assert_array_equal(masks[2], masks[3])
    assert not np.array_equal(masks[3], masks[4])  # re-selected at step 4 (random scores move)
    assert math.isclose(float(hist[-1][1].sparsity), 0.5, abs_tol=1e-7)
