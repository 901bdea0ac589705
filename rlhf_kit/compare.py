"""InstructGPT's comparison data: K sampled responses per prompt, ranked by a labeler.

Ouyang et al. (2022), Sec. 3.5: labelers rank K = 4..9 responses per prompt, giving C(K, 2) comparisons. We keep
the full ranking per prompt (``rankings.jsonl``) and the pairs derived from it (``pairs.jsonl``); a held-out share
of prompts goes to ``*_heldout.jsonl`` for measuring reward-model accuracy. Which labeler ranks is the config's
``labeler:`` (:mod:`rlhf_kit.labelers`).
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhf_kit.errors import UserError
from rlhf_kit.labelers import Labeler
from rlhf_kit.rows import expand_pairs, write_jsonl

# Prompt-row columns a ranking keeps besides prompt/responses/ranks: what a judge or a later round reads.
CARRIED = ("meta",)


def rank_rows(rows: list[dict], responses: list[list[str]], labeler: Labeler) -> list[dict]:
    """Ranking rows: prompt, responses, ranks (0 = best, ties share a rank), the labeler's scores if it grades."""
    ranked = []
    for row, resp in zip(rows, responses):
        ranking = {"prompt": row["prompt"], "responses": resp, **labeler.rank(row, resp)}
        ranked.append(ranking | {k: row[k] for k in CARRIED if k in row})
    return ranked


def require_preferences(rankings: list[dict], labeler: str) -> None:
    """Refuse rankings with no preference at all: every prompt's responses tied, so not one comparison to learn."""
    if not any(len(set(r["ranks"])) > 1 for r in rankings):
        raise UserError(f"the {labeler} labeler gave all K responses of every prompt ({len(rankings)}) the same rank: "
                        "no comparisons to train a reward model on; check the labeler (or the policy, if its samples "
                        "are all alike: raise temperature)")


def write_comparisons(output_dir: str, rankings: list[dict], heldout_fraction: float, seed: int) -> dict:
    """Split rankings by prompt into train / held-out, write rankings and pairs; return counts."""
    rankings = list(rankings)
    random.Random(seed).shuffle(rankings)
    n_heldout = int(round(len(rankings) * heldout_fraction))
    parts = {"heldout": rankings[:n_heldout], "train": rankings[n_heldout:]}
    out = Path(output_dir)
    counts = {}
    for name, rows in parts.items():
        suffix = "" if name == "train" else "_heldout"
        pairs = [p for r in rows for p in expand_pairs(r)]
        write_jsonl(out / f"rankings{suffix}.jsonl", rows)
        write_jsonl(out / f"pairs{suffix}.jsonl", pairs)
        counts[f"prompts_{name}"], counts[f"pairs_{name}"] = len(rows), len(pairs)
    return counts
