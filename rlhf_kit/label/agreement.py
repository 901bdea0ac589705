"""Labeler agreement and the merge rule for items several labelers ranked.

Agreement is InstructGPT's (Ouyang et al. 2022, Sec. 5.1 / App. B.4): over pairs of responses of an item, the share
that two labelers order the same way; a pair either of them tied is left out (a tie is no comparison, as in the
reward loss). Training labelers agreed 72.6 +- 1.5%, held-out labelers 77.3 +- 1.3%.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict

from rlhf_kit.label.tasks import FLAGS, dense_ranks


def pair_agreement(ranks_a: list[int], ranks_b: list[int]) -> tuple[int, int]:
    """(agreeing pairs, compared pairs) of two rankings of the same responses, pairs tied by either left out."""
    agree = total = 0
    for i, j in itertools.combinations(range(len(ranks_a)), 2):
        da, db = ranks_a[i] - ranks_a[j], ranks_b[i] - ranks_b[j]
        if da and db:
            total += 1
            agree += (da > 0) == (db > 0)
    return agree, total


def labeler_agreement(labels: list[dict]) -> dict[str, dict]:
    """Per labeler: agreement with peers (every other labeler of the same items, pooled over pairs) and with the
    known ranking of gold items; each as {"agree", "pairs", "rate"} (rate None when there is no pair)."""
    by_item = defaultdict(list)
    for lab in labels:
        if lab["kind"] == "rank":
            by_item[lab["item_id"]].append(lab)
    stats = defaultdict(lambda: {"peers": [0, 0], "gold": [0, 0]})
    for item_labels in by_item.values():
        for lab in item_labels:
            if lab["known_ranks"]:
                _add(stats[lab["labeler"]]["gold"], pair_agreement(lab["ranks"], lab["known_ranks"]))
            for other in item_labels:
                if other is not lab:
                    _add(stats[lab["labeler"]]["peers"], pair_agreement(lab["ranks"], other["ranks"]))
    return {name: {k: {"agree": a, "pairs": n, "rate": a / n if n else None} for k, (a, n) in s.items()}
            for name, s in stats.items()}


def _add(acc: list[int], counts: tuple[int, int]) -> None:
    acc[0] += counts[0]
    acc[1] += counts[1]


def merge_rankings(labels: list[dict]) -> dict:
    """One ranking row from the labels several labelers gave one item.

    Rule (Borda-style mean rank): each response's rank is the mean of the (dense) ranks the labelers gave it;
    responses are re-ranked by that mean, equal means tie. ``scores`` is the mean 1-7 rating, a flag is kept when
    at least half the labelers set it, and ``labeler`` joins the names with "+". One label passes through as is.
    """
    n = len(labels)
    k = len(labels[0]["ranks"])
    mean_rank = [sum(lab["ranks"][i] for lab in labels) / n for i in range(k)]
    flags = [[f for f in FLAGS if 2 * sum(f in lab["flags"][i] for lab in labels) >= n] for i in range(k)]
    return {
        "prompt": labels[0]["prompt"],
        "responses": labels[0]["responses"],
        "ranks": dense_ranks([round(m, 6) for m in mean_rank]),
        "scores": [round(statistics.fmean(lab["scores"][i] for lab in labels), 4) for i in range(k)],
        "flags": flags,
        "labeler": "+".join(sorted(lab["labeler"] for lab in labels)),
    }
