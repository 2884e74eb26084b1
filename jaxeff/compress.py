"""``jaxeff compress``: the compression pipeline of the seed paper as a recipe.

A recipe (YAML) names a teacher and a student of the Llama family (checkpoint directories, or a
config to initialise from), the data, and stages run in order::

    teacher: {checkpoint: path/to/teacher}          # or {config: {...}, train: {steps: 200}}
    student: {config: {hidden_size: 64, ...}}       # unspecified config keys come from the teacher
    data: {path: corpus.txt, seq_len: 64}           # .txt/.jsonl file, a directory of them, or "@stdlib"
    stages:
      - distill:   {steps: 200, divergence: forward_kl, temperature: 1.0, teacher_logits: cache, top_k: 32}
      - prune:     {method: osscar, mlp_sparsity: 0.5, kv_group_sparsity: 0.0}
      - redistill: {steps: 100}
      - quantize:  {rules: [{weight_fmt: int4, group_size: 32, method: gptq}]}
      - export:    {}

Stages:

* ``distill`` / ``redistill``: knowledge distillation of the student by the fused chunked lm-head
  loss (:func:`~jaxeff.distill.fused_linear_distill_loss`, teacher head online, any divergence
  it supports) or from an offline teacher-logit store
  (:mod:`jaxeff.distill.logit_store`, ``teacher_logits: cache``: the teacher runs once, top-k
  log-probs + tail mass, :func:`~jaxeff.distill.fused_linear_topk_distill_loss`), optionally with
  the hard-label term (``hard_weight``), optimizer ``adamw``/``sgd``/``msam``
  (:func:`~jaxeff.sam.msam` around AdamW). ``sft_baseline: true`` also trains a copy of the
  stage's input on hard labels alone (same steps, optimizer and batches) and reports it beside
  the distilled model: KD vs SFT. ``on_policy_fraction: λ`` (online teacher only) makes each
  batch, with probability λ, on-policy as in GKD (arXiv 2306.13649): the student continues the
  window's first ``on_policy_prompt_len`` tokens (default half) at ``on_policy_temperature``,
  and the loss is the divergence to the teacher on the generated tokens only.
  ``master_weights`` (also in ``teacher.train``): ``auto`` keeps the parameters as placed (the
  topology's ``dtypes.params``, e.g. fp32 master weights under bf16 compute); ``bfloat16``
  stores them in bf16 during the stage (round-to-nearest updates, which stagnate once an update
  is below half an ulp); ``bfloat16_sr`` stores them in bf16 with stochastic-rounding updates
  (:func:`~jaxeff.rounding.sr_optimizer`, unbiased: the implicit-regularization paper's use).
* ``prune``: structured one-shot pruning (:func:`~jaxeff.prune.prune_structured`, OSSCAR or
  magnitude) of SwiGLU neurons (``mlp_sparsity``) and whole GQA KV groups
  (``kv_group_sparsity``), then :func:`~jaxeff.prune.shrink`: a smaller valid config.
* ``quantize``: :func:`~jaxeff.quant.quantize_model` by rules (method, format, group size; the
  lm head and embeddings stay float unless a rule names them), calibrated on training sequences.
  ``variants: [{name, rules}, ...]`` quantizes the same float model by other rule sets and
  reports each beside the kept one (``name`` labels the kept model's row).
* ``export``: :func:`~jaxeff.models.save_pretrained` (Hugging Face layout; compressed-tensors for
  a quantized model) to ``OUT/export``.

Every stage writes ``OUT/NN-stage/model`` (a checkpoint directory) and ``metrics.json``; a run
whose earlier stages are finished resumes after the last one with a metrics file (delete a
stage's directory to run it again: it and every later stage are recomputed). The report is
``OUT/results.json``, ``OUT/results.md`` and ``OUT/size_vs_quality.png``: per stage, parameter
bytes, validation perplexity, next-token accuracy, and greedy generation throughput on the same
prompts.

The top-level ``seed`` (default 0) is added to every model's ``init_seed`` and every stage's
batch-order ``seed``. A recipe shipped with jaxeff is named without a path (``jaxeff compress
demo`` runs ``jaxeff/recipes/demo.yaml``, the recipe of ``jaxeff demo``).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx

__all__ = ["load_recipe", "resolve_recipe", "run_recipe", "load_corpus", "results_table", "RECIPE_STAGES", "RecipeError",
           "STDLIB_CORPUS"]


class RecipeError(ValueError):
    """An invalid recipe: names the key and what was expected."""


# ------------------------------------------------------------------------------------------------
# the recipe schema: {key: (type(s), default, check or None)}; "required" marks no default

_REQ = object()
# the built-in offline corpus: this Python's standard-library sources, file-disjoint validation split
STDLIB_CORPUS = "@stdlib"


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _pos_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _frac01(v):  # [0, 1)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def _unit(v):  # [0, 1]
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
# parameter storage during a training stage: as placed (topology dtypes.params), bf16 with
# round-to-nearest updates, or bf16 with stochastic-rounding updates (jaxeff.rounding.sr_optimizer)
_MASTER = ("auto", "bfloat16", "bfloat16_sr")
_DISTILL = {
    "steps": (_pos_int, 100, "a positive integer"),
    "batch_size": (_pos_int, 8, "a positive integer"),
    "lr": (_pos_num, 1e-3, "a number > 0"),
    "weight_decay": (lambda v: isinstance(v, (int, float)) and v >= 0, 0.0, "a number >= 0"),
    "warmup_steps": (_nonneg_int, 0, "an integer >= 0"),
    "optimizer": (lambda v: v in ("adamw", "sgd", "msam"), "adamw", "one of 'adamw', 'sgd', 'msam'"),
    "msam_rho": (_pos_num, 0.05, "a number > 0"),
    "msam_microbatches": (_pos_int, 2, "a positive integer dividing batch_size"),
    "divergence": (lambda v: v in _DIVERGENCES, "forward_kl", f"one of {_DIVERGENCES}"),
    "beta": (_unit, 0.5, "a number in [0, 1] (jsd mixture weight)"),
    "temperature": (_pos_num, 1.0, "a number > 0"),
    "hard_weight": (_unit, 0.0, "a number in [0, 1]"),
    "teacher_logits": (lambda v: v in ("online", "cache"), "online", "'online' or 'cache'"),
    "top_k": (_pos_int, 32, "a positive integer <= vocab_size"),
    "cache_dtype": (lambda v: v in ("float16", "bfloat16", "float32"), "float16", "'float16', 'bfloat16' or 'float32'"),
    "on_policy_fraction": (_unit, 0.0, "a number in [0, 1] (probability that a batch is sampled from the student)"),
    "on_policy_prompt_len": (_nonneg_int, 0, "an integer >= 0 (prompt tokens of an on-policy batch; 0: half the window)"),
    "on_policy_temperature": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf,
                              1.0, "a number >= 0 (0 = greedy)"),
    "sft_baseline": (lambda v: isinstance(v, bool), False,
                     "true or false (also train a copy of the stage's input on hard labels only, for comparison)"),
    "master_weights": (lambda v: v in _MASTER, "auto", f"one of {_MASTER}"),
    "seed": (_nonneg_int, 0, "an integer >= 0"),
}
_TRAIN = {k: _DISTILL[k] for k in ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "master_weights", "seed")}
_PRUNE = {
    "method": (lambda v: v in ("osscar", "magnitude"), "osscar", "'osscar' or 'magnitude'"),
    "mlp_sparsity": (_frac01, 0.5, "a fraction in [0, 1)"),
    "kv_group_sparsity": (_frac01, 0.0, "a fraction in [0, 1)"),
    "calib_sequences": (_pos_int, 16, "a positive integer"),
    "local_search_iters": (_nonneg_int, 50, "an integer >= 0"),
}
_RULE = {
    "pattern": (lambda v: isinstance(v, str), ".*", "a regular expression string"),
    "weight_fmt": (lambda v: v is None or isinstance(v, str), "int8", "a format name or null"),
    "act_fmt": (lambda v: v is None or isinstance(v, str), None, "a format name or null"),
    "method": (lambda v: v in ("rtn", "gptq", "awq", "smoothquant", "quantease"), "rtn",
               "one of 'rtn', 'gptq', 'awq', 'smoothquant', 'quantease'"),
    "group_size": (lambda v: v is None or _pos_int(v), None, "a positive integer or null"),
    "symmetric": (lambda v: isinstance(v, bool), True, "true or false"),
}
_QUANT = {
    "rules": (lambda v: isinstance(v, list) and len(v) > 0, _REQ, "a non-empty list of rules"),
    "keep_float": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), ["lm_head"],
                   "a list of path regular expressions"),
    "calib_sequences": (_pos_int, 16, "a positive integer"),
    "name": (lambda v: isinstance(v, str), "", "a string (the label of the kept model's row)"),
    "variants": (lambda v: isinstance(v, list), [],
                 "a list of {name, rules} rule sets evaluated beside the main rules (reported, not kept)"),
}
_VARIANT = {
    "name": (lambda v: isinstance(v, str) and v != "", _REQ, "a non-empty string"),
    "rules": (lambda v: isinstance(v, list) and len(v) > 0, _REQ, "a non-empty list of rules"),
}
_EXPORT = {
    "format": (lambda v: v in ("auto", "hf", "compressed-tensors"), "auto", "'auto', 'hf' or 'compressed-tensors'"),
    "dtype": (lambda v: v in ("float32", "bfloat16"), "float32", "'float32' or 'bfloat16'"),
}
RECIPE_STAGES = {"distill": _DISTILL, "redistill": _DISTILL, "prune": _PRUNE, "quantize": _QUANT, "export": _EXPORT}
_DATA = {
    "path": (lambda v: isinstance(v, str) and v != "", _REQ,
             f"a file or directory path, or {STDLIB_CORPUS!r} (the Python standard library's sources)"),
    "seq_len": (lambda v: _pos_int(v) and v >= 2, 64, "an integer >= 2"),
    "val_fraction": (lambda v: isinstance(v, (int, float)) and 0 < v < 1, 0.1, "a fraction in (0, 1)"),
    "max_tokens": (lambda v: v is None or _pos_int(v), None, "a positive integer or null"),
    "tokenizer": (lambda v: v in ("auto", "bytes"), "auto", "'auto' (the checkpoint's tokenizer.json, else bytes) or 'bytes'"),
}
_EVAL = {
    "max_sequences": (_pos_int, 64, "a positive integer"),
    "gen_prompts": (_pos_int, 4, "a positive integer"),
    "gen_tokens": (_pos_int, 16, "a positive integer"),
}
_MODEL = {
    "checkpoint": (lambda v: v is None or isinstance(v, str), None, "a checkpoint directory"),
    "config": (lambda v: v is None or isinstance(v, dict), None, "a mapping of LlamaConfig / config.json keys"),
    "init_seed": (_nonneg_int, 0, "an integer >= 0"),
    "train": (lambda v: v is None or isinstance(v, dict), None, "a mapping of training settings"),
}
_TOP = {"teacher", "student", "data", "stages", "eval", "seed"}


def _fill(section: str, given: Any, schema: Mapping[str, tuple]) -> dict:
    if not isinstance(given, Mapping):
        raise RecipeError(f"recipe `{section}` must be a mapping, got {type(given).__name__}.")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise RecipeError(f"recipe `{section}`: unknown key(s) {unknown}; known keys: {sorted(schema)}.")
    out = {}
    for key, (check, default, expect) in schema.items():
        if key not in given:
            if default is _REQ:
                raise RecipeError(f"recipe `{section}.{key}` is required ({expect}).")
            out[key] = copy.deepcopy(default)
            continue
        v = given[key]
        if isinstance(v, float) and v.is_integer() and isinstance(default, int) and not isinstance(default, bool):
            v = int(v)
        if not check(v):
            raise RecipeError(f"recipe `{section}.{key}` must be {expect}, got {v!r}.")
        out[key] = v
    return out


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur: Any = d
    for i, k in enumerate(keys[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(k)]
            except (ValueError, IndexError):
                raise RecipeError(f"override `{dotted}`: `{'.'.join(keys[:i + 1])}` is not an index of the list.") from None
            continue
        cur = cur.setdefault(k, {})
        if not isinstance(cur, (dict, list)):
            raise RecipeError(f"override `{dotted}`: `{'.'.join(keys[:i + 1])}` is not a mapping.")
    last = keys[-1]
    if isinstance(cur, list):
        try:
            cur[int(last)] = value
        except (ValueError, IndexError):
            raise RecipeError(f"override `{dotted}`: `{last}` is not an index of the list.") from None
    else:
        cur[last] = value


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe file path, or the name of a recipe shipped with jaxeff (``"demo"``)."""
    p = Path(recipe)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{p.name}.yaml" if p.suffix == "" else RECIPES_DIR / p.name
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    names = sorted(q.stem for q in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"recipe file {p} does not exist (recipes shipped with jaxeff: {names}).")


