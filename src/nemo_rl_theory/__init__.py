"""nemo_rl_theory: exact, tested PyTorch implementations of the losses behind LLM post-training.

Conventions follow NeMo RL: per-token tensors are ``[B, T]`` and aligned to the *predicted*
tokens (NeMo RL's ``[:, 1:]`` slice), ``mask`` is the ``[B, T]`` token mask and
``sample_mask`` the ``[B]`` sequence mask; config keys and defaults carry NeMo RL's names.
"""

from nemo_rl_theory.advantage_estimators import (
    clip_advantages,
    gae_advantages,
    gdpo_advantages,
    opd_advantages,
    raw_reward_advantages,
    reinforce_plus_plus_advantages,
)
from nemo_rl_theory.advantages import calculate_baseline_and_std_per_prompt, grpo_advantages
from nemo_rl_theory.filters import (
    dynamic_sampling_mask,
    overlong_filtering_mask,
    seq_logprob_error_mask,
    seq_mult_prob_error,
)
from nemo_rl_theory.kl import calculate_kl
from nemo_rl_theory.logprobs import entropy_from_logits, linear_token_logprobs, token_logprobs
from nemo_rl_theory.losses import (
    DPO_LOSS_TYPES,
    ClippedPGConfig,
    DPOConfig,
    ImportanceWeights,
    Surrogate,
    actor_importance_weights,
    bradley_terry_loss,
    clipped_pg_loss,
    clipped_surrogate,
    distillation_loss,
    dpo_loss,
    dpo_pair_losses,
    kto_loss,
    nll_loss,
    orpo_loss,
    policy_ratios,
    positive_example_nll,
    reduce_per_token_loss,
    reference_kl_penalty,
    simpo_loss,
    value_loss,
)
from nemo_rl_theory.masking import masked_mean, masked_var
from nemo_rl_theory.reward_transforms import dapo_overlong_penalty, scale_rewards, stop_properly_penalty

__version__ = "0.1.0"

__all__ = [
    "DPO_LOSS_TYPES",
    "ClippedPGConfig",
    "DPOConfig",
    "ImportanceWeights",
    "Surrogate",
    "actor_importance_weights",
    "bradley_terry_loss",
    "calculate_baseline_and_std_per_prompt",
    "calculate_kl",
    "clip_advantages",
    "clipped_pg_loss",
    "clipped_surrogate",
    "dapo_overlong_penalty",
    "distillation_loss",
    "dpo_loss",
    "dpo_pair_losses",
    "dynamic_sampling_mask",
    "entropy_from_logits",
    "gae_advantages",
    "gdpo_advantages",
    "grpo_advantages",
    "kto_loss",
    "linear_token_logprobs",
    "masked_mean",
    "masked_var",
    "nll_loss",
    "opd_advantages",
    "orpo_loss",
    "overlong_filtering_mask",
    "policy_ratios",
    "positive_example_nll",
    "raw_reward_advantages",
    "reduce_per_token_loss",
    "reference_kl_penalty",
    "reinforce_plus_plus_advantages",
    "scale_rewards",
    "seq_logprob_error_mask",
    "seq_mult_prob_error",
    "simpo_loss",
    "stop_properly_penalty",
    "token_logprobs",
    "value_loss",
]
