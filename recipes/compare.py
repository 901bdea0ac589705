"""Comparison collection (InstructGPT Sec. 3.5): sample K responses per prompt from the SFT policy and rank them
with the configured labeler (the demo: its simulated labeler, gold score + noise). Writes full rankings and the
pairs derived from them. ``other_samples`` adds other policies' samples (the demos stage's ``samples.jsonl``),
ranked by the same labeler, to the training rankings only. With ``labeler: human`` the samples go to the labeling
queue instead (``rlhf-kit label``; README "Human labels").

    python recipes/compare.py --config recipes/configs/demo/compare.yaml
    python recipes/compare.py --config recipes/configs/demo/compare.yaml --labeler human \\
        --label_db runs/labels/labels.db
"""

from rlhf_kit.run.configs import CompareArguments, run_recipe, stage_parser


def main(args: CompareArguments):
    from rlhf_kit.core import runs
    from rlhf_kit.data.datasets import build_prompt_dataset, load_rows
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun
    from rlhf_kit.sampling import compare
    from rlhf_kit.sampling.generation import sample_responses
    from rlhf_kit.worlds import judge_agreement, load_judge, load_labeler

    setup_run(seed=args.seed)
    run, out = StageRun("compare", args.output_dir, args.force), args.output_dir
    if run.skipped:
        return
    runs.require_stage_output(args.model_name_or_path, "SFT policy")
    tokenizer = modeling.load_tokenizer(args.model_name_or_path)
    rows = build_prompt_dataset(load_rows(args.dataset_path, args.dataset_split), tokenizer, args.max_prompt_length,
                                args.dataset_path, "compare", keep_columns=("prompt",) + compare.CARRIED).to_list()
    rows = rows[args.prompt_chunk :: args.num_prompt_chunks]  # this round's share of the prompts (fresh prompts)
    labeler = None if args.labeler == "human" else load_labeler(args.labeler, noise=args.labeler_noise, seed=args.seed)
    judge = load_judge(args.judge) if args.judge else None
    others = compare.read_samples(args.other_samples)
    for checker in (labeler, judge):
        if checker is not None:
            checker.check_rows(rows, args.dataset_path)  # before any sampling: refuse prompts it cannot read
    if labeler is not None and others:
        labeler.check_rows(others, ", ".join(args.other_samples))
    model = modeling.load_causal_lm(args.model_name_or_path, what="SFT policy", dtype=args.dtype)
    run.start(args)
    responses = sample_responses(model, tokenizer, [r["prompt"] for r in rows], args.num_responses,
                                 args.temperature, args.max_new_tokens, args.batch_size, args.seed, progress="compare")
    if labeler is None:  # people rank later, in the labeling app; its export is the reward stage's data
        from rlhf_kit.label.tasks import queue_samples

        run.finish(queue_samples(args.label_db, rows, responses, args.dataset_path))
        return
    rankings = compare.rank_rows(rows, responses, labeler)
    compare.require_preferences(rankings, args.labeler)  # before anything is written
    counts = compare.write_comparisons(out, rankings, args.heldout_fraction, args.seed,
                                       compare.rank_samples(others, labeler))  # ranked after the policy's own
    if judge is not None:
        counts[f"labeler_{args.judge}_agreement"] = judge_agreement(rankings, judge)
    run.finish(counts)


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit compare`."""
    return stage_parser("compare")


if __name__ == "__main__":
    run_recipe(main, make_parser)
