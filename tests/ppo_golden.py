"""The PPO oracle's fixed inputs, shared by the script that records TRL 1.12's run and the test that replays it.

TRL removed ``PPOTrainer`` in 1.13, so its behaviour is kept as a golden file: ``make ppo-golden`` runs TRL 1.12's
``PPOTrainer.train()`` in a throw-away virtualenv (benchmarks/ppo_golden_trl112.py) on the inputs built here and
writes ``tests/golden/ppo_trl112.json``; tests/test_ppo_golden.py runs rlhf_kit's trainer on the same inputs and
compares. Nothing here imports TRL: the models and prompts come from the demo world's tiny builders, seeded, and are
saved and reloaded with ``from_pretrained`` exactly as a stage's would be.
"""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "ppo_trl112.json"

# TRL 1.12 PPOConfig values of the oracle run: 4 updates of 16 rollouts (2 micro-batches of 8), 2 PPO epochs of 2
# minibatches, rollouts sampled in 2 chunks of 8 (so chunk padding is exercised), LoRA on every linear layer.
CONFIG = {
    "total_episodes": 64, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "num_ppo_epochs": 2,
    "num_mini_batches": 2, "response_length": 12, "learning_rate": 1e-3, "kl_coef": 0.2, "stop_token": "eos",
    "missing_eos_penalty": 1.0, "temperature": 1.0, "local_rollout_forward_batch_size": 8,
    "num_sample_generations": 0, "bf16": False, "gradient_checkpointing": False, "logging_steps": 1,
    "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "max_position_embeddings": 128}
NUM_PROMPTS = 48


def build_inputs(root: str | Path) -> dict:
    """Tokenizer (left padding), policy, reward model, value model (a float copy of the RM) and the prompt dataset.

    Call after seeding (transformers.set_seed(CONFIG["seed"])): the order of loads is part of the oracle."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.worlds.demo import tiny, world

    root = Path(root)
    if not (root / "reward" / "config.json").is_file():
        tokenizer = tiny.build_tiny_tokenizer(world.vocabulary())
        policy = tiny.build_tiny_model(tokenizer, **TINY, seed=1)
        policy.save_pretrained(root / "policy")
        tokenizer.save_pretrained(root / "policy")
        torch.manual_seed(2)
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        reward = AutoModelForSequenceClassification.from_config(config)
        reward.save_pretrained(root / "reward")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "policy")
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(root / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(root / "reward", num_labels=1)
    prompts = [{"role": "user", "content": p["text"]} for p in world.split_prompts(0)["prompts"][:NUM_PROMPTS]]
    dataset = Dataset.from_dict({"input_ids": [chat_ids(tokenizer, [m], add_generation_prompt=True) for m in prompts]})
    return {"tokenizer": tokenizer, "policy": policy, "reward_model": reward,
            "value_model": copy.deepcopy(reward).float(), "train_dataset": dataset}


def weight_stats(named_parameters) -> dict[str, list[float]]:
    """Per trainable tensor: sum, sum of absolute values, and its first four values (float64)."""
    out = {}
    for name, p in named_parameters:
        if p.requires_grad:
            flat = p.detach().double().flatten()
            out[name] = [flat.sum().item(), flat.abs().sum().item(), *flat[:4].tolist()]
    return out
