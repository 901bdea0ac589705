"""rlhf_kit's PPO loop in-process on the tiny pipeline (the oracle against TRL 1.12 is tests/test_ppo_golden.py)."""

from __future__ import annotations

import math

from conftest import TINY, config_args, stage_paths

# Several updates, more than one PPO epoch and minibatch, so every part of the loop is exercised.
LOOP = ["--total_episodes", "64", "--num_ppo_epochs", "2", "--num_mini_batches", "2", "--report_to", "none",
        "--disable_tqdm", "true"]


def run_ppo(root, out, overrides: list[str] = (), **extras):
    """PPO in-process on the tiny pipeline's SFT and reward models; (trainable weights, log history)."""
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.integrations.trl import ModelConfig
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
