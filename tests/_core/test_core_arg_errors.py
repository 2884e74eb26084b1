"""make_mesh / solve_lp / check_array: bad input fails with an error naming the argument (issue 17)."""
import jax
import numpy as np
import pytest

from jaxeff import make_mesh, solve_lp
from jaxeff._core.validation import check_array

C, A, B = np.array([1.0, 1.0]), np.array([[-1.0, -2.0]]), np.array([-1.0])


@pytest.mark.parametrize("kw, name", [
    ({"shape": None}, "shape"),
    ({"shape": "1"}, "shape"),
    ({"axis_names": None}, "axis_names"),
    ({"axis_names": 3}, "axis_names"),
])
def test_make_mesh_errors(kw, name):
    args = {"shape": (1,), "axis_names": ("data",), "devices": jax.devices()[:1], **kw}
    with pytest.raises(ValueError, match=name):
        make_mesh(**args)


def test_make_mesh_single_char_axis_name_still_works():
    assert make_mesh((1,), "x", devices=jax.devices()[:1]).axis_names == ("x",)


@pytest.mark.parametrize("kw, name, exc", [
    ({"c": None}, "c", ValueError),
    ({"c": C[None]}, "c", ValueError),
    ({"b_ub": B[None]}, "b_ub", ValueError),
    ({"b_ub": B[0]}, "b_ub", ValueError),
    ({"A_ub": A[:0]}, "A_ub", ValueError),
    ({"no_such_option": 1}, "no_such_option", TypeError),
])
def test_solve_lp_errors(kw, name, exc):
    args = {"c": C, "A_ub": A, "b_ub": B, **kw}
    with pytest.raises(exc, match=name):
        solve_lp(**args)


def test_solve_lp_highs_options_still_accepted():
    r = solve_lp(C, A, B, presolve=False, time_limit=10.0)
    assert r.status.name == "OPTIMAL" and abs(r.objective - 0.5) < 1e-8


@pytest.mark.parametrize("bad", [None, "abc", b"x"])
def test_check_array_refuses(bad):
    with pytest.raises(ValueError, match="`x` must be an array"):
        check_array("x", bad)


@pytest.mark.parametrize("ok", [np.zeros(2), [1.0], 3.0, jax.numpy.ones(3)])
def test_check_array_accepts(ok):
    check_array("x", ok)
