"""The methods next to PPO (rlhf_kit/algorithms/): DPO on the compare stage's rankings."""

from __future__ import annotations

import json

import pytest

from rlhf_kit.core.errors import UserError

from conftest import TINY, config_args, run_cli, run_inprocess, stage_paths


@pytest.fixture(scope="module")
def tokenizer():
    from rlhf_kit.worlds.demo import tiny, world

    return tiny.build_tiny_tokenizer(world.vocabulary())


def _ranking(responses, ranks):
    return {"prompt": [{"role": "user", "content": "name a fruit"}], "responses": responses, "ranks": ranks}


def test_dpo_pairs_of_a_ranking_with_ties_are_every_untied_pair(tokenizer):
    """By hand: a > b = c > d gives a>b, a>c, a>d, b>d, c>d; the tie b = c gives none."""
    from datasets import Dataset

    from rlhf_kit.algorithms.dpo import preference_pairs

    rows = Dataset.from_list([_ranking(["apple", "pear", "plum", "dog"], [0, 1, 1, 2])])
    pairs = preference_pairs(rows, "rankings", tokenizer, None, k_max=9)
    got = sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs)
    assert got == sorted([("apple", "pear"), ("apple", "plum"), ("apple", "dog"), ("pear", "dog"), ("plum", "dog")])


def test_dpo_on_rankings_without_an_untied_pair_is_refused(tokenizer):
    from datasets import Dataset

    from rlhf_kit.algorithms.dpo import preference_pairs

    rows = Dataset.from_list([_ranking(["apple", "pear"], [0, 0]), _ranking(["dog", "dog"], [0, 1])])
    with pytest.raises(UserError, match="ties all its responses: DPO needs at least one untied pair"):
        preference_pairs(rows, "rankings.jsonl", tokenizer, None, k_max=9)


def test_dpo_tokenizes_a_reply_as_every_stage_does(tokenizer):
    """The pairs reach TRL as prompt / reply ids that end at the end token (rlhf_kit.data.datasets.reply_ids)."""
    from datasets import Dataset

    from rlhf_kit.algorithms.dpo import RankedDPOTrainer
    from rlhf_kit.data.datasets import chat_ids, reply_ids

    prompt = _ranking([], [])["prompt"]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "apple"}],
           "rejected": [{"role": "assistant", "content": "dog"}]}
    out = RankedDPOTrainer._prepare_dataset(None, Dataset.from_list([row]), tokenizer, None, "train")[0]
    start = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    assert out["prompt_ids"] == start
    assert start + out["chosen_ids"] == reply_ids(tokenizer, prompt, "apple")
    assert out["chosen_ids"][-1] == out["rejected_ids"][-1] == tokenizer.eos_token_id


