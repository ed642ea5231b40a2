"""The training losses: the clipped policy gradient (GRPO/PPO) and its stages, DPO and its variants,
the reference-free and unpaired preference losses, and the reward-model, value, distillation and
SFT losses."""

from nemo_rl_theory.losses.clipped_pg import (
    ClippedPGConfig,
    ImportanceWeights,
    Surrogate,
    actor_importance_weights,
    clipped_pg_loss,
    clipped_surrogate,
    policy_ratios,
    positive_example_nll,
    reduce_per_token_loss,
    reference_kl_penalty,
)
from nemo_rl_theory.losses.distillation import distillation_loss
from nemo_rl_theory.losses.dpo import DPO_LOSS_TYPES, DPOConfig, dpo_loss, dpo_pair_losses
from nemo_rl_theory.losses.nll import nll_loss
from nemo_rl_theory.losses.preference import kto_loss, orpo_loss, simpo_loss
from nemo_rl_theory.losses.reward_model import bradley_terry_loss
from nemo_rl_theory.losses.value import value_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "ClippedPGConfig",
    "DPOConfig",
    "ImportanceWeights",
    "Surrogate",
    "actor_importance_weights",
    "bradley_terry_loss",
    "clipped_pg_loss",
    "clipped_surrogate",
    "distillation_loss",
    "dpo_loss",
    "dpo_pair_losses",
    "kto_loss",
    "nll_loss",
    "orpo_loss",
    "policy_ratios",
    "positive_example_nll",
    "reduce_per_token_loss",
    "reference_kl_penalty",
    "simpo_loss",
    "value_loss",
]
