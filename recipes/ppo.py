"""Stage 3 -- PPO against the reward model (InstructGPT Sec. 3.5): policy and reference from the SFT model (with
LoRA the reference is the adapter-disabled model), value model initialised from the reward model, per-token KL
penalty R = r(x, y) - beta log pi_RL(y|x) / pi_SFT(y|x). rlhf_kit's own PPO trainer (rlhf_kit/ppo/, on Accelerate;
TRL 1.12's config keys): resumable after a kill, PPO-ptx, adaptive KL.

    accelerate launch recipes/ppo.py --config recipes/configs/demo/ppo.yaml
"""

from rlhf_kit.integrations.trl import ModelConfig
from rlhf_kit.ppo.config import PPOConfig
from rlhf_kit.run.configs import PPOArguments, run_recipe, stage_parser


def main(script_args: PPOArguments, training_args: PPOConfig, model_args: ModelConfig):
    from pathlib import Path

    from rlhf_kit.core import runs
    from rlhf_kit.eval import report
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import apply_global_batch, last_logged, report_rank, save_log_history, setup_run
    from rlhf_kit.ppo import SUMMARY_METRICS, build_loop_extras, build_ppo_trainer, load_ppo_inputs, train_ppo
    from rlhf_kit.ppo.checkpoint import PPOCheckpointer
    from rlhf_kit.run.stage import StageRun

    setup_run(training_args)
    run, out = StageRun("ppo", training_args.output_dir, script_args.force, training_args), training_args.output_dir
    if run.skipped:
        return
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    apply_global_batch(script_args.global_batch_size, training_args)
    configs = (script_args, training_args, model_args)
    # Checkpoints every save_steps updates; the same command resumes from the last complete one.
    checkpointer = PPOCheckpointer(out, runs.resolve_config("ppo", configs), training_args.save_strategy,
                                   training_args.save_total_limit, resume=not script_args.force)
    if script_args.force:
        checkpointer.clear(run.is_main)
    run.start(*configs)
    extras = build_loop_extras(script_args, training_args, inputs["tokenizer"], inputs["train_dataset"])
    trainer = build_ppo_trainer(training_args, **inputs, checkpointer=checkpointer, **extras)
    policy = train_ppo(trainer)
    report_rank(trainer, "ppo")
    state_dict = trainer.full_policy_state_dict()  # every rank takes part (sharded models)
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(policy, inputs["tokenizer"], out, model_args.model_name_or_path, model_args,
                                  state_dict=state_dict)
        if "monitor" in extras:  # RM score vs the judge's, KL, length over updates
            report.plot_training(out, Path(out) / "monitor.png", trainer.state.selected_update)
    summary = {k.split("/")[-1]: v for k, v in last_logged(trainer, list(SUMMARY_METRICS)).items()}
    for key in ("selected_update", "stopped_update"):  # select_checkpoint: judge; probe_patience
        if getattr(trainer.state, key) is not None:
            summary[key] = getattr(trainer.state, key)
    run.finish(summary)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit ppo`."""
    return stage_parser("ppo")


if __name__ == "__main__":
    run_recipe(main, make_parser)