def test_dpo_two_steps_from_sft_change_the_adapter(pipeline, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "dpo"
    proc = run_cli("dpo", config_args("dpo") + stage_paths(pipeline, "dpo") + TINY["dpo"] + ["--output_dir", str(out)],
                   launcher="accelerate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    marker = json.loads((out / "stage_complete.json").read_text())
    assert marker["pairs"] > 0 and 0.0 <= marker["heldout_accuracy"] <= 1.0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # peft starts B at zero: two steps moved it
    assert (out / "model.safetensors").is_file()  # the merged policy eval loads


def test_dpo_refuses_rankings_without_a_preference_and_writes_nothing(pipeline, tmp_path):
    tied = tmp_path / "tied.jsonl"
    tied.write_text(json.dumps(_ranking(["apple", "pear"], [0, 0])) + "\n")
    out = tmp_path / "dpo"
    with pytest.raises(UserError, match="DPO needs at least one untied pair"):
        run_inprocess("dpo", config_args("dpo") + stage_paths(pipeline, "dpo") + TINY["dpo"] + [
            "--dataset_path", str(tied), "--eval_dataset_path", "", "--output_dir", str(out)])
    assert not out.exists()


def test_best_of_n_keeps_the_reward_models_argmax(tokenizer):
    """With a stub reward model whose scores are known (a response's length), best-of-n keeps each prompt's longest
    sample, the first of equals; the cost counts every sample."""
    from rlhf_kit.algorithms.best_of_n import best_of_n, kl_bound, pick_best
    from rlhf_kit.sampling.generation import sample_responses
    from rlhf_kit.worlds.demo import tiny

    assert pick_best([[0.1, 0.7, 0.7], [2.0, -1.0]]) == [1, 0]
    assert kl_bound(2) == pytest.approx(0.6931 - 0.5, abs=1e-4) and kl_bound(16) == pytest.approx(1.8351, abs=1e-4)
    policy = tiny.build_tiny_model(tokenizer, 16, 32, 1, 2, 64)
    prompts = [[{"role": "user", "content": "name a fruit"}], [{"role": "user", "content": "say hello"}]]
    out = best_of_n(policy, None, tokenizer, prompts, 4, 1.0, 6, 8, seed=3,
                    score=lambda ps, rs: [float(len(r)) for r in rs])
    # the same draws: each prompt's generator seeded by seed and its index, whatever the batching
    samples = sample_responses(policy, tokenizer, prompts, 4, 1.0, 6, 1, seeds=[3 * 1_000_003, 3 * 1_000_003 + 1])
    assert out["responses"] == [max(s, key=len) for s in samples]
    assert out["samples"] == out["rm_passes"] == 8 and out["kl_bound"] == kl_bound(4)
    with pytest.raises(UserError, match="needs n >= 2"):
        best_of_n(policy, None, tokenizer, prompts, 1, 1.0, 6, 8, seed=3, score=lambda ps, rs: [0.0] * len(rs))


def test_a_killed_best_of_n_resumes_at_its_chunk(tokenizer, monkeypatch, capsys):
    """Best-of-n keeps its work chunk by chunk: after a kill that lost the last chunk, the rerun makes only that one,
    and the result equals an unbroken run's and one drawn in a single chunk (each prompt's draws are its own). The
    time left comes from the chunks made, not from those read back in no time."""
    from rlhf_kit.algorithms import best_of_n as bon
    from rlhf_kit.worlds.demo import tiny

    policy = tiny.build_tiny_model(tokenizer, 16, 32, 1, 2, 64)
    prompts = [[{"role": "user", "content": f"say {w}"}] for w in ("hello", "a fruit", "a colour", "a number", "hi")]
    score = lambda ps, rs: [float(len(r) % 5) for r in rs]  # noqa: E731
    whole = bon.best_of_n(policy, None, tokenizer, prompts, 3, 1.0, 8, 6, seed=1, score=score)
    monkeypatch.setattr(bon, "CHUNK", 2)
    kept, made = {}, []

    def keep(index, make):
        if index not in kept:
            made.append(index)
            kept[index] = make()
        return kept[index]

    unbroken = bon.best_of_n(policy, None, tokenizer, prompts, 3, 1.0, 8, 6, seed=1, score=score, keep=keep)
    assert made == [0, 1, 2] and [len(kept[i]["samples"]) for i in range(3)] == [2, 2, 1]
    del kept[2]
    capsys.readouterr()
    resumed = bon.best_of_n(policy, None, tokenizer, prompts, 3, 1.0, 8, 6, seed=1, score=score, keep=keep)
    assert made == [0, 1, 2, 2]
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"best-of-3: chunk {i}/3 done, time left known after the first chunk made" for i in (1, 2)]
    timeless = lambda out: {k: v for k, v in out.items() if k != "wall_seconds"}  # noqa: E731
    assert timeless(resumed) == timeless(unbroken) == timeless(whole)
    assert resumed["wall_seconds"] == pytest.approx(sum(c["wall_seconds"] for c in kept.values()), abs=0.02)
    assert len(set(unbroken["responses"])) > 1  # not one draw repeated


@pytest.mark.parametrize("flags, match", [
    (["--best_of_n", "1"], "best-of-n needs n >= 2"),
    (["--best_of_n", "16", "--best_of_n_policy", "dpo"], "best_of_n_policy 'dpo' is not among policies"),
    (["--best_of_n", "16", "--reward_model", ""], "best_of_n needs a reward_model"),
])
def test_eval_refuses_a_bad_best_of_n_in_one_line(flags, match):
    from rlhf_kit.run.configs import EvalArguments, parse_stage_args

    with pytest.raises(UserError, match=match):
        parse_stage_args((EvalArguments,), config_args("eval") + flags)


def _eval_flags(run_dir, data_dir):
    return config_args("eval") + ["--run_dir", str(run_dir), "--max_new_tokens", "8",
                                  "--eval_dataset_path", str(data_dir / "eval.jsonl")]


def test_eval_adds_best_of_n_with_its_cost_and_kl_bound(pipeline, tmp_path):
    import shutil

    from rlhf_kit.algorithms.best_of_n import kl_bound

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    run_inprocess("eval", _eval_flags(run_dir, pipeline / "data") + ["--best_of_n", "4"])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = summary["eval_prompts"]
    assert summary["policies"] == ["base", "sft", "ppo", "best-of-4"]
    assert summary["best_of_n"]["samples"] == summary["best_of_n"]["rm_passes"] == 4 * rows
    assert summary["best_of_n"]["from"] == "sft" and summary["best_of_n"]["tokens_sampled"] > 0
    from rlhf_kit.algorithms.best_of_n import CHUNK
    chunks = sorted(p.name for p in (run_dir / "eval" / "parts" / "best-of-4").iterdir())  # kept for a resume
    assert chunks == [f"{i:03d}.json" for i in range(-(-rows // CHUNK))]
    assert summary["kl_to_baseline"]["best-of-4"] == pytest.approx(
        kl_bound(4) / max(summary["response_length"]["best-of-4"], 1.0))
    assert 0 <= summary["win_rate_vs_baseline"]["best-of-4"]["win_rate"] <= 1
    # kept by the reward model: its mean RM score is at least SFT's own single sample's on average
    assert summary["rm_score"]["best-of-4"] >= summary["rm_score"]["sft"]
    assert "PPO beats SFT" in (run_dir / "report.md").read_text()  # the headline stays the trained policy's


def test_eval_refuses_a_dpo_policy_trained_on_eval_prompts(pipeline, tmp_path):
    """The leak check knows what DPO trains on (its comparisons, rlhf_kit.core.stages): refused before any model
    loads."""
    import shutil

    import yaml

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    eval_row = json.loads((pipeline / "data" / "eval.jsonl").read_text().splitlines()[0])
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps(_ranking(["a", "b"], [0, 1]) | {"prompt": eval_row["prompt"]}) + "\n")
    dpo = run_dir / "dpo"
    shutil.copytree(run_dir / "sft", dpo)
    config = yaml.safe_load((dpo / "rlhf_kit_config.yaml").read_text()) | {"stage": "dpo",
                                                                           "dataset_path": str(leaked)}
    (dpo / "rlhf_kit_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="dpo"):
        run_inprocess("eval", _eval_flags(run_dir, pipeline / "data") + ["--policies", "sft", "dpo"])


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_online_method_two_steps_from_sft_change_the_adapter(pipeline, tmp_path, stage):
    from safetensors.torch import load_file

    out = tmp_path / stage
    proc = run_cli(stage, config_args(stage) + stage_paths(pipeline, stage) + TINY[stage] + ["--output_dir", str(out)],
                   launcher="accelerate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    marker = json.loads((out / "stage_complete.json").read_text())
    assert marker["prompts"] > 0 and "reward" in marker
    # TRL's sampling is counted: 2 steps x 4 completions, each 1 to max_completion_length (8) tokens
    assert 2 * 4 <= marker["tokens_sampled"] <= 2 * 4 * 8
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at zero
    assert (out / "model.safetensors").is_file()


def test_online_reward_is_the_reward_model_read_as_ppo_reads_it(pipeline):
    """The reward function TRL calls gives exactly the scores eval and PPO compute for the same answers."""
    from rlhf_kit.algorithms.online import reward_function
    from rlhf_kit.eval.evaluation import score_with_reward_model
    from rlhf_kit.integrations import modeling

    rm_path = str(pipeline / "runs" / "reward")
    tokenizer, rm = modeling.load_tokenizer(rm_path), modeling.load_reward_model(rm_path, require_head=True)
    prompts = [[{"role": "user", "content": "name a fruit"}]] * 2
    completions = [[{"role": "assistant", "content": "apple"}], [{"role": "assistant", "content": "dog dog"}]]
    got = reward_function(rm, tokenizer)(prompts=prompts, completions=completions, trainer_state=None)
    assert got == score_with_reward_model(rm, tokenizer, prompts, ["apple", "dog dog"])


def test_online_reward_from_sampled_ids_is_ppos_reward_with_its_missing_eos_penalty(pipeline):
    """With the completions' sampled ids (what TRL passes), the reward is PPO's: the RM's score of prompt + response
    up to its end token read as PPO's rollout reads it (get_reward), less the missing-EOS penalty for the one cut
    off; tokens after the end token count for nothing."""
    import torch

    from rlhf_kit.algorithms.online import reward_function
    from rlhf_kit.core import work
    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.integrations import modeling
    from rlhf_kit.ppo.core import get_reward

    rm_path = str(pipeline / "runs" / "reward")
    tokenizer, rm = modeling.load_tokenizer(rm_path), modeling.load_reward_model(rm_path, require_head=True)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt = [{"role": "user", "content": "name a fruit"}]
    words = tokenizer("apple dog", add_special_tokens=False)["input_ids"]
    ended, cut = words + [eos], words + words
    work.reset()
    got = reward_function(rm, tokenizer, missing_eos_penalty=1.0)(
        prompts=[prompt] * 3, completions=["", "", ""], completion_ids=[ended, cut, ended + words])
    # TRL sampled these tokens (the stage's record counts them here, where TRL hands them over)
    assert work.record()["tokens_sampled"] == len(ended) + len(cut) + len(ended + words)
    query = torch.tensor([chat_ids(tokenizer, prompt, add_generation_prompt=True)] * 2)
    responses = torch.tensor([ended + [pad] * (len(cut) - len(ended)), cut])
    _, ppo, _ = get_reward(rm, torch.cat((query, responses), 1), pad, query.shape[1])
    assert got == pytest.approx([ppo[0].item(), ppo[1].item() - 1.0, ppo[0].item()], abs=1e-5)
    assert got[1] + 1.0 != pytest.approx(got[0])  # the two responses score differently before the penalty


def test_online_method_refuses_a_reward_model_without_a_trained_head(pipeline, tmp_path):
    with pytest.raises(UserError, match="no trained reward head"):
        run_inprocess("rloo", config_args("rloo") + stage_paths(pipeline, "rloo") + TINY["rloo"] + [
            "--reward_model_path", str(pipeline / "runs" / "sft"), "--output_dir", str(tmp_path / "rloo")])
    assert not (tmp_path / "rloo").exists()


def _fake_stage(folder, config: dict, steps: int):
    import yaml

    folder.mkdir(parents=True)
    (folder / "rlhf_kit_config.yaml").write_text(yaml.safe_dump(config))
    (folder / "log_history.json").write_text(json.dumps([{"step": s, "loss": 0.1} for s in range(1, steps + 1)]))


def test_the_comparison_table_counts_each_methods_cost_and_marks_more_compute(tmp_path):
    """From an eval summary and the stage folders: one row per policy with the judge's figures and intervals, the
    responses each method sampled and its optimizer steps; a method given more compute than PPO is marked."""
    from rlhf_kit.algorithms.compare import comparison_rows, locate, write_comparison

    run = tmp_path / "run"
    _fake_stage(run / "ppo", {"stage": "ppo", "total_episodes": 4096, "num_ppo_epochs": 4, "num_mini_batches": 1}, 64)
    _fake_stage(run / "dpo", {"stage": "dpo"}, 832)
    _fake_stage(run / "rloo", {"stage": "rloo", "max_steps": 64, "per_device_train_batch_size": 16,
                                "gradient_accumulation_steps": 4}, 64)
    policies = ["sft", "ppo", "dpo", "rloo", "best-of-16"]
    win = {"win_rate": 0.6, "ci95": [0.55, 0.65], "win_tie_loss": [1, 0, 0]}
    summary = {"policies": policies, "baseline": "sft", "judge": "gold", "eval_prompts": 256,
               "judge_score": dict.fromkeys(policies, 0.7), "judge_score_ci95": dict.fromkeys(policies, [0.68, 0.72]),
               "win_rate_vs_baseline": {p: win for p in policies[1:]},
               "kl_to_baseline": dict.fromkeys(policies[1:], 0.2), "response_length": dict.fromkeys(policies, 9.0),
               "cut_off_share": dict.fromkeys(policies, 0.1), "empty_share": dict.fromkeys(policies, 0.0),
               "wall_seconds": {"sft": 28, "ppo": 95, "dpo": 300, "rloo": 120},
               "rm_accuracy_between_policies": {"sft vs ppo": {"accuracy": 0.55, "pairs": 100}},
               "vs_baseline": {"dpo": {"judge_score": {"diff": 0.05, "ci95": [0.01, 0.09]}}},
               "best_of_n": {"policy": "best-of-16", "n": 16, "samples": 4096, "wall_seconds": 30.0,
                             "tokens_sampled": 1, "rm_passes": 4096}}
    out = run / "algorithms"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    rows = {r["policy"]: r for r in comparison_rows(run, summary)}
    assert (rows["ppo"]["responses_sampled"], rows["ppo"]["optimizer_steps"]) == (4096, 256)  # 64 updates x 4 epochs
    assert (rows["dpo"]["responses_sampled"], rows["dpo"]["optimizer_steps"]) == (0, 832)
    assert (rows["rloo"]["responses_sampled"], rows["rloo"]["optimizer_steps"]) == (4096, 64)
    assert rows["best-of-16"]["responses_sampled"] == 4096 and rows["best-of-16"]["wall_seconds"] == 30.0
    assert rows["ppo"]["rm_accuracy_vs_baseline"] == 0.55
    assert [p for p, r in rows.items() if r["more_compute_than_ppo"]] == ["dpo"]  # 832 steps > 64
    text = write_comparison(out, run).read_text()
    assert "| dpo † | 0.700 [0.680, 0.720] | 0.600 [0.550, 0.650] | +0.050 [+0.010, +0.090] |" in text
    assert "| rloo | 0.700 [0.680, 0.720] | 0.600 [0.550, 0.650] | - |" in text  # an older summary: no paired figure
    assert (out / "algorithms.png").read_bytes()[:4] == b"\x89PNG" and (out / "cost_vs_gain.png").is_file()
    config = tmp_path / "eval.yaml"
    config.write_text(f"run_dir: {run}\noutput_dir: {out}/eval\n")
    assert locate(str(config)) == (out, run) and locate(str(out)) == (out, run)
    with pytest.raises(UserError, match="run the comparison's eval first"):
        write_comparison(tmp_path / "nothing", run)


def test_comparison_names_the_command_of_a_missing_method_and_refuses_an_untrained_reward_head(pipeline, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "runs", run_dir)
    with pytest.raises(UserError, match=r"dpo .* is missing; run `make dpo` first"):
        run_inprocess("eval", _eval_flags(run_dir, pipeline / "data") + ["--policies", "sft", "ppo", "dpo"])
    with pytest.raises(UserError, match="no trained reward head"):  # best-of-n would pick by a random head
        run_inprocess("eval", _eval_flags(run_dir, pipeline / "data") + ["--best_of_n", "4", "--reward_model", "sft"])


def test_online_cost_counts_each_sampled_batch_once_when_reused(tmp_path):
    from rlhf_kit.algorithms.compare import training_cost

    base = {"stage": "grpo", "max_steps": 40, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    assert training_cost(tmp_path, base)["responses_sampled"] == 320
    reused = base | {"max_steps": 320, "per_device_train_batch_size": 2, "steps_per_generation": 4, "num_iterations": 2}
    assert training_cost(tmp_path, reused)["responses_sampled"] == 320  # 40 batches of 8, each trained on twice


def test_ppo_cost_counts_the_episodes_logged_when_it_stopped_early(tmp_path):
    import json

    from rlhf_kit.algorithms.compare import training_cost

    config = {"stage": "ppo", "total_episodes": 320, "num_ppo_epochs": 2, "num_mini_batches": 4}
    assert training_cost(tmp_path, config) == {"responses_sampled": 320, "optimizer_steps": None}  # no log yet
    log = [{"step": s, "ppo/episode": 8 * s} for s in range(21)]  # probe_patience stopped it after update 20
    (tmp_path / "log_history.json").write_text(json.dumps(log))
    assert training_cost(tmp_path, config) == {"responses_sampled": 160, "optimizer_steps": 160}
