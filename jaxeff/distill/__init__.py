"""jaxeff.distill: knowledge-distillation losses, a fused chunked lm-head distillation loss,
feature/attention transfer losses and on-policy (GKD) helpers.

Modules: :mod:`~jaxeff.distill.losses` (divergences on logits), :mod:`~jaxeff.distill.features`
(hidden-state and attention transfer), :mod:`~jaxeff.distill.fused` (chunked fused linear loss
with a custom VJP, vocab sharding, offline top-k teacher), :mod:`~jaxeff.distill.on_policy`
(jit sampling from Flax NNX students, on-policy mixing), :mod:`~jaxeff.distill.logit_store`
(offline teacher top-k log-probs: sharded memory-mapped store, resumable build).
"""
from jaxeff.distill.features import attention_transfer_loss, hidden_state_loss
from jaxeff.distill.fused import fused_linear_distill_loss, fused_linear_topk_distill_loss
from jaxeff.distill.logit_store import (
    STORE_VALUE_DTYPES,
    TeacherBatch,
    TeacherLogitStore,
    build_teacher_logit_store,
    open_teacher_logit_store,
    teacher_topk,
)
from jaxeff.distill.on_policy import (
    OnPolicySample,
    filter_logits,
    mix_on_policy,
    on_policy_batch,
    sample_continuations,
    sample_from_logits,
)
from jaxeff.distill.losses import (
    forward_kl,
    generalized_jsd,
    hinton_kd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_kl,
    tvd,
)

__all__ = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "hinton_kd",
    "topk_kl",
    "fused_linear_distill_loss",
    "fused_linear_topk_distill_loss",
    "hidden_state_loss",
    "attention_transfer_loss",
    "OnPolicySample",
    "filter_logits",
    "sample_from_logits",
    "sample_continuations",
    "mix_on_policy",
    "on_policy_batch",
    "teacher_topk",
    "TeacherBatch",
    "TeacherLogitStore",
    "build_teacher_logit_store",
    "open_teacher_logit_store",
    "STORE_VALUE_DTYPES",
]
