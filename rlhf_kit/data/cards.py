"""Data cards: one Markdown file per dataset in ``data_cards/`` with YAML front matter (the Hub's dataset-card
convention) that says what the data is and how its rows become the toolkit's canonical rows:

``sft`` (conversations), ``comparisons`` (pairs or K-wise rankings) and ``prompts`` -- the shapes of
:mod:`rlhf_kit.data.rows`.

Each adapter below maps one public dataset's exact row schema to those rows and counts every row it drops by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.paths import shipped
from rlhf_kit.data import rows as canonical
from rlhf_kit.data.datasets import load_rows

REQUIRED = ("name", "stages", "source", "splits", "adapter", "license", "provenance")
STAGES = tuple(canonical.SHAPES)  # sft, prompts, comparisons
CARDS_DIR = shipped("data_cards")


@dataclass
class DataCard:
    """A parsed card: its front matter fields and the prose that follows."""

    name: str
    stages: list[str]
    source: dict
    splits: list[str]
    adapter: str
    license: str
    provenance: str
    path: Path
    adapter_args: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    prose: str = ""


def find_card(name_or_path: str) -> Path:
    """A card by path, or by name in ./data_cards/ or the repository's data_cards/."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for folder in (Path("data_cards"), CARDS_DIR):
        candidate = folder / f"{name_or_path}.md"
        if candidate.is_file():
            return candidate
    known = sorted(c.stem for c in CARDS_DIR.glob("*.md") if c.stem != "README")
    raise UserError(f"data card '{name_or_path}' not found; use a path or one of: {', '.join(known)}")


def load_card(name_or_path: str) -> DataCard:
    """Parse and check a card's front matter (read by ``huggingface_hub.DatasetCard``, as the Hub reads dataset
    cards); a malformed card is a one-line error naming it."""
    from huggingface_hub import DatasetCard

    path = find_card(name_or_path)
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise UserError(f"data card {path} has no YAML front matter; start it with a --- block")
    try:
        card = DatasetCard(text)
    except yaml.YAMLError as err:
        raise UserError(f"data card {path}: front matter is not valid YAML ({str(err).splitlines()[0]})")
    except ValueError:  # huggingface_hub: "repo card metadata block should be a dict"
        raise UserError(f"data card {path}: front matter must be a mapping of fields")
    meta = card.data.to_dict()
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise UserError(f"data card {path} lacks required field(s) {', '.join(missing)}; see data_cards/README.md")
    bad = [s for s in meta["stages"] if s not in STAGES]
    if bad:
        raise UserError(f"data card {path}: unknown stage(s) {', '.join(bad)}; use {', '.join(STAGES)}")
    if meta["adapter"] not in ADAPTERS:
        raise UserError(f"data card {path}: unknown adapter '{meta['adapter']}'; known: {', '.join(sorted(ADAPTERS))}")
    if not ("hub_id" in meta["source"] or "files" in meta["source"]):
        raise UserError(f"data card {path}: source needs hub_id (with revision) or files")
    fields = {k: meta[k] for k in REQUIRED} | {k: meta.get(k) or {} for k in ("adapter_args", "labels")}
    return DataCard(**fields, path=path, prose=card.text.strip())


def read_split(card: DataCard, split: str, data_dir: str | None = None):
    """Raw rows of one split: local files (the card's, or ``data_dir/<card name>/<split>.jsonl``) or the Hub."""
    if split not in card.splits:
        raise UserError(f"data card {card.name} has no split '{split}'; it has {', '.join(card.splits)}")
    if data_dir:
        local = Path(data_dir) / card.name / f"{split}.jsonl"
        if not local.is_file():
            raise UserError(f"{local} not found; put the {card.name} {split} split there as JSON Lines")
        return load_rows(str(local))
    files = card.source.get("files")
    if files:
        return load_rows(str(files[split]) if isinstance(files, dict) else str(files))
    try:
        from datasets import load_dataset

        kwargs = {k: card.source[k] for k in ("revision", "data_dir", "name") if card.source.get(k)}
        return load_dataset(card.source["hub_id"], split=split, **kwargs)
    except Exception as err:  # noqa: BLE001 - offline, missing repo, ...
        raise UserError(f"data card {card.name}: '{card.source['hub_id']}' could not be loaded from the Hub "
                        f"({type(err).__name__}; offline?); download it and pass card_data_dir with "
                        f"{card.name}/{split}.jsonl inside")


