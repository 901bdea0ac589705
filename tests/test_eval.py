"""Evaluation: metrics on tiny fixed inputs with known answers, the eval stage end to end, and its bad inputs."""

import json
import shutil

import pytest

from rlhf_kit import evaluation as ev
from rlhf_kit.errors import UserError
from rlhf_kit.metrics import load_metric

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
    from rlhf_kit.demo.gold import GoldJudge

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


def test_eval_stage_writes_summary_report_and_plots(pipeline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    run_inprocess("eval", _eval_args(run_dir, pipeline / "data"))
    summary = json.loads((run_dir / "summary.json").read_text())
    for p in ("base", "sft", "ppo"):
        assert 0.0 <= summary["gold_score"][p] <= 1.0
        assert set(summary["gold_rules"][p]) == {"correct", "constraint", "no_repetition", "not_rude", "on_topic",
                                                 "refusal"}
    lo, hi = summary["win_rate_ci95"]
    assert lo <= summary["win_rate_ppo_vs_sft"] <= hi
    assert sum(summary["win_tie_loss"]) == summary["eval_prompts"] >= 256
    assert 0.0 <= summary["rm_accuracy"] <= 1.0 and summary["rm_accuracy_pairs"] > 0
    assert set(summary["rm_score"]) >= {"sft", "ppo"} and set(summary["response_length"]) >= {"sft", "ppo"}
    assert set(summary["wall_seconds"]) == {"base", "sft", "compare", "reward", "ppo", "eval"}
    report = (run_dir / "report.md").read_text()
    assert "PPO beats SFT" in report and "| SFT | PPO |" in report
    for png in ("ppo_training.png", "gold_vs_rm.png"):
        assert (run_dir / "eval" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"eval/{png}" in report


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
    with pytest.raises(UserError, match="also appear in the ppo data"):
        run_inprocess("eval", _eval_args(run_dir, pipeline / "data", pipeline / "data" / "prompts.jsonl"))
