"""End to end: every stage through its real entry point on a tiny model, then checks on what each wrote."""

import json

import pytest
import torch

from conftest import TINY, config_args, run_cli, stage_paths

STAGES = ("base", "sft", "compare", "reward", "ppo")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_every_stage_marks_completion_last(pipeline):
    for stage in STAGES:
        out = pipeline / "runs" / stage
        marker = json.loads((out / "stage_complete.json").read_text())
        assert marker["stage"] == stage
        assert marker["wall_seconds"] > 0
        marker_time = (out / "stage_complete.json").stat().st_mtime_ns
        files = [f for f in out.rglob("*") if f.is_file() and f.name != "stage_complete.json"]
        assert files and max(f.stat().st_mtime_ns for f in files) <= marker_time, f"{stage}: a file after the marker"
        assert f"[{stage}] done in" in (pipeline / f"{stage}.log").read_text()


def test_base_is_a_tiny_llama_with_chat_template(pipeline):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = pipeline / "runs" / "base"
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    text = tok.apply_chat_template([{"role": "user", "content": "name two animals"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|assistant|> ")
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id


def test_sft_saves_adapter_and_merged_model_that_moved(pipeline):
    runs = pipeline / "runs"
    assert (runs / "sft" / "adapter" / "adapter_config.json").is_file()
    base, sft = _weights(runs / "base"), _weights(runs / "sft")
    changed = [k for k in base if not torch.equal(base[k], sft[k])]
    assert any("q_proj" in k for k in changed), "LoRA merge left the attention weights unchanged"
    assert not any("embed" in k for k in changed), "LoRA should not touch the embeddings"


def test_compare_keeps_full_rankings_and_derives_pairs(pipeline):
    out = pipeline / "runs" / "compare"
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    k = 4  # TINY["compare"]
    assert rankings and all(len(r["responses"]) == len(r["ranks"]) == k for r in rankings)
    expected = sum(
        1
        for r in rankings
        for i in range(k)
        for j in range(i + 1, k)
        if r["ranks"][i] != r["ranks"][j] and r["responses"][i] != r["responses"][j]
    )
    assert len(pairs) == expected
    marker = json.loads((out / "stage_complete.json").read_text())
    assert marker["pairs_train"] == expected
    assert 0.5 <= marker["labeler_gold_agreement"] <= 1.0


def test_reward_model_has_one_output_and_trained_head(pipeline):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(pipeline / "runs" / "reward")
    assert rm.config.num_labels == 1 and rm.score.weight.shape[0] == 1
    adapter = pipeline / "runs" / "reward" / "adapter"
    from safetensors.torch import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("score" in k for k in saved), "the score head must be saved with the adapter"
    marker = json.loads((pipeline / "runs" / "reward" / "stage_complete.json").read_text())
    assert marker["heldout_accuracy"] == pytest.approx(_heldout_accuracy(pipeline, rm), abs=0.01)
    assert marker["ranking_loss"] == "kwise"  # the demo config trains InstructGPT's K-wise loss


def _heldout_accuracy(pipeline, rm) -> float:
    """The reward model's held-out K-wise accuracy recomputed outside the trainer: the multiplicity-weighted share
    of correctly ordered pairs, pooled over all held-out rankings (the tiny pipeline evaluates them in batches of
    unequal pair counts, whose mean TRL would log)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from rlhf_kit.data.datasets import pad_right, reply_ids
    from rlhf_kit.reward.ranking import build_ranking_dataset, dedupe_ranking

    tok = AutoTokenizer.from_pretrained(pipeline / "runs" / "reward")
    lines = (pipeline / "runs" / "compare" / "rankings_heldout.jsonl").read_text().splitlines()
    rows = build_ranking_dataset(Dataset.from_list([json.loads(x) for x in lines]), tok, 96, "heldout").to_list()
    correct = total = 0.0
    for row in rows:
        u = dedupe_ranking(row["responses"], row["ranks"])
        ids, mask = pad_right([reply_ids(tok, row["prompt"], r) for r in u["responses"]], tok.pad_token_id)
        with torch.no_grad():
            r = rm(input_ids=ids, attention_mask=mask).logits[:, 0]
        for i in range(len(r)):
            for j in range(len(r)):
                if u["ranks"][i] < u["ranks"][j]:
                    w = u["weights"][i] * u["weights"][j]
                    correct, total = correct + w * float(r[i] > r[j]), total + w
    return correct / total


def test_reward_pairwise_on_pairs_and_on_expanded_rankings(pipeline, tmp_path):
    from conftest import run_inprocess

    compare = pipeline / "runs" / "compare"
    base = config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + ["--ranking_loss", "pairwise"]
    run_inprocess("reward", base + ["--output_dir", str(tmp_path / "a"), "--dataset_path", str(compare / "pairs.jsonl"),
                                    "--eval_dataset_path", str(compare / "pairs_heldout.jsonl")])
    run_inprocess("reward", base + ["--output_dir", str(tmp_path / "b")])  # rankings expanded into pairs
    a = json.loads((tmp_path / "a" / "stage_complete.json").read_text())
    b = json.loads((tmp_path / "b" / "stage_complete.json").read_text())
    pairs = len((compare / "pairs.jsonl").read_text().splitlines())
    assert a["ranking_loss"] == b["ranking_loss"] == "pairwise"
    assert a["rows"] == b["rows"] <= pairs  # the same pairs either way (empty responses dropped in both)


def test_ppo_policy_moves_away_from_sft(pipeline):
    runs = pipeline / "runs"
    sft, ppo = _weights(runs / "sft"), _weights(runs / "ppo")
    assert sft.keys() == ppo.keys()
    assert any(not torch.equal(sft[k], ppo[k]) for k in sft)
    marker = json.loads((runs / "ppo" / "stage_complete.json").read_text())
    assert marker["episode"] >= 32 and marker["kl"] == marker["kl"]  # not NaN


def test_finished_stage_is_skipped_unless_forced(pipeline, tmp_path):
    import shutil

    shutil.copytree(pipeline / "runs" / "sft", tmp_path / "sft")  # a copy: other tests read the pipeline's SFT
    args = config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + ["--output_dir", str(tmp_path / "sft")]
    marker = tmp_path / "sft" / "stage_complete.json"
    before = marker.read_text()
    proc = run_cli("sft", args)
    assert proc.returncode == 0 and "already complete" in proc.stdout
    assert marker.read_text() == before
    proc = run_cli("sft", args + ["--force", "true", "--max_steps", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_text() != before


def test_same_seed_same_results(pipeline, tmp_path):
    """Reruns with the same seed reproduce a stage exactly (the README's reproducibility tolerance)."""
    from safetensors.torch import load_file

    from conftest import run_inprocess

    for stage in ("sft", "ppo"):
        outs = [tmp_path / f"{stage}{i}" for i in (1, 2)]
        for out in outs:
            run_inprocess(stage, config_args(stage) + stage_paths(pipeline, stage) + TINY[stage]
                          + ["--output_dir", str(out)])
        a, b = (load_file(str(o / "adapter" / "adapter_model.safetensors")) for o in outs)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{stage}: same seed, different adapter"
        m1, m2 = (json.loads((o / "stage_complete.json").read_text()) for o in outs)
        assert {k: v for k, v in m1.items() if k != "wall_seconds"} == {k: v for k, v in m2.items()
                                                                           if k != "wall_seconds"}
