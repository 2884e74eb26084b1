import json
import subprocess
import sys

import pytest

from jaxeff._core.config import list_configs, load_config, setup_devices
from jaxeff.cli import main


def test_every_topology_loads_and_is_consistent():
    names = list_configs()
    for need in ("base", "cpu-8", "gpu-1", "gpu-8", "v5e-8", "v4-32", "v5p-128"):
        assert need in names
    for n in names:
        cfg = load_config(n)
        assert cfg.raw["name"] == n
        assert cfg.global_batch_size >= 1


def test_overrides_and_errors():
    cfg = load_config("cpu-8", ["batch.per_device=16", "dtypes.compute=bfloat16"])
    assert cfg.batch.per_device == 16 and cfg.dtypes.compute == "bfloat16"
    assert cfg.global_batch_size == 128
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        load_config("cpu-8", ["bogus=1"])
    with pytest.raises(ValueError, match="impossible mesh"):
        load_config("cpu-8", ["mesh.shape=[3]"])
    with pytest.raises(ValueError, match="unknown topology"):
        load_config("v9z-1024")
    with pytest.raises(ValueError, match="dtypes.params"):
        load_config(None, ["dtypes.params=int3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["oops"])


def test_cpu8_mesh_and_tpu_topology_error():
    mesh = setup_devices(load_config("cpu-8"))
    assert dict(mesh.shape) == {"data": 8}
    with pytest.raises(RuntimeError, match="needs 8 TPU"):
        setup_devices(load_config("v5e-8"))


def test_cli_info_and_bench(tmp_path, capsys):
    assert main(["info", "--config", "cpu-8"]) == 0
    out = capsys.readouterr().out
    assert "cpu-8" in out and "devices (8)" in out
    assert main(["bench", "--list"]) == 0
    assert "core" in capsys.readouterr().out
    assert main(["bench", "--config", "v5e-8", "--out", str(tmp_path / "x")]) == 2
    assert "needs 8 TPU" in capsys.readouterr().err


def test_cli_bench_writes_three_result_kinds(tmp_path):
    # run in a subprocess: the runner's suites import at full speed and write files
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "jaxeff.cli", "bench", "core", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    names = [row["name"] for row in data["results"]]
    assert "highs 50x100" in names and "pdhg 50x100" in names
    pd = next(row for row in data["results"] if row["name"] == "pdhg 50x100")
    assert pd["baseline"] == "highs 50x100" and pd["ratio"] > 0
    assert pd["metrics"]["status"] == "OPTIMAL" and pd["metrics"]["rel_obj_err"] < 1e-5
    assert (out / "results.md").read_text().startswith("# jaxeff benchmark results")
    assert (out / "core.png").stat().st_size > 1000


def test_cli_bench_overrides_after_config(tmp_path, capsys):
    # issue 20.4: key=value after --config reached argparse as "unrecognized arguments"
    assert main(["bench", "--config", "cpu-8", "mesh.shape=[3]", "--out", str(tmp_path / "x")]) == 2
    assert "impossible mesh" in capsys.readouterr().err
    assert main(["bench", "core", "--config", "v5e-8", "batch.per_device=4", "--out", str(tmp_path / "y")]) == 2
    assert "needs 8 TPU" in capsys.readouterr().err
    assert main(["bench", "core", "--config", "cpu-8", "bogus.key=1", "--out", str(tmp_path / "z")]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--config", "cpu-8", "--bogus"])
    assert main(["info", "--config", "cpu-8", "notanoverride"]) == 2
    assert "must look like key=value" in capsys.readouterr().err
