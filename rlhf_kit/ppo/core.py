"""PPO's tensor helpers: masked statistics, forwards that score query+response rows, response truncation.

Written here on torch alone; each keeps the arithmetic of the TRL 1.12 helper of the same name (``trl/experimental/
ppo/ppo_trainer.py``, ``trl/experimental/utils.py``, ``trl/trainer/utils.py``, Apache-2.0), which the oracle test
(tests/test_ppo_golden.py) holds rlhf_kit's trainer to.

Rows are left-padded prompts followed by right-padded responses; the pad token marks every padded position.
"""

from __future__ import annotations

import torch

# Log-probability written at padded response positions, where no token was sampled (TRL's value, so that
# exp(new - old) = 1 there and padding adds nothing to the ratio statistics).
INVALID_LOGPROB = 1.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true."""
    return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``values`` where ``mask`` is true."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if count < 2:
        raise ValueError("whitening needs at least two unmasked values; raise the minibatch size")
    return variance * count / (count - 1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the unmasked positions; ``shift_mean=False`` keeps the mean."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first true value (the row's length when there is none)."""
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).long() + torch.arange(row_len, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


def truncate_response(stop_token_id: int, pad_token_id: int, responses: torch.Tensor) -> torch.Tensor:
    """Responses with every token after the first stop token replaced by padding."""
    trunc_idxs = first_true_indices(responses == stop_token_id).unsqueeze(-1)
    idxs = torch.arange(responses.shape[1], device=responses.device).view(1, -1)
    return torch.masked_fill(responses, idxs > trunc_idxs, pad_token_id)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[index] per position, row by row (the full log-softmax of a batch can be many GB)."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return picked - logsumexp
    return torch.stack([torch.log_softmax(row, dim=-1).gather(-1, i.unsqueeze(-1)).squeeze(-1)
                        for row, i in zip(logits, index)])  # low precision: logsumexp would round away


def _inputs(query_responses: torch.Tensor, pad_token_id: int) -> dict:
    """input_ids / attention_mask / position_ids of padded rows (positions count real tokens only)."""
    attention_mask = query_responses != pad_token_id
    return {"input_ids": torch.masked_fill(query_responses, ~attention_mask, 0), "attention_mask": attention_mask,
            "position_ids": attention_mask.cumsum(1) - attention_mask.long()}


def forward(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int):
    """The model's output (with hidden states) on padded query+response rows; logits (and the policy+value
    module's values) only at the positions that predict a response token, ``context_length - 1`` to the
    second-to-last: the LM head over the prompt's positions is work nobody reads (a fifth of a 135M model's
    forward at its 49k vocabulary). Slice ``[:, :-1]`` for one per response token."""
    keep = query_responses.shape[1] - context_length + 1
    return model(**_inputs(query_responses, pad_token_id), return_dict=True, output_hidden_states=True,
                 use_cache=False, logits_to_keep=keep)


def get_reward(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int):
    """(per-position scores, the score at each row's last real token, that token's index) of a model with a
    scalar ``score`` head over its backbone (reward and value models)."""
    inputs = _inputs(query_responses, pad_token_id)
    backbone = getattr(model, model.base_model_prefix)
    output = backbone(**inputs, return_dict=True, output_hidden_states=True, use_cache=False)
    reward_logits = model.score(output.hidden_states[-1])
    sequence_lengths = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    rows = torch.arange(reward_logits.size(0), device=reward_logits.device)
    return reward_logits, reward_logits[rows, sequence_lengths].squeeze(-1), sequence_lengths


class _Packed:
    """Rows' real tokens packed end to end into rows of the same width (first-fit decreasing), each sequence with its
    own position ids from 0: transformers' attention then sees separate sequences (its packed-sequence mask,
    ``masking_utils.find_packed_sequence_indices``, used when no attention mask is given), as TRL's ``padding_free``
    does for SFT and DPO. The linear layers, most of a small model's work, run on real tokens only: a PPO micro-batch
    of left-padded prompts and right-padded responses is about half padding."""

    def __init__(self, query_responses: torch.Tensor, start: torch.Tensor, last: torch.Tensor):
        rows, width = query_responses.shape
        device = query_responses.device
        spans = [(int(s), int(e) - int(s) + 1) for s, e in zip(start, last)]
        free, placed = [], [None] * rows
        for i in sorted(range(rows), key=lambda i: -spans[i][1]):  # each span into the first packed row with room
            row = next((r for r, room in enumerate(free) if room >= spans[i][1]), None)
            if row is None:
                row = len(free)
                free.append(width)
            placed[i] = (row, width - free[row])
            free[row] -= spans[i][1]
        self.input_ids = torch.zeros(len(free), width, dtype=query_responses.dtype, device=device)
        # The unused tail of a packed row counts on from 0 as one more sequence: separate from the one before it.
        self.position_ids = torch.zeros(len(free), width, dtype=torch.long, device=device)
        for row, room in enumerate(free):
            self.position_ids[row, width - room:] = torch.arange(room, device=device)
        for i, ((s, n), (row, offset)) in enumerate(zip(spans, placed)):
            self.input_ids[row, offset: offset + n] = query_responses[i, s: s + n]
            self.position_ids[row, offset: offset + n] = torch.arange(n, device=device)
        self.row = torch.tensor([row for row, _ in placed], device=device)
        self.shift = torch.tensor([offset for _, offset in placed], device=device) - start  # packed - row column

    @classmethod
    def of(cls, query_responses: torch.Tensor, pad_token_id: int, last: torch.Tensor) -> _Packed | None:
        """Each row's tokens from its first real one to ``last`` (inclusive) packed; None when a pad token lies in
        between (sampled mid-response), or a row has no real token up to ``last``."""
        real = query_responses != pad_token_id
        start = first_true_indices(real)
        if bool((start > last).any()) or bool(
                (real.long().cumsum(1).gather(1, last[:, None]).squeeze(1) != last - start + 1).any()):
            return None
        return cls(query_responses, start, last)

    def where(self, rows: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed (row, column) of each (row, column) position of the unpacked rows."""
        return self.row[rows], columns + self.shift[rows]


def forward_padding_free(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int,
                         read: torch.Tensor):
    """``forward`` without the padding (:class:`_Packed`): (logits, values), each ``[rows, response width, ...]`` as
    ``forward``'s ``[:, :-1]`` slices, computed only at the response positions ``read`` marks (a prefix of each row:
    PPO's ``~padding_mask_p1``, the last prompt token to one past the stop token); zeros elsewhere. ``values`` is
    None for a model that returns none (the reference policy). Or None when a row cannot be packed (an empty prompt,
    or a pad token sampled mid-response), for ``forward`` to handle."""
    # Response position t is predicted at column context - 1 + t; the last one read needs the row's tokens up to it.
    if bool((first_true_indices(query_responses != pad_token_id) > context_length - 1).any()):
        return None  # an empty prompt: no token predicts the first response token
    packed = _Packed.of(query_responses, pad_token_id, context_length - 2 + read.sum(1))
    if packed is None:
        return None
    rows, t = read.nonzero(as_tuple=True)  # row-major
    packed_row, packed_column = packed.where(rows, context_length - 1 + t)
    columns, column_of = torch.unique(packed_column, return_inverse=True)  # the columns any row reads
    result = model(input_ids=packed.input_ids, position_ids=packed.position_ids, return_dict=True,
                   output_hidden_states=True, use_cache=False, logits_to_keep=columns)
    output, values = result if isinstance(result, tuple) else (result, None)

    def unpack(out: torch.Tensor) -> torch.Tensor:
        picked = out[packed_row, column_of]
        return picked.new_zeros(*read.shape, picked.shape[-1]).index_put((rows, t), picked)

    return unpack(output.logits), None if values is None else unpack(values)


def score_padding_free(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int):
    """``get_reward``'s score at each row's last real token, from the packed rows (:class:`_Packed`), the head applied
    at those positions only; None when a row cannot be packed, for ``get_reward`` to handle."""
    last = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    packed = _Packed.of(query_responses, pad_token_id, last)
    if packed is None:
        return None
    backbone = getattr(model, model.base_model_prefix)
    output = backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, return_dict=True,
                      output_hidden_states=True, use_cache=False)
    at = packed.where(torch.arange(len(last), device=last.device), last)
    return model.score(output.hidden_states[-1][at]).squeeze(-1)
