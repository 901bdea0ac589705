"""Datasets for each stage, loaded with ``datasets.load_dataset`` from a local file, a folder or a Hub id.

The canonical row shapes and their validators live in :mod:`rlhf_kit.data.rows`.
Bad or over-length rows are dropped and counted in the log, never silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.data import rows as canonical

logger = logging.getLogger(__name__)
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(path: str, split: str = "train"):
    """Load one split as a ``datasets.Dataset``; a missing, unreachable or empty dataset is a UserError."""
    from datasets import load_dataset

    from rlhf_kit.core.runs import looks_like_hub_id

    if not path:
        raise UserError("no dataset given; set dataset_path in the config (a .jsonl file, a folder or a Hub id)")
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise UserError(f"dataset {path} is empty; it needs at least one row")
    try:
        if p.is_file():
            if p.suffix not in _BUILDERS:
                raise UserError(f"dataset {path} has an unknown format; use one of {', '.join(_BUILDERS)}")
            ds = load_dataset(_BUILDERS[p.suffix], data_files=str(p), split="train")
        elif p.is_dir() or looks_like_hub_id(path):
            ds = load_dataset(path, split=split)
        else:
            hint = "run `make base` first" if "runs/" in path else "check the path"
            raise UserError(f"dataset {path} not found; {hint}")
    except UserError:
        raise
    except ValueError as err:  # unknown split and the like
        raise UserError(f"dataset {path}: {str(err).splitlines()[0]}")
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds for an unreachable Hub
        if p.is_file() and p.suffix == ".jsonl":
            canonical.read_jsonl(p)  # names the broken line ("An error occurred while generating the dataset" does not)
        if p.exists():
            raise UserError(f"dataset {path} could not be read ({type(err).__name__}: {str(err).splitlines()[0]})")
        raise UserError(f"dataset '{path}' is not local and the Hub is unreachable (offline?); "
                        "download it and pass a local file")
    if len(ds) == 0:
        raise UserError(f"dataset {path} (split {split}) is empty; it needs at least one row")
    return ds


def require_columns(ds, columns: list[str], path: str) -> None:
    """Refuse a dataset that lacks a column the stage needs."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise UserError(f"dataset {path} lacks column(s) {', '.join(missing)} (it has {', '.join(ds.column_names)}); "
                        "convert it to the canonical rows described in data_cards/README.md")


def filter_counted(ds, keep, what: str, path: str):
    """Filter ``ds`` with ``keep(row) -> reason or None``; log the drop counts by reason."""
    reasons: dict[str, int] = {}
    kept = []
    for i, row in enumerate(ds):
        reason = keep(row)
        if reason is None:
            kept.append(i)
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        logger.warning("%s: dropped %d of %d rows (%s)", path, len(ds) - len(kept), len(ds), detail)
        print(f"[{what}] dropped {len(ds) - len(kept)} of {len(ds)} rows from {path}: {detail}")
    if not kept:
        raise UserError(f"dataset {path} has no usable rows after filtering; see the counts above")
    return ds.select(kept), reasons


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template: the one way every stage tokenizes."""
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                         add_generation_prompt=add_generation_prompt)


def reply_ids(tokenizer, prompt: list[dict], response: str) -> list[int]:
    """Token ids of ``prompt`` followed by the assistant turn ``response``, ending at the turn's end token.

    These are the tokens a policy produces: the prompt with its generation prompt, then the reply, then the end
    token where sampling stops (``eos_token_id``). Whatever a template writes after that token (ChatML's newline
    after ``<|im_end|>``) is never sampled, so it is cut: SFT trains on, and the reward model scores, the same text
    PPO's rollouts end with (Huang et al. 2024, "The N+ implementation details of RLHF with PPO", detail 4).
    """
    ids = chat_ids(tokenizer, prompt + [{"role": "assistant", "content": response}])
    start = len(chat_ids(tokenizer, prompt, add_generation_prompt=True))
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids[start:]:
        ids = ids[: ids.index(eos, start) + 1]
    return ids


def completion_labels(tokenizer, messages: list[dict]) -> dict:
    """``input_ids`` and ``labels`` of a conversation for SFT on its final assistant turn: the loss covers exactly
    the reply and its end token (-100 elsewhere), as the prompt is what the policy is given, not what it writes."""
    prompt, reply = messages[:-1], messages[-1]["content"]
    ids = reply_ids(tokenizer, prompt, reply)
    start = len(chat_ids(tokenizer, prompt, add_generation_prompt=True))
    return {"input_ids": ids, "labels": [-100] * start + ids[start:]}


def length_batches(seqs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``seqs`` in batches of similar length, shortest first: padded to its longest member, a batch in
    file order costs about 1.5x its tokens on IFEval's prompts, a batch of neighbours in length little more."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_right(seqs: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) long tensors of right-padded sequences."""
    import torch

    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def supports_assistant_masks(tokenizer) -> bool:
    """Whether TRL can mask the loss to assistant tokens with this chat template (``{% generation %}``)."""
    from rlhf_kit.integrations.trl import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return True
    try:
        get_training_chat_template(tokenizer)
        return True
    except ValueError:
        return False