def load_recipe(recipe: str | Path | Mapping, overrides: Sequence[str] = ()) -> dict:
    """Read, override and validate a recipe; returns the filled recipe (every default explicit).

    Args:
      recipe: a YAML file path, the name of a shipped recipe (``"demo"``), or a parsed mapping.
      overrides: ``"key.path=value"`` strings (YAML values), e.g. ``"stages.0.distill.steps=10"``
        or ``"data.seq_len=32"``; a stage is addressed by its index in ``stages``.

    Raises:
      RecipeError (a ValueError) naming the key for unknown keys, wrong types, out-of-range values
      and impossible combinations (no teacher for a distill stage, a stage after ``export``,
      distilling a quantized model, a missing checkpoint directory).
    """
    if isinstance(recipe, (str, Path)):
        p = resolve_recipe(recipe)
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe file {p} is not valid YAML: {e}") from None
        base = p.parent
    else:
        raw = copy.deepcopy(dict(recipe))
        base = Path(".")
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe must be a mapping at the top level, got {type(raw).__name__}.")
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(f"override {ov!r} must be of the form key.path=value.")
        k, v = ov.split("=", 1)
        _set_path(raw, k.strip(), yaml.safe_load(v))
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise RecipeError(f"recipe: unknown top-level key(s) {unknown}; known keys: {sorted(_TOP)}.")
    for key in ("student", "data", "stages"):
        if key not in raw:
            raise RecipeError(f"recipe `{key}` is required.")
    out: dict[str, Any] = {"seed": raw.get("seed", 0)}
    if not _nonneg_int(out["seed"]):
        raise RecipeError(f"recipe `seed` must be an integer >= 0, got {out['seed']!r}.")
    for role in ("teacher", "student"):
        if role not in raw or raw[role] is None:
            out[role] = None
            continue
        m = _fill(role, raw[role], _MODEL)
        if (m["checkpoint"] is None) == (m["config"] is None) and not (role == "student" and m["checkpoint"] is None
                                                                      and m["config"] is None):
            raise RecipeError(f"recipe `{role}` needs exactly one of `checkpoint` and `config`.")
        if m["checkpoint"] is not None:
            cp = Path(m["checkpoint"])
            cp = cp if cp.is_absolute() else (base / cp)
            if not (cp / "config.json").is_file():
                raise RecipeError(f"recipe `{role}.checkpoint`: {cp} is not a checkpoint directory (no config.json).")
            m["checkpoint"] = str(cp.resolve())
        if m["train"] is not None:
            m["train"] = _fill(f"{role}.train", m["train"], _TRAIN)
        out[role] = m
    if out["student"]["checkpoint"] is None and out["student"]["config"] is None:
        out["student"]["config"] = {}
    if out["student"]["config"] is not None and out["teacher"] is None and not out["student"]["config"]:
        raise RecipeError("recipe `student.config` must be given in full when there is no teacher to derive it from.")
    out["data"] = _fill("data", raw["data"], _DATA)
    if out["data"]["path"] != STDLIB_CORPUS:
        dp = Path(out["data"]["path"])
        dp = dp if dp.is_absolute() else base / dp
        if not dp.exists():
            raise RecipeError(f"recipe `data.path`: {dp} does not exist.")
        out["data"]["path"] = str(dp.resolve())
    out["eval"] = _fill("eval", raw.get("eval", {}), _EVAL)
    stages = raw["stages"]
    if not isinstance(stages, list) or not stages:
        raise RecipeError("recipe `stages` must be a non-empty list of {stage: settings} items.")
    filled = []
    quantized = exported = False
    for i, st in enumerate(stages):
        if isinstance(st, str):
            st = {st: {}}
        if not isinstance(st, dict) or len(st) != 1:
            raise RecipeError(f"recipe `stages.{i}` must be one {{stage: settings}} item, got {st!r}.")
        (name, settings), = st.items()
        if name not in RECIPE_STAGES:
            raise RecipeError(f"recipe `stages.{i}`: unknown stage {name!r}; known stages: {sorted(RECIPE_STAGES)}.")
        if exported:
            raise RecipeError(f"recipe `stages.{i}` ({name}) comes after `export`, which must be last.")
        s = _fill(f"stages.{i}.{name}", settings or {}, RECIPE_STAGES[name])
        if name in ("distill", "redistill", "prune") and quantized:
            raise RecipeError(f"recipe `stages.{i}` ({name}) comes after `quantize`: train and prune the float model first.")
        if name in ("distill", "redistill"):
            if out["teacher"] is None:
                raise RecipeError(f"recipe `stages.{i}` ({name}) needs a `teacher`.")
            if s["on_policy_fraction"] > 0 and s["teacher_logits"] != "online":
                raise RecipeError(f"recipe `stages.{i}.{name}.on_policy_fraction` > 0 needs `teacher_logits: online`: "
                                  "a logit store holds the teacher on dataset tokens, not on the student's samples.")
            if s["on_policy_prompt_len"] >= out["data"]["seq_len"]:
                raise RecipeError(f"recipe `stages.{i}.{name}.on_policy_prompt_len` ({s['on_policy_prompt_len']}) must "
                                  f"be < data.seq_len ({out['data']['seq_len']}).")
            if s["optimizer"] == "msam" and s["batch_size"] % s["msam_microbatches"]:
                raise RecipeError(f"recipe `stages.{i}.{name}.msam_microbatches` ({s['msam_microbatches']}) must divide "
                                  f"batch_size ({s['batch_size']}).")
        if name == "quantize":
            s["rules"] = [_fill(f"stages.{i}.quantize.rules.{j}", r, _RULE) for j, r in enumerate(s["rules"])]
            variants = [_fill(f"stages.{i}.quantize.variants.{j}", v, _VARIANT) for j, v in enumerate(s["variants"])]
            for j, v in enumerate(variants):
                v["rules"] = [_fill(f"stages.{i}.quantize.variants.{j}.rules.{k}", r, _RULE)
                              for k, r in enumerate(v["rules"])]
            names = [v["name"] for v in variants]
            if len(set(names)) != len(names):
                raise RecipeError(f"recipe `stages.{i}.quantize.variants`: names must be distinct, got {names}.")
            s["variants"] = variants
            quantized = True
        exported |= name == "export"
        filled.append({name: s})
    out["stages"] = filled
    return out


