"""rlhf_kit's PPO loop in-process on the tiny pipeline (the oracle against TRL 1.12 is tests/test_ppo_golden.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_kit.integrations.trl import ModelConfig

from conftest import TINY, config_args, stage_paths

# Several updates, more than one PPO epoch and minibatch, so every part of the loop is exercised.
LOOP = ["--total_episodes", "64", "--num_ppo_epochs", "2", "--num_mini_batches", "2", "--report_to", "none",
        "--disable_tqdm", "true"]


def run_ppo(root, out, overrides: list[str] = (), **extras):
    """PPO in-process on the tiny pipeline's SFT and reward models; (trainable weights, log history)."""
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.ppo import build_loop_extras, build_ppo_trainer, load_ppo_inputs, train_ppo
    from rlhf_kit.ppo.config import PPOConfig
    from rlhf_kit.run.configs import PPOArguments, parse_stage_args

    script_args, training_args, model_args = parse_stage_args(
        (PPOArguments, PPOConfig, ModelConfig),
        config_args("ppo") + stage_paths(root, "ppo") + TINY["ppo"] + LOOP + ["--output_dir", str(out)]
        + list(overrides))
    setup_run(training_args)
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    extras = {**build_loop_extras(script_args, training_args, inputs["tokenizer"], inputs["train_dataset"]), **extras}
    trainer = build_ppo_trainer(training_args, **inputs, **extras)
    train_ppo(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    return weights, trainer.state.log_history


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_loop_is_seeded_and_moves_the_adapter(pipeline, tmp_path):
    w_a, logs_a = run_ppo(pipeline, tmp_path / "a")
    w_b, logs_b = run_ppo(pipeline, tmp_path / "b")
    updates = [r for r in logs_a if "ppo/scores" in r]  # and, first, the monitor's probe of the starting policy
    assert len(updates) == 4 and logs_a[-1]["ppo/episode"] == 64 and logs_a[0]["step"] == 0
    lora = [k for k in w_a if "lora_B" in k]
    assert lora and max(w_a[k].abs().max().item() for k in lora) > 1e-4
    assert max_abs_diff(w_a, w_b) == 0.0  # same seed, same run
    assert all(math.isfinite(r["ppo/kl"]) for r in updates)


def test_a_minibatch_smaller_than_the_micro_batch_is_one_micro_batch(pipeline, tmp_path):
    """The real track's shape: 8 rollouts per process in 4 minibatches of 2 with per_device_train_batch_size 8. TRL
    1.12 trained each minibatch as one micro-batch of 2 (its loop slices past the end); so does rlhf_kit's."""
    shape = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--num_mini_batches", "4",
             "--total_episodes", "16"]
    weights, logs = run_ppo(pipeline, tmp_path / "small", shape)
    updates = [r for r in logs if "ppo/scores" in r]
    assert len(updates) == 2 and logs[-1]["ppo/episode"] == 16
    assert all(math.isfinite(r["ppo/kl"]) and math.isfinite(r["losses/policy"]) for r in updates)
    assert max(w.abs().max().item() for k, w in weights.items() if "lora_B" in k) > 1e-4  # 4 steps per epoch moved it


def test_a_lora_value_model_trains_its_adapters_and_head_only(pipeline, tmp_path):
    """``value_use_peft``: the value model (from the reward model) trains LoRA adapters and its score head; its
    transformer's own weights stay as the reward model has them."""
    weights, logs = run_ppo(pipeline, tmp_path / "lora_value", ["--value_use_peft", "true", "--total_episodes", "16"])
    value = {k: w for k, w in weights.items() if k.startswith("value_model.")}
    assert value and all("lora_" in k or k.startswith("value_model.score.") for k in value)
    assert max(w.abs().max().item() for k, w in value.items() if "lora_B" in k) > 1e-4  # the adapters moved
    assert all(w.dtype == torch.float32 for w in value.values())
    assert all(math.isfinite(r["losses/value"]) for r in logs if "losses/value" in r)


def test_a_lora_value_model_over_a_bf16_reward_model_scores_in_float32(pipeline):
    """The real track's case: the reward model (and so the value model's frozen trunk) in bf16, the trained head
    and adapters in float32; the policy+value module's values come out of the float32 head without a dtype error."""
    from rlhf_kit.integrations import modeling
    from rlhf_kit.ppo.trainer import PolicyAndValue

    reward = modeling.load_reward_model(str(pipeline / "runs" / "reward"), require_head=True, dtype="bfloat16")
    config = modeling.build_peft_config(ModelConfig(use_peft=True, lora_r=4, lora_alpha=8,
                                                    lora_target_modules="all-linear"), "CAUSAL_LM")
    value = modeling.lora_value_model(reward, config)
    trained = {n: p for n, p in value.named_parameters() if p.requires_grad}
    frozen = [p for n, p in value.named_parameters() if not p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert any(n.startswith("score.") for n in trained) and not any("score.lora" in n for n in trained)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    policy = modeling.load_causal_lm(str(pipeline / "runs" / "sft"), what="policy")
    ids = torch.tensor([[1, 2, 3, 4]])
    _, values = PolicyAndValue(policy, value)(input_ids=ids, attention_mask=torch.ones_like(ids),
                                              output_hidden_states=True, logits_to_keep=2)
    assert values.dtype == torch.float32 and values.shape[:2] == (1, 2)


def test_a_lora_value_model_needs_a_lora_policy(pipeline, tmp_path):
    from rlhf_kit.core.errors import UserError

    with pytest.raises(UserError, match="value_use_peft: true needs use_peft: true"):
        run_ppo(pipeline, tmp_path / "full", ["--value_use_peft", "true", "--use_peft", "false"])
