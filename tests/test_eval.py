"""Evaluation: metrics on tiny fixed inputs with known answers, the eval stage end to end, and its bad inputs."""

import json
import shutil

import pytest

from rlhf_kit.core.errors import UserError
from rlhf_kit.eval import evaluation as ev
from rlhf_kit.eval.metrics import load_metric

from conftest import config_args, run_inprocess


def test_win_rate_counts_ties_half_with_normal_ci():
    result = load_metric("win_rate").compute(predictions=[1, 1, 0.5, 0], references=[0, 0.5, 0.5, 1])
    assert result["win_rate"] == pytest.approx(0.625)
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    # outcomes 1, 1, .5, 0: sample sd 0.4787, half-width 1.96 * 0.4787 / 2 = 0.4691
    assert result["ci95_low"] == pytest.approx(0.625 - 0.4691, abs=1e-3)
    assert result["ci95_high"] == pytest.approx(1.0)  # clipped


def test_pairwise_accuracy_known_answer():
    result = load_metric("pairwise_accuracy").compute(predictions=[2.0, 0.0, 1.0, 3.0], references=[1.0, 1.0, 1.0, 0.0])
    assert result == {"accuracy": pytest.approx((1 + 0 + 0.5 + 1) / 4), "n": 4}


def test_per_token_kl_is_mean_logratio_over_tokens():
    assert ev.per_token_kl([[-1.0, -2.0], [-1.0]], [[-2.0, -2.0], [-1.5]]) == pytest.approx((1 + 0 + 0.5) / 3)


def test_heldout_gold_pairs_skip_gold_ties_and_duplicates():
    meta = json.dumps({"task": "open_qa", "text": "what sound does a dog make", "answer": "a dog says woof"})
    ranking = {"prompt": [{"role": "user", "content": "q"}], "meta": meta,
               "responses": ["a dog says woof", "a dog says moo", "a dog says woof", "a dog says baa"]}
    from rlhf_kit.worlds.demo.gold import GoldJudge

    pairs = ev.heldout_judged_pairs([ranking], GoldJudge())
    woof = "a dog says woof"
    assert [(w, lo) for _, w, lo in pairs] == [(woof, "a dog says moo"), (woof, "a dog says baa")]


def test_require_disjoint_refuses_overlap():
    a = [{"prompt": [{"role": "user", "content": "name two animals"}]}]
    b = [{"messages": [{"role": "user", "content": "name two animals"}, {"role": "assistant", "content": "cat"}]}]
    with pytest.raises(UserError, match="1 evaluation prompt.* also appear in the sft data"):
        ev.require_disjoint(a, {"sft": b})
    ev.require_disjoint(a, {"sft": [{"prompt": [{"role": "user", "content": "other"}]}]})


def _eval_args(run_dir, data_dir, eval_path=None):
    return config_args("eval") + ["--run_dir", str(run_dir), "--max_new_tokens", "8",
                                  "--eval_dataset_path", str(eval_path or data_dir / "eval.jsonl")]


