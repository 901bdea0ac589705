"""Comparison collection (InstructGPT Sec. 3.5): sample K responses per prompt from the SFT policy and rank them
with the simulated labeler (gold score + noise). Writes full rankings and the pairs derived from them. With
``labeler: human`` the samples go to the labeling queue instead (``rlhf-kit label``; README "Human labels").

    python recipes/compare.py --config recipes/configs/demo/compare.yaml
    python recipes/compare.py --config recipes/configs/demo/compare.yaml --labeler human \\
        --label_db runs/labels/labels.db
"""

import time

from rlhf_kit.configs import CompareArguments, parse_stage_args
from rlhf_kit.errors import UserError, exit_on_user_error


def main(args: CompareArguments):
    from rlhf_kit import compare, modeling, runs
    from rlhf_kit.data import build_prompt_dataset, load_rows
    from rlhf_kit.generation import sample_responses
    from rlhf_kit.training import setup_run

    setup_run(seed=args.seed)
    started, out = time.time(), args.output_dir
    if runs.skip_if_complete(out, "compare", args.force):
        return
    runs.require_stage_output(args.model_name_or_path, "SFT policy")
    tokenizer = modeling.load_tokenizer(args.model_name_or_path)
    rows = build_prompt_dataset(load_rows(args.dataset_path, args.dataset_split), tokenizer, args.max_prompt_length,
                                args.dataset_path, "compare", keep_columns=("prompt", "meta")).to_list()
    if args.labeler == "simulated" and "meta" not in rows[0]:
        raise UserError(f"prompts {args.dataset_path} lack the `meta` column the simulated labeler reads; "
                        "use the demo world's prompts.jsonl")
    model = modeling.load_causal_lm(args.model_name_or_path, what="SFT policy")
    runs.start_stage(out, "compare", (args,))
    responses = sample_responses(model, tokenizer, [r["prompt"] for r in rows], args.num_responses,
                                 args.temperature, args.max_new_tokens, args.batch_size, args.seed)
    if args.labeler == "human":
        from rlhf_kit.label.tasks import queue_samples

        runs.finish_stage(out, "compare", started, queue_samples(args.label_db, rows, responses, args.dataset_path))
        return
    rankings = compare.rank_rows(rows, responses, args.labeler_noise, args.seed)
    counts = compare.write_comparisons(out, rankings, args.heldout_fraction, args.seed)
    counts["labeler_gold_agreement"] = compare.gold_agreement(rankings)
    runs.finish_stage(out, "compare", started, counts)


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((CompareArguments,))))