def canonical_rows(card: DataCard, stage: str, split: str = "train", data_dir: str | None = None,
                   max_rows: int | None = None) -> tuple[list[dict], Counter, int]:
    """(canonical rows, dropped-row counts by reason, rows read) of one card for one stage."""
    if stage not in card.stages:
        raise UserError(f"data card {card.name} serves {', '.join(card.stages)}, not {stage}")
    raw = read_split(card, split, data_dir)
    missing = [c for c in ADAPTER_COLUMNS[card.adapter] if c not in raw.column_names]
    if missing:
        raise UserError(f"data card {card.name}: its data lacks column(s) {', '.join(missing)} that adapter "
                        f"'{card.adapter}' needs (it has {', '.join(raw.column_names)}); check the card's source")
    rows, dropped = ADAPTERS[card.adapter](list(raw), stage, **card.adapter_args)
    rows = _drop_bad_rows(rows, stage, dropped)
    return (rows[:max_rows] if max_rows else rows), dropped, len(raw)


def _drop_bad_rows(rows: list[dict], stage: str, dropped: Counter) -> list[dict]:
    """Every adapter's output passes the canonical checks (:mod:`rlhf_kit.data.rows`). Public datasets' rankings may not
    repeat a response: a repeat there signals a broken row, not a sample drawn twice."""
    kept = []
    for row in rows:
        reason = canonical.check_comparison(row, duplicates_allowed=False) if stage == "comparisons" \
            else canonical.CHECKS[stage](row)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(row)
    return kept


def parse_mixture(spec) -> list[tuple[str, float, int | None]]:
    """A dataset mixture -> [(card, weight, max_rows)]; weight is the share of the card's rows kept
    (alignment-handbook's dataset mixer), max_rows caps them first. Written either way:

    - a string ``card[:weight[:max_rows]],...`` (handy on the command line), e.g. ``hh_rlhf:0.5:1000,shp``;
    - a YAML list, each item a card name or ``{card: hh_rlhf, weight: 0.5, max_rows: 1000}``.
    """
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    out = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"card", "weight", "max_rows"}
            if "card" not in item or unknown:
                raise UserError(f"dataset_cards item {item} needs `card` and may add `weight` and `max_rows` "
                                f"(unknown: {', '.join(sorted(unknown)) or 'none'})")
            parts = [str(item["card"]), str(item.get("weight", "")), str(item.get("max_rows") or "")]
        else:
            parts = str(item).split(":")
        try:
            weight = float(parts[1]) if len(parts) > 1 and parts[1] else 1.0
            limit = int(parts[2]) if len(parts) > 2 and parts[2] else None
        except ValueError:
            raise UserError(f"dataset_cards entry '{item}' is not card[:weight[:max_rows]] (e.g. hh_rlhf:0.5:1000)")
        if not 0 < weight <= 1:
            raise UserError(f"dataset_cards entry '{item}': weight must be in (0, 1]")
        out.append((parts[0], weight, limit))
    if not out:
        raise UserError("dataset_cards is empty; name at least one card")
    return out


def load_mixture(spec: str, stage: str, split: str = "train", data_dir: str | None = None, seed: int = 0):
    """A ``datasets.Dataset`` of canonical rows mixed from the cards in ``spec``."""
    import random

    from datasets import Dataset

    rows: list[dict] = []
    for name, weight, limit in parse_mixture(spec):
        card = load_card(name)
        got, dropped, read = canonical_rows(card, stage, split, data_dir, limit)
        random.Random(seed).shuffle(got)
        got = got[: max(1, round(len(got) * weight))] if got else got
        if dropped:
            print(f"[{stage}] card {card.name}: dropped {sum(dropped.values())} of {read} rows "
                  f"({', '.join(f'{n} {r}' for r, n in sorted(dropped.items()))})")
        rows.extend(got)
    if not rows:
        raise UserError(f"dataset_cards '{spec}' gave no usable {stage} rows; run `rlhf-kit data validate` on them")
    keys = set.intersection(*(set(r) for r in rows))
    return Dataset.from_list([{k: r[k] for k in sorted(keys)} for r in rows])


