"""What rlhf_kit relies on in TRL's maintained trainers, pinned by behaviour: a TRL release that stops calling a
hook rlhf_kit overrides, or changes what a helper answers, fails here by name instead of deep inside a run.
Everything pinned is reached through rlhf_kit/integrations/trl.py. (PPO is rlhf_kit's own: tests/test_ppo_golden.py.)"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    """A tiny Llama reward model and the demo world's tokenizer, built locally."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_kit.worlds.demo import tiny, world

    tokenizer = tiny.build_tiny_tokenizer(world.vocabulary())
    policy = tiny.build_tiny_model(tokenizer, 16, 32, 1, 2, 64)
    path = tmp_path_factory.mktemp("rm")
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return tokenizer, AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)


def test_reward_trainer_runs_rlhf_kits_hooks(tiny_reward, tmp_path):
    """RankingRewardTrainer overrides RewardTrainer's private ``_prepare_dataset`` (called by its __init__),
    ``_set_signature_columns_if_needed`` (which columns reach the collator) and ``compute_loss`` (which appends to
    ``self._metrics``, merged into the logs): one training step must go through all three."""
    from datasets import Dataset

    from rlhf_kit.integrations.trl import RewardConfig
    from rlhf_kit.reward.ranking import build_reward_trainer

    tokenizer, model = tiny_reward
    prompt = [{"role": "user", "content": "name a fruit"}]
    rows = Dataset.from_list([{"prompt": prompt, "responses": ["apple", "dog", "cat dog"], "ranks": [0, 1, 2]}] * 4)
    args = RewardConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, logging_steps=1,
                        report_to="none", bf16=False, save_strategy="no", disable_tqdm=True)
    trainer = build_reward_trainer("kwise", model=model, args=args, processing_class=tokenizer, train_dataset=rows)
    assert "completion_ids" in trainer.train_dataset.column_names  # _prepare_dataset ran
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"group", "ranks", "weights"} <= set(batch)  # our signature columns reached our collator
    assert batch["input_ids"].shape[0] == 2 and len(batch["score_at"]) == 6  # 2 rankings of 3 completions, packed
    trainer.train()
    logged = [r for r in trainer.state.log_history if "accuracy" in r]
    assert logged and 0.0 <= logged[0]["accuracy"] <= 1.0  # compute_loss's _metrics reached the log
    assert logged[0]["num_tokens"] == batch["num_tokens"].item()  # the positions it computed, for the stage record


def test_chat_template_helpers_answer_as_relied_on():
    """data.supports_assistant_masks: markers found in the tiny template, none in plain ChatML, and an unknown
    template refused with ValueError (not another exception)."""
    from transformers import PreTrainedTokenizerFast

    from rlhf_kit.integrations.trl import get_training_chat_template, has_generation_markers
    from rlhf_kit.worlds.demo import tiny, world

    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert has_generation_markers(tiny.CHAT_TEMPLATE) and not has_generation_markers(chatml)
    tokenizer = tiny.build_tiny_tokenizer(world.vocabulary())
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tokenizer.chat_template = chatml + "{# an unknown variant #}"
    with pytest.raises(ValueError):
        get_training_chat_template(tokenizer)


def test_peft_and_quantization_configs_from_model_config():
    """modeling.build_peft_config / quantization_kwargs read TRL's ModelConfig through these helpers."""
    from rlhf_kit.integrations.trl import ModelConfig, get_peft_config, get_quantization_config

    args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
                       lora_task_type="SEQ_CLS")
    config = get_peft_config(args)
    assert (config.r, config.lora_alpha, sorted(config.target_modules), config.task_type) == (
        4, 8, ["q_proj", "v_proj"], "SEQ_CLS")
    assert get_peft_config(ModelConfig(use_peft=False)) is None
    assert get_quantization_config(ModelConfig()) is None
    assert get_quantization_config(ModelConfig(load_in_4bit=True)).bnb_4bit_quant_type == "nf4"


def test_parser_refuses_unknown_flags_and_reads_yaml(tmp_path):
    from rlhf_kit.integrations.trl import ModelConfig, TrlParser

    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: some/model\nlora_r: 7\n")
    parser = TrlParser((ModelConfig,), allow_abbrev=False)
    (args,) = parser.parse_args_and_config(["--config", str(config), "--lora_r", "9"])
    assert (args.model_name_or_path, args.lora_r) == ("some/model", 9)  # the flag overrides the YAML
    with pytest.raises(ValueError, match="lora_rr"):  # parse_stage_args turns this into one UserError line
        parser.parse_args_and_config(["--config", str(config), "--lora_rr", "9"])
