"""Stage 3 -- PPO against the reward model (InstructGPT Sec. 3.5): policy and reference from the SFT model (with
LoRA the reference is the adapter-disabled model), value model initialised from the reward model, per-token KL
penalty R = r(x, y) - beta log pi_RL(y|x) / pi_SFT(y|x). rlhf_kit's PPO loop (rlhf_kit/ppo.py, ppo_loop.py) on top of
TRL 1.12's ``PPOTrainer``.

    accelerate launch recipes/ppo.py --config recipes/configs/demo/ppo.yaml
"""

import time

from rlhf_kit.configs import PPOArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error
from rlhf_kit.trl_compat import ModelConfig, PPOConfig


def main(script_args: PPOArguments, training_args: PPOConfig, model_args: ModelConfig):
    from accelerate import PartialState

    from rlhf_kit import hub, modeling, runs
    from rlhf_kit.ppo import SUMMARY_METRICS, build_loop_extras, build_ppo_trainer, load_ppo_inputs, train_ppo
    from rlhf_kit.ppo_checkpoint import PPOCheckpointer
    from rlhf_kit.training import apply_global_batch, last_logged, report_rank, save_log_history, setup_run

    setup_run(training_args)
    started, out, is_main = time.time(), training_args.output_dir, PartialState().is_main_process
    if runs.skip_if_complete(out, "ppo", script_args.force):
        return
    hub_id = hub.check_push_request(training_args)
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    apply_global_batch(script_args.global_batch_size, training_args)
    configs = (script_args, training_args, model_args)
    checkpointer = PPOCheckpointer(out, runs.resolve_config("ppo", configs), training_args.save_strategy,
                                   training_args.save_total_limit, resume=not script_args.force)
    if script_args.force:
        checkpointer.clear(is_main)
    runs.start_stage(out, "ppo", configs, is_main)
    extras = build_loop_extras(script_args, training_args, inputs["tokenizer"])
    trainer = build_ppo_trainer(training_args, **inputs, checkpointer=checkpointer, **extras)
    policy = train_ppo(trainer)
    report_rank(trainer, "ppo")
    if is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(policy, inputs["tokenizer"], out, model_args.model_name_or_path, model_args)
    summary = last_logged(trainer, list(SUMMARY_METRICS))
    runs.finish_stage(out, "ppo", started, {k.split("/")[-1]: v for k, v in summary.items()}, is_main)
    if hub_id and is_main:
        hub.push_stage(out, hub_id)


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((PPOArguments, PPOConfig, ModelConfig))))
