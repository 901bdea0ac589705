"""InstructGPT's comparison data: K sampled responses per prompt, ranked by a (simulated) labeler.

Ouyang et al. (2022), Sec. 3.5: labelers rank K = 4..9 responses per prompt, giving C(K, 2) comparisons. We keep
the full ranking per prompt (``rankings.jsonl``) and the pairs derived from it (``pairs.jsonl``); a held-out share
of prompts goes to ``*_heldout.jsonl`` for measuring reward-model accuracy.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from rlhf_kit.errors import UserError
from rlhf_kit.gold import rank_responses, score_gold
from rlhf_kit.runs import write_jsonl


def rank_rows(rows: list[dict], responses: list[list[str]], noise: float, seed: int) -> list[dict]:
    """Ranking rows: prompt, responses, ranks (0 = best, ties share a rank) and the labeler's scores."""
    rng = random.Random(seed)
    ranked = []
    for row, resp in zip(rows, responses):
        if "meta" not in row:
            raise UserError("the simulated labeler needs demo-world prompts with a `meta` column; "
                            "use runs/<name>/data/prompts.jsonl or bring your own rankings")
        meta = json.loads(row["meta"])
        ranks = rank_responses(meta, resp, noise, rng)
        ranked.append({"prompt": row["prompt"], "responses": resp, "ranks": ranks, "meta": row["meta"]})
    return ranked


def expand_pairs(ranking: dict) -> list[dict]:
    """All C(K, 2) (chosen, rejected) pairs of one ranking; ties and identical responses make no pair."""
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


def gold_agreement(rankings: list[dict]) -> float:
    """Share of the labeler's pairs whose order the noiseless gold labeler agrees with (gold ties excluded)."""
    agree = total = 0
    for r in rankings:
        meta = json.loads(r["meta"])
        for p in expand_pairs(r):
            g_c, g_r = score_gold(meta, p["chosen"][0]["content"]), score_gold(meta, p["rejected"][0]["content"])
            if g_c != g_r:
                total += 1
                agree += g_c > g_r
    return agree / total if total else float("nan")


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
