"""rlhf_kit's PPO loop vs TRL 1.12's own ``PPOTrainer.train()``, side by side in one run on the same config.

Each loop gets the same models, prompts and seed (both built through rlhf_kit's PPO seam); the script prints
episodes per second of each, their ratio (rlhf_kit / TRL), whether both ended with the same weights (they should:
tests/test_ppo_loop.py), and the share of rlhf_kit's wall time spent sampling rollouts and in the whole rollout
phase (sampling plus the reference, value and reward forwards). Needs ``make sft reward`` (the demo's stages).

    python benchmarks/ppo_loop.py --config benchmarks/ppo_loop.yaml      # or: make bench-ppo
"""

import json
import time

from rlhf_kit.configs import PPOArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error
from rlhf_kit.trl_compat import ModelConfig, PPOConfig


def run_loop(loop: str, argv: list[str] | None):
    """Train once with ``loop``; (wall seconds, episodes, trainable weights, trainer)."""
    from rlhf_kit.ppo import build_ppo_trainer, load_ppo_inputs, train_ppo
    from rlhf_kit.training import setup_run

    script_args, training_args, model_args = parse_stage_args((PPOArguments, PPOConfig, ModelConfig), argv)
    setup_run(training_args)  # the same seed for both loops, before LoRA is initialised
    trainer = build_ppo_trainer(training_args, **load_ppo_inputs(script_args, training_args, model_args), loop=loop)
    start = time.perf_counter()
    train_ppo(trainer)
    wall = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model)
    weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    return wall, trainer.state.episode, weights, trainer


def main(argv: list[str] | None = None):
    from pathlib import Path

    results, weights = {}, {}
    for loop in ("trl", "rlhf_kit"):
        wall, episodes, weights[loop], trainer = run_loop(loop, argv)
        results[loop] = {"wall_s": wall, "episodes": episodes, "episodes_per_s": episodes / wall}
        if loop == "rlhf_kit":
            results[loop].update({f"{k}_share": v / wall for k, v in trainer.timings.items()})
        out = Path(trainer.args.output_dir)
    diff = max((weights["trl"][k] - weights["rlhf_kit"][k]).abs().max().item() for k in weights["trl"])
    results["ratio_rlhf_kit_over_trl"] = results["rlhf_kit"]["episodes_per_s"] / results["trl"]["episodes_per_s"]
    results["max_abs_weight_diff"] = diff
    print(f"\n{'loop':>9} {'episodes':>8} {'wall s':>8} {'episodes/s':>10}")
    for loop in ("trl", "rlhf_kit"):
        r = results[loop]
        print(f"{loop:>9} {r['episodes']:>8} {r['wall_s']:>8.1f} {r['episodes_per_s']:>10.2f}")
    r = results["rlhf_kit"]
    print(f"ratio rlhf_kit / TRL: {results['ratio_rlhf_kit_over_trl']:.3f}; rlhf_kit wall time sampling rollouts "
          f"{r['generate_share']:.0%}, whole rollout phase {r['rollout_share']:.0%}; max |weight diff| {diff:.2e}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppo_loop.json").write_text(json.dumps(results, indent=2))
    print(f"-> {out / 'ppo_loop.json'}")


if __name__ == "__main__":
    exit_on_user_error(main)
