"""nemo_rl_theory: exact, tested PyTorch implementations of the losses behind LLM post-training.

Conventions follow NeMo RL: per-token tensors are ``[B, T]`` and aligned to the *predicted*
tokens (NeMo RL's ``[:, 1:]`` slice), ``mask`` is the ``[B, T]`` token mask and
``sample_mask`` the ``[B]`` sequence mask; config keys and defaults carry NeMo RL's names.
"""

from nemo_rl_theory.advantages import calculate_baseline_and_std_per_prompt, grpo_advantages
from nemo_rl_theory.kl import calculate_kl
from nemo_rl_theory.logprobs import entropy_from_logits, token_logprobs
from nemo_rl_theory.losses import ClippedPGConfig, DPOConfig, clipped_pg_loss, dpo_loss, nll_loss
from nemo_rl_theory.masking import masked_mean

__version__ = "0.1.0"

__all__ = [
    "ClippedPGConfig",
    "DPOConfig",
    "calculate_baseline_and_std_per_prompt",
    "calculate_kl",
    "clipped_pg_loss",
    "dpo_loss",
    "entropy_from_logits",
    "grpo_advantages",
    "masked_mean",
    "nll_loss",
    "token_logprobs",
]
