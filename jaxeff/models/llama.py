r"""The Llama decoder family as Hugging Face defines it, in Flax NNX.

One module tree covers Llama 2/3 (incl. ``llama3`` and ``linear`` rope scaling), Mistral (banded
sliding-window attention), Qwen2 (q/k/v biases) and Qwen3 (q/k RMSNorm over the head dimension),
with grouped-query attention, SwiGLU MLPs, RMSNorm and tied or untied embeddings. Module and
parameter names follow the Hugging Face checkpoints (``model.layers.3.self_attn.q_proj`` holds an
``nnx.Linear`` whose ``kernel`` is the transpose of the checkpoint's ``weight``), so
:mod:`jaxeff.models.hf` maps tensors one to one and jaxeff's quantization/pruning code, which
targets ``nnx.Linear``, finds every projection.

Forward pass of one decoder layer (pre-norm residual):

.. math::
    h &= x + W_o\,\mathrm{Attn}\big(\mathrm{rope}(W_q n_1(x)), \mathrm{rope}(W_k n_1(x)), W_v n_1(x)\big) \\
    y &= h + W_{down}\big(\mathrm{silu}(W_{gate} n_2(h)) \odot W_{up} n_2(h)\big),
    \qquad n(x) = w \odot \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}}

Attention widths are read at call time: ``num_heads``, ``num_kv_heads`` and ``head_dim`` are plain
integer attributes of each ``self_attn`` (structured pruning edits them), and every other width comes
from the kernels' shapes.

References:
  Touvron et al., "Llama 2", arXiv:2307.09288; Dubey et al., "The Llama 3 Herd of Models",
  arXiv:2407.21783; Jiang et al., "Mistral 7B", arXiv:2310.06825; Yang et al., "Qwen2 Technical
  Report", arXiv:2407.10671; Yang et al., "Qwen3 Technical Report", arXiv:2505.09388; Su et al.,
  "RoFormer" (rotary embeddings), arXiv:2104.09864; Ainslie et al., "GQA", arXiv:2305.13245.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxeff._core.validation import check_key

__all__ = [
    "LlamaConfig",
    "LlamaForCausalLM",
    "KVCache",
    "rope_inv_freq",
    "random_init",
    "generate",
    "shard_model",
    "param_partition_specs",
]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Hugging Face config-class defaults that differ between the families (used when a key is absent).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(rms_norm_eps=1e-6, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2),
    "mistral": dict(rms_norm_eps=1e-6, max_position_embeddings=4096 * 32, num_key_value_heads=8,
                    sliding_window=4096, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(rms_norm_eps=1e-6, max_position_embeddings=32768, num_key_value_heads=32,
                  sliding_window=4096, max_window_layers=28),
    "qwen3": dict(rms_norm_eps=1e-6, max_position_embeddings=32768, num_key_value_heads=32, head_dim=128,
                  sliding_window=4096, max_window_layers=28),
}
# Config keys that never change the forward pass (read for round trips only).
_IGNORED_KEYS = {
    "architectures", "initializer_range", "use_cache", "transformers_version", "_name_or_path",
    "attention_dropout", "pretraining_tp", "torch_dtype", "dtype", "output_attentions",
    "output_hidden_states", "return_dict", "is_encoder_decoder", "id2label", "label2id",
    "tokenizer_class", "prefix", "task_specific_params", "problem_type", "chunk_size_feed_forward",
    "_attn_implementation_autoset", "_attn_implementation", "use_return_dict", "tf_legacy_loss",
    "pruned_heads", "torchscript", "add_cross_attention", "cross_attention_hidden_size",
    "finetuning_task", "sep_token_id", "decoder_start_token_id", "keys_to_ignore_at_inference",
    "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings",
    "max_window_layers", "use_sliding_window", "model_type", "generation_config", "_commit_hash",
    "is_decoder", "tie_encoder_decoder", "num_labels",
}
_HANDLED_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "tie_word_embeddings", "attention_bias", "mlp_bias", "sliding_window",
    "layer_types", "partial_rotary_factor",
}


def _freeze(v: Any) -> Any:
    """Lists/dicts -> tuples (hashable, so the config can be static graph data)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Hyper-parameters of the Llama family, as in a Hugging Face ``config.json``.

    Build it with :meth:`from_hf` (a ``config.json`` dict) or directly. Per-family conventions are
    resolved into explicit flags: ``qkv_bias`` (Qwen2: always; Llama/Qwen3: ``attention_bias``),
    ``o_bias`` (Llama/Qwen3: ``attention_bias``), ``qk_norm`` (Qwen3) and per-layer
    ``layer_types`` (``"full_attention"`` or ``"sliding_attention"``).

    Attributes:
      model_type: one of ``"llama"``, ``"mistral"``, ``"qwen2"``, ``"qwen3"``.
      rope_scaling: ``None`` (plain RoPE) or a tuple of ``(key, value)`` pairs with ``rope_type``
        ``"linear"`` (``factor``) or ``"llama3"`` (``factor``, ``low_freq_factor``,
        ``high_freq_factor``, ``original_max_position_embeddings``).
      sliding_window: band width ``w`` of sliding layers: key ``j`` is visible from query ``i`` iff
        ``i - w < j <= i`` (Hugging Face's eager/sdpa mask).
      extra: other ``config.json`` items (JSON text), written back by :meth:`to_hf`.
    """

    model_type: str = "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    mlp_bias: bool = False
    qk_norm: bool | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    bos_token_id: Any = None
    eos_token_id: Any = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    extra: str = "{}"

    def __post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config key 'model_type': {self.model_type!r} is not supported; "
                             f"supported: {list(SUPPORTED_MODEL_TYPES)}.")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            v = getattr(self, k)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"config key {k!r} must be a positive integer, got {v!r}.")
        if self.num_key_value_heads is None:
            s("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"config key 'hidden_size' ({self.hidden_size}) must be divisible by "
                                 f"'num_attention_heads' ({self.num_attention_heads}) when 'head_dim' is not given.")
            s("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config key 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                             f"'num_key_value_heads' ({self.num_key_value_heads}).")
        if self.head_dim % 2:
            raise ValueError(f"config key 'head_dim' must be even for rotary embeddings, got {self.head_dim}.")
        if self.hidden_act != "silu":
            raise ValueError(f"config key 'hidden_act': only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}.")
        if self.qkv_bias is None:
            s("qkv_bias", True if self.model_type == "qwen2" else bool(self.attention_bias))
        if self.o_bias is None:
            s("o_bias", bool(self.attention_bias) if self.model_type in ("llama", "qwen3") else False)
        if self.qk_norm is None:
            s("qk_norm", self.model_type == "qwen3")
        if self.rope_scaling is not None:
            s("rope_scaling", _freeze(dict(self.rope_scaling)))
            _check_rope(dict(self.rope_scaling))
        if self.layer_types is None:
            kind = "sliding_attention" if self.sliding_window is not None else "full_attention"
            s("layer_types", (kind,) * self.num_hidden_layers)
        else:
            s("layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"config key 'layer_types' has {len(self.layer_types)} entries for "
                             f"{self.num_hidden_layers} layers ('num_hidden_layers').")
        for t in self.layer_types:
            if t not in ("full_attention", "sliding_attention"):
                raise ValueError(f"config key 'layer_types': layer type {t!r} is not supported "
                                 "(expected 'full_attention' or 'sliding_attention').")
        if "sliding_attention" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("config key 'sliding_window' must be a positive integer when a layer uses sliding attention.")
        if isinstance(self.eos_token_id, list):
            s("eos_token_id", tuple(self.eos_token_id))

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf(cls, d: dict, *, strict: bool = True) -> "LlamaConfig":
        """Config from a Hugging Face ``config.json`` dict (transformers 4.x or 5.x spelling).

        Reads RoPE settings from ``rope_parameters`` (transformers 5) or ``rope_theta`` +
        ``rope_scaling`` (4.x). Missing keys take the defaults of the family's Hugging Face config
        class (e.g. Qwen3 ``head_dim`` 128, Mistral ``sliding_window`` 4096).

        Args:
          d: the parsed ``config.json``.
          strict: raise on keys this implementation does not know (a feature it might silently
            ignore); with ``strict=False`` they are kept in ``extra`` and ignored.
        Raises:
          ValueError naming the key, for an unknown architecture, an unsupported rope type or
          activation, a quantized checkpoint, or an unknown key (``strict``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"`d` must be a config.json dict, got {type(d).__name__}.")
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config key 'model_type': unknown architecture {mt!r}; supported: "
                             f"{list(SUPPORTED_MODEL_TYPES)}.")
        arch = d.get("architectures")
        if arch and any(a != _ARCHITECTURES[mt] for a in arch):
            raise ValueError(f"config key 'architectures': {arch} is not supported for model_type {mt!r} "
                             f"(expected [{_ARCHITECTURES[mt]!r}]).")
        if d.get("quantization_config") is not None:
            raise ValueError("config key 'quantization_config': quantized checkpoints load through "
                             "jaxeff.models.from_pretrained (compressed-tensors only), not LlamaConfig.from_hf.")
        if strict:
            for k, v in d.items():
                if k in _HANDLED_KEYS or k in _IGNORED_KEYS or k == "quantization_config":
                    continue
                if v in (None, False, 0, [], {}):
                    continue
                raise ValueError(f"config key {k!r} (= {v!r}) is not supported by jaxeff's Llama family; "
                                 "pass strict=False to ignore it.")
        fam = _FAMILY_DEFAULTS[mt]
        g = lambda k, default=None: d[k] if d.get(k) is not None else fam.get(k, default)  # noqa: E731
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if d.get(k) is None:
                raise ValueError(f"config key {k!r} is missing from the config.")
        rp = dict(d.get("rope_parameters") or {})
        if d.get("rope_scaling"):
            rp.update(d["rope_scaling"])
        theta = rp.pop("rope_theta", None)
        if theta is None:
            theta = d.get("rope_theta", 10000.0)
        if "type" in rp and "rope_type" not in rp:
            rp["rope_type"] = rp.pop("type")
        rp.pop("type", None)
        prf = rp.pop("partial_rotary_factor", d.get("partial_rotary_factor"))
        if prf not in (None, 1, 1.0):
            raise ValueError(f"config key 'partial_rotary_factor' = {prf!r} is not supported (only 1.0).")
        rtype = rp.get("rope_type", "default")
        if rtype in ("llama3",) and "original_max_position_embeddings" not in rp:
            rp["original_max_position_embeddings"] = g("max_position_embeddings")
        rope_scaling = None if rtype == "default" else rp
        if rope_scaling is not None:
            _check_rope(rope_scaling)
        sw = None
        layer_types = d.get("layer_types")
        if mt == "mistral":
            sw = d.get("sliding_window", fam["sliding_window"]) if "sliding_window" in d else fam["sliding_window"]
            layer_types = None  # Mistral slides every layer when sliding_window is set (layer_types ignored)
        elif mt in ("qwen2", "qwen3"):
            if d.get("use_sliding_window"):
                sw = g("sliding_window")
                if layer_types is None:
                    mwl = g("max_window_layers")
                    layer_types = ["sliding_attention" if i >= mwl else "full_attention"
                                   for i in range(d["num_hidden_layers"])]
            elif layer_types is not None and "sliding_attention" in layer_types:
                sw = g("sliding_window")
            else:
                layer_types = None
        # model_type 'llama': Hugging Face's Llama ignores a 'sliding_window' key, and so do we
        dtype = d.get("dtype", d.get("torch_dtype"))
        known = _HANDLED_KEYS | {"model_type", "bos_token_id", "eos_token_id", "pad_token_id",
                                 "max_position_embeddings", "torch_dtype", "dtype", "architectures"}
        extra = {k: v for k, v in d.items() if k not in known and k not in ("use_sliding_window", "max_window_layers")}
        return cls(
            model_type=mt,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=g("num_key_value_heads", d["num_attention_heads"]),
            head_dim=g("head_dim"),
            hidden_act=d.get("hidden_act", "silu"),
            max_position_embeddings=int(g("max_position_embeddings")),
            rms_norm_eps=float(g("rms_norm_eps")),
            rope_theta=float(theta),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)) if mt == "llama" else False,
            sliding_window=sw,
            layer_types=tuple(layer_types) if layer_types is not None else None,
            bos_token_id=_freeze(g("bos_token_id")),
            eos_token_id=_freeze(g("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=dtype if isinstance(dtype, str) else None,
            extra=json.dumps(extra, sort_keys=True),
        )

    def to_hf(self) -> dict:
        """The ``config.json`` dict ``transformers`` reads (both 4.x and 5.x RoPE spellings)."""
        rope = dict(self.rope_scaling) if self.rope_scaling else {"rope_type": "default"}
        d: dict[str, Any] = dict(json.loads(self.extra))
        d.update(
            architectures=[_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_parameters={**rope, "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=_thaw(self.bos_token_id),
            eos_token_id=_thaw(self.eos_token_id),
            pad_token_id=self.pad_token_id,
        )
        if self.rope_scaling:
            d["rope_scaling"] = dict(self.rope_scaling)
        if self.model_type == "llama":
            if self.qkv_bias != self.o_bias:
                raise ValueError("model_type 'llama' has one 'attention_bias' flag for q/k/v/o; "
                                 f"got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}.")
            d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "qwen3":
            if self.qkv_bias != self.o_bias:
                raise ValueError("model_type 'qwen3' has one 'attention_bias' flag for q/k/v/o; "
                                 f"got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}.")
            d["attention_bias"] = self.qkv_bias
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3"):
            sliding = "sliding_attention" in self.layer_types
            d.update(use_sliding_window=sliding, sliding_window=self.sliding_window if sliding else None,
                     layer_types=list(self.layer_types))
            if sliding:
                d["max_window_layers"] = self.layer_types.index("sliding_attention")
        if self.torch_dtype:
            d["torch_dtype"] = self.torch_dtype
        return d

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)


def _thaw(v):
    return list(v) if isinstance(v, tuple) else v


def _check_rope(rp: dict) -> None:
    rtype = rp.get("rope_type", "default")
    if rtype not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"config key 'rope_scaling.rope_type' (rope_parameters): rope type {rtype!r} is not "
                         f"supported; supported: {list(SUPPORTED_ROPE_TYPES)}.")
    need = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}.get(rtype, ())
    for k in need:
        if rp.get(k) is None:
            raise ValueError(f"config key 'rope_scaling.{k}' is required for rope type {rtype!r}.")
    allowed = set(need) | {"rope_type"}
    for k, v in rp.items():
        if k not in allowed and v is not None:
            raise ValueError(f"config key 'rope_scaling.{k}' is not supported for rope type {rtype!r}.")


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    r"""Rotary inverse frequencies ``[head_dim / 2]`` (float32), computed as Hugging Face does.

    Default: :math:`f_i = \theta^{-2i/d}`. ``linear``: :math:`f_i / s`. ``llama3``: with
    wavelength :math:`\lambda_i = 2\pi / f_i`, context ``L`` (original_max_position_embeddings),
    :math:`f_i` is kept when :math:`\lambda_i < L/\text{high}`, divided by ``factor`` when
    :math:`\lambda_i > L/\text{low}`, and interpolated with
    :math:`s = (L/\lambda_i - \text{low})/(\text{high}-\text{low})` in between:
    :math:`(1-s) f_i/\text{factor} + s f_i`.
    """
    d = config.head_dim
    f32 = np.float32
    inv = (f32(1.0) / (f32(config.rope_theta) ** (np.arange(0, d, 2, dtype=np.int64).astype(f32) / f32(d)))).astype(f32)
    rs = dict(config.rope_scaling) if config.rope_scaling else {"rope_type": "default"}
    rt = rs.get("rope_type", "default")
    if rt == "linear":
        inv = (inv / f32(rs["factor"])).astype(f32)
    elif rt == "llama3":
        factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        low_wl, high_wl = old / low, old / high
        wl = (f32(2 * math.pi) / inv).astype(f32)
        out = np.where(wl > low_wl, inv / f32(factor), inv).astype(f32)
        smooth = ((f32(old) / wl - f32(low)) / f32(high - low)).astype(f32)
        smoothed = ((1 - smooth) * out / f32(factor) + smooth * out).astype(f32)
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        inv = np.where(medium, smoothed, out).astype(f32)
    return inv