# ------------------------------------------------------------------------------------------------
# data


class ByteTokenizer:
    """UTF-8 bytes as token ids ``0..255`` (the fallback when a checkpoint has no tokenizer)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


class _HFTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


def _texts(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".md", ".py")) \
        if path.is_dir() else [path]
    if not files:
        raise RecipeError(f"recipe `data.path`: {path} holds no .txt/.jsonl/.md/.py files.")
    out = []
    for f in files:
        if f.suffix == ".jsonl":
            for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecipeError(f"{f}: line {n + 1} is not JSON ({e}).") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise RecipeError(f"{f}: line {n + 1} has no string field 'text'.")
                out.append(rec["text"])
        else:
            out.append(f.read_text(encoding="utf-8", errors="replace"))
    return out


def load_corpus(data: Mapping[str, Any], tokenizer_dir: str | None, vocab_size: int):
    """Tokenize the recipe's data into ``(train [n, L], val [m, L], tokenizer)`` int32 windows.

    The tokenizer is the checkpoint's ``tokenizer.json`` (via ``tokenizers``) when
    ``data.tokenizer`` is ``"auto"`` and the file exists, else UTF-8 bytes. Documents are joined
    with the tokenizer's ids and cut into non-overlapping windows of ``seq_len``; the last
    ``val_fraction`` of the windows is the validation split. With ``data.path: "@stdlib"`` the
    documents are this Python's standard-library sources and the split is file-disjoint
    (:func:`jaxeff.models.load_text_corpus`; ``max_tokens`` defaults to 2,000,000 there).
    """
    tok_file = Path(tokenizer_dir) / "tokenizer.json" if tokenizer_dir else None
    tok = _HFTokenizer(tok_file) if (data["tokenizer"] == "auto" and tok_file and tok_file.is_file()) else ByteTokenizer()
    if tok.vocab_size > vocab_size:
        raise RecipeError(f"the tokenizer has {tok.vocab_size} ids but the models' vocab_size is {vocab_size}.")
    L = data["seq_len"]

    def windows(ids, what):
        n = len(ids) // L
        if n < 1:
            raise RecipeError(f"recipe `data`: {what} has {len(ids)} tokens, less than one window of seq_len {L}.")
        return np.asarray(ids[:n * L], np.int32).reshape(n, L)

    if data["path"] == STDLIB_CORPUS:
        from jaxeff.models import load_text_corpus

        max_tok = data["max_tokens"] or 2_000_000
        per_byte = 1 if isinstance(tok, ByteTokenizer) else 4  # a subword token spans a few bytes
        tr, va = load_text_corpus(max(1024, max_tok * per_byte), val_fraction=data["val_fraction"])
        tr_ids = tok.encode(tr.tobytes().decode("utf-8", errors="replace"))[:max_tok]
        va_ids = tok.encode(va.tobytes().decode("utf-8", errors="replace"))
        va_ids = va_ids[:max(L, int(max_tok * data["val_fraction"]))]
        return windows(tr_ids, "the training split"), windows(va_ids, "the validation split"), tok
    ids: list[int] = []
    for t in _texts(Path(data["path"])):
        ids.extend(tok.encode(t))
        if data["max_tokens"] is not None and len(ids) >= data["max_tokens"]:
            ids = ids[:data["max_tokens"]]
            break
    n = len(ids) // L
    if n < 4:
        raise RecipeError(f"recipe `data`: {len(ids)} tokens make {n} windows of seq_len {L}; at least 4 are needed.")
    win = windows(ids, "the data")
    n_val = max(1, int(round(n * data["val_fraction"])))
    return win[:-n_val], win[-n_val:], tok


# ------------------------------------------------------------------------------------------------
# models


def _llama_config(d: Mapping[str, Any]):
    from jaxeff.models import LlamaConfig

    try:
        return LlamaConfig.from_hf(dict(d))
    except (TypeError, KeyError) as e:
        raise RecipeError(f"recipe model config: {e}") from None


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where models and batches live: the mesh, its data / model axes, and the dtypes."""

    mesh: Any = None
    data_axis: str = "data"
    model_axis: str | None = None
    param_dtype: Any = None
    compute_dtype: Any = None

    @classmethod
    def from_topology(cls, topology: Any, mesh: Any) -> "_Placement":
        if topology is None:
            return cls(mesh=mesh)
        raw = topology.raw if hasattr(topology, "raw") else dict(topology)
        m = raw["mesh"]
        dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
        model_axis = m.get("model_axis") if raw.get("shard_params") else None
        return cls(mesh=mesh, data_axis=m.get("data_axis") or "data", model_axis=model_axis,
                   param_dtype=dt[raw["dtypes"]["params"]], compute_dtype=dt[raw["dtypes"]["compute"]])

    def load(self, path):
        from jaxeff.models import from_pretrained

        return from_pretrained(path, dtype=self.compute_dtype, param_dtype=self.param_dtype, mesh=self.mesh,
                               model_axis=self.model_axis)

    def place(self, model):
        from jaxeff.models import shard_model

        if self.mesh is None:
            return model
        return shard_model(model, self.mesh, model_axis=self.model_axis,
                           data_axis=self.data_axis if self.data_axis in self.mesh.shape else None)

    def rows(self, x):
        mesh, ax = self.mesh, self.data_axis
        if mesh is None or ax not in mesh.shape or x.shape[0] % mesh.shape[ax]:
            return jnp.asarray(x)
        return jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ax)))