def load_stage_rows(script_args, stage: str):
    """A stage's raw rows and a label for messages: from data cards when ``dataset_cards`` is set, else from
    ``dataset_path``. ``stage`` is the card stage: sft, comparisons or prompts."""
    if script_args.dataset_cards:
        return (load_mixture(script_args.dataset_cards, stage, script_args.dataset_split, script_args.card_data_dir),
                f"cards {script_args.dataset_cards}")
    return load_rows(script_args.dataset_path, script_args.dataset_split), script_args.dataset_path


# --------------------------------------------------------------------------------------------------- adapters
# Each adapter: (raw rows, stage, **adapter_args) -> (canonical rows, Counter of dropped rows by reason).

def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def adapt_canonical(rows: list[dict], stage: str) -> tuple[list[dict], Counter]:
    """Rows already in the toolkit's shapes (the demo world, rlhf_kit's comparison stage, label exports)."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        shape = canonical.shape_of(r, stage)
        if shape is None:
            dropped[f"missing {stage} columns"] += 1
            continue
        out.append({k: r[k] for k in shape + tuple(k for k in canonical.OPTIONAL if k in r)})
    return out, dropped


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[dict] | None:
    """Anthropic HH's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages (None if it does not parse)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def adapt_hh_rlhf(rows: list[dict], stage: str) -> tuple[list[dict], Counter]:
    """Anthropic/hh-rlhf: chosen/rejected transcripts sharing every turn but the last assistant one."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        chosen, rejected = parse_hh_transcript(r.get("chosen", "")), parse_hh_transcript(r.get("rejected", ""))
        if not chosen or not rejected:
            dropped["transcript does not parse"] += 1
        elif chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            dropped["no final assistant turn"] += 1
        elif chosen[:-1] != rejected[:-1]:
            dropped["transcripts differ before the last turn"] += 1
        elif stage == "comparisons":
            out.append({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]})
        elif stage == "sft":
            out.append({"messages": chosen})
        else:
            out.append({"prompt": chosen[:-1]})
    return out, dropped


def adapt_ultrafeedback_binarized(rows: list[dict], stage: str) -> tuple[list[dict], Counter]:
    """trl-lib/ultrafeedback_binarized: chosen/rejected conversations (prompt turns included) with GPT-4 scores."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        chosen, rejected = r.get("chosen") or [], r.get("rejected") or []
        if len(chosen) < 2 or len(rejected) < 2 or chosen[-1]["role"] != "assistant":
            dropped["no final assistant turn"] += 1
        elif chosen[:-1] != rejected[:-1]:
            dropped["chosen and rejected prompts differ"] += 1
        elif stage == "comparisons":
            row = {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
            out.append(row)
        elif stage == "sft":
            out.append({"messages": chosen})
        else:
            out.append({"prompt": chosen[:-1]})
    return out, dropped


def adapt_oasst1(rows: list[dict], stage: str, lang: str | None = None) -> tuple[list[dict], Counter]:
    """OpenAssistant/oasst1 message trees: SFT conversations follow the best-ranked reply at every branch; each
    prompter message with two or more ranked assistant replies gives one K-wise ranking (rank 0 = best)."""
    dropped: Counter = Counter()
    by_id = {r["message_id"]: r for r in rows}
    children: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("deleted") or (r.get("review_result") is False):
            dropped["deleted or failed review"] += 1
            continue
        if lang and r.get("lang") != lang:
            dropped[f"language other than {lang}"] += 1
            continue
        if r.get("parent_id"):
            children.setdefault(r["parent_id"], []).append(r)

    def path_to(msg: dict) -> list[dict] | None:
        chain = []
        while msg is not None:
            chain.append({"role": "user" if msg["role"] == "prompter" else "assistant", "content": msg["text"]})
            parent = msg.get("parent_id")
            msg = by_id.get(parent) if parent else None
            if parent and msg is None:
                return None
        return chain[::-1]

    def best(kids: list[dict]) -> dict:
        return min(kids, key=lambda k: (k.get("rank") is None, k.get("rank") or 0))

    out = []
    roots = [r for r in rows if not r.get("parent_id") and not r.get("deleted") and (not lang or r.get("lang") == lang)]
    if stage == "prompts":
        return [{"prompt": [_user(r["text"])]} for r in roots], dropped
    if stage == "sft":
        for root in roots:
            msg = root
            while children.get(msg["message_id"]):
                msg = best(children[msg["message_id"]])
            conversation = path_to(msg)
            if conversation and conversation[-1]["role"] == "assistant":
                out.append({"messages": conversation})
            else:
                dropped["tree without an assistant reply"] += 1
        return out, dropped
    for parent_id, kids in children.items():
        parent = by_id.get(parent_id)
        replies = [k for k in kids if k["role"] == "assistant" and k.get("rank") is not None]
        if not parent or parent["role"] != "prompter" or len(replies) < 2:
            continue
        prompt = path_to(parent)
        if prompt is None:
            dropped["broken parent chain"] += 1
            continue
        out.append({"prompt": prompt, "responses": [k["text"] for k in replies],
                    "ranks": [int(k["rank"]) for k in replies]})
    return out, dropped


def adapt_ultrachat(rows: list[dict], stage: str) -> tuple[list[dict], Counter]:
    """HuggingFaceH4/ultrachat_200k: multi-turn ``messages`` that must alternate user/assistant."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        msgs = r.get("messages") or []
        roles = [m["role"] for m in msgs]
        if not msgs or roles[-1] != "assistant" or any(a == b for a, b in zip(roles, roles[1:])):
            dropped["turns do not alternate or end with the assistant"] += 1
        elif stage == "sft":
            out.append({"messages": msgs})
        else:
            out.append({"prompt": msgs[:1]})
    return out, dropped


def adapt_shp(rows: list[dict], stage: str, min_score_ratio: float = 2.0) -> tuple[list[dict], Counter]:
    """stanfordnlp/SHP: two Reddit replies to a post, the preferred one by later upvotes (labels = 1: A). As the SHP
    authors advise, pairs whose score ratio is under ``min_score_ratio`` are dropped as too close to call."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        if float(r.get("score_ratio") or 0) < min_score_ratio:
            dropped[f"score ratio under {min_score_ratio}"] += 1
            continue
        a, b = r["human_ref_A"], r["human_ref_B"]
        chosen, rejected = (a, b) if int(r["labels"]) == 1 else (b, a)
        prompt = [_user(r["history"])]
        if stage == "comparisons":
            out.append({"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]})
        elif stage == "sft":
            out.append({"messages": prompt + [_assistant(chosen)]})
        else:
            out.append({"prompt": prompt})
    return out, dropped


def adapt_tldr(rows: list[dict], stage: str) -> tuple[list[dict], Counter]:
    """trl-lib/tldr (prompt/completion text) and trl-lib/tldr-preference (prompt/chosen/rejected text):
    Reddit posts and their TL;DR summaries (Stiennon et al. 2020)."""
    dropped: Counter = Counter()
    out = []
    for r in rows:
        prompt = [_user(r.get("prompt", "").strip())]
        if stage == "comparisons":
            if "chosen" not in r:
                dropped["no chosen/rejected (use the tldr-preference card)"] += 1
                continue
            out.append({"prompt": prompt, "chosen": [_assistant(r["chosen"].strip())],
                        "rejected": [_assistant(r["rejected"].strip())]})
        elif stage == "sft":
            text = r.get("completion") or r.get("chosen")
            if text is None:
                dropped["no completion"] += 1
                continue
            out.append({"messages": prompt + [_assistant(text.strip())]})
        else:
            out.append({"prompt": prompt})
    return out, dropped


ADAPTERS = {
    "canonical": adapt_canonical,
    "hh_rlhf": adapt_hh_rlhf,
    "ultrafeedback_binarized": adapt_ultrafeedback_binarized,
    "oasst1": adapt_oasst1,
    "ultrachat": adapt_ultrachat,
    "shp": adapt_shp,
    "tldr": adapt_tldr,
}

ADAPTER_COLUMNS = {
    "canonical": [],
    "hh_rlhf": ["chosen", "rejected"],
    "ultrafeedback_binarized": ["chosen", "rejected"],
    "oasst1": ["message_id", "parent_id", "text", "role", "rank"],
    "ultrachat": ["messages"],
    "shp": ["history", "human_ref_A", "human_ref_B", "labels", "score_ratio"],
    "tldr": ["prompt"],
}
