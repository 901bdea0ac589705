"""Evaluation stage: base, SFT and PPO policies on held-out prompts, judged by the gold labeler that the reward
model and PPO never saw (InstructGPT judged its policies by held-out human preference). Writes
``runs/<name>/summary.json`` and ``runs/<name>/report.md`` with plots under ``runs/<name>/eval/``.

    python recipes/eval.py --config recipes/configs/demo/eval.yaml

(Named after the stage, not `evaluate.py`: a script of that name would shadow the `evaluate` library.)
"""

import time

from rlhf_kit.configs import EvalArguments, parse_stage_args
from rlhf_kit.errors import exit_on_user_error


def main(args: EvalArguments):
    import json
    from pathlib import Path

    from rlhf_kit import evaluation as ev
    from rlhf_kit import gold, modeling, report, runs
    from rlhf_kit.data import load_rows
    from rlhf_kit.errors import UserError
    from rlhf_kit.generation import sample_responses
    from rlhf_kit.metrics import load_metric
    from rlhf_kit.training import setup_run

    setup_run(seed=args.seed)
    started, run_dir = time.time(), Path(args.run_dir)
    out = run_dir / "eval"
    if runs.skip_if_complete(str(out), "eval", args.force):
        return
    stages = {s: str(run_dir / s) for s in ("base", "sft", "compare", "reward", "ppo")}
    for stage, path in stages.items():
        if not runs.is_complete(path):
            state = "unfinished" if Path(path).exists() else "missing"
            raise UserError(f"the summary needs the {stage} stage, but {path} is {state}; run `make {stage}` first")
    rows = load_rows(args.eval_dataset_path).to_list()
    if "meta" not in rows[0]:
        raise UserError(f"{args.eval_dataset_path} lacks the `meta` column the gold labeler reads; "
                        "use the demo world's eval.jsonl")
    trained_on = {"sft": ev.stage_rows(stages["sft"], "sft"), "ppo": ev.stage_rows(stages["ppo"], "prompts")}
    ev.require_disjoint(rows, trained_on)
    runs.start_stage(str(out), "eval", (args,))

    prompts, metas = [r["prompt"] for r in rows], [json.loads(r["meta"]) for r in rows]
    tokenizer = modeling.load_tokenizer(stages["sft"])
    reward_model = modeling.load_reward_model(stages["reward"])
    responses, policies = {}, {}
    for name in ev.POLICIES:
        policies[name] = modeling.load_causal_lm(stages[name], what=f"{name} policy")
        responses[name] = [r[0] for r in sample_responses(policies[name], tokenizer, prompts, 1, args.temperature,
                                                          args.max_new_tokens, args.batch_size, args.seed)]
    rule_scores = {p: [gold.score_rules(m, r) for m, r in zip(metas, responses[p])] for p in ev.POLICIES}
    gold_scores = {p: [gold.combine_rules(s) for s in rule_scores[p]] for p in ev.POLICIES}
    rm_scores = {p: ev.score_with_reward_model(reward_model, tokenizer, prompts, responses[p], args.batch_size)
                 for p in ev.POLICIES}
    rules = {p: {k: sum(s[k] for s in rule_scores[p]) / len(rows) for k in gold.RULES} for p in ev.POLICIES}
    win = load_metric("win_rate").compute(predictions=gold_scores["ppo"], references=gold_scores["sft"])
    pairs = ev.heldout_gold_pairs(load_rows(f"{stages['compare']}/rankings_heldout.jsonl").to_list())
    rm_w = ev.score_with_reward_model(reward_model, tokenizer, [p for p, _, _ in pairs], [w for _, w, _ in pairs])
    rm_l = ev.score_with_reward_model(reward_model, tokenizer, [p for p, _, _ in pairs], [lo for _, _, lo in pairs])
    accuracy = load_metric("pairwise_accuracy").compute(predictions=rm_w, references=rm_l)
    kl = ev.per_token_kl(ev.response_logprobs(policies["ppo"], tokenizer, prompts, responses["ppo"]),
                         ev.response_logprobs(policies["sft"], tokenizer, prompts, responses["ppo"]))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    length = {p: mean([len(tokenizer(r)["input_ids"]) for r in responses[p]]) for p in ev.POLICIES}
    summary = {
        "gold_score": {p: mean(gold_scores[p]) for p in ev.POLICIES},
        "gold_rules": rules,
        "rm_score": {p: mean(rm_scores[p]) for p in ev.POLICIES},
        "win_rate_ppo_vs_sft": win["win_rate"],
        "win_rate_ci95": [win["ci95_low"], win["ci95_high"]],
        "win_tie_loss": [win["wins"], win["ties"], win["losses"]],
        "rm_accuracy": accuracy["accuracy"],
        "rm_accuracy_pairs": accuracy["n"],
        "kl_ppo_sft": kl,
        "response_length": length,
        "eval_prompts": len(rows),
        "wall_seconds": {s: runs.read_marker(p)["wall_seconds"] for s, p in stages.items()},
    }
    summary["wall_seconds"]["eval"] = round(time.time() - started, 2)
    samples = [{"prompt": prompts[i][-1]["content"], "sft": responses["sft"][i], "ppo": responses["ppo"][i],
                "gold_sft": gold_scores["sft"][i], "gold_ppo": gold_scores["ppo"][i]}
               for i in range(min(args.num_report_samples, len(rows)))]
    log_history = json.loads(Path(stages["ppo"], "log_history.json").read_text())
    report.plot_ppo_training(log_history, out / "ppo_training.png")
    report.plot_gold_vs_rm({p: {"gold": gold_scores[p], "rm": rm_scores[p]} for p in ev.POLICIES},
                           out / "gold_vs_rm.png")
    report.write_summary(run_dir, summary)
    report.write_report(run_dir, summary, rules, samples)
    runs.write_jsonl(out / "samples.jsonl", [{"prompt": m["text"], **{p: responses[p][i] for p in ev.POLICIES}}
                                             for i, m in enumerate(metas)])
    runs.finish_stage(str(out), "eval", started, {"win_rate": win["win_rate"], "rm_accuracy": accuracy["accuracy"]})
    print(report.headline(summary))


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((EvalArguments,))))
