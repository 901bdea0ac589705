"""PPO-ptx (InstructGPT, Ouyang et al. 2022, Eq. 2 and Sec. 3.5): mix pretraining gradients into PPO.

objective(phi) = E_(x,y)~pi_RL [r(x, y) - beta log(pi_RL(y|x) / pi_SFT(y|x))] + gamma E_x~D_pretrain [log pi_RL(x)]

Each PPO micro-batch adds gamma times the policy's language-model loss on a batch of pretraining text, which the
paper uses to cut the "alignment tax" (regressions on public NLP tasks). The text is a data file of plain text rows
(``{"text": ...}``, e.g. the demo's base corpus) or of conversations (``{"messages": [...]}``, e.g. SFT
demonstrations, rendered with the policy's chat template), or a finished stage folder whose training data is used
(its tokenizer must be the policy's).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_kit.core.errors import UserError


def _source_file(path: str, tokenizer) -> str:
    """The data file behind ``path``; a stage folder (e.g. runs/demo/sft) gives its ``dataset_path``, provided its
    tokenizer and chat template are the policy's."""
    from rlhf_kit.core import runs
    from rlhf_kit.integrations import modeling

    p = Path(path)
    if not (p.is_dir() and (p / runs.RESOLVED_CONFIG).is_file()):
        return path
    runs.require_stage_output(path, "ptx dataset stage")
    theirs = modeling.load_tokenizer(path)
    modeling.require_same_tokenizer(tokenizer, theirs, "policy", f"ptx dataset stage {path}")
    if theirs.chat_template != tokenizer.chat_template:
        raise UserError(f"ptx dataset stage {path} uses another chat template than the policy; use data rendered "
                        "with the policy's template (e.g. its own SFT stage)")
    source = runs.read_config(path).get("dataset_path")
    if not source:
        raise UserError(f"ptx dataset stage {path} records no dataset_path; pass the data file itself")
    return source


def load_ptx_examples(path: str, tokenizer, max_length: int) -> list[list[int]]:
    """Token ids of each pretraining example (truncated to ``max_length``), refusing text the tokenizer cannot
    read (mostly unknown tokens: written for another vocabulary)."""
    from rlhf_kit.data.datasets import chat_ids, load_rows

    source = _source_file(path, tokenizer)
    ds = load_rows(source)
    if "text" in ds.column_names:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        examples = [tokenizer(t, add_special_tokens=True)["input_ids"] + eos for t in ds["text"] if t]
    elif "messages" in ds.column_names:
        examples = [chat_ids(tokenizer, m) for m in ds["messages"] if m]
    else:
        raise UserError(f"ptx dataset {source} has neither a `text` nor a `messages` column; use rows like "
                        '{"text": "..."} or {"messages": [{"role": ..., "content": ...}]}')
    examples = [e[:max_length] for e in examples if len(e) >= 2]
    if not examples:
        raise UserError(f"ptx dataset {source} holds no text; it needs at least one non-empty row")
    unk = tokenizer.unk_token_id
    if unk is not None:
        total = sum(len(e) for e in examples)
        share = sum(e.count(unk) for e in examples) / total
        if share > 0.2:
            raise UserError(f"ptx dataset {source}: {share:.0%} of its tokens are unknown to the policy's tokenizer "
                            "(text for another vocabulary?); use text the policy was pretrained on")
    return examples


class PtxBatches:
    """Pretraining batches drawn with replacement by a generator of their own, so PPO's sampling is untouched
    (with ``ptx_coef: 0`` the run equals TRL's) and the draw order is checkpointed exactly."""

    def __init__(self, examples: list[list[int]], batch_size: int, pad_token_id: int, seed: int):
        self.examples, self.batch_size, self.pad_token_id = examples, batch_size, pad_token_id
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, device) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` (padding ignored) of the next batch."""
        from rlhf_kit.data.datasets import pad_right

        idx = torch.randint(len(self.examples), (self.batch_size,), generator=self.generator).tolist()
        input_ids, attention_mask = pad_right([self.examples[i] for i in idx], self.pad_token_id)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
                "labels": labels.to(device)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