def _build_model(spec: Mapping[str, Any], role: str, teacher_cfg: dict | None, where: _Placement, seed: int = 0):
    from jaxeff.models import random_init

    if spec["checkpoint"] is not None:
        return where.load(spec["checkpoint"])
    cfg = dict(teacher_cfg or {})
    cfg.pop("architectures", None)
    cfg.update(spec["config"])
    model = random_init(_llama_config(cfg), spec["init_seed"] + seed, dtype=where.compute_dtype,
                        param_dtype=where.param_dtype or jnp.float32)
    return where.place(model)


def _schedule(s: Mapping[str, Any]):
    if s["warmup_steps"]:
        return optax.warmup_cosine_decay_schedule(0.0, s["lr"], s["warmup_steps"], max(s["steps"], s["warmup_steps"] + 1))
    return optax.cosine_decay_schedule(s["lr"], s["steps"])


def _optimizer(s: Mapping[str, Any]):
    from jaxeff.sam import msam

    lr = _schedule(s)
    base = optax.adamw(lr, weight_decay=s["weight_decay"]) if s.get("optimizer", "adamw") != "sgd" else optax.sgd(lr)
    base = optax.chain(optax.clip_by_global_norm(1.0), base)
    if s.get("optimizer") == "msam":
        return msam(base, s["msam_rho"], s["msam_microbatches"])
    return base


