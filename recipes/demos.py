"""Stage "demos" -- SFT demonstrations by rejection sampling (Llama 2, Sec. 3.2.3): K samples per prompt from the
base model, a sample kept when the judge scores it 1 (the IFEval world's: it does the task and follows every
instruction) and it ended on its own (rlhf_kit/sampling/demonstrations.py). Writes ``sft.jsonl`` (canonical ``messages``
rows) for the sft stage, and every sample, unranked, to ``samples.jsonl`` (the compare stage can rank them too: its
``other_samples``).

    python recipes/demos.py --config recipes/configs/smollm2-135m-ifeval/demos.yaml
"""

from rlhf_kit.run.configs import DemosArguments, run_recipe, stage_parser


def main(args: DemosArguments):
    from pathlib import Path

    from rlhf_kit.core import runs
    from rlhf_kit.data.datasets import build_prompt_dataset, load_rows
    from rlhf_kit.data.rows import write_jsonl
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun
    from rlhf_kit.sampling import compare
    from rlhf_kit.sampling.demonstrations import select_demonstrations
    from rlhf_kit.sampling.generation import sample_responses
    from rlhf_kit.worlds import load_judge

    setup_run(seed=args.seed)
    run = StageRun("demos", args.output_dir, args.force)
    if run.skipped:
        return
    runs.require_stage_output(args.model_name_or_path, "base model")
    tokenizer = modeling.load_tokenizer(args.model_name_or_path)
    rows = build_prompt_dataset(load_rows(args.dataset_path), tokenizer, args.max_prompt_length, args.dataset_path,
                                "demos", keep_columns=("prompt", "meta"), max_rows=args.max_rows).to_list()
    judge = load_judge(args.judge)
    judge.check_rows(rows, args.dataset_path)  # before any sampling
    model = modeling.load_causal_lm(args.model_name_or_path, what="base model", dtype=args.dtype)
    run.start(args)
    finished: list[list[bool]] = []
    responses = sample_responses(model, tokenizer, [r["prompt"] for r in rows], args.num_samples, args.temperature,
                                 args.max_new_tokens, args.batch_size, args.seed, finished=finished, progress="demos")
    demos, counts = select_demonstrations(rows, responses, finished, judge)
    write_jsonl(Path(args.output_dir) / "samples.jsonl", compare.sample_rows(rows, responses))
    write_jsonl(Path(args.output_dir) / "sft.jsonl", demos)
    run.finish(counts)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit demos`."""
    return stage_parser("demos")


if __name__ == "__main__":
    run_recipe(main, make_parser)
