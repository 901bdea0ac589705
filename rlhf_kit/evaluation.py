"""Evaluation of the demo run against the gold labeler, which the reward model and PPO never saw.

Per policy (base, SFT, PPO) on held-out prompts: mean gold score with a per-rule breakdown, mean reward-model
score, mean response length; PPO-vs-SFT gold win rate with a 95% CI; reward-model pairwise accuracy on held-out
comparisons against the gold order; per-token KL of PPO to SFT. Comparing gold with reward-model scores exposes
reward over-optimisation (Gao et al. 2023, Scaling Laws for Reward Model Overoptimization).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rlhf_kit.errors import UserError  # noqa: F401  (re-exported for the recipe)

POLICIES = ("base", "sft", "ppo")


def stage_dataset(stage_dir: str) -> str | None:
    """The dataset a finished stage trained on, from its resolved config."""
    path = Path(stage_dir) / "rlhf_kit_config.yaml"
    return yaml.safe_load(path.read_text()).get("dataset_path") if path.is_file() else None


def prompt_texts(rows: list[dict]) -> set[str]:
    """The user turns of prompt or conversation rows (what overlap is judged on)."""
    texts = set()
    for row in rows:
        messages = row.get("prompt") or row.get("messages") or []
        texts.update(m["content"] for m in messages if m["role"] == "user")
    return texts


def require_disjoint(eval_rows: list[dict], others: dict[str, list[dict]]) -> None:
    """Refuse evaluation prompts that also appear in training data (they would measure memorisation)."""
    eval_texts = prompt_texts(eval_rows)
    for name, rows in others.items():
        shared = eval_texts & prompt_texts(rows)
        if shared:
            example = sorted(shared)[0]
            raise UserError(f"{len(shared)} evaluation prompt(s) also appear in the {name} data (e.g. '{example}'); "
                            "evaluate on held-out prompts")


def score_with_reward_model(model, tokenizer, prompts: list[list[dict]], responses: list[str],
                            batch_size: int = 128) -> list[float]:
    """r(x, y) for each (prompt, response), read at the last non-pad token as in training."""
    import torch

    scores: list[float] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [
                tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=True,
                                              return_dict=False)
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            ]
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
            with torch.no_grad():
                scores.extend(model(**batch).logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


def response_logprobs(model, tokenizer, prompts: list[list[dict]], responses: list[str],
                      batch_size: int = 128) -> list[list[float]]:
    """Per-token log-probabilities of each response (its tokens and end-of-turn) given its prompt."""
    import torch

    out: list[list[float]] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch_prompts, batch_responses = prompts[start : start + batch_size], responses[start : start + batch_size]
        seqs, starts = [], []
        for p, r in zip(batch_prompts, batch_responses):
            prompt_ids = tokenizer.apply_chat_template(p, tokenize=True, return_dict=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=True,
                                                 return_dict=False)
            seqs.append(full)
            starts.append(len(prompt_ids))
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(input_ids)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None].to(model.device))[..., 0]
        for i, s in enumerate(seqs):
            out.append(logp[i, starts[i] - 1 : len(s) - 1].tolist())
    return out


def per_token_kl(policy_logprobs: list[list[float]], ref_logprobs: list[list[float]]) -> float:
    """Mean over tokens of log pi(y_t) - log pi_ref(y_t) on samples from pi: the k1 KL estimate per token."""
    diffs = [a - b for pa, pr in zip(policy_logprobs, ref_logprobs) for a, b in zip(pa, pr)]
    return sum(diffs) / len(diffs) if diffs else 0.0


def heldout_gold_pairs(rankings: list[dict]) -> list[tuple[list[dict], str, str]]:
    """(prompt, gold-preferred, gold-dispreferred) for every pair of distinct held-out responses with a gold gap."""
    from rlhf_kit.gold import score_gold

    pairs = []
    for r in rankings:
        meta = json.loads(r["meta"])
        unique = list(dict.fromkeys(r["responses"]))
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                ga, gb = score_gold(meta, a), score_gold(meta, b)
                if ga != gb:
                    pairs.append((r["prompt"], a, b) if ga > gb else (r["prompt"], b, a))
    return pairs