# ------------------------------------------------------------------------------------ modules
class RMSNorm(nnx.Module):
    r"""``y = weight * (x / sqrt(mean(x^2) + eps))``, normalized in float32 (as Hugging Face)."""

    def __init__(self, dim: int, eps: float, *, dtype=None, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = float(eps)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        in_dtype = x.dtype
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        out = self.weight[...] * h.astype(in_dtype)
        return out.astype(self.dtype or in_dtype)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x * cos + rotate_half(x) * sin`` with x ``[B, T, H, D]``, cos/sin ``[B, T, D]``."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def _explicit_batch_spec(x: jax.Array):
    """``(True, batch_spec)`` when ``x`` is typed with an explicit-axes sharding, else ``(False, None)``."""
    try:
        sh = jax.typeof(x).sharding
    except Exception:
        return False, None
    mesh = getattr(sh, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return False, None
    if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return False, None
    spec = tuple(sh.spec) + (None,) * (x.ndim - len(sh.spec))
    return True, spec[0]


def _call(layer, x, out_spec):
    """Call a projection, passing ``out_sharding`` only under explicit sharding (row-parallel)."""
    if out_spec is None:
        return layer(x)
    return layer(x, out_sharding=out_spec)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (Hugging Face ``*Attention``).

    ``q_proj``/``k_proj``/``v_proj``/``o_proj`` are ``nnx.Linear``; ``num_heads``, ``num_kv_heads``
    and ``head_dim`` are read at call time (query head ``h`` uses key/value head
    ``h // (num_heads // num_kv_heads)``).
    """

    def __init__(self, cfg: LlamaConfig, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        H, D, KV = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
        init = nnx.initializers.normal(0.02)
        lin = functools.partial(nnx.Linear, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = lin(cfg.hidden_size, H * D, use_bias=cfg.qkv_bias)
        self.k_proj = lin(cfg.hidden_size, KV * D, use_bias=cfg.qkv_bias)
        self.v_proj = lin(cfg.hidden_size, KV * D, use_bias=cfg.qkv_bias)
        self.o_proj = lin(H * D, cfg.hidden_size, use_bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        else:
            self.q_norm = None
            self.k_norm = None
        self.num_heads = H
        self.num_kv_heads = KV
        self.head_dim = D
        self.sliding_window = cfg.sliding_window if cfg.layer_types[layer_idx] == "sliding_attention" else None

    def __call__(self, x, cos, sin, mask, kv=None, index=None, out_spec=None):
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        if H % KV:
            raise ValueError(f"`num_heads` ({H}) must be a multiple of `num_kv_heads` ({KV}).")
        q = self.q_proj(x).reshape(B, T, H, D)
        k = self.k_proj(x).reshape(B, T, KV, D)
        v = self.v_proj(x).reshape(B, T, KV, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = _apply_rope(q, cos.astype(q.dtype), sin.astype(q.dtype))
        k = _apply_rope(k, cos.astype(k.dtype), sin.astype(k.dtype))
        if kv is not None:
            ck, cv = kv
            if out_spec is not None:  # explicit sharding: the cache takes the layout of the new keys
                ck = jax.sharding.reshard(ck, jax.typeof(k).sharding.spec)
                cv = jax.sharding.reshard(cv, jax.typeof(v).sharding.spec)
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
            new_kv = (k, v)
        else:
            new_kv = None
        G = H // KV
        qg = q.reshape(B, T, KV, G, D)
        s = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(q.dtype), preferred_element_type=jnp.float32)
        s = s * (D ** -0.5)
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
        y = jnp.einsum("bkgts,bskd->btkgd", p, v.astype(q.dtype)).reshape(B, T, H * D)
        return _call(self.o_proj, y, out_spec), new_kv


class MLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (three ``nnx.Linear``)."""

    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        lin = functools.partial(nnx.Linear, kernel_init=init, dtype=dtype, param_dtype=param_dtype,
                                use_bias=cfg.mlp_bias, rngs=rngs)
        self.gate_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = lin(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x, out_spec=None):
        return _call(self.down_proj, jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), out_spec)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, layer_idx, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype,
                                                param_dtype=param_dtype)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, masks, kv=None, index=None, out_spec=None):
        mask = masks[1] if self.self_attn.sliding_window is not None else masks[0]
        a, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, index, out_spec)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x), out_spec)
        return x, new_kv


