"""Sampling PPO's rollouts: token tensors in, token tensors out, through the sampler every stage uses.

``sample_rollouts`` hands the prompts to ``rlhf_kit.sampling.generation.sample_ids`` (prompts batched by length, ended
responses leave the batch) and lays the responses out as PPO's tensors. ``generate_like_trl`` is TRL 1.12's
``batch_generation`` (``model.generate`` in chunks, with its scores): kept only so tests/test_ppo_golden.py can
replay TRL's own draws against the golden file.
"""

from __future__ import annotations

import torch


def sample_rollouts(policy, tokenizer, queries: torch.Tensor, response_length: int, temperature: float,
                    batch_size: int, stop_token_id: int | None, seeds: list[int]) -> torch.Tensor:
    """One response per left-padded query, drawn with the query's own seed: a (queries, width) tensor of response
    tokens, right-padded with the pad token after each response's stop token; width is the longest response (at
    most ``response_length``)."""
    from rlhf_kit.sampling.generation import sample_ids

    pad = tokenizer.pad_token_id
    ids = [row[row != pad].tolist() for row in queries]
    sampled = [s for (s,) in sample_ids(policy, tokenizer, ids, 1, temperature, response_length, batch_size,
                                        end_token_id=stop_token_id, seeds=seeds)]
    responses = torch.full((len(sampled), max(map(len, sampled))), pad, dtype=torch.long, device=queries.device)
    for row, tokens in zip(responses, sampled):
        row[: len(tokens)] = torch.tensor(tokens, device=queries.device)
    return responses


@torch.no_grad()
def generate_like_trl(policy, queries: torch.Tensor, chunk: int, pad_token_id: int, response_length: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL 1.12's ``batch_generation``: ``generate`` on chunks of queries (pure sampling at ``temperature`` + 1e-7,
    no top-k / top-p, stopping at the policy's ``generation_config.eos_token_id``); (query_responses, the
    processed logits of each sampled position), chunks right-padded to one width."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=response_length, temperature=temperature + 1e-7, top_k=0.0, top_p=1.0,
                              do_sample=True)
    context_length, rows, logits = queries.shape[1], [], []
    for i in range(0, queries.shape[0], chunk):
        query = queries[i: i + chunk]
        attention_mask = query != pad_token_id
        output = policy.generate(input_ids=torch.masked_fill(query, ~attention_mask, 0), attention_mask=attention_mask,
                                 generation_config=config, return_dict_in_generate=True, output_scores=True)
        rows.append(torch.cat((query, output.sequences[:, context_length:]), 1))
        logits.append(torch.stack(output.scores, 1))
    width = max(r.shape[1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_token_id) for r in rows]
    steps = width - context_length
    logits = [torch.nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]), value=0) for x in logits]
    return torch.cat(rows, 0), torch.cat(logits, 0)
