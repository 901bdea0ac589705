"""InstructGPT's comparison data: K sampled responses per prompt, ranked by a labeler.

Ouyang et al. (2022), Sec. 3.5: labelers rank K = 4..9 responses per prompt, giving C(K, 2) comparisons. We keep
the full ranking per prompt (``rankings.jsonl``) and the pairs derived from it (``pairs.jsonl``); a held-out share
of prompts goes to ``*_heldout.jsonl`` for measuring reward-model accuracy. Which labeler ranks is the config's
``labeler:`` (:mod:`rlhf_kit.worlds`).
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.rows import expand_pairs, prompt_key, write_jsonl
from rlhf_kit.worlds import Labeler

# Prompt-row columns a ranking keeps besides prompt/responses/ranks: what a judge or a later round reads.
CARRIED = ("meta",)


def sample_rows(rows: list[dict], responses: list[list[str]]) -> list[dict]:
    """Unranked sample rows: prompt, the K responses and the carried columns (what a labeler ranks; the demos stage
    writes its samples so, for the compare stage's ``other_samples``)."""
    return [{"prompt": row["prompt"], "responses": resp} | {k: row[k] for k in CARRIED if k in row}
            for row, resp in zip(rows, responses)]


def rank_rows(rows: list[dict], responses: list[list[str]], labeler: Labeler) -> list[dict]:
    """Ranking rows: prompt, responses, ranks (0 = best, ties share a rank), the labeler's scores if it grades."""
    return rank_samples(sample_rows(rows, responses), labeler)


def rank_samples(samples: list[dict], labeler: Labeler) -> list[dict]:
    """Sample rows (see :func:`sample_rows`) with the labeler's ranks (and scores, if it grades) added."""
    return [s | labeler.rank(s, s["responses"]) for s in samples]


def require_preferences(rankings: list[dict], labeler: str) -> None:
    """Refuse rankings with no preference at all: every prompt's responses tied, so not one comparison to learn."""
    if not any(len(set(r["ranks"])) > 1 for r in rankings):
        raise UserError(f"the {labeler} labeler gave all K responses of every prompt ({len(rankings)}) the same rank: "
                        "no comparisons to train a reward model on; check the labeler (or the policy, if its samples "
                        "are all alike: raise temperature)")


def read_samples(paths: list[str]) -> list[dict]:
    """Sample rows (prompt + K responses, see :func:`sample_rows`) from each file of ``paths``, checked."""
    from rlhf_kit.data.rows import read_jsonl, valid_messages

    samples = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"other_samples file {path} does not exist; run the stage that writes it first (the demos "
                            "stage writes samples.jsonl) or remove it from other_samples")
        for number, row in enumerate(read_jsonl(path), start=1):
            responses = row.get("responses")
            if not (valid_messages(row.get("prompt")) and isinstance(responses, list) and len(responses) >= 2
                    and all(isinstance(r, str) for r in responses)):
                raise UserError(f"{path} row {number} is not a sample row (prompt messages and a list of at least two "
                                "response strings, as the demos stage writes samples.jsonl)")
            samples.append(row)
    return samples


def write_comparisons(output_dir: str, rankings: list[dict], heldout_fraction: float, seed: int,
                      other_rankings: list[dict] = ()) -> dict:
    """Split rankings by prompt into train / held-out, write rankings and pairs; return counts.

    ``other_rankings`` (other policies' samples, ranked) join the training split only, less any whose prompt is
    held out: the held-out rankings stay the sampled policy's own, the responses the reward model will score in PPO.
    """
    rankings = list(rankings)
    random.Random(seed).shuffle(rankings)
    n_heldout = int(round(len(rankings) * heldout_fraction))
    heldout_prompts = {prompt_key(r["prompt"]) for r in rankings[:n_heldout]}
    others = [r for r in other_rankings if prompt_key(r["prompt"]) not in heldout_prompts]
    parts = {"heldout": rankings[:n_heldout], "train": rankings[n_heldout:] + others}
    out = Path(output_dir)
    counts = {}
    for name, rows in parts.items():
        suffix = "" if name == "train" else "_heldout"
        pairs = [p for r in rows for p in expand_pairs(r)]
        write_jsonl(out / f"rankings{suffix}.jsonl", rows)
        write_jsonl(out / f"pairs{suffix}.jsonl", pairs)
        counts[f"prompts_{name}"], counts[f"pairs_{name}"] = len(rows), len(pairs)
    if other_rankings:
        counts["prompts_train_other_samples"] = len(others)
        counts["other_samples_dropped_heldout_prompt"] = len(other_rankings) - len(others)
    return counts
