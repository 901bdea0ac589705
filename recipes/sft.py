"""Stage 1 -- supervised fine-tuning on labelers' demonstrations (InstructGPT Sec. 3.5), LoRA or QLoRA, loss on
assistant tokens only. Wraps TRL's ``SFTTrainer``; saves the merged model and the adapter.

    accelerate launch recipes/sft.py --config recipes/configs/demo/sft.yaml
"""

import time

from rlhf_kit.configs import DataArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error
from rlhf_kit.trl_compat import ModelConfig, SFTConfig


def main(script_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig):
    from accelerate import PartialState

    from rlhf_kit import hub, modeling, runs
    from rlhf_kit.data import build_sft_dataset, load_stage_rows
    from rlhf_kit.training import (
        apply_global_batch,
        gather_full_state_dict,
        report_rank,
        save_log_history,
        setup_run,
        train_with_resume,
    )
    from rlhf_kit.trl_compat import SFTTrainer

    setup_run(training_args)
    started, out, is_main = time.time(), training_args.output_dir, PartialState().is_main_process
    if runs.skip_if_complete(out, "sft", script_args.force):
        return
    hub_id = hub.check_push_request(training_args)
    base = model_args.model_name_or_path
    runs.require_stage_output(base, "base model")
    tokenizer = modeling.load_tokenizer(base)
    rows, label = load_stage_rows(script_args, "sft")
    dataset, assistant_only = build_sft_dataset(rows, tokenizer, training_args.max_length, label, script_args.max_rows)
    training_args.assistant_only_loss = assistant_only
    model = modeling.load_causal_lm(base, model_args, "base model")
    apply_global_batch(script_args.global_batch_size, training_args)
    runs.start_stage(out, "sft", (script_args, training_args, model_args), is_main)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=modeling.build_peft_config(model_args, "CAUSAL_LM"))
    metrics = train_with_resume(trainer, out, script_args.force)
    report_rank(trainer, "sft")
    state_dict = gather_full_state_dict(trainer)  # every rank takes part
    if is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, base, model_args, state_dict)
    runs.finish_stage(out, "sft", started, {"rows": len(dataset), "train_loss": metrics.get("train_loss")}, is_main)
    if hub_id and is_main:
        hub.push_stage(out, hub_id)


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((DataArguments, SFTConfig, ModelConfig))))
