"""The TRL 1.12 signatures and attributes rlhf_kit relies on. A TRL upgrade that moves any of them fails here, by
name, instead of deep inside a run. Everything pinned is reached through rlhf_kit/trl_compat.py."""

from __future__ import annotations

import inspect

import pytest


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_ppo_trainer_constructor():
    from rlhf_kit.trl_compat import PPOTrainer

    assert _params(PPOTrainer.__init__)[:7] == ["args", "processing_class", "model", "ref_model", "reward_model",
                                                "train_dataset", "value_model"]
    assert {"eval_dataset", "peft_config"} <= set(_params(PPOTrainer.__init__))
    # rlhf_kit's loop calls or overrides these.
    for name in ("train", "null_ref_context", "generate_completions", "log", "remove_callback"):
        assert callable(getattr(PPOTrainer, name)), name


def test_policy_and_value_wrapper_attributes():
    import torch

    from rlhf_kit.trl_compat import PolicyAndValueWrapper, policy_of, value_model_of

    class Value(torch.nn.Module):
        base_model_prefix = "model"

        def __init__(self):
            super().__init__()
            self.model, self.score = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)

    policy = torch.nn.Linear(2, 2)
    policy.is_gradient_checkpointing = False
    value = Value()
    wrapper = PolicyAndValueWrapper(policy, value)
    assert policy_of(wrapper) is policy and value_model_of(wrapper) is value


def test_ppo_config_fields():
    from rlhf_kit.trl_compat import PPOConfig

    fields = PPOConfig.__dataclass_fields__
    read = ["reward_model_path", "kl_coef", "kl_estimator", "total_episodes", "num_ppo_epochs", "num_mini_batches",
            "response_length", "temperature", "stop_token", "stop_token_id", "missing_eos_penalty", "whiten_rewards",
            "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "local_rollout_forward_batch_size",
            "num_sample_generations", "ds3_gather_for_generation", "save_steps", "save_total_limit", "seed"]
    assert not [f for f in read if f not in fields]
    # Filled in by PPOTrainer.__init__ and read by the loop.
    for name in ("local_batch_size", "batch_size", "mini_batch_size", "local_mini_batch_size", "num_total_batches",
                 "world_size"):
        assert name in fields, name


def test_ppo_helpers():
    from rlhf_kit import trl_compat as t

    assert _params(t.batch_generation) == ["model", "queries", "local_rollout_forward_batch_size", "pad_token_id",
                                           "generation_config"]
    assert _params(t.forward) == ["model", "query_responses", "pad_token_id"]
    assert _params(t.get_reward) == ["model", "query_responses", "pad_token_id", "context_length"]
    assert _params(t.truncate_response) == ["stop_token_id", "pad_token_id", "responses"]
    assert _params(t.masked_whiten)[:2] == ["values", "mask"] and "shift_mean" in _params(t.masked_whiten)
    assert _params(t.selective_log_softmax) == ["logits", "index"]
    assert "generation_kwargs" in _params(t.unwrap_model_for_generation)
    assert t.INVALID_LOGPROB == 1.0


def test_reward_trainer_hooks():
    """rlhf_kit/ranking.py overrides these private RewardTrainer hooks and appends to ``_metrics``."""
    from rlhf_kit.trl_compat import RewardTrainer

    assert _params(RewardTrainer._prepare_dataset) == ["dataset", "processing_class", "args", "dataset_name"]
    assert callable(RewardTrainer._set_signature_columns_if_needed)
    assert _params(RewardTrainer.compute_loss)[:4] == ["model", "inputs", "return_outputs", "num_items_in_batch"]
    assert "self._metrics" in inspect.getsource(RewardTrainer.__init__)


@pytest.mark.parametrize("name", ["get_training_chat_template", "has_generation_markers", "get_peft_config",
                                  "get_quantization_config", "TrlParser"])
def test_reexports(name):
    from rlhf_kit import trl_compat

    assert callable(getattr(trl_compat, name))
