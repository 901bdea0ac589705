"""Stage 0 -- the embedded default checkpoint: a tiny Llama and word-level chat tokenizer built locally, briefly
pretrained on the demo world's corpus (which this stage also writes), saved with ``save_pretrained``.

    accelerate launch recipes/base.py --config recipes/configs/demo/base.yaml
"""

import time

from rlhf_kit.configs import BaseArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error
from rlhf_kit.trl_compat import SFTConfig


def main(script_args: BaseArguments, training_args: SFTConfig):
    from accelerate import PartialState

    from rlhf_kit import modeling, runs, world
    from rlhf_kit.data import load_rows
    from rlhf_kit.training import apply_global_batch, report_rank, save_log_history, setup_run, train_with_resume
    from rlhf_kit.trl_compat import SFTTrainer

    setup_run(training_args)
    started, out, is_main = time.time(), training_args.output_dir, PartialState().is_main_process
    with PartialState().main_process_first():  # every rank reads the files the main process writes
        if is_main:
            world.write_demo_data(script_args.data_dir, script_args.world_seed, script_args.flaw_rate)
    if runs.skip_if_complete(out, "base", script_args.force):
        return
    corpus = load_rows(f"{script_args.data_dir}/pretrain.jsonl")
    tokenizer = modeling.build_tiny_tokenizer(world.vocabulary())
    model = modeling.build_tiny_model(
        tokenizer, script_args.hidden_size, script_args.intermediate_size, script_args.num_hidden_layers,
        script_args.num_attention_heads, script_args.max_position_embeddings, seed=training_args.seed,
    )
    apply_global_batch(script_args.global_batch_size, training_args)
    runs.start_stage(out, "base", (script_args, training_args), is_main)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=corpus, processing_class=tokenizer)
    metrics = train_with_resume(trainer, out, script_args.force)
    report_rank(trainer, "base")
    if is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, base_path=out)
    n_params = sum(p.numel() for p in model.parameters())
    runs.finish_stage(out, "base", started, {"params": n_params, "train_loss": metrics.get("train_loss")}, is_main)


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((BaseArguments, SFTConfig))))