def build_sft_dataset(ds, tokenizer, max_length: int | None, path: str, max_rows: int | None = None):
    """Conversations for SFT; returns (dataset, assistant_only). Over-length and malformed rows are dropped.

    With a template TRL cannot mask (no ``{% generation %}`` markers, e.g. SmolLM2's or Qwen's ChatML), the rows are
    tokenized here with their labels (:func:`completion_labels`), so the loss covers exactly the final reply and its
    end token: TRL's prompt/completion split would also train on the template's text after the end token, and a
    template that injects a default system prompt stays on the prompt side.
    """
    require_columns(ds, ["messages"], path)

    def keep(row):
        reason = canonical.check_sft(row)
        if reason:
            return reason
        if max_length and len(chat_ids(tokenizer, row["messages"])) > max_length:
            return f"longer than max_length={max_length}"
        return None

    ds, _ = filter_counted(ds.select_columns(["messages"]), keep, "sft", path)
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    if supports_assistant_masks(tokenizer):
        return ds, True
    logger.warning("chat template of the tokenizer has no {%% generation %%} markers; training on the final "
                   "assistant turn and its end token only")
    ds = ds.map(lambda r: completion_labels(tokenizer, r["messages"]), remove_columns=["messages"])
    return ds, False


def build_preference_dataset(ds, tokenizer, max_length: int | None, path: str, max_rows: int | None = None):
    """(prompt, chosen, rejected) rows for the reward model; malformed, identical or over-length pairs dropped."""
    require_columns(ds, ["prompt", "chosen", "rejected"], path)

    def keep(row):
        reason = canonical.check_pair(row)
        if reason:
            return reason
        longest = max(len(chat_ids(tokenizer, row["prompt"] + row[k])) for k in ("chosen", "rejected"))
        if max_length and longest > max_length:
            return f"longer than max_length={max_length}"
        return None

    scores = [c for c in ("score_chosen", "score_rejected") if c in ds.column_names]  # tied scores are no preference
    ds, _ = filter_counted(ds.select_columns(["prompt", "chosen", "rejected"] + scores), keep, "reward", path)
    ds = ds.select_columns(["prompt", "chosen", "rejected"])
    return ds.select(range(min(max_rows, len(ds)))) if max_rows else ds


def build_prompt_dataset(ds, tokenizer, max_prompt_length: int, path: str, what: str = "ppo",
                         keep_columns: tuple = (), max_rows: int | None = None):
    """Prompts tokenized with the chat template's generation prompt (``input_ids``); over-length ones dropped."""
    require_columns(ds, ["prompt"], path)
    ds = ds.map(lambda r: {"input_ids": chat_ids(tokenizer, r["prompt"], add_generation_prompt=True)
                           if canonical.check_prompt(r) is None else []})  # tokenized once, filtered on the ids

    def keep(row):
        if not row["input_ids"]:
            return "malformed or empty prompt"
        if len(row["input_ids"]) > max_prompt_length:
            return f"longer than max_prompt_length={max_prompt_length}"
        return None

    ds, _ = filter_counted(ds, keep, what, path)
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds.select_columns(["input_ids"] + [c for c in keep_columns if c in ds.column_names])
