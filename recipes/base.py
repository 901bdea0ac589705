"""Stage 0 -- the embedded default checkpoint: a tiny Llama and word-level chat tokenizer built locally, briefly
pretrained on the demo world's corpus (which this stage also writes), saved with ``save_pretrained``.

    accelerate launch recipes/base.py --config recipes/configs/demo/base.yaml
"""

from rlhf_kit.integrations.trl import SFTConfig
from rlhf_kit.run.configs import BaseArguments, run_recipe, stage_parser


def main(script_args: BaseArguments, training_args: SFTConfig):
    from accelerate import PartialState

    from rlhf_kit.data.datasets import load_rows
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import apply_global_batch, report_rank, save_log_history, setup_run
    from rlhf_kit.integrations.trl import SFTTrainer
    from rlhf_kit.run.stage import StageRun
    from rlhf_kit.worlds.demo import tiny, world

    setup_run(training_args)
    run, out = StageRun("base", training_args.output_dir, script_args.force, training_args), training_args.output_dir
    if run.skipped:  # before writing the data: a finished run's data stays as its later stages read it
        return
    with PartialState().main_process_first():  # every rank reads the files the main process writes
        if run.is_main:
            world.write_demo_data(script_args.data_dir, script_args.world_seed, script_args.flaw_rate)
    corpus = load_rows(f"{script_args.data_dir}/pretrain.jsonl")
    tokenizer = tiny.build_tiny_tokenizer(world.vocabulary())
    model = tiny.build_tiny_model(
        tokenizer, script_args.hidden_size, script_args.intermediate_size, script_args.num_hidden_layers,
        script_args.num_attention_heads, script_args.max_position_embeddings, seed=training_args.seed,
    )
    apply_global_batch(script_args.global_batch_size, training_args)
    run.start(script_args, training_args)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=corpus, processing_class=tokenizer)
    metrics = run.train(trainer)
    report_rank(trainer, "base")
    if run.is_main:
        save_log_history(trainer, out)
        modeling.save_stage_model(trainer.model, tokenizer, out, base_path=out)
    n_params = sum(p.numel() for p in model.parameters())
    run.finish({"params": n_params, "train_loss": metrics.get("train_loss")})


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit base`."""
    return stage_parser("base")


if __name__ == "__main__":
    run_recipe(main, make_parser)
