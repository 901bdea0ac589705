"""Stage 2 -- reward model from comparisons (InstructGPT Sec. 3.5): initialised from the SFT model, trained with
-log sigma(r(x, y_w) - r(x, y_l)) either K-wise (all C(K,2) pairs of a ranking in one batch element, InstructGPT's
Eq. 1) or pairwise. Wraps TRL's ``RewardTrainer``; LoRA with the score head trained and saved; the merged model is
what PPO loads.

    accelerate launch recipes/reward.py --config recipes/configs/demo/reward.yaml
"""

from rlhf_kit.integrations.trl import ModelConfig, RewardConfig
from rlhf_kit.run.configs import RewardArguments, run_recipe, stage_parser


def main(script_args: RewardArguments, training_args: RewardConfig, model_args: ModelConfig):
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
    from rlhf_kit.reward.ranking import build_reward_dataset, build_reward_trainer
    from rlhf_kit.run.stage import StageRun

    setup_run(training_args)
    run, out = StageRun("reward", training_args.output_dir, script_args.force, training_args), training_args.output_dir
    if run.skipped:
        return
    sft = model_args.model_name_or_path
    runs.require_stage_output(sft, "SFT model")
    tokenizer = modeling.load_tokenizer(sft)
    prepare = lambda rows, label: build_reward_dataset(  # noqa: E731
        rows, label, tokenizer, training_args.max_length, script_args.ranking_loss, script_args.k_max,
        script_args.max_rows)
    train_set = prepare(*load_stage_rows(script_args, "comparisons"))
    held = script_args.eval_dataset_path
    eval_set = prepare(load_rows(held, script_args.dataset_split), held) if held else None
    model = modeling.load_reward_model(sft, model_args, "SFT model")
    model.config.pad_token_id = tokenizer.pad_token_id
    apply_global_batch(script_args.global_batch_size, training_args)
    run.start(script_args, training_args, model_args)
    trainer = build_reward_trainer(script_args.ranking_loss, script_args.use_margins, model=model, args=training_args,
                                   train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
                                   peft_config=modeling.build_peft_config(model_args, "SEQ_CLS"))
    metrics = run.train(trainer)
    report_rank(trainer, "reward")
    summary = {"rows": len(train_set), "ranking_loss": script_args.ranking_loss,
               "train_loss": metrics.get("train_loss")}
    if eval_set is not None:
        summary["heldout_accuracy"] = trainer.evaluate()["eval_accuracy"]
    summary.update(last_logged(trainer, ["accuracy"]))
    # Every rank takes part (sharded models).
    state_dict = gather_full_state_dict(trainer.accelerator, trainer.model, trainer.model_wrapped)
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, sft, model_args, state_dict)
    run.finish(summary)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit reward`."""
    return stage_parser("reward")


if __name__ == "__main__":
    run_recipe(main, make_parser)
