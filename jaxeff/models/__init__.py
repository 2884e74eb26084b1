"""Small reference models and offline data shared by benchmarks, notebooks and the demo.

* :func:`load_text_corpus`: the Python standard library's own source files as a byte-level
  text corpus (present on every machine, no download), split deterministically.
* :class:`CharLM`: a Flax NNX decoder-only byte-level transformer with plain ``nnx.Linear``
  layers everywhere (so quantization, pruning and distillation can address them by path).
* :func:`train_lm` / :func:`evaluate_lm` / :func:`pretrained_charlm`: training, evaluation
  (loss, bits per byte, perplexity) and a disk-cached pre-trained teacher.
* :class:`LlamaForCausalLM` / :class:`LlamaConfig`: the Hugging Face Llama family (Llama 2/3,
  Mistral, Qwen2, Qwen3) in Flax NNX, with KV-cache :func:`generate` and tensor-parallel
  :func:`shard_model`; :func:`from_pretrained` / :func:`save_pretrained` read and write local
  Hugging Face checkpoint directories, quantized models in the compressed-tensors layout
  (:mod:`jaxeff.models.compressed_tensors`).
"""
from jaxeff.models.charlm import (
    CHARLM_PRESETS,
    CharLM,
    CharLMConfig,
    capture_linear_inputs,
    evaluate_lm,
    greedy_generate,
    lm_loss,
    load_text_corpus,
    param_bytes,
    param_count,
    pretrained_charlm,
    sample_batch,
    train_lm,
)
from jaxeff.models.hf import from_pretrained, save_pretrained
from jaxeff.models.llama import (
    KVCache,
    LlamaConfig,
    LlamaForCausalLM,
    generate,
    param_partition_specs,
    random_init,
    rope_inv_freq,
    shard_model,
)

__all__ = [
    "CHARLM_PRESETS",
    "CharLM",
    "CharLMConfig",
    "capture_linear_inputs",
    "evaluate_lm",
    "greedy_generate",
    "lm_loss",
    "load_text_corpus",
    "param_bytes",
    "param_count",
    "pretrained_charlm",
    "sample_batch",
    "train_lm",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "from_pretrained",
    "generate",
    "param_partition_specs",
    "random_init",
    "rope_inv_freq",
    "save_pretrained",
    "shard_model",
]