class LlamaModel(nnx.Module):
    """``embed_tokens`` -> ``layers`` -> ``norm`` (Hugging Face ``LlamaModel``)."""

    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)


class KVCache(NamedTuple):
    """Key/value cache of :class:`LlamaForCausalLM` (a pytree).

    Attributes:
      keys, values: one ``[batch, max_len, num_kv_heads, head_dim]`` array per layer (layers may
        differ after structured pruning).
      valid: bool ``[batch, max_len]``: slots holding real (non-padding) tokens.
      index: int32 scalar, number of slots written (the next write position).
    """

    keys: tuple
    values: tuple
    valid: jax.Array
    index: jax.Array


class LlamaForCausalLM(nnx.Module):
    """A Llama-family causal LM (Hugging Face ``LlamaForCausalLM`` / Mistral / Qwen2 / Qwen3).

    Args:
      config: a :class:`LlamaConfig` (``LlamaConfig.from_hf(json.load(...))``).
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); None: the parameter dtype.
      param_dtype: parameter storage dtype.
      rngs: initializers draw ``N(0, 0.02^2)`` like Hugging Face; norms start at 1.

    Call ``model(input_ids [B, T], *, positions=None, attention_mask=None, cache=None)``: float32
    logits ``[B, T, V]``, or ``(logits, new_cache)`` when a :class:`KVCache` is passed.

    Example:
      >>> cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
      ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
      >>> model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((1, 5), jnp.int32)).shape
      (1, 5, 256)
    """

    def __init__(self, config: LlamaConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"`config` must be a LlamaConfig, got {type(config).__name__}.")
        self.config = config
        self.dtype = dtype
        self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Linear(config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype,
                                      param_dtype=param_dtype, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.inv_freq = tuple(float(f) for f in rope_inv_freq(config))

    # ------------------------------------------------------------------ pieces
    @property
    def compute_dtype(self):
        return self.dtype if self.dtype is not None else self.model.embed_tokens.embedding[...].dtype

    def lm_head_kernel(self) -> jax.Array:
        """The ``[hidden, vocab]`` head matrix (``embed_tokens.embedding.T`` when tied):
        ``logits = hidden_states @ lm_head_kernel()`` (feed :func:`jaxeff.fused_linear_distill_loss`)."""
        if self.lm_head is None:
            return self.model.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits of final hidden states ``h [..., hidden]``."""
        if self.lm_head is None:
            return self.model.embed_tokens.attend(h).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def init_cache(self, batch: int, max_len: int, *, dtype=None) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` rows and ``max_len`` positions."""
        if batch < 1 or max_len < 1:
            raise ValueError(f"`batch` and `max_len` must be >= 1, got {batch} and {max_len}.")
        dt = dtype or self.compute_dtype
        ks, vs = [], []
        for layer in self.model.layers:
            a = layer.self_attn
            shape = (batch, max_len, a.num_kv_heads, a.head_dim)
            ks.append(jnp.zeros(shape, dt))
            vs.append(jnp.zeros(shape, dt))
        return KVCache(tuple(ks), tuple(vs), jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))

    def hidden_states(self, input_ids, *, positions=None, attention_mask=None, cache: KVCache | None = None):
        """Final normed hidden states ``[B, T, hidden]`` (and the new cache when ``cache`` is given).

        Args:
          input_ids: int ``[B, T]``.
          positions: int ``[B, T]`` rotary positions; default: the slot index (``cache.index + t``),
            as Hugging Face's forward without ``position_ids``.
          attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding (keys at padding slots are
            never attended); default all ones.
          cache: a :class:`KVCache`; keys/values are written at ``cache.index``.
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"`input_ids` must be an integer array [batch, time], got {input_ids.dtype}{input_ids.shape}.")
        B, T = input_ids.shape
        explicit, bspec = _explicit_batch_spec(input_ids)
        out_spec = P(bspec, None, None) if explicit else None
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if attention_mask is None:
            am = jnp.ones((B, T), bool)
        else:
            am = jnp.asarray(attention_mask).astype(bool)
            if am.shape != (B, T):
                raise ValueError(f"`attention_mask` must have shape {(B, T)}, got {am.shape}.")
        if positions is None:
            positions = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
        else:
            positions = jnp.asarray(positions, jnp.int32)
            if positions.shape != (B, T):
                raise ValueError(f"`positions` must have shape {(B, T)}, got {positions.shape}.")
        if cache is None:
            valid = am
            S = T
        else:
            if cache.valid.shape[0] != B:
                raise ValueError(f"`cache` holds {cache.valid.shape[0]} rows but `input_ids` has {B}.")
            valid = jax.lax.dynamic_update_slice(cache.valid, am, (0, index))
            S = cache.valid.shape[1]
        q_slot = index + jnp.arange(T)
        kv_slot = jnp.arange(S)
        causal = kv_slot[None, :] <= q_slot[:, None]
        full = causal[None] & valid[:, None, :]
        masks = [full[:, None, None], None]
        windows = {l.self_attn.sliding_window for l in self.model.layers} - {None}
        if len(windows) > 1:
            raise ValueError(f"layers use different sliding windows {sorted(windows)}; one window is supported.")
        if windows:
            (w,) = windows
            band = kv_slot[None, :] > q_slot[:, None] - w
            masks[1] = (full & band[None])[:, None, None]
        freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(self.inv_freq, jnp.float32)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cdt = self.compute_dtype
        cos, sin = jnp.cos(emb).astype(cdt), jnp.sin(emb).astype(cdt)
        if explicit:
            x = self.model.embed_tokens(input_ids, out_sharding=out_spec)
        else:
            x = self.model.embed_tokens(input_ids)
        x = x.astype(cdt)
        new_k, new_v = [], []
        for i, layer in enumerate(self.model.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, nkv = layer(x, cos, sin, masks, kv, index, out_spec)
            if nkv is not None:
                new_k.append(nkv[0])
                new_v.append(nkv[1])
        h = self.model.norm(x)
        if cache is None:
            return h
        return h, KVCache(tuple(new_k), tuple(new_v), valid, index + T)

    features = hidden_states

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache: KVCache | None = None):
        out = self.hidden_states(input_ids, positions=positions, attention_mask=attention_mask, cache=cache)
        if cache is None:
            return self.logits(out)
        h, cache = out
        return self.logits(h), cache

    def current_config(self) -> LlamaConfig:
        """The config matching the module's present shapes (after pruning/shrinking).

        Raises ValueError when layers have become heterogeneous (a Hugging Face config describes
        one width per kind for all layers).
        """
        cfg = self.config
        inter, heads, kv, hd = set(), set(), set(), set()
        for layer in self.model.layers:
            inter.add(_kernel_shape(layer.mlp.gate_proj)[1])
            a = layer.self_attn
            heads.add(a.num_heads)
            kv.add(a.num_kv_heads)
            hd.add(a.head_dim)
        for name, vals in (("intermediate_size", inter), ("num_attention_heads", heads),
                           ("num_key_value_heads", kv), ("head_dim", hd)):
            if len(vals) != 1:
                raise ValueError(f"layers have different {name} values {sorted(vals)}; a Hugging Face config "
                                 "needs one value for every layer.")
        emb = self.model.embed_tokens.embedding
        return cfg.replace(intermediate_size=inter.pop(), num_attention_heads=heads.pop(),
                           num_key_value_heads=kv.pop(), head_dim=hd.pop(), hidden_size=int(emb.shape[1]),
                           vocab_size=int(emb.shape[0]), num_hidden_layers=len(self.model.layers))


def _kernel_shape(layer) -> tuple[int, ...]:
    k = getattr(layer, "kernel", None)
    if k is not None:
        return tuple(k.shape)
    qw = getattr(layer, "qweight", None)  # jaxeff.quant.QuantizedLinear
    if qw is not None:
        return tuple(getattr(qw, "shape", None) or qw.qvalue.shape)
    raise ValueError(f"cannot read the kernel shape of {type(layer).__name__}.")


def random_init(config: LlamaConfig, key: jax.Array | int = 0, *, dtype=None, param_dtype=jnp.float32) -> LlamaForCausalLM:
    """A randomly initialized :class:`LlamaForCausalLM` (``key``: a PRNG key or an int seed)."""
    if not isinstance(key, int):
        check_key("key", key)
    return LlamaForCausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(key))


# ------------------------------------------------------------------------------------ generation
def _select(logits, key, temperature):
    if temperature > 0:
        return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _generate_jit(graphdef, state, ids, mask, max_new, temperature, eos, pad, key):
    model = nnx.merge(graphdef, state)
    B, T = ids.shape
    cache = model.init_cache(B, T + max_new)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    h, cache = model.hidden_states(ids, positions=positions, attention_mask=mask, cache=cache)
    key, sub = jax.random.split(key)
    tok = _select(model.logits(h[:, -1]), sub, temperature)
    eos_arr = jnp.asarray(eos if eos else (-1,), jnp.int32)
    done = jnp.isin(tok, eos_arr)
    pos = mask.astype(jnp.int32).sum(axis=1)

    def body(carry, _):
        tok, cache, pos, key, done = carry
        h, cache = model.hidden_states(tok[:, None], positions=pos[:, None], cache=cache)
        key, sub = jax.random.split(key)
        nxt = _select(model.logits(h[:, -1]), sub, temperature)
        nxt = jnp.where(done, jnp.int32(pad), nxt)
        done = done | jnp.isin(nxt, eos_arr)
        return (nxt, cache, pos + 1, key, done), nxt

    if max_new > 1:
        _, rest = jax.lax.scan(body, (tok, cache, pos, key, done), None, length=max_new - 1)
        new = jnp.concatenate([tok[:, None], rest.T], axis=1)
    else:
        new = tok[:, None]
    return jnp.concatenate([ids, new], axis=1)


def generate(
    model: LlamaForCausalLM,
    input_ids,
    max_new_tokens: int,
    *,
    attention_mask=None,
    temperature: float = 0.0,
    key: jax.Array | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> jax.Array:
    """Generate ``max_new_tokens`` tokens after ``input_ids`` with a KV cache (one jit: prefill + scan).

    Greedy (``temperature=0``) reproduces Hugging Face ``generate(do_sample=False)`` token for token.
    Left-padded batches: pass ``attention_mask`` (0 on the left padding); positions are
    ``cumsum(mask) - 1`` as in Hugging Face. After a row emits an ``eos_token_id`` it is filled with
    ``pad_token_id`` (default: the first eos id); the output always has ``T + max_new_tokens`` columns.

    Returns:
      int32 ``[B, T + max_new_tokens]``: the prompt followed by the new tokens.
    """
    if not isinstance(model, LlamaForCausalLM):
        raise ValueError(f"`model` must be a LlamaForCausalLM, got {type(model).__name__}.")
    ids = jnp.asarray(input_ids, jnp.int32)
    if ids.ndim != 2:
        raise ValueError(f"`input_ids` must be [batch, time], got shape {ids.shape}.")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
    if temperature > 0:
        check_key("key", key)
    key = jax.random.key(0) if key is None else key
    mask = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"`attention_mask` must have shape {ids.shape}, got {mask.shape}.")
    eos = () if eos_token_id is None else tuple(int(e) for e in np.atleast_1d(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    graphdef, state = nnx.split(model)
    return _generate_jit(graphdef, state, ids, mask, int(max_new_tokens), float(temperature), eos, int(pad), key)


# ------------------------------------------------------------------------------------ sharding
_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
_ROW = ("o_proj", "down_proj")


def param_partition_specs(model: LlamaForCausalLM, n_model: int, *, model_axis: str | None = "model") -> dict:
    """``{param path tuple: PartitionSpec}`` for Megatron-style tensor parallelism.

    Column-parallel (output features split over ``model_axis``): q/k/v, gate/up projections and the
    lm-head; row-parallel (input features split): o/down projections; the embedding table is split
    over its vocabulary rows. A dimension that ``n_model`` does not divide stays replicated; an
    attention block whose ``num_kv_heads`` is not a multiple of ``n_model`` stays replicated (heads
    are never split inside a key/value group). Norms and biases of row-parallel layers are
    replicated.
    """
    specs: dict[tuple, P] = {}

    def div(n):
        return model_axis is not None and n_model > 1 and n % n_model == 0

    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Variable):
            continue
        path = tuple(path)
        name = path[-2] if len(path) >= 2 else ""
        shape = tuple(node.shape) if hasattr(node, "shape") else ()
        spec = P()
        if name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            attn = model
            for p in path[:-2]:
                attn = attn[p] if isinstance(p, int) else getattr(attn, p)
            ok = div(attn.num_kv_heads)
            if ok and name == "o_proj" and path[-1] == "kernel":
                spec = P(model_axis, None)
            elif ok and name != "o_proj" and path[-1] in ("kernel", "bias"):
                spec = P(None, model_axis) if path[-1] == "kernel" else P(model_axis)
        elif name in ("gate_proj", "up_proj") and path[-1] in ("kernel", "bias") and div(shape[-1]):
            spec = P(None, model_axis) if path[-1] == "kernel" else P(model_axis)
        elif name == "down_proj" and path[-1] == "kernel" and div(shape[0]):
            spec = P(model_axis, None)
        elif name == "lm_head" and path[-1] == "kernel" and div(shape[1]):
            spec = P(None, model_axis)
        elif name == "embed_tokens" and path[-1] == "embedding" and div(shape[0]):
            spec = P(model_axis, None)
        specs[path] = spec
    return specs


def shard_model(model: LlamaForCausalLM, mesh: Any, *, model_axis: str | None = "model",
                data_axis: str | None = "data") -> LlamaForCausalLM:
    """Place ``model``'s parameters on ``mesh`` for tensor (``model_axis``) + data parallelism.

    Parameters get ``NamedSharding(mesh, spec)`` from :func:`param_partition_specs` (replicated over
    ``data_axis``); batches are split over ``data_axis`` by the caller (e.g.
    ``jaxeff.core.shard_batch``). Works with ``Auto`` mesh axes (XLA propagates shardings) and
    ``Explicit`` axes (run the model under ``jax.set_mesh(mesh)``: row-parallel projections and the
    embedding lookup then pass an explicit ``out_sharding``).

    Args:
      model: a :class:`LlamaForCausalLM` (modified in place and returned).
      mesh: a ``jax.sharding.Mesh`` or a topology config from ``jaxeff.core.load_config`` (its
        ``mesh``, ``mesh.model_axis`` and ``mesh.data_axis`` are used).
      model_axis: mesh axis for tensor parallelism (None or absent from the mesh: replicate).
      data_axis: mesh axis the batch is split over (only checked).
    """
    if not isinstance(mesh, jax.sharding.Mesh):
        from jaxeff._core.config import TopologyConfig
        from jaxeff._core.sharding import mesh_from_config

        if not isinstance(mesh, TopologyConfig):
            raise ValueError(f"`mesh` must be a jax.sharding.Mesh or a TopologyConfig, got {type(mesh).__name__}.")
        model_axis = mesh.raw["mesh"]["model_axis"]
        data_axis = mesh.raw["mesh"]["data_axis"]
        mesh = mesh_from_config(mesh)
    if data_axis is not None and data_axis not in mesh.shape:
        raise ValueError(f"`data_axis` {data_axis!r} is not a mesh axis; mesh axes are {tuple(mesh.shape)}.")
    if model_axis is not None and model_axis not in mesh.shape:
        raise ValueError(f"`model_axis` {model_axis!r} is not a mesh axis; mesh axes are {tuple(mesh.shape)}.")
    n = mesh.shape[model_axis] if model_axis is not None else 1
    specs = param_partition_specs(model, n, model_axis=model_axis)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable) and tuple(path) in specs:
            node.set_value(jax.device_put(node.get_value(), NamedSharding(mesh, specs[tuple(path)])))
    return model
