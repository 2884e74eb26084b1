"""`jaxeff compress` recipes on tiny Llama-family models: validation, a full run (teacher train,
KD from the offline logit store, OSSCAR + shrink, online re-KD with mSAM, GPTQ int4, export),
resume after a deleted stage, and the export loading in transformers with the same logits."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff.compress import RecipeError, load_recipe, run_recipe

TEACHER = dict(model_type="qwen3", vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300))
    (d / "code.txt").write_text(text)
    (d / "more.jsonl").write_text("\n".join(json.dumps({"text": f"print({i} + {i})"}) for i in range(50)))
    return d


def _recipe(corpus, **over):
    r = {
        "teacher": {"config": TEACHER, "train": {"steps": 30, "batch_size": 8, "lr": 3e-3}},
        "student": {"config": {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1}},
        "data": {"path": str(corpus), "seq_len": 32, "max_tokens": 12000},
        "eval": {"max_sequences": 16, "gen_prompts": 2, "gen_tokens": 4},
        "stages": [
            {"distill": {"steps": 15, "teacher_logits": "cache", "top_k": 16, "lr": 3e-3}},
            {"prune": {"mlp_sparsity": 0.5, "kv_group_sparsity": 0.5, "calib_sequences": 8}},
            {"redistill": {"steps": 6, "optimizer": "msam", "msam_microbatches": 2, "divergence": "jsd", "lr": 1e-3}},
            {"quantize": {"rules": [{"weight_fmt": "int4", "group_size": 16, "method": "gptq"}], "calib_sequences": 8}},
            {"export": {}},
        ],
    }
    r.update(over)
    return r


def test_recipe_validation(corpus, tmp_path):
    r = load_recipe(_recipe(corpus))
    assert r["stages"][0]["distill"]["temperature"] == 1.0 and r["data"]["tokenizer"] == "auto"
    assert load_recipe(_recipe(corpus), ["stages.0.distill.steps=3"])["stages"][0]["distill"]["steps"] == 3
    bad = [
        (dict(extra=1), "unknown top-level key"),
        (dict(stages=[{"distill": {"stepz": 3}}]), r"stages.0.distill`: unknown key"),
        (dict(stages=[{"distill": {"steps": 0}}]), r"stages.0.distill.steps` must be a positive integer"),
        (dict(stages=[{"distill": {"temperature": -1}}]), "temperature"),
        (dict(stages=[{"shrink": {}}]), "unknown stage 'shrink'"),
        (dict(stages=[{"export": {}}, {"distill": {}}]), "after `export`"),
        (dict(stages=[{"quantize": {"rules": [{}]}}, {"prune": {}}]), "after `quantize`"),
        (dict(stages=[{"quantize": {"rules": [{"method": "magic"}]}}]), r"rules.0.method"),
        (dict(stages=[{"distill": {"optimizer": "msam", "batch_size": 8, "msam_microbatches": 3}}]), "must divide"),
        (dict(stages=[{"distill": {"on_policy_fraction": 0.5, "teacher_logits": "cache"}}]), "needs `teacher_logits: online`"),
        (dict(stages=[{"distill": {"on_policy_fraction": 1.5}}]), r"on_policy_fraction` must be a number in \[0, 1\]"),
        (dict(stages=[{"distill": {"on_policy_fraction": 0.5, "on_policy_prompt_len": 32}}]), "on_policy_prompt_len"),
        (dict(stages=[{"prune": {"mlp_sparsity": 1.0}}]), "mlp_sparsity"),
        (dict(teacher=None), "needs a `teacher`"),
        (dict(data={"path": str(corpus / "nope.txt")}), "does not exist"),
        (dict(teacher={"checkpoint": str(tmp_path)}), "not a checkpoint directory"),
        (dict(teacher={"config": TEACHER, "checkpoint": str(tmp_path)}), "exactly one of"),
        (dict(stages=[{"distill": {"sft_baseline": "yes"}}]), r"sft_baseline` must be true or false"),
        (dict(stages=[{"quantize": {"rules": [{}], "variants": [{"rules": [{}]}]}}]), r"variants.0.name` is required"),
        (dict(stages=[{"quantize": {"rules": [{}], "variants": [{"name": "a", "rules": [{"group_size": 0}]}]}}]),
         r"variants.0.rules.0.group_size"),
        (dict(stages=[{"quantize": {"rules": [{}], "variants": [{"name": "a", "rules": [{}]},
                                                             {"name": "a", "rules": [{}]}]}}]), "names must be distinct"),
    ]
    for over, msg in bad:
        with pytest.raises(RecipeError, match=msg):
            load_recipe(_recipe(corpus, **over))
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(_recipe(corpus), ["steps"])
    with pytest.raises(RecipeError, match=r"shipped with jaxeff: \[.*'demo'"):
        load_recipe("no-such-recipe")
    assert load_recipe(_recipe(corpus, data={"path": "@stdlib"}))["data"]["path"] == "@stdlib"
    f = tmp_path / "r.yaml"
    f.write_text("stages: [")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(f)


def test_run_resume_and_export_loads_in_transformers(corpus, tmp_path):
    out = tmp_path / "run"
    rows = run_recipe(_recipe(corpus), out, progress=False)
    names = [r["stage"] for r in rows]
    assert names == ["teacher", "start", "01-distill", "02-prune", "03-redistill", "04-quantize", "05-export"]
    by = {r["stage"]: r for r in rows}
    assert by["teacher"]["last_loss"] < by["teacher"]["first_loss"]
    assert by["01-distill"]["ppl"] < by["start"]["ppl"]  # KD from the store trains the student
    assert by["01-distill"]["cache_bytes_per_token"] == 16 * 6 + 8
    assert by["02-prune"]["bytes"] < by["01-distill"]["bytes"]
    # int4 codes + scales for the projections; the embedding and the untied lm head stay float
    assert by["04-quantize"]["bytes"] < by["03-redistill"]["bytes"] - 6000
    assert by["04-quantize"]["ppl"] < 1.5 * by["03-redistill"]["ppl"]
    for f in ("results.json", "results.md", "size_vs_quality.png"):
        assert (out / f).is_file()
    cfg = json.loads((out / "02-prune" / "model" / "config.json").read_text())
    assert cfg["intermediate_size"] == 16 and cfg["num_key_value_heads"] == 1 and cfg["num_attention_heads"] == 2
    assert json.loads((out / "export" / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"

    # resume: delete the re-distillation stage; it and everything after it run again, earlier stages are kept
    before = (out / "02-prune" / "metrics.json").read_text()
    shutil.rmtree(out / "03-redistill")
    rows2 = run_recipe(_recipe(corpus), out, progress=False)
    assert (out / "02-prune" / "metrics.json").read_text() == before
    by2 = {r["stage"]: r for r in rows2}
    assert [r["stage"] for r in rows2] == names
    np.testing.assert_allclose(by2["03-redistill"]["ppl"], by["03-redistill"]["ppl"], rtol=1e-4)
    np.testing.assert_allclose(by2["05-export"]["ppl"], by["05-export"]["ppl"], rtol=1e-4)

    # the exported compressed-tensors model loads in transformers and computes jaxeff's outputs
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    from jaxeff.models import from_pretrained

    ids = np.arange(24, dtype=np.int64).reshape(2, 12) + 40
    ours = np.asarray(from_pretrained(out / "export")(jnp.asarray(ids)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "export", dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids)).logits.float().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * np.abs(theirs).max())


def test_cli_compress_on_cpu8_mesh_equals_one_device_and_distill_cache(corpus, tmp_path):
    """`jaxeff compress RECIPE key=value --config cpu-8 ... --out DIR`: data x tensor parallel
    stages (4 x 2, parameters sharded over the model axis) give one device's numbers (up to
    reduction order); `jaxeff distill-cache`."""
    import jax
    import yaml

    from jaxeff.cli import main
    from jaxeff.distill.logit_store import open_teacher_logit_store

    assert jax.device_count() >= 8, "tests/conftest.py provides 8 CPU devices"
    r = _recipe(corpus)
    r["teacher"]["train"]["steps"] = 4
    r["stages"] = [{"distill": {"steps": 3, "lr": 3e-3}}, {"prune": {"mlp_sparsity": 0.5, "calib_sequences": 8}},
                   {"quantize": {"rules": [{"weight_fmt": "int8"}], "calib_sequences": 8}}, {"export": {}}]
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(r))
    one = run_recipe(f, tmp_path / "one", overrides=["stages.0.distill.batch_size=16"], progress=False)
    # (8-way data parallel through `jaxeff compress` is tests/test_demo.py's 8-device test)
    tp = ["topology.mesh.axes=[data,model]", "topology.mesh.shape=[4,2]", "topology.mesh.model_axis=model",
          "topology.shard_params=true"]
    rc = main(["compress", str(f), "stages.0.distill.batch_size=16", "--config", "cpu-8", *tp, "--out",
               str(tmp_path / "tp"), "--no-progress"])
    assert rc == 0
    tp_rows = json.loads((tmp_path / "tp" / "results.json").read_text())
    assert [r_["stage"] for r_ in tp_rows] == [r_["stage"] for r_ in one]
    from flax import nnx

    from jaxeff._core.config import load_config, setup_devices
    from jaxeff.compress import _Placement

    cfg = load_config("cpu-8", [w[len("topology."):] for w in tp])
    where = _Placement.from_topology(cfg, setup_devices(cfg))
    assert where.model_axis == "model"
    specs = [x.sharding.spec for x in jax.tree.leaves(nnx.state(where.load(tmp_path / "tp" / "01-distill" / "model")))]
    assert any("model" in tuple(sp) for sp in specs)  # tensor parallel: some weights are split over `model`
    for a, b in zip(one, tp_rows):
        np.testing.assert_allclose(b["ppl"], a["ppl"], rtol=2e-3)
    assert main(["compress", str(f), "stages.0.distill.stepz=3", "--out", str(tmp_path / "bad")]) == 2
    rc = main(["distill-cache", str(tmp_path / "one" / "00-teacher" / "model"), str(corpus), "--out",
               str(tmp_path / "store"), "--k", "8", "--seq-len", "16", "--max-tokens", "2000", "--no-progress"])
    assert rc == 0
    st = open_teacher_logit_store(tmp_path / "store")
    assert st.k == 8 and st.seq_len == 16 and len(st) == 125 - round(125 * 0.1)


def test_recipe_seed_shifts_model_inits(corpus):
    import jax
    from flax import nnx

    from jaxeff.compress import _build_model, _Placement

    rec = load_recipe(_recipe(corpus, seed=1))
    where = _Placement()
    a = _build_model(rec["student"], "student", TEACHER, where, 0)
    b = _build_model(rec["student"], "student", TEACHER, where, rec["seed"])
    c = _build_model({**rec["student"], "init_seed": 1}, "student", TEACHER, where, 0)
    la, lb, lc = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b, c))
    assert not np.allclose(la[0], lb[0]) and all(np.array_equal(x, y) for x, y in zip(lb, lc))


def test_on_policy_distill_step_is_kd_on_the_students_own_samples(corpus):
    """fraction 1: every batch is the student's continuation of the window's first half, and the
    first step's loss is forward KL(teacher || student) on the generated tokens only (materialized)."""
    import jax

    from jaxeff.compress import _distill, _Placement, load_corpus
    from jaxeff.models import generate, random_init
    from jaxeff.compress import _llama_config

    rec = load_recipe(_recipe(corpus, stages=[{"distill": {"steps": 2, "batch_size": 4, "on_policy_fraction": 1.0,
                                                            "seed": 3}}]))
    s = {**rec["stages"][0]["distill"], "run_seed": 0}
    teacher = random_init(_llama_config(TEACHER), 0)
    student = random_init(_llama_config({**TEACHER, **rec["student"]["config"]}), 1)
    train, _, _ = load_corpus(rec["data"], None, 256)
    L, p = train.shape[1], train.shape[1] // 2
    idx = np.sort(np.random.default_rng(3).choice(train.shape[0], 4, replace=False))
    key = jax.random.split(jax.random.key(3), 2)[0]
    gen = generate(student, jnp.asarray(train[idx][:, :p]), L - p, temperature=1.0, key=key)
    ls = jax.nn.log_softmax(student(gen[:, :-1]).astype(jnp.float32), -1)
    lt = jax.nn.log_softmax(teacher(gen[:, :-1]).astype(jnp.float32), -1)
    kl = (jnp.exp(lt) * (lt - ls)).sum(-1)  # [B, L-1]; position j predicts token j+1
    on_gen = np.arange(L - 1)[None, :] + 1 >= p
    want = float((kl * on_gen).sum() / (on_gen.sum() * 4))
    info = _distill(student, teacher, train, s, None, _Placement(), False, "t")
    assert info["on_policy_steps"] == 2
    assert info["first_loss"] == pytest.approx(want, rel=1e-4)


