"""rlhf_kit's PPO loop against TRL's own: with the extras off, the same run to within 1e-6 (the oracle test)."""

from __future__ import annotations

import math

from conftest import TINY, config_args, stage_paths

# Several updates, more than one PPO epoch and minibatch, so every part of the loop is exercised.
ORACLE = ["--total_episodes", "64", "--num_ppo_epochs", "2", "--num_mini_batches", "2", "--report_to", "none",
          "--disable_tqdm", "true"]


def run_ppo(root, out, loop: str, overrides: list[str] = (), **extras):
    """PPO in-process on the tiny pipeline's SFT and reward models; (trainable weights, log history)."""
    from rlhf_kit.configs import PPOArguments, parse_stage_args
    from rlhf_kit.ppo import build_loop_extras, build_ppo_trainer, load_ppo_inputs, train_ppo
    from rlhf_kit.training import setup_run
    from rlhf_kit.trl_compat import ModelConfig, PPOConfig

    script_args, training_args, model_args = parse_stage_args(
        (PPOArguments, PPOConfig, ModelConfig),
        config_args("ppo") + stage_paths(root, "ppo") + TINY["ppo"] + ORACLE + ["--output_dir", str(out)]
        + list(overrides))
    setup_run(training_args)
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    if loop == "rlhf_kit":  # the KL controller and PPO-ptx from the arguments (plain PPO unless overridden)
        extras = {**build_loop_extras(script_args, training_args, inputs["tokenizer"]), **extras}
    trainer = build_ppo_trainer(training_args, **inputs, loop=loop, **extras)
    train_ppo(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    return weights, trainer.state.log_history


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def metric_diffs(logs_a: list[dict], logs_b: list[dict]) -> dict[str, float]:
    from rlhf_kit.ppo import TIMING_METRICS

    assert len(logs_a) == len(logs_b)
    diffs = {}
    for ra, rb in zip(logs_a, logs_b):
        for k, v in ra.items():
            if k not in TIMING_METRICS:
                assert k in rb, k
                diffs[k] = max(diffs.get(k, 0.0), abs(v - rb[k]))
    return diffs


def test_rlhf_kit_loop_reproduces_trl_train(pipeline, tmp_path):
    w_trl, logs_trl = run_ppo(pipeline, tmp_path / "trl", "trl")
    w_ours, logs_ours = run_ppo(pipeline, tmp_path / "ours", "rlhf_kit")
    assert len(logs_trl) == 4 and logs_trl[-1]["ppo/episode"] == 64
    # The updates moved the weights (else equality would prove nothing), and both loops moved them alike.
    lora = [k for k in w_ours if "lora_B" in k]
    assert lora and max(w_ours[k].abs().max().item() for k in lora) > 1e-4
    assert max_abs_diff(w_trl, w_ours) <= 1e-6
    diffs = metric_diffs(logs_trl, [{k: v for k, v in r.items() if k != "ppo/kl_coef"} for r in logs_ours])
    assert {"ppo/kl", "ppo/scores", "losses/policy", "losses/value", "charts/learning_rate"} <= set(diffs)
    assert max(diffs.values()) <= 1e-6, diffs
    assert all(math.isfinite(r["ppo/kl"]) for r in logs_ours)


