"""Stage 1 -- supervised fine-tuning on labelers' demonstrations (InstructGPT Sec. 3.5), LoRA or QLoRA, loss on
assistant tokens only. Wraps TRL's ``SFTTrainer``; saves the merged model and the adapter.

    accelerate launch recipes/sft.py --config recipes/configs/demo/sft.yaml
"""

from rlhf_kit.integrations.trl import ModelConfig, SFTConfig
from rlhf_kit.run.configs import DataArguments, run_recipe, stage_parser


def main(script_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig):
    from rlhf_kit.core import runs
    from rlhf_kit.data.cards import load_stage_rows
    from rlhf_kit.data.datasets import build_sft_dataset
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import (
        apply_global_batch,
        gather_full_state_dict,
        report_rank,
        save_log_history,
        setup_run,
    )
    from rlhf_kit.integrations.trl import SFTTrainer
    from rlhf_kit.run.stage import StageRun

    setup_run(training_args)
    run, out = StageRun("sft", training_args.output_dir, script_args.force, training_args), training_args.output_dir
    if run.skipped:
        return
    base = model_args.model_name_or_path
    runs.require_stage_output(base, "base model")
    tokenizer = modeling.load_tokenizer(base)
    rows, label = load_stage_rows(script_args, "sft")
    dataset, assistant_only = build_sft_dataset(rows, tokenizer, training_args.max_length, label, script_args.max_rows)
    training_args.assistant_only_loss = assistant_only
    model = modeling.load_causal_lm(base, model_args, "base model")
    apply_global_batch(script_args.global_batch_size, training_args)
    run.start(script_args, training_args, model_args)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=modeling.build_peft_config(model_args, "CAUSAL_LM"))
    metrics = run.train(trainer)
    report_rank(trainer, "sft")
    # Every rank takes part (sharded models).
    state_dict = gather_full_state_dict(trainer.accelerator, trainer.model, trainer.model_wrapped)
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, base, model_args, state_dict)
    run.finish({"rows": len(dataset), "train_loss": metrics.get("train_loss")})


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit sft`."""
    return stage_parser("sft")


if __name__ == "__main__":
    run_recipe(main, make_parser)
