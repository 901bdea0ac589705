"""Export: ranking rows the reward stage trains on K-wise as they are, SFT rows from demonstrations, and data cards.

Ranking rows: ``prompt`` (messages), ``responses``, ``ranks`` (0 = best, ties share a rank), ``scores`` (the 1-7
ratings), ``flags`` (per response) and ``labeler``. Items ranked by several labelers are merged by
``merge_rankings`` (mean rank, documented there) or, with ``merge="none"``, give one row per label. Gold items are
the admin's own rankings and are left out. Files are written atomically and the cards last, so a folder with cards
is a finished export.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import yaml

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import write_atomic
from rlhf_kit.data.rows import write_jsonl
from rlhf_kit.label.agreement import labeler_agreement, merge_rankings
from rlhf_kit.label.store import Store
from rlhf_kit.label.tasks import FLAGS
from rlhf_kit.sampling.compare import write_comparisons

MERGE_RULES = ("mean-rank", "none")


def build_ranking_rows(labels: list[dict], merge: str) -> list[dict]:
    """Ranking rows from the rank labels of non-gold items, merged per item by ``merge``."""
    if merge not in MERGE_RULES:
        raise UserError(f"unknown merge rule {merge!r}; use one of {', '.join(MERGE_RULES)}")
    by_item = defaultdict(list)
    for lab in labels:
        if lab["kind"] == "rank" and not lab["known_ranks"]:
            by_item[lab["item_id"]].append(lab)
    if merge == "none":
        return [merge_rankings([lab]) for item in by_item.values() for lab in item]
    return [merge_rankings(item) for item in by_item.values()]


def build_demonstration_rows(labels: list[dict]) -> list[dict]:
    """SFT conversation rows: the prompt and the turns the labeler wrote."""
    return [{"messages": lab["messages"], "labeler": lab["labeler"]} for lab in labels if lab["kind"] == "demo"]


def export_labels(db_path: str, output_dir: str, merge: str = "mean-rank", heldout_fraction: float = 0.0,
                  seed: int = 0) -> dict:
    """Write rankings(.jsonl, _heldout), pairs, demonstrations.jsonl and their data cards; return the counts."""
    store = Store(db_path, create=False)
    labels = store.labels()
    if not labels:
        raise UserError(f"{db_path} holds no submitted labels yet; label some items, then export")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rankings = build_ranking_rows(labels, merge)
    demos = build_demonstration_rows(labels)
    counts = {"rank_labels": sum(lab["kind"] == "rank" and not lab["known_ranks"] for lab in labels),
              "known_labels": sum(bool(lab["known_ranks"]) for lab in labels), "demonstrations": len(demos)}
    agreement = labeler_agreement(labels)
    if rankings:
        counts.update(write_comparisons(str(out), rankings, heldout_fraction, seed))
        _write_card(out / "rankings_card.md", _rankings_card(out, db_path, merge, counts, agreement,
                                                             heldout_fraction > 0))
    if demos:
        write_jsonl(out / "demonstrations.jsonl", demos)
        _write_card(out / "demonstrations_card.md", _demos_card(out, db_path, len(demos)))
    return counts


def _pooled(agreement: dict, key: str) -> float | None:
    agree = sum(a[key]["agree"] for a in agreement.values())
    pairs = sum(a[key]["pairs"] for a in agreement.values())
    return round(agree / pairs, 4) if pairs else None


def _rankings_card(out: Path, db_path: str, merge: str, counts: dict, agreement: dict, heldout: bool) -> tuple:
    files = {"train": str(out / "rankings.jsonl")}
    if heldout:
        files["heldout"] = str(out / "rankings_heldout.jsonl")
    meta = {
        "name": f"{out.name}_rankings", "stages": ["comparisons"], "source": {"files": files},
        "splits": list(files), "adapter": "canonical",
        "license": "set by the data owner (labels written by your labelers)",
        "provenance": f"human labels exported by `rlhf-kit label export` from {db_path}",
        "labels": {
            "method": "K responses per prompt rated 1-7 with InstructGPT's metadata flags, then ranked best to worst "
                      "with ties (InstructGPT App. B); response order shuffled per labeler",
            "scores": "mean 1-7 overall rating per response",
            "flags": list(FLAGS),
            "merge": "mean rank over the labelers of an item, equal means tie; flags set by at least half"
                     if merge == "mean-rank" else "none: one row per label",
            "agreement_with_peers": _pooled(agreement, "peers"),
            "agreement_with_gold": _pooled(agreement, "gold"),
            **counts,
        },
    }
    prose = ("# Human rankings\n\nRankings collected with `rlhf-kit label`. Agreement is the share of untied response "
             "pairs two labelers (or a labeler and a gold item) order the same way; InstructGPT's labelers agreed "
             "72.6 +- 1.5%. Gold items are left out of the rows.\n")
    return meta, prose


def _demos_card(out: Path, db_path: str, n: int) -> tuple:
    meta = {
        "name": f"{out.name}_demonstrations", "stages": ["sft"],
        "source": {"files": {"train": str(out / "demonstrations.jsonl")}}, "splits": ["train"],
        "adapter": "canonical", "license": "set by the data owner (written by your labelers)",
        "provenance": f"demonstrations written with `rlhf-kit label` from {db_path}",
        "labels": {"method": "labelers wrote the assistant turns, optionally from a model-written suggestion",
                   "rows": n},
    }
    return meta, "# Human demonstrations\n\nConversations whose assistant turns labelers wrote.\n"


def _write_card(path: Path, card: tuple) -> None:
    meta, prose = card
    write_atomic(path, f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{prose}")
