"""PPO's configuration: TRL 1.12's ``PPOConfig`` keys, on transformers' ``TrainingArguments``, owned here.

TRL removed its PPO trainer and config in 1.13 (PR #7020). Every shipped PPO YAML uses TRL 1.12's key names
(``total_episodes``, ``num_ppo_epochs``, ``num_mini_batches``, ``kl_coef``, ``missing_eos_penalty``,
``response_length``, ``stop_token``, ...), so the same names, defaults and meanings are kept here (TRL 1.12's
``trl/experimental/ppo/ppo_config.py`` and ``trl/trainer/base_config.py``, Apache-2.0). Keys TRL 1.12 had and this
trainer does not read are refused by name (:data:`REMOVED_KEYS`) instead of being accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from transformers import TrainingArguments

# TRL 1.12 PPOConfig keys this trainer does not take, and what to do instead (one line each).
REMOVED_KEYS = {
    "sft_model_path": "the SFT policy is model_name_or_path",
    "dataset_num_proc": "prompts are tokenized in one process",
    "model_adapter_name": "the policy trains one LoRA adapter; the reference is that adapter disabled",
    "ref_adapter_name": "the reference is the adapter-disabled policy, or ref_model_path",
    "world_size": "derived from the launch (accelerate's number of processes)",
    "num_total_batches": "derived: ceil(total_episodes / batch size)",
    "micro_batch_size": "derived: per_device_train_batch_size x processes",
    "local_batch_size": "derived: per_device_train_batch_size x gradient_accumulation_steps",
    "batch_size": "derived: local batch x processes",
    "local_mini_batch_size": "derived: local batch / num_mini_batches",
    "mini_batch_size": "derived: batch size / num_mini_batches",
}


@dataclass
class PPOConfig(TrainingArguments):
    """PPO hyperparameters under TRL 1.12's names and defaults (docs: TRL 1.12 ``PPOConfig``).

    Defaults that differ from ``TrainingArguments`` as in TRL: ``logging_steps`` 10, ``gradient_checkpointing``
    true, ``bf16`` true unless ``fp16``, ``learning_rate`` 3e-6."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = REMOVED_KEYS  # read by rlhf_kit.run.configs.refuse_removed_keys

    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates (a float < 1: share of all)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 (mixed) precision instead of 32-bit; unset: true unless fp16 is set (TRL's default)."})
    lr_scheduler_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Extra parameters of the learning-rate scheduler."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches each PPO batch is split into."})
    total_episodes: int | None = field(default=None, metadata={
        "help": "Responses to sample in all; unset: num_train_epochs x the prompts."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Per process, the rollouts sampled and scored together (no-grad forward batch)."})
    num_sample_generations: int = field(default=10, metadata={
        "help": "How many times during training a few greedy samples of held-out prompts are printed (0: never)."})
    response_length: int = field(default=53, metadata={"help": "Most tokens per response."})
    stop_token: Literal["eos"] | None = field(default=None, metadata={
        "help": "eos: a response ends at the tokenizer's end token; exclusive with stop_token_id."})
    stop_token_id: int | None = field(default=None, metadata={
        "help": "The token that ends a response (unset, and no stop_token: responses run to response_length)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of a response without the end token (Huang et al. 2024, detail 14)."})
    reward_model_path: str = field(default="", metadata={"help": "The reward stage's model (trained head)."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each batch of rollouts."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards."})
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty."})
    kl_estimator: Literal["k1", "k3"] = field(default="k1", metadata={
        "help": "KL estimator (http://joschu.net/blog/kl-approx.html): k1 plain, k3 lower variance."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    padding_free: bool = field(default=True, metadata={
        "help": "Rollout scoring and PPO epochs on real tokens only, packed end to end (same losses; no TRL 1.12 "
                "key)."})
    ds3_gather_for_generation: bool = field(default=True, metadata={
        "help": "ZeRO-3: gather the policy's full weights for sampling (faster; off samples layer by layer)."})

    def __post_init__(self):
        self.bf16 = not self.fp16 if self.bf16 is None else self.bf16
        if self.stop_token and self.stop_token_id is not None:
            raise ValueError("set either stop_token or stop_token_id, not both")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        super().__post_init__()
