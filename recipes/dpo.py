"""Stage "dpo" -- Direct Preference Optimization (Rafailov et al. 2023) from the SFT policy on the compare stage's
rankings (every untied pair of a ranking), reference = SFT: the comparison's no-reward-model, no-sampling method.
Wraps TRL's ``DPOTrainer`` (rlhf_kit/algorithms/dpo.py); LoRA; saves the merged model and the adapter, a policy the
eval stage takes like PPO's.

    accelerate launch recipes/dpo.py --config recipes/configs/demo/dpo.yaml
"""

from rlhf_kit.integrations.trl import DPOConfig, ModelConfig
from rlhf_kit.run.configs import DPOArguments, run_recipe, stage_parser


def main(script_args: DPOArguments, training_args: DPOConfig, model_args: ModelConfig):
    from rlhf_kit.algorithms.dpo import RankedDPOTrainer, preference_pairs
    from rlhf_kit.core import runs
    from rlhf_kit.data.cards import load_stage_rows
    from rlhf_kit.data.datasets import load_rows
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import (
        apply_global_batch,
        gather_full_state_dict,
        last_logged,
        report_rank,
        save_log_history,
        setup_run,
    )
    from rlhf_kit.run.stage import StageRun

    setup_run(training_args)
    run, out = StageRun("dpo", training_args.output_dir, script_args.force, training_args), training_args.output_dir
    if run.skipped:
        return
    sft = model_args.model_name_or_path
    runs.require_stage_output(sft, "SFT policy")
    tokenizer = modeling.load_tokenizer(sft)
    pairs = lambda rows, label: preference_pairs(  # noqa: E731
        rows, label, tokenizer, training_args.max_length, script_args.k_max, script_args.max_rows)
    train_set = pairs(*load_stage_rows(script_args, "comparisons"))
    held = script_args.eval_dataset_path
    eval_set = pairs(load_rows(held, script_args.dataset_split), held) if held else None
    model = modeling.load_causal_lm(sft, model_args, "SFT policy")
    apply_global_batch(script_args.global_batch_size, training_args)
    run.start(script_args, training_args, model_args)
    trainer = RankedDPOTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                               processing_class=tokenizer,
                               peft_config=modeling.build_peft_config(model_args, "CAUSAL_LM"))
    metrics = run.train(trainer)
    report_rank(trainer, "dpo")
    summary = {"pairs": len(train_set), "train_loss": metrics.get("train_loss")}
    if eval_set is not None:  # the implicit reward beta log(pi/pi_SFT) orders held-out pairs this often
        summary["heldout_accuracy"] = trainer.evaluate()["eval_rewards/accuracies"]
    summary.update(last_logged(trainer, ["rewards/accuracies", "rewards/margins"]))
    state_dict = gather_full_state_dict(trainer.accelerator, trainer.model, trainer.model_wrapped)
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, sft, model_args, state_dict)
    run.finish(summary)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit dpo`."""
    return stage_parser("dpo")


if __name__ == "__main__":
    run_recipe(main, make_parser)
