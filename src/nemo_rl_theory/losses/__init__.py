"""The three training losses: clipped policy gradient (GRPO/PPO), DPO and SFT NLL."""

from nemo_rl_theory.losses.clipped_pg import ClippedPGConfig, clipped_pg_loss
from nemo_rl_theory.losses.dpo import DPOConfig, dpo_loss
from nemo_rl_theory.losses.nll import nll_loss

__all__ = ["ClippedPGConfig", "DPOConfig", "clipped_pg_loss", "dpo_loss", "nll_loss"]
