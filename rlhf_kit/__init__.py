"""rlhf_kit: the InstructGPT recipe (SFT -> reward model -> PPO) on the Hugging Face stack."""

__version__ = "0.1.0"
