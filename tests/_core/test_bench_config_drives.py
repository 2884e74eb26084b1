"""Issue 20.3: the topology config reaches the suites (mesh shape/axis, dtypes, per-device batch)."""
import textwrap

import jax
import jax.numpy as jnp
import pytest

from jaxeff._core.bench import BenchContext
from jaxeff._core.config import load_config, setup_devices
from jaxeff._core.runner import run_suites

PROBE = textwrap.dedent('''
    import jax.numpy as jnp
    def run(ctx):
        x = ctx.shard_rows(jnp.ones((ctx.global_batch + 3, 4), ctx.compute_dtype))
        ctx.record("probe", metrics={
            "mesh": None if ctx.mesh is None else dict(ctx.mesh.shape), "data_axis": ctx.data_axis,
            "model_axis": ctx.model_axis, "shard_params": ctx.shard_params,
            "params": ctx.param_dtype.name, "compute": ctx.compute_dtype.name,
            "per_device": ctx.per_device_batch, "global": ctx.global_batch,
            "rows": x.shape[0], "dtype": x.dtype.name, "n_shards": len(x.addressable_shards),
            "shard_rows": x.addressable_shards[0].data.shape[0]})
''')


@pytest.fixture
def probe_dir(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def _probe(cfg, probe_dir):
    mesh = setup_devices(cfg)
    results, errors = run_suites(["probe"], config=cfg, mesh=mesh, directory=probe_dir, progress=False)
    assert errors == {}
    return results[0].metrics


def test_cpu8_config_reaches_the_suite(probe_dir):
    assert jax.device_count() >= 8, "tests/conftest.py provides 8 CPU devices"
    m = _probe(load_config("cpu-8"), probe_dir)
    assert m["mesh"] == {"data": 8} and m["data_axis"] == "data"
    assert m["per_device"] == 4 and m["global"] == 32
    assert m["compute"] == "float32" and m["dtype"] == "float32"
    assert m["n_shards"] == 8 and m["rows"] == 32 and m["shard_rows"] == 4  # 35 rows trimmed to 8 x 4

    cfg = load_config("cpu-8", ["mesh.axes=[data,model]", "mesh.shape=[4,2]", "mesh.model_axis=model",
                                "shard_params=true", "batch.per_device=3", "dtypes.compute=bfloat16",
                                "dtypes.params=bfloat16"])
    m = _probe(cfg, probe_dir)
    assert m["mesh"] == {"data": 4, "model": 2} and m["model_axis"] == "model" and m["shard_params"] is True
    assert m["per_device"] == 3 and m["global"] == 12
    assert m["compute"] == "bfloat16" and m["params"] == "bfloat16" and m["dtype"] == "bfloat16"
    assert m["rows"] == 12 and m["shard_rows"] == 3


def test_no_config_is_one_device_float32():
    ctx = BenchContext("t")
    assert not ctx.sharded and ctx.compute_dtype == jnp.float32 and ctx.global_batch == 8
    x = jnp.ones((5, 2))
    assert ctx.shard_rows(x) is x
