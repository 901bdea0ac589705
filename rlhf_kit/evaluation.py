"""Evaluation of the demo run against the gold labeler, which the reward model and PPO never saw.

Per policy (base, SFT, PPO) on held-out prompts: mean gold score with a per-rule breakdown, mean reward-model
score, mean response length; PPO-vs-SFT gold win rate with a 95% CI; reward-model pairwise accuracy on held-out
comparisons against the gold order; per-token KL of PPO to SFT. Comparing gold with reward-model scores exposes
reward over-optimisation (Gao et al. 2023, Scaling Laws for Reward Model Overoptimization).
"""

from __future__ import annotations

import json

from rlhf_kit.data import chat_ids, pad_right, reply_ids
from rlhf_kit.errors import UserError

POLICIES = ("base", "sft", "ppo")


def stage_rows(stage_dir: str, card_stage: str) -> list[dict]:
    """The rows a finished stage trained on (dataset file or data cards), read back through its resolved config."""
    from types import SimpleNamespace

    from rlhf_kit.data import load_stage_rows
    from rlhf_kit.runs import read_config

    config = read_config(stage_dir)
    source = SimpleNamespace(**{k: config.get(k) for k in ("dataset_path", "dataset_cards", "card_data_dir")},
                             dataset_split=config.get("dataset_split") or "train")
    return load_stage_rows(source, card_stage)[0].to_list()


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
    model.eval()
    for start in range(0, len(prompts), batch_size):
        seqs = [reply_ids(tokenizer, p, r)
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
        input_ids, mask = pad_right(seqs, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        scores.extend(logits[:, 0].float().tolist())
    return scores


def response_logprobs(model, tokenizer, prompts: list[list[dict]], responses: list[str],
                      batch_size: int = 128) -> list[list[float]]:
    """Per-token log-probabilities of each response (its tokens and end-of-turn) given its prompt."""
    import torch

    out: list[list[float]] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size]))
        seqs = [reply_ids(tokenizer, p, r) for p, r in pairs]
        starts = [len(chat_ids(tokenizer, p, add_generation_prompt=True)) for p, _ in pairs]
        input_ids, mask = pad_right(seqs, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None].to(model.device))[..., 0]
        out.extend(logp[i, starts[i] - 1 : len(s) - 1].tolist() for i, s in enumerate(seqs))
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
        gold = {response: score_gold(meta, response) for response in r["responses"]}  # each response scored once
        unique = list(gold)
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                ga, gb = gold[a], gold[b]
                if ga != gb:
                    pairs.append((r["prompt"], a, b) if ga > gb else (r["prompt"], b, a))
    return pairs
