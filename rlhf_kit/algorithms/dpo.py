"""DPO on the compare stage's K-wise rankings: TRL's ``DPOTrainer`` from the SFT policy, reference = SFT.

Direct Preference Optimization (Rafailov et al. 2023, Eq. 7) fits the policy to preference pairs without a reward
model or sampling: loss = -log sigma(beta log(pi(y_w|x)/pi_SFT(y_w|x)) - beta log(pi(y_l|x)/pi_SFT(y_l|x))).

A ranking becomes pairs as InstructGPT's reward model reads it (Ouyang et al. 2022, Sec. 3.5): every one of its
C(K, 2) pairs whose ranks differ, the better-ranked response chosen; tied responses (and identical texts) make no
pair (:func:`rlhf_kit.data.rows.expand_pairs`, the pairwise reward loss's expansion). Rafailov et al. (App. A.3)
also derive a Plackett-Luce objective over whole rankings; TRL implements the pairwise one, used here.

With LoRA the reference is the SFT policy itself: TRL computes it with the adapter disabled, on the merged SFT
weights the sft stage saved. The pairs are tokenized as every other stage tokenizes a reply
(:func:`rlhf_kit.data.datasets.reply_ids`: the prompt with its generation prompt, the reply, its end token, and
nothing the template writes after it), the smallest change to TRL: its own tokenization keeps the template's text
after the end token (ChatML's newline), which the policy never samples.
"""

from __future__ import annotations

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.datasets import chat_ids, reply_ids
from rlhf_kit.integrations.trl import DPOTrainer


def preference_pairs(ds, label: str, tokenizer, max_length: int | None, k_max: int, max_rows: int | None = None):
    """(prompt, chosen, rejected) rows from rankings (every untied pair) or from pair rows as they are; a dataset
    whose rankings hold no untied pair is a one-line error (DPO has nothing to learn from ties)."""
    from rlhf_kit.data.rows import expand_pairs
    from rlhf_kit.reward.ranking import build_reward_dataset

    if "responses" in ds.column_names and "ranks" in ds.column_names and not any(
            expand_pairs(row) for row in ds):
        raise UserError(f"every ranking in {label} ties all its responses: DPO needs at least one untied pair; "
                        "collect comparisons with a labeler that prefers (or raise num_responses)")
    return build_reward_dataset(ds, label, tokenizer, max_length, "pairwise", k_max, max_rows)


class RankedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with rlhf_kit's tokenization of a reply (see the module docstring)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset

        def tokenize(row):
            prompt_ids = chat_ids(processing_class, row["prompt"], add_generation_prompt=True)
            cut = len(prompt_ids)
            return {"prompt_ids": prompt_ids,
                    "chosen_ids": reply_ids(processing_class, row["prompt"], row["chosen"][0]["content"])[cut:],
                    "rejected_ids": reply_ids(processing_class, row["prompt"], row["rejected"][0]["content"])[cut:]}

        return dataset.map(tokenize, remove_columns=dataset.column_names)