def test_eval_stage_summary_matches_its_samples(pipeline, tmp_path):
    """Every summary figure is recomputed here from the samples the stage wrote, with the judge and metric used by
    nobody else: judge scores, win/tie/loss counts, win rate (ties half), RM accuracy pair count."""
    from rlhf_kit.worlds.demo.gold import GoldJudge

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (pipeline / "data" / "eval.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == [r["prompt"][-1]["content"] for r in rows]
    judge = GoldJudge()
    scores = {p: [judge.judge(r, s[p]).score for r, s in zip(rows, samples)] for p in ("base", "sft", "ppo")}
    for p in scores:
        assert summary["judge_score"][p] == pytest.approx(sum(scores[p]) / len(rows), abs=1e-12)
        rules = [judge.judge(r, s[p]).rules for r, s in zip(rows, samples)]
        assert summary["judge_rules"][p] == pytest.approx({k: sum(x[k] for x in rules) / len(rows) for k in rules[0]})
        assert summary["empty_share"][p] == sum(not s[p].strip() for s in samples) / len(rows)
        assert 0 <= summary["cut_off_share"][p] <= 1
    for p in ("base", "ppo"):
        pairs = list(zip(scores[p], scores["sft"]))
        counts = [sum(a > b for a, b in pairs), sum(a == b for a, b in pairs), sum(a < b for a, b in pairs)]
        win = summary["win_rate_vs_baseline"][p]
        assert win["win_tie_loss"] == counts
        assert win["win_rate"] == pytest.approx((counts[0] + counts[1] / 2) / len(rows))
        assert p in summary["kl_to_baseline"]
        d = [a - b for a, b in pairs]  # the paired difference: a plain mean, a normal interval with sd over sqrt(n)
        mean, sd = sum(d) / len(d), (sum((x - sum(d) / len(d)) ** 2 for x in d) / (len(d) - 1)) ** 0.5
        paired = summary["vs_baseline"][p]["judge_score"]
        assert paired["diff"] == pytest.approx(mean, abs=1e-12) == pytest.approx(summary["judge_score"][p]
                                                                                - summary["judge_score"]["sft"])
        assert paired["ci95"] == pytest.approx([mean - 1.96 * sd / len(d) ** 0.5, mean + 1.96 * sd / len(d) ** 0.5])
        assert set(summary["vs_baseline"][p]) == {"judge_score", *judge.rule_names}
    assert "sft" not in summary["win_rate_vs_baseline"]  # the baseline is not compared with itself
    heldout = [json.loads(line) for line in (run_dir / "compare" / "rankings_heldout.jsonl").read_text().splitlines()]
    assert summary["rm_accuracy_pairs"] == len(ev.heldout_judged_pairs(heldout, judge)) > 0
    # every prompt the judge separates is a pair (the tiny PPO samples as SFT does: no "sft vs ppo" pairs)
    separated = {f"{a} vs {b}": n for a, b in (("base", "sft"), ("base", "ppo"), ("sft", "ppo"))
                 if (n := sum(x != y for x, y in zip(scores[a], scores[b]))) > 0}
    between = summary["rm_accuracy_between_policies"]
    assert {k: v["pairs"] for k, v in between.items()} == separated and "base vs sft" in separated
    assert all(0 <= v["accuracy"] <= 1 for v in between.values())
    assert set(summary["wall_seconds"]) == {"base", "sft", "compare", "reward", "ppo", "eval"}
    report = (run_dir / "report.md").read_text()
    assert "PPO beats SFT" in report and "| SFT | PPO |" in report
    for png in ("ppo_training.png", "judge_vs_rm.png"):
        assert (run_dir / "eval" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"eval/{png}" in report



def test_a_killed_eval_resumes_with_the_responses_it_had_drawn(pipeline, tmp_path, monkeypatch):
    """A kill after two policies' sampling: the rerun draws only the third, and its figures equal an unbroken
    run's; a changed sampling setting draws every policy again; --force drops the kept draws."""
    import rlhf_kit.sampling.generation as generation

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    unbroken = json.loads((run_dir / "summary.json").read_text())
    samples = (run_dir / "eval" / "samples.jsonl").read_text()
    assert sorted(p.name for p in (run_dir / "eval" / "parts").iterdir()) == ["base.json", "ppo.json", "sft.json"]

    drawn, sample = [], generation.sample_responses
    monkeypatch.setattr(generation, "sample_responses", lambda *a, **k: drawn.append(k["progress"]) or sample(*a, **k))
    for name in ("stage_complete.json", "samples.jsonl"):  # killed while sampling ppo: no marker, no outputs
        (run_dir / "eval" / name).unlink()
    (run_dir / "eval" / "parts" / "ppo.json").unlink()
    (run_dir / "summary.json").unlink()
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    assert drawn == ["eval ppo"]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "eval" / "samples.jsonl").read_text() == samples
    assert resumed.pop("wall_seconds").keys() == unbroken.pop("wall_seconds").keys()
    assert resumed == unbroken
    parts = [json.loads((run_dir / "eval" / "parts" / f"{p}.json").read_text()) for p in ("base", "sft")]
    kept = sum(part["value"]["wall_seconds"] for part in parts)
    marker = json.loads((run_dir / "eval" / "stage_complete.json").read_text())  # the kept parts' seconds counted
    assert marker["resumed_seconds"] == pytest.approx(kept, abs=0.02) and marker["wall_seconds"] > kept

    (run_dir / "eval" / "stage_complete.json").unlink()
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data") + ["--temperature", "0.5"])
    assert drawn == ["eval ppo", "eval base", "eval sft", "eval ppo"]
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data") + ["--temperature", "0.5", "--force", "true"])
    assert drawn[4:] == ["eval base", "eval sft", "eval ppo"]


def test_eval_takes_any_policies_and_baseline(pipeline, tmp_path):
    """Stage-generic evaluation: round-style folders, another baseline, no reward model."""
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir / "round-1")
    shutil.copytree(pipeline / "runs" / "base", run_dir / "base")
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data") + [
        "--policies", "base", "round-1/ppo", "--baseline", "base", "--reward_model", "", "--comparisons", ""])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["policies"] == ["base", "round-1/ppo"] and summary["baseline"] == "base"
    assert set(summary["win_rate_vs_baseline"]) == {"round-1/ppo"} and "rm_score" not in summary
    assert "ROUND-1/PPO beats BASE" in (run_dir / "report.md").read_text()
    with pytest.raises(UserError, match="baseline 'sft' is not among policies"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data") + ["--policies", "base", "round-1/ppo"])


def test_eval_refuses_missing_or_unfinished_stage(pipeline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir, ignore=shutil.ignore_patterns("ppo"))
    with pytest.raises(UserError, match=r"needs the ppo stage, but .*ppo is missing; run `make ppo` first"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    shutil.copytree(pipeline / "runs" / "ppo", run_dir / "ppo")
    (run_dir / "ppo" / "stage_complete.json").unlink()
    with pytest.raises(UserError, match="is unfinished"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    assert not (run_dir / "summary.json").exists()


def test_eval_refuses_prompts_seen_in_training(pipeline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    # PPO's prompts that no SFT demonstration has (the demo's PPO prompts include the SFT prompts too)
    sft = {json.loads(line)["messages"][0]["content"] for line in (pipeline / "data" / "sft.jsonl").open()}
    ppo_only = [line for line in (pipeline / "data" / "prompts.jsonl").open()
                if json.loads(line)["prompt"][0]["content"] not in sft]
    (tmp_path / "ppo_prompts.jsonl").write_text("".join(ppo_only))
    with pytest.raises(UserError, match="also appear in the ppo data"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data", tmp_path / "ppo_prompts.jsonl"))
    sft_prompts = [{"prompt": r["messages"][:1], "meta": r["meta"]}
                   for r in map(json.loads, (pipeline / "data" / "sft.jsonl").open())]
    (tmp_path / "sft_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_prompts))
    with pytest.raises(UserError, match="also appear in the sft data"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data", tmp_path / "sft_prompts.jsonl"))


def test_rm_accuracy_scores_each_distinct_response_once_and_pairs_the_scores(monkeypatch):
    scored = []

    def fake_scores(model, tokenizer, prompts, responses, batch_size=128):
        scored.extend(zip([p[0]["content"] for p in prompts], responses))
        return [float(len(r)) for r in responses]  # the longer response scores higher

    monkeypatch.setattr(ev, "score_with_reward_model", fake_scores)
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    # Ranking a: "xxx" > "xx" > "x"; the RM (length) agrees on all three pairs. Ranking b: the judge prefers the
    # shorter response, the RM does not. The same text under another prompt is another response.
    pairs = [(a, "xxx", "xx"), (a, "xxx", "x"), (a, "xx", "x"), (b, "x", "xx")]
    accuracy, n = ev.rm_accuracy(None, None, pairs)
    assert (accuracy, n) == (0.75, 4)
    assert sorted(scored) == [("a", "x"), ("a", "xx"), ("a", "xxx"), ("b", "x"), ("b", "xx")]


def test_rm_accuracy_between_policies_pairs_two_policies_responses_to_one_prompt():
    judge = {"a": [1.0, 0.0, 0.5, 1.0], "b": [0.0, 1.0, 0.5, 0.0], "c": [1.0, 0.0, 0.5, 1.0]}
    rm = {"a": [2.0, 3.0, 0.0, 1.0], "b": [1.0, 1.0, 5.0, 1.0], "c": [0.0, 0.0, 0.0, 0.0]}
    # a vs b: prompt 0 right, prompt 1 wrong, prompt 2 a judge tie (no pair), prompt 3 an RM tie (half).
    # b vs c: the judge prefers c on prompts 0 and 3, where the RM prefers b; b on prompt 1, where the RM agrees.
    # a vs c: the judge never separates them, so no entry.
    assert ev.rm_accuracy_between_policies(judge, rm) == {
        "a vs b": {"accuracy": 0.5, "pairs": 3}, "b vs c": {"accuracy": pytest.approx(1 / 3), "pairs": 3}}
