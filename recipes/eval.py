"""Evaluation stage: a run's policies (by default base, SFT and PPO) on held-out prompts, scored by a judge that
the reward model and PPO never saw (InstructGPT judged its policies by held-out labelers' preferences). Writes
``runs/<name>/summary.json`` and ``runs/<name>/report.md`` with plots under ``runs/<name>/eval/`` (with
``output_dir``: next to that folder, as each round of ``rlhf-kit rounds`` does).

    python recipes/eval.py --config recipes/configs/demo/eval.yaml

(Named after the stage, not `evaluate.py`: a script of that name would shadow the `evaluate` library.)
"""

from rlhf_kit.run.configs import EvalArguments, run_recipe, stage_parser


def main(args: EvalArguments):
    from pathlib import Path

    from rlhf_kit.algorithms.best_of_n import CHUNK, best_of_n
    from rlhf_kit.core import runs, work
    from rlhf_kit.core.stages import TRAINS_ON
    from rlhf_kit.data.datasets import load_rows
    from rlhf_kit.data.rows import write_jsonl
    from rlhf_kit.eval import evaluation as ev
    from rlhf_kit.eval import report
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.run.stage import StageRun
    from rlhf_kit.worlds import load_judge

    setup_run(seed=args.seed)
    run_dir = Path(args.run_dir)
    out = Path(args.output_dir) if args.output_dir else run_dir / "eval"
    run = StageRun("eval", out, args.force)
    if run.skipped:
        return
    policies, baseline = list(args.policies), args.baseline
    stages = {p: str(run_dir / p) for p in policies}
    stages |= {"reward": str(run_dir / args.reward_model)} if args.reward_model else {}
    stages |= {"compare": str(run_dir / args.comparisons)} if args.comparisons else {}
    if args.previous_reward_model:
        stages["previous reward"] = str(run_dir / args.previous_reward_model)
    if args.reference_comparisons:
        stages["reference compare"] = str(run_dir / args.reference_comparisons)
    for name, path in stages.items():
        runs.require_complete_stage(path, f"the summary needs the {name} stage, but")
    rows = load_rows(args.eval_dataset_path).to_list()
    judge = load_judge(args.judge)
    judge.check_rows(rows, args.eval_dataset_path)
    trained_on = {name: ev.stage_rows(path, TRAINS_ON[stage]) for name, path in stages.items()
                  if (stage := runs.read_config(path).get("stage")) in TRAINS_ON}
    ev.require_disjoint(rows, trained_on)
    run.start(args)

    prompts = [r["prompt"] for r in rows]
    tokenizer = modeling.load_tokenizer(stages[baseline])
    reward_model = (modeling.load_reward_model(stages["reward"], dtype=args.dtype, require_head=bool(args.best_of_n))
                    if "reward" in stages else None)  # best-of-n picks by it: a random head would pick noise
    draws = ev.KeptDraws(out / "parts", stages, prompts, args, fresh=args.force)
    models, responses, finished, sampled = {}, {}, {}, {}
    for p in policies:
        models[p] = modeling.load_causal_lm(stages[p], what=f"{p} policy", dtype=args.dtype)
        got = draws.get(p, p, models[p], lambda p=p: draws.sample(models[p], tokenizer, p))
        responses[p], finished[p] = got["responses"], got["finished"]
        if "logprobs" in got:  # parts kept by an older version have none: the KL scores them again
            sampled[p] = {"ids": got["ids"], "logprobs": got["logprobs"]}
    kl_bounds = {}
    if args.best_of_n:
        name, source = f"best-of-{args.best_of_n}", args.best_of_n_policy
        key = {"n": args.best_of_n, "reward": runs.read_marker(stages["reward"]), "chunk": CHUNK}
        # its chunks are kept (a rerun reassembles them at no cost), not the assembled result
        bon = best_of_n(models[source], reward_model, tokenizer, prompts, args.best_of_n, args.temperature,
                        args.max_new_tokens, args.batch_size, args.seed,
                        keep=lambda i, make: draws.get(f"{name}/{i:03d}", source, models[source], make, key))
        responses[name], finished[name] = bon["responses"], [[f] for f in bon["finished"]]
        kl_bounds[name] = bon["kl_bound"]
        best = {"policy": name, "n": args.best_of_n, "from": args.best_of_n_policy} | {
            k: bon[k] for k in ("samples", "tokens_sampled", "rm_passes", "wall_seconds")}
    heldout = load_rows(f"{stages['compare']}/rankings_heldout.jsonl").to_list() if "compare" in stages else None
    summary, scores, rm_scores = ev.compare_policies(rows, responses, models, tokenizer, judge, baseline, reward_model,
                                                     heldout, args.batch_size, kl_bounds, sampled)
    if args.best_of_n:
        summary["best_of_n"] = best
    summary["judge"] = args.judge
    # A policy can "win" by stopping early or saying nothing (e.g. no commas): show both shares.
    summary["cut_off_share"] = {p: 1 - sum(f[0] for f in finished[p]) / len(rows) for p in responses}
    summary["empty_share"] = {p: sum(not r.strip() for r in responses[p]) / len(rows) for p in responses}
    if hasattr(judge, "report"):  # a benchmark's own metrics (e.g. IFEval's prompt/instruction-level accuracies)
        summary["judge_report"] = {p: judge.report(rows, responses[p]) for p in responses}
    last = [p for p in policies if p != baseline][-1]  # the policy the headline and samples compare
    if args.versus:
        summary["head_to_head"] = ev.head_to_head(scores, last, args.versus)
    if args.previous_reward_model and heldout is not None:  # the same held-out pairs, before retraining
        pairs = ev.heldout_judged_pairs(heldout, judge)
        previous = modeling.load_reward_model(stages["previous reward"])
        accuracy, n = ev.rm_accuracy(previous, tokenizer, pairs)
        summary["rm_accuracy_previous"] = {"reward_model": args.previous_reward_model, "accuracy": accuracy,
                                           "pairs": n}
    if args.reference_comparisons and reward_model is not None:
        reference = load_rows(f"{stages['reference compare']}/rankings_heldout.jsonl").to_list()
        accuracy, n = ev.rm_accuracy(reward_model, tokenizer, ev.heldout_judged_pairs(reference, judge))
        summary["rm_accuracy_reference"] = {"comparisons": args.reference_comparisons, "accuracy": accuracy,
                                            "pairs": n}
    summary["wall_seconds"] = {s: runs.read_marker(p)["wall_seconds"] for s, p in stages.items()}
    summary["wall_seconds"]["eval"] = round(work.elapsed(), 2)  # kept parts' seconds included

    samples = [{"prompt": ev.prompt_text(rows[i]), "baseline": responses[baseline][i], "policy": responses[last][i],
                "score_baseline": scores[baseline][i], "score_policy": scores[last][i]}
               for i in range(min(args.num_report_samples, len(rows)))]
    report.plot_training(stages[last], out / "ppo_training.png")
    if "judge_report" in summary:
        report.plot_per_type(summary["judge_report"], out / "per_type.png")
    if rm_scores:
        per_policy = {p: {"judge": scores[p], "rm": rm_scores[p]} for p in rm_scores}
        report.plot_judge_vs_rm(per_policy, out / "judge_vs_rm.png")
    report.write_summary(out.parent, summary)  # next to the eval folder: <run_dir>/summary.json by default
    report.write_report(out.parent, summary, samples, out.name)
    write_jsonl(out / "samples.jsonl", [{"prompt": ev.prompt_text(row), **{p: responses[p][i] for p in responses}}
                                             for i, row in enumerate(rows)])
    final = summary["win_rate_vs_baseline"][last]
    run.finish({"win_rate": final["win_rate"], "rm_accuracy": summary.get("rm_accuracy", float("nan"))})
    print(report.headline(summary))


def make_parser():
    """The stage's config parser (TRL's TrlParser over the dataclasses of its entry in rlhf_kit.core.stages); the
    same as `rlhf-kit eval`."""
    return stage_parser("eval")


if __name__ == "__main__":
    run_recipe(main, make_parser)
