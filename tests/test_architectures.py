"""The recipes run unchanged on other architectures saved to disk (only model and output paths overridden)."""

import json

import pytest

from conftest import TINY, config_args, run_inprocess


def _save_checkpoint(kind: str, path, drop_pad: bool):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from rlhf_kit.worlds.demo import tiny, world

    tok = tiny.build_tiny_tokenizer(world.vocabulary())
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = Qwen2ForCausalLM(config)
    if drop_pad:
        tok.pad_token = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok


@pytest.mark.parametrize("kind,drop_pad", [("gpt2", True), ("qwen2", False)])
def test_recipes_on_other_architecture(pipeline, tmp_path, kind, drop_pad):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tmp_path / "base"
    _save_checkpoint(kind, base, drop_pad)
    assert (AutoTokenizer.from_pretrained(base).pad_token is None) == drop_pad
    runs, data = tmp_path / "runs", pipeline / "data"
    run_inprocess("sft", config_args("sft") + TINY["sft"] + [
        "--model_name_or_path", str(base), "--output_dir", str(runs / "sft"),
        "--dataset_path", str(data / "sft.jsonl")])
    run_inprocess("compare", config_args("compare") + TINY["compare"] + [
        "--model_name_or_path", str(runs / "sft"), "--output_dir", str(runs / "compare"),
        "--dataset_path", str(data / "prompts.jsonl")])
    run_inprocess("reward", config_args("reward") + TINY["reward"] + [
        "--model_name_or_path", str(runs / "sft"), "--output_dir", str(runs / "reward"),
        "--dataset_path", str(runs / "compare" / "rankings.jsonl"), "--eval_dataset_path", ""])
    run_inprocess("ppo", config_args("ppo") + TINY["ppo"] + [
        "--model_name_or_path", str(runs / "sft"), "--output_dir", str(runs / "ppo"),
        "--reward_model_path", str(runs / "reward"), "--dataset_path", str(data / "prompts.jsonl"),
        "--probe_dataset_path", str(data / "probe.jsonl")])  # the monitor on this architecture too
    for stage in ("sft", "compare", "reward", "ppo"):
        assert json.loads((runs / stage / "stage_complete.json").read_text())["stage"] == stage
    rm = AutoModelForSequenceClassification.from_pretrained(runs / "reward")
    assert rm.config.model_type == kind and rm.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(runs / "ppo")
    assert tok.pad_token is not None  # a pad token was set where the checkpoint had none
