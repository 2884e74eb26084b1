"""Issue 18.2 (declared goals, met / not met / missing in results.md) and 18.1 (threads, load in results.json)."""
import json
import textwrap

import pytest

from jaxeff._core.bench import BenchResult, Goal, evaluate_goals
from jaxeff._core.runner import run_suites, write_results

FAKE = textwrap.dedent('''
    from jaxeff._core.bench import Goal
    DESCRIPTION = "fake suite for goal tests"
    GOALS = [
        Goal("fast enough", "fast", "ratio", "<=", 0.5, "x base"),
        Goal("too slow", "slow", "ratio", "<=", 0.5, "x base"),
        Goal("quality", "q*", "err", "<", 1e-3),
        Goal("never measured", "absent", "ratio", "<=", 1.0),
        Goal("key missing", "fast", "nope", "<=", 1.0),
        Goal("relative", "fast", "ratio", "<=", "slow:ratio", "x base", 1.0),
    ]
    def run(ctx):
        ctx.record("base", median_s=1.0)
        ctx.record("fast", median_s=0.25, baseline="base")
        ctx.record("slow", median_s=0.75, baseline="base")
        ctx.record("q1", metrics={"err": 1e-4})
        ctx.record("q2", metrics={"err": 1e-2})
        import threadpoolctl
        ctx.record("threads", metrics={"blas": max(d["num_threads"] for d in threadpoolctl.threadpool_info())})
''')


@pytest.fixture
def fake_dir(tmp_path):
    d = tmp_path / "suites"
    d.mkdir()
    (d / "fake.py").write_text(FAKE)
    return d


def test_runner_evaluates_declared_goals(fake_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEFF_BENCH_BLAS_THREADS", "1")
    results, errors, info = run_suites(["fake"], directory=fake_dir, progress=False, return_info=True)
    assert errors == {}
    rows = {(g["goal"], g["case"]): g for g in info["goals"]}
    assert rows[("fast enough", "fast")]["status"] == "met"
    assert rows[("fast enough", "fast")]["measured"] == pytest.approx(0.25)
    assert rows[("too slow", "slow")]["status"] == "not met"
    assert rows[("quality", "q1")]["status"] == "met" and rows[("quality", "q2")]["status"] == "not met"
    assert rows[("never measured", "absent")]["status"] == "missing"
    assert rows[("key missing", "fast")]["status"] == "missing"
    rel = rows[("relative", "fast")]
    assert rel["status"] == "met" and rel["target"] == pytest.approx(0.75)
    # the BLAS pools were limited to one thread while the suite ran
    assert next(r for r in results if r.name == "threads").metrics["blas"] == 1
    assert info["threads"]["blas_limit"] == 1 and info["threads"]["threadpools"] is not None
    assert len(info["load_before"]) == 3 and len(info["load_after"]) == 3

    out = tmp_path / "out"
    meta = {"date": "d", "machine": "m", "jax": "j", "backend": "cpu", "devices": 1, "size": "small",
            "config": "base", "threads": info["threads"], "load_before": info["load_before"],
            "load_after": info["load_after"]}
    write_results(results, errors, out, meta=meta, goals=info["goals"])
    md = (out / "results.md").read_text()
    assert "## goals (3 of 7 met)" in md
    assert "| fake | too slow | slow | ratio=0.75 x base | <= 0.5 x base | not met |" in md
    assert "| fake | never measured | absent | — | <= 1.0 | missing |" in md
    assert "BLAS thread limit: 1" in md
    data = json.loads((out / "results.json").read_text())
    assert len(data["goals"]) == 7 and data["meta"]["threads"]["blas_limit"] == 1
    assert data["meta"]["load_before"] == info["load_before"]


def test_thread_limit_setting(fake_dir, monkeypatch):
    monkeypatch.setenv("JAXEFF_BENCH_BLAS_THREADS", "zero")
    with pytest.raises(ValueError, match="JAXEFF_BENCH_BLAS_THREADS"):
        run_suites(["fake"], directory=fake_dir, progress=False)


def test_goal_validation_and_nan():
    with pytest.raises(ValueError, match="`op`"):
        Goal("g", "c", "ratio", "~", 1.0)
    with pytest.raises(ValueError, match="case:key"):
        Goal("g", "c", "ratio", "<=", "nocolon")
    with pytest.raises(TypeError, match="`target`"):
        Goal("g", "c", "ratio", "<=", None)
    r = [BenchResult("s", "c", metrics={"x": float("nan"), "b": True})]
    rows = evaluate_goals([Goal("g", "c", "x", "<=", 1.0), Goal("h", "c", "b", "<=", 1.0)], r, "s")
    assert [row["status"] for row in rows] == ["missing", "missing"]
    with pytest.raises(TypeError, match="Goal objects"):
        evaluate_goals(["not a goal"], r, "s")


def test_shipped_goal_table_is_well_formed():
    from jaxeff._core.runner import discover_suites, suite_goals

    suites = discover_suites()
    for name in ("distill", "quant", "prune", "sam", "rounding", "coreset", "sketch", "irl"):
        goals = suite_goals(name)
        assert goals and name in suites
        assert all(isinstance(g, Goal) for g in goals)
