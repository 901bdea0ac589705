"""The canonical rows every stage reads and writes: one definition, one validator per shape, JSON Lines I/O.

Shapes (TRL's conversational formats, plus InstructGPT's K-wise rankings):

- ``sft``: ``messages`` -- a conversation ending with an assistant turn;
- ``prompts``: ``prompt`` -- the messages before the assistant's reply;
- ``pairs``: ``prompt`` + ``chosen`` / ``rejected`` (one assistant message each), optional graded
  ``score_chosen`` / ``score_rejected``;
- ``rankings``: ``prompt`` + ``responses`` (K strings) + ``ranks`` (0 = best, ties share a rank), optional graded
  ``scores``, per-response ``flags``, the ``labeler`` who ranked and a ``meta`` record (a judge's task data);
- ``samples`` (not a card shape; the demos stage's ``samples.jsonl``): a ranking before anyone ranked it, ``prompt`` +
  ``responses`` (+ ``meta``), for the compare stage's ``other_samples``.

Each ``check_*`` returns ``None`` for a usable row or the reason it is dropped; callers count reasons, never drop
silently. Data cards, dataset loading, the reward trainer, the comparison stage and evaluation all use this module.
"""

from __future__ import annotations

import itertools
import json
import os

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import write_atomic

# Card stage -> the shapes it accepts (a comparisons dataset may hold pairs or rankings).
SHAPES = {
    "sft": [("messages",)],
    "prompts": [("prompt",)],
    "comparisons": [("prompt", "chosen", "rejected"), ("prompt", "responses", "ranks")],
}
OPTIONAL = ("meta", "scores", "score_chosen", "score_rejected", "flags", "labeler")


def valid_messages(messages) -> bool:
    """A non-empty list of ``{role, content}`` turns with non-blank text."""
    return (
        isinstance(messages, list)
        and len(messages) > 0
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)
        and all(m["content"].strip() for m in messages)
    )


def prompt_key(prompt: list[dict]) -> str:
    """A hashable identity of a prompt's messages (the same messages give the same key, key order aside)."""
    return json.dumps(prompt, sort_keys=True)


def is_ranking(row: dict) -> bool:
    """Whether a comparisons row is a K-wise ranking (else a pair)."""
    return "responses" in row and "ranks" in row


def shape_of(row: dict, stage: str) -> tuple[str, ...] | None:
    """The canonical shape of ``row`` for a card stage (sft, prompts, comparisons), or None."""
    return next((s for s in SHAPES[stage] if set(s) <= set(row)), None)


def check_sft(row: dict) -> str | None:
    """Reason an SFT conversation is unusable, or None."""
    m = row.get("messages")
    if not valid_messages(m):
        return "malformed or empty messages"
    if m[-1]["role"] != "assistant":
        return "no final assistant turn"
    return None


def check_prompt(row: dict) -> str | None:
    """Reason a prompt row is unusable, or None."""
    return None if valid_messages(row.get("prompt")) else "malformed or empty prompt"


def check_pair(row: dict) -> str | None:
    """Reason a (chosen, rejected) pair is unusable, or None. Equal graded scores are no preference."""
    if not all(valid_messages(row.get(k)) for k in ("prompt", "chosen", "rejected")):
        return "malformed or empty messages"
    if row["chosen"] == row["rejected"]:
        return "chosen identical to rejected"
    if row.get("score_chosen") is not None and row.get("score_chosen") == row.get("score_rejected"):
        return "tied scores (no preference)"
    return None


def check_ranking(row: dict, duplicates_allowed: bool = True) -> str | None:
    """Reason a K-wise ranking is unusable, or None.

    Identical responses are allowed by default when they share a rank (sampled responses repeat; the K-wise loss
    weights them by multiplicity); ``duplicates_allowed=False`` drops any ranking that repeats a response (human
    rankings in public datasets, where a repeat signals a broken row).
    """
    if not valid_messages(row.get("prompt")):
        return "malformed or empty prompt"
    responses, ranks = row.get("responses"), row.get("ranks")
    if not isinstance(responses, list) or not isinstance(ranks, list) or len(responses) != len(ranks):
        return "responses and ranks differ in length"
    if any(not isinstance(r, str) or not r.strip() for r in responses):
        return "empty turn or response"
    rank_of: dict[str, int] = {}
    for response, rank in zip(responses, ranks):
        if response in rank_of and (not duplicates_allowed or rank_of[response] != rank):
            return "duplicate responses in a ranking"
        rank_of[response] = rank
    if len(set(ranks)) < 2:
        return "fewer than two distinct ranks"
    return None


def check_comparison(row: dict, duplicates_allowed: bool = True) -> str | None:
    """A pair or a ranking, whichever the row is."""
    return check_ranking(row, duplicates_allowed) if is_ranking(row) else check_pair(row)


CHECKS = {"sft": check_sft, "prompts": check_prompt, "comparisons": check_comparison}


PER_RESPONSE = ("responses", "ranks", "scores", "flags")  # a ranking's columns with one entry per response


def select_responses(row: dict, keep: list[int]) -> dict:
    """A ranking's per-response columns restricted to the indices ``keep`` (they stay aligned; other columns such
    as ``labeler`` pass through untouched when this is used with ``datasets.map``)."""
    return {c: [row[c][i] for i in keep] for c in PER_RESPONSE
            if isinstance(row.get(c), list) and len(row[c]) == len(row["responses"])}


def drop_empty_responses(row: dict) -> dict:
    """A ranking without its blank responses (a blank response is a bad entry of a ranking, not a bad ranking)."""
    return select_responses(row, [i for i, r in enumerate(row["responses"]) if r.strip()])


def expand_pairs(ranking: dict) -> list[dict]:
    """All C(K, 2) (chosen, rejected) pairs of one ranking; ties and identical responses make no pair.

    InstructGPT (Ouyang et al. 2022, Sec. 3.5) ranks K responses, which gives C(K, 2) comparisons.
    """
    pairs = []
    for i, j in itertools.combinations(range(len(ranking["responses"])), 2):
        ri, rj = ranking["ranks"][i], ranking["ranks"][j]
        a, b = ranking["responses"][i], ranking["responses"][j]
        if ri == rj or a == b:
            continue
        chosen, rejected = (a, b) if ri < rj else (b, a)
        pairs.append({
            "prompt": ranking["prompt"],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return pairs


# ----------------------------------------------------------------------------------------------- JSON Lines I/O

def iter_jsonl(path: str | os.PathLike):
    """(line number, row) of each non-blank line of a JSON Lines file; a broken line is a one-line error naming the
    file and line number."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {number} is not valid JSON ({err.msg}); fix or remove that line")
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number} is not a JSON object; each line must be one row {{...}}")
            yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON Lines file (see :func:`iter_jsonl` for its errors)."""
    return [row for _, row in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """JSON Lines, written atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a JSON Lines file, flushed and fsynced (a crash loses at most the rows being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
