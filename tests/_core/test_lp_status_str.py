"""LPStatus reads as a name, not a bare integer (issue 17 defect 10), and stays an IntEnum."""
import enum

import jax.numpy as jnp
import pytest

from jaxeff import LPStatus, solve_lp


@pytest.mark.parametrize("st,text", [(LPStatus.OPTIMAL, "optimal"), (LPStatus.INFEASIBLE, "infeasible"),
                                     (LPStatus.UNBOUNDED, "unbounded"), (LPStatus.ITERATION_LIMIT, "iteration limit"),
                                     (LPStatus.NUMERICAL_ERROR, "numerical error")])
def test_str_is_readable(st, text):
    assert str(st) == text and f"{st}" == text and "%s" % st == text
    assert isinstance(st, enum.IntEnum) and isinstance(st, int)
    assert int(st) == st.value and f"{st:d}" == str(st.value) and LPStatus(st.value) is st


def test_result_status_prints_name():
    # x >= 0, x <= -1: infeasible
    res = solve_lp(jnp.array([1.0]), A_ub=jnp.array([[1.0]]), b_ub=jnp.array([-1.0]))
    assert res.status == LPStatus.INFEASIBLE and res.status == 1
    assert str(res.status) == "infeasible"
