"""The two task kinds: what an imported row must hold and what a submitted form must hold.

Rank task (InstructGPT App. B, Fig. 12, Table 3): for each of K responses a 1-7 overall rating and the metadata
flags below, then a ranking of all K with ties allowed. Demonstration task: the labeler writes the assistant's
reply (or both sides of a short conversation), optionally starting from a model-written suggestion.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.rows import iter_jsonl

# InstructGPT's metadata (Ouyang et al. 2022, Table 3), in the order of their labeling interface.
FLAGS = {
    "fails_instruction": "Fails to follow the correct instruction / task",
    "inappropriate": "Inappropriate for a customer assistant",
    "hallucination": "Hallucination",
    "satisfies_constraint": "Satisfies the constraint in the instruction",
    "sexual": "Sexual content",
    "violent": "Violent content",
    "encourages_harm": "Encourages or fails to discourage violence/abuse/terrorism/self-harm",
    "denigrates": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "opinion": "Expresses opinion",
    "moral_judgment": "Expresses moral judgment",
}
RATING_MIN, RATING_MAX = 1, 7  # InstructGPT's overall quality Likert scale
K_MIN, K_MAX = 2, 9            # InstructGPT ranked K = 4..9; two is the least that makes a comparison
MAX_TURNS = 8                  # a demonstration writes at most this many turns


def as_messages(prompt, where: str) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; a list must hold {role, content} dicts."""
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                    and m.get("role") in ("system", "user", "assistant")
                                                    for m in prompt)):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise UserError(f"{where}: `prompt` must be a non-empty string or a list of {{role, content}} messages")


def dense_ranks(ranks: list[int]) -> list[int]:
    """Ranks renumbered 0, 1, 2, ... in order, ties kept (e.g. [3, 0, 3, 1] -> [2, 0, 2, 1])."""
    levels = {r: i for i, r in enumerate(sorted(set(ranks)))}
    return [levels[r] for r in ranks]


def parse_item(row: dict, where: str, gold: bool = False) -> dict:
    """One imported row as a task: with ``responses`` a rank task, without a demonstration task. Gold rows carry
    the known ``ranks``."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: each line must be a JSON object")
    item = {"prompt": as_messages(row.get("prompt"), where)}
    responses = row.get("responses")
    if responses is None:
        if gold:
            raise UserError(f"{where}: gold items need `responses` and `ranks`")
        suggestion = row.get("suggestion")
        if suggestion is not None and not isinstance(suggestion, str):
            raise UserError(f"{where}: `suggestion` must be a string")
        return {**item, "kind": "demo", "suggestion": suggestion}
    if not (isinstance(responses, list) and all(isinstance(r, str) for r in responses)
            and K_MIN <= len(responses) <= K_MAX):
        raise UserError(f"{where}: `responses` must be a list of {K_MIN} to {K_MAX} strings")
    item.update(kind="rank", responses=responses)
    if gold:
        ranks = row.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) == len(responses) and all(isinstance(r, int) for r in ranks)
                and len(set(ranks)) >= 2):
            raise UserError(f"{where}: a gold item needs `ranks` (0 = best, one per response, at least two levels)")
        item["known_ranks"] = dense_ranks(ranks)
    return item


def read_items(path: str, gold: bool = False) -> list[dict]:
    """Tasks from a JSON Lines file of prompts (demonstrations) or prompts + responses (rankings)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"import file {path} not found; pass a .jsonl file of prompts or prompts + responses")
    items = [parse_item(row, f"{path} line {n}", gold) for n, row in iter_jsonl(p)]
    if not items:
        raise UserError(f"import file {path} has no rows")
    return items


class FormError(ValueError):
    """A submitted form that cannot be stored; the message is shown to the labeler."""


def parse_rank_form(form, k: int) -> dict:
    """Ratings, flags and ranks of a rank task, indexed by the item's response order (not the display order)."""
    scores, flags, ranks = [], [], []
    for i in range(k):
        try:
            score, rank = int(form.get(f"score_{i}", "")), int(form.get(f"rank_{i}", ""))
        except ValueError:
            raise FormError("rate every response from 1 to 7 and rank all of them before submitting")
        if not RATING_MIN <= score <= RATING_MAX or not 0 <= rank < k:
            raise FormError("ratings go from 1 to 7 and ranks from 0 to K-1")
        chosen = form.getlist(f"flag_{i}")
        unknown = [f for f in chosen if f not in FLAGS]
        if unknown:
            raise FormError(f"unknown flag {unknown[0]}")
        scores.append(score)
        flags.append([f for f in FLAGS if f in chosen])
        ranks.append(rank)
    return {"scores": scores, "flags": flags, "ranks": dense_ranks(ranks)}


def parse_demo_form(form, prompt: list[dict]) -> dict:
    """The labeler's turns (assistant first, then alternating) appended to the prompt as one conversation."""
    turns = []
    for i in range(MAX_TURNS):
        text = form.get(f"turn_{i}")
        if text is None:
            break
        turns.append({"role": "assistant" if i % 2 == 0 else "user", "content": text.strip()})
    while turns and not turns[-1]["content"] and turns[-1]["role"] == "user":
        turns.pop()
    if not turns or any(not t["content"] for t in turns) or turns[-1]["role"] != "assistant":
        raise FormError("write the assistant's reply (every turn you add needs text; end on an assistant turn)")
    return {"messages": prompt + turns}


def queue_samples(db_path: str, rows: list[dict], responses: list[list[str]], source: str) -> dict:
    """Queue K sampled responses per prompt as rank tasks (the comparison stage with ``labeler: human``)."""
    from rlhf_kit.label.store import Store

    items = [parse_item({"prompt": row["prompt"], "responses": resp}, source) for row, resp in zip(rows, responses)]
    added, known = Store(db_path).add_items(items, source)
    return {"queued": added, "already_queued": known, "label_db": db_path}