def test_bf16_master_weights_stochastic_rounding_escapes_stagnation(corpus):
    """Updates far below half a bf16 ulp: round-to-nearest bf16 storage never moves a weight
    (stagnation), stochastic rounding (jaxeff.rounding.sr_optimizer) moves some, in expectation
    by the update; after the stage the weights are float32 again and exactly bf16 values."""
    import jax
    from flax import nnx

    from jaxeff.compress import _TRAIN, _fill, _lm_loss, _llama_config, _Placement, _train, load_corpus
    from jaxeff.models import random_init

    rec = load_recipe(_recipe(corpus))
    train, _, _ = load_corpus(rec["data"], None, 256)
    cfg = _llama_config({**TEACHER, **rec["student"]["config"]})
    w0 = [np.asarray(x, np.float32) for x in jax.tree.leaves(nnx.state(random_init(cfg, 1), nnx.Param))]
    moved = {}
    for mw in ("bfloat16", "bfloat16_sr"):
        m = random_init(cfg, 1)
        s = _fill("t", {"steps": 4, "batch_size": 4, "lr": 1e-7, "master_weights": mw}, _TRAIN)
        _train(m, train, s, _lm_loss, _Placement(), False, "t")
        w = [np.asarray(x) for x in jax.tree.leaves(nnx.state(m, nnx.Param))]
        assert all(x.dtype == np.float32 for x in w)
        assert all(np.array_equal(x, x.astype(jnp.bfloat16).astype(np.float32)) for x in w)
        # weights with |w| > 1e-3: half a bf16 ulp is > 1e-6, ten times the Adam step of ~lr
        moved[mw] = sum(int(((x != a.astype(jnp.bfloat16).astype(np.float32)) & (np.abs(a) > 1e-3)).sum())
                        for x, a in zip(w, w0))
    assert moved["bfloat16"] == 0 and moved["bfloat16_sr"] > 0, moved