def _lm_loss(m, toks):
    h = m.hidden_states(toks[:, :-1])
    logits = (h @ m.lm_head_kernel()).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()


def _train(model, train, s, loss, where, progress, desc, extra=None, on_policy=None):
    """Run ``s["steps"]`` optimizer steps of ``loss(model, batch_tokens, *extra(idx))``.

    ``on_policy = (fraction, sample, loss_on)``: each batch is, with probability ``fraction`` (one
    coin per batch, as GKD), replaced by ``sample(model, tokens) -> (tokens, mask)`` (the student's
    own continuations) and trained with ``loss_on(model, tokens, mask)``.
    """
    from jaxeff.sam import msam_nnx_loss_fn

    master = s.get("master_weights", "auto")
    restore = None
    if master != "auto":  # bf16 master weights for this stage; cast back (exactly) afterwards
        params = nnx.state(model, nnx.Param)
        restore = jax.tree.map(lambda x: x.dtype, params)
        nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating)
                                       else x, params))
    tx = _optimizer(s)
    if master == "bfloat16_sr":
        from jaxeff.rounding import sr_optimizer

        tx = sr_optimizer(tx, "bf16", key=s["seed"] + s.get("run_seed", 0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    use_msam = s.get("optimizer") == "msam"

    def make_step(lossf):
        @nnx.jit
        def step(m, o, *batch):
            lval, g = nnx.value_and_grad(lambda mm: lossf(mm, *batch))(m)
            if use_msam:
                o.update(m, g, loss_fn=msam_nnx_loss_fn(m, lambda mm, b: lossf(mm, *b)), batch=batch)
            else:
                o.update(m, g)
            return lval

        return step

    step = make_step(loss)
    step_on = make_step(on_policy[2]) if on_policy is not None else None
    coins = np.random.default_rng([s["seed"] + s.get("run_seed", 0), 1])
    n_on = 0

    rng = np.random.default_rng(s["seed"] + s.get("run_seed", 0))
    bs = min(s["batch_size"], train.shape[0])
    losses = []
    it = range(s["steps"])
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False)
    for _ in it:
        idx = np.sort(rng.choice(train.shape[0], bs, replace=False))
        if on_policy is not None and coins.random() < on_policy[0]:
            toks, mask = on_policy[1](model, train[idx])
            losses.append(float(step_on(model, opt, where.rows(toks), where.rows(mask))))
            n_on += 1
            continue
        ex = tuple(where.rows(e) for e in extra(idx)) if extra is not None else ()
        losses.append(float(step(model, opt, where.rows(train[idx]), *ex)))
    out = {"first_loss": losses[0], "last_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
           "steps": len(losses)}
    if restore is not None:
        nnx.update(model, jax.tree.map(lambda x, d: x.astype(d), nnx.state(model, nnx.Param), restore))
    if on_policy is not None:
        out["on_policy_steps"] = n_on
    return out


def _distill(student, teacher, train, s, store_dir, where, progress, desc):
    from jaxeff.distill import fused_linear_distill_loss
    from jaxeff.distill.logit_store import TeacherBatch, build_teacher_logit_store, open_teacher_logit_store

    tau, hw = float(s["temperature"]), float(s["hard_weight"])
    div = "jsd" if s["divergence"] == "jsd" else s["divergence"]
    info: dict[str, Any] = {}
    if s["teacher_logits"] == "cache":
        vocab = int(teacher.lm_head_kernel().shape[1])
        if s["top_k"] > vocab:
            raise RecipeError(f"`top_k` ({s['top_k']}) exceeds the vocabulary size {vocab}.")
        store_path = Path(store_dir)
        try:
            store = open_teacher_logit_store(store_path)
            if store.k != s["top_k"] or store.temperature != tau or len(store) != train.shape[0]:
                raise ValueError("settings changed")
        except ValueError:
            if store_path.exists():
                shutil.rmtree(store_path)
            t0 = time.perf_counter()
            store = build_teacher_logit_store(lambda t: teacher(t), train, store_path, k=s["top_k"], temperature=tau,
                                              value_dtype=s["cache_dtype"], batch_size=min(8, train.shape[0]),
                                              progress=progress)
            info["cache_build_s"] = time.perf_counter() - t0
        info.update(cache_bytes_per_token=store.bytes_per_token, cache_k=store.k)

        def loss(m, toks, lp, ids):
            h = m.hidden_states(toks[:, :-1])
            return store.loss(h, m.lm_head_kernel(), TeacherBatch(toks, lp[:, :-1], ids[:, :-1], None),
                              labels=toks[:, 1:], hard_weight=hw)

        def extra(idx):  # stored dtype to the device; the fused loss computes in float32
            b = store.read(idx)
            return b.logprobs, b.ids

        info.update(_train(student, train, s, loss, where, progress, desc, extra))
        return info

    def loss(m, toks):
        h = m.hidden_states(toks[:, :-1])
        ht = jax.lax.stop_gradient(teacher.hidden_states(toks[:, :-1]))
        return fused_linear_distill_loss(h, m.lm_head_kernel(), ht, jax.lax.stop_gradient(teacher.lm_head_kernel()),
                                         divergence=div, beta=float(s["beta"]), temperature=tau,
                                         labels=toks[:, 1:], hard_weight=hw)

    on_policy = None
    if s["on_policy_fraction"] > 0:  # GKD (arXiv 2306.13649): the student's own samples, teacher-scored
        from jaxeff.models import generate

        L = train.shape[1]
        p_len = s["on_policy_prompt_len"] or max(1, L // 2)
        keys = iter(jax.random.split(jax.random.key(s["seed"] + s.get("run_seed", 0)), s["steps"]))

        def sample(m, toks):
            out = generate(m, jnp.asarray(toks[:, :p_len]), L - p_len, temperature=float(s["on_policy_temperature"]),
                           key=next(keys))
            mask = np.zeros(toks.shape, bool)
            mask[:, p_len:] = True  # distill on the generated tokens only
            return out, mask  # stays on the device (where.rows only re-places it)

        def loss_on(m, toks, mask):
            h = m.hidden_states(toks[:, :-1])
            ht = jax.lax.stop_gradient(teacher.hidden_states(toks[:, :-1]))
            return fused_linear_distill_loss(h, m.lm_head_kernel(), ht,
                                             jax.lax.stop_gradient(teacher.lm_head_kernel()), divergence=div,
                                             beta=float(s["beta"]), temperature=tau, where=mask[:, 1:])

        on_policy = (float(s["on_policy_fraction"]), sample, loss_on)
    info.update(_train(student, train, s, loss, where, progress, desc, on_policy=on_policy))
    return info


def _prune(model, train, s):
    from jaxeff._core.layers import capture_inputs
    from jaxeff.prune import GQA_ATTENTION_PATTERN, MLP_PATTERN, prune_structured, shrink

    calib = jnp.asarray(train[:s["calib_sequences"]])
    info = {}
    for key, pattern in (("mlp_sparsity", MLP_PATTERN), ("kv_group_sparsity", GQA_ATTENTION_PATTERN)):
        if s[key] == 0:
            continue
        masked, keep = prune_structured(model, capture_inputs(model, calib), s[key], method=s["method"],
                                        pattern=pattern, local_search_iters=s["local_search_iters"])
        model = shrink(masked, keep)
        info[key] = s[key]
    return model, info


def _quantize(model, train, s):
    from jaxeff.quant import QuantRule, quantize_model

    rules = [QuantRule(pattern=p, weight_fmt=None) for p in s["keep_float"]]
    rules += [QuantRule(pattern=r["pattern"], weight_fmt=r["weight_fmt"], act_fmt=r["act_fmt"], method=r["method"],
                        group_size=r["group_size"], symmetric=r["symmetric"], targets=("linear",))
              for r in s["rules"]]
    calib = jnp.asarray(train[:s["calib_sequences"]])
    q, summary = quantize_model(model, rules, example_inputs=(calib,), return_summary=True)
    return q, {"summary": str(summary)}




def evaluate(model, val: np.ndarray, ev: Mapping[str, Any]) -> dict[str, float]:
    """Perplexity and next-token accuracy on ``val`` windows, greedy tokens/s on its prefixes
    (best of three timed generations after a compile)."""
    from jaxeff.models import generate, param_bytes

    @nnx.jit
    def stats(m, toks):
        logits = m(toks[:, :-1]).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:])
        acc = (jnp.argmax(logits, -1) == toks[:, 1:]).astype(jnp.float32)
        return nll.sum(), acc.sum()

    v = val[:ev["max_sequences"]]
    nll = acc = 0.0
    for i in range(0, v.shape[0], 8):
        a, b = stats(model, jnp.asarray(v[i:i + 8]))
        nll += float(a)
        acc += float(b)
    count = v.shape[0] * (v.shape[1] - 1)
    prompts = jnp.asarray(v[:ev["gen_prompts"], : max(1, v.shape[1] // 2)])
    generate(model, prompts, ev["gen_tokens"]).block_until_ready()  # compile
    dt = math.inf
    for _ in range(3):  # best of 3: one short generation is at the mercy of the machine's load
        t0 = time.perf_counter()
        generate(model, prompts, ev["gen_tokens"]).block_until_ready()
        dt = min(dt, time.perf_counter() - t0)
    return {"ppl": float(math.exp(nll / count)), "next_token_acc": acc / count,
            "gen_tokens_per_s": prompts.shape[0] * ev["gen_tokens"] / dt, "bytes": param_bytes(model)}


def _recipe_hash(recipe: Mapping[str, Any], upto: int) -> str:
    """Hash of what stage ``upto`` depends on; ``upto=-1`` is the teacher (not the student)."""
    keys = ("teacher", "data", "seed", "eval") if upto < 0 else ("teacher", "student", "data", "seed", "eval")
    part = {k: recipe[k] for k in keys}
    if upto >= 0:
        part["stages"] = recipe["stages"][:upto + 1]
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]



def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report rows as a Markdown table (plus the teacher-logit store's size, if one was used)."""
    lines = ["| stage | model | params | MB | val ppl | next-token acc | gen tok/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['params']:,}" if "params" in r else ""
        lines.append(f"| {r['stage']} | {r['model']} | {params} | {r['bytes'] / 1e6:.3f} | {r['ppl']:.3f} | "
                     f"{r['next_token_acc']:.4f} | {r['gen_tokens_per_s']:.1f} |")
    stores = sorted({(r["cache_k"], r["cache_bytes_per_token"]) for r in rows if "cache_bytes_per_token" in r})
    for k, b in stores:
        lines.append(f"\nteacher-logit store: top-{k}, {b:.0f} bytes per token")
    return "\n".join(lines)


def _write_report(out: Path, rows: list[dict]) -> None:
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(results_table(rows) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Points carry numbers only; the names are listed beside the axes, so labels never overlap
    # however close two models land (quantized variants often do).
    fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 4.8), gridspec_kw={"width_ratios": [3, 1.4]})
    main = [i for i, r in enumerate(rows) if not r.get("side_row")]
    ax.plot([rows[i]["bytes"] / 1e6 for i in main], [rows[i]["ppl"] for i in main], "-", color="tab:blue", alpha=0.5)
    for i, r in enumerate(rows):
        x, y = r["bytes"] / 1e6, r["ppl"]
        ax.plot(x, y, "o" if not r.get("side_row") else "s", color="tab:blue" if not r.get("side_row") else "tab:orange")
        ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(5, 4 + 9 * (i % 2)), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameter MB (log)")
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_title("size vs quality per stage")
    ax.margins(0.12)
    side.axis("off")
    side.text(0, 1, "\n".join(f"{i + 1:2d}  {r['model']}" for i, r in enumerate(rows)), va="top", ha="left",
              family="monospace", fontsize=8, transform=side.transAxes)
    fig.tight_layout()
    fig.savefig(out / "size_vs_quality.png", dpi=120)
    plt.close(fig)


def run_recipe(recipe: str | Path | Mapping, out: str | Path, *, overrides: Sequence[str] = (), mesh: Any = None,
               topology: Any = None, progress: bool = True, teacher_cache: str | Path | None = None) -> list[dict]:
    """Run a recipe (see the module docstring) into ``out``; resumes finished stages.

    ``mesh`` (e.g. from a topology config, ``jaxeff compress --config cpu-8``): batches are split
    over its data axis (data parallel); with ``topology`` (a loaded topology config) its
    ``mesh.data_axis``, ``mesh.model_axis`` + ``shard_params`` (tensor-parallel parameters,
    :func:`~jaxeff.models.shard_model`) and ``dtypes.params`` / ``dtypes.compute`` (e.g. bf16
    compute on fp32 master weights) apply to teacher and student.

    ``teacher_cache``: a directory where a teacher trained by the recipe (``teacher.config`` +
    ``teacher.train``) is kept under the hash of its settings and the data, and from which a later
    run with the same settings loads it instead of training again (``jaxeff demo`` uses
    ``$JAXEFF_CACHE/teachers``).

    Returns the report rows (also written to ``out/results.json``): one for the teacher (when
    there is one), the initial student and each stage, with ``params``, ``bytes``, ``ppl``,
    ``next_token_acc``, ``gen_tokens_per_s`` and the stage's own metrics; a distill stage with
    ``sft_baseline`` and a quantize stage with ``variants`` add rows marked ``side_row`` (compared,
    not carried on).
    """
    from jaxeff.models import param_count, save_pretrained

    rec = load_recipe(recipe, overrides)
    where = _Placement.from_topology(topology, mesh)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(rec, indent=1, default=str))
    ev = rec["eval"]
    rows: list[dict] = []

    teacher = None
    if rec["teacher"] is not None:
        tdir = out / "00-teacher"
        thash = _recipe_hash(rec, -1)
        cached = Path(teacher_cache) / thash if teacher_cache is not None and rec["teacher"]["train"] is not None else None

        def _is_done(d):
            return (d / "metrics.json").is_file() and (d / "model").is_dir() and \
                json.loads((d / "metrics.json").read_text()).get("hash") == thash

        if cached is not None and not _is_done(tdir) and _is_done(cached):
            if tdir.exists():
                shutil.rmtree(tdir)
            shutil.copytree(cached, tdir)
        if _is_done(tdir):
            teacher = where.load(tdir / "model")
            trow = json.loads((tdir / "metrics.json").read_text())
        else:
            teacher = _build_model(rec["teacher"], "teacher", None, where, rec["seed"])
            tinfo: dict[str, Any] = {}
            vocab = teacher.config.vocab_size
            train, val, _ = load_corpus(rec["data"], rec["teacher"]["checkpoint"], vocab)
            if rec["teacher"]["train"] is not None:
                t_train = time.perf_counter()
                tinfo = _train(teacher, train, {**rec["teacher"]["train"], "run_seed": rec["seed"]}, _lm_loss, where,
                               progress, "teacher")
                tinfo["stage_seconds"] = time.perf_counter() - t_train
            if tdir.exists():
                shutil.rmtree(tdir)
            save_pretrained(teacher, tdir / "model")
            trow = {"stage": "teacher", "model": "teacher", "params": param_count(teacher),
                    **evaluate(teacher, val, ev), **tinfo, "hash": thash}
            (tdir / "metrics.json").write_text(json.dumps(trow, indent=1))
            if cached is not None:
                tmp = cached.with_name(cached.name + ".partial")
                if tmp.exists():
                    shutil.rmtree(tmp)
                shutil.copytree(tdir, tmp)
                if cached.exists():
                    shutil.rmtree(cached)
                tmp.rename(cached)
        rows.append(trow)
        teacher_cfg = teacher.config.to_hf()
    else:
        teacher_cfg = None

    tok_dir = rec["student"]["checkpoint"] or (rec["teacher"] or {}).get("checkpoint")
    student = None
    last_done = -1
    for i in range(len(rec["stages"])):
        d = out / f"{i + 1:02d}-{next(iter(rec['stages'][i]))}"
        mf = d / "metrics.json"
        if mf.is_file() and json.loads(mf.read_text()).get("hash") == _recipe_hash(rec, i) and (d / "model").is_dir():
            last_done = i
        else:
            break
    # every stage after the first unfinished one is recomputed
    for j in range(last_done + 1, len(rec["stages"])):
        d = out / f"{j + 1:02d}-{next(iter(rec['stages'][j]))}"
        if d.exists():
            shutil.rmtree(d)

    vocab = teacher.config.vocab_size if teacher is not None else None
    if last_done >= 0:
        d = out / f"{last_done + 1:02d}-{next(iter(rec['stages'][last_done]))}"
        student = where.load(d / "model")
    else:
        student = _build_model(rec["student"], "student", teacher_cfg, where, rec["seed"])
    vocab = vocab or student.config.vocab_size
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        raise RecipeError(f"teacher and student vocab sizes differ ({teacher.config.vocab_size} vs "
                          f"{student.config.vocab_size}): they must share the tokenizer.")
    train, val, _ = load_corpus(rec["data"], tok_dir, vocab)
    srow0 = out / "student-initial.json"
    if last_done < 0 or not srow0.is_file():
        srow0.write_text(json.dumps({"stage": "start", "model": "student (initial)", "params": param_count(student),
                                     **evaluate(student, val, ev)}))
    rows.append(json.loads(srow0.read_text()))
    for i in range(last_done + 1):
        d = out / f"{i + 1:02d}-{next(iter(rec['stages'][i]))}"
        m = json.loads((d / "metrics.json").read_text())
        rows.extend(m.pop("side_rows", []))
        rows.append(m)

    quantized = any(next(iter(st)) == "quantize" for st in rec["stages"][:last_done + 1])
    float_params = rows[-1]["params"] if "params" in rows[-1] else param_count(student)
    for i in range(last_done + 1, len(rec["stages"])):
        (name, s), = rec["stages"][i].items()
        s = {**s, "run_seed": rec["seed"]}  # the recipe's `seed` shifts every stage's batch order
        d = out / f"{i + 1:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        stage = f"{i + 1:02d}-{name}"
        side: list[dict] = []
        t0 = time.perf_counter()
        if name in ("distill", "redistill"):
            if s["sft_baseline"]:  # same start, steps, optimizer and batches; hard labels only
                base = nnx.clone(student)
                binfo = _train(base, train, s, _lm_loss, where, progress, f"{name} (SFT baseline)")
                side.append({"stage": stage, "model": f"{name} SFT baseline", "params": param_count(base),
                             **evaluate(base, val, ev), **binfo, "side_row": True})
                del base
            info = _distill(student, teacher, train, s, out / "teacher-logits", where, progress, name)
        elif name == "prune":
            student, info = _prune(student, train, s)
        elif name == "quantize":
            for v in s["variants"]:
                tv = time.perf_counter()
                qv, vinfo = _quantize(student, train, {**s, "rules": v["rules"]})
                side.append({"stage": stage, "model": f"quantize {v['name']}", "params": float_params,
                             **evaluate(qv, val, ev), **vinfo, "stage_seconds": time.perf_counter() - tv,
                             "side_row": True})
                del qv
            student, info = _quantize(student, train, s)
            quantized = True
        else:  # export
            fmt = s["format"]
            is_q = quantized or any("Quantized" in type(m).__name__ for _, m in nnx.iter_graph(student))
            if fmt == "hf" and is_q:
                raise RecipeError("`export.format: hf` cannot hold a quantized model; use 'compressed-tensors' or 'auto'.")
            if fmt == "compressed-tensors" and not is_q:
                raise RecipeError("`export.format: compressed-tensors` needs a `quantize` stage before `export`.")
            save_pretrained(student, out / "export", dtype=jnp.bfloat16 if s["dtype"] == "bfloat16" else None)
            info = {"export_dir": str(out / "export"), "format": "compressed-tensors" if is_q else "hf"}
        info["stage_seconds"] = time.perf_counter() - t0
        save_pretrained(student, d / "model")
        if not quantized:
            float_params = param_count(student)
        label = f"{name} {s['name']}" if name == "quantize" and s["name"] else name
        row = {"stage": stage, "model": label, "params": float_params, **evaluate(student, val, ev), **info,
               "hash": _recipe_hash(rec, i), "side_rows": side}
        (d / "metrics.json").write_text(json.dumps(row, indent=1, default=str))
        rows.extend(side)
        rows.append({k: v for k, v in row.items() if k != "side_rows"})
    _write_report(out, rows)
    return rows