def test_bf16_compute_on_fp32_master_weights(corpus):
    """Topology dtypes compute=bfloat16, params=float32: the forward runs in bf16, the weights the
    optimizer updates stay float32, and the loss tracks the all-fp32 run."""
    import jax
    from flax import nnx

    from jaxeff.compress import _TRAIN, _build_model, _fill, _lm_loss, _Placement, _train, load_corpus

    rec = load_recipe(_recipe(corpus))
    train, _, _ = load_corpus(rec["data"], None, 256)
    s = _fill("t", {"steps": 3, "batch_size": 4, "lr": 1e-3}, _TRAIN)
    out = {}
    for compute in ("float32", "bfloat16"):
        where = _Placement.from_topology({"mesh": {"data_axis": "data"}, "shard_params": False,
                                          "dtypes": {"params": "float32", "compute": compute}}, None)
        m = _build_model(rec["student"], "student", TEACHER, where)
        assert m.hidden_states(jnp.asarray(train[:1])).dtype == jnp.dtype(compute)  # (logits come back fp32)
        out[compute] = _train(m, train, s, _lm_loss, where, False, "t")
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert out["bfloat16"]["first_loss"] == pytest.approx(out["float32"]["first_loss"], rel=2e-2)
    assert out["bfloat16"]["last_loss"] == pytest.approx(out["float32"]["last_loss"], rel=2e-2)
