"""Sampling responses from a policy for a batch of chat prompts (demonstrations, comparisons and evaluation).

A decode loop of its own on the model's forward and transformers' ``DynamicCache`` rather than ``model.generate``,
for three savings ``generate`` does not make: prompts are batched by length, so a batch pads little (prompts of mixed
lengths in file order pad to the longest of each batch); each prompt's K samples share one prefill (``generate``
repeats the prompt K times before it); and a response that has ended leaves the batch (``generate`` keeps decoding
it until the batch's longest response ends, and with short ``max_new_tokens`` nearly every batch has one cut off).
The time each saves: docs/benchmarks.md, *Sampling and precision*.
"""

from __future__ import annotations


def sample_responses(model, tokenizer, prompts: list[list[dict]], k: int = 1, temperature: float = 1.0,
                     max_new_tokens: int = 32, batch_size: int = 64, seed: int = 0, finished: list | None = None,
                     progress: str | None = None, seeds: list[int] | None = None, ids: list | None = None,
                     logprobs: list | None = None) -> list[list[str]]:
    """``k`` sampled responses per prompt (a list of messages), decoded without special tokens, in prompt order.

    Plain sampling at ``temperature`` (no top-k, no top-p), ``batch_size`` prompts (``batch_size`` x ``k``
    sequences) at a time; a response ends at the tokenizer's end token or after ``max_new_tokens``.
    ``finished``: a list to extend with, per prompt, whether each response ended with the end token (False: cut
    off at ``max_new_tokens``); ``progress``: a label for a progress bar; ``seeds``: one per prompt, its draws then
    independent of the batching (see :func:`sample_ids`); ``ids`` and ``logprobs``: lists to extend with, per
    prompt, each response's sampled token ids and their log-probabilities (see :func:`sample_ids`)."""
    import torch

    from rlhf_kit.data.datasets import chat_ids

    torch.manual_seed(seed)
    prompt_ids = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    tokens = sample_ids(model, tokenizer, prompt_ids, k, temperature, max_new_tokens, batch_size, seeds=seeds,
                        progress=progress, logprobs=logprobs)
    if ids is not None:
        ids.extend(tokens)
    if finished is not None:
        finished.extend([tokenizer.eos_token_id in s for s in per_prompt] for per_prompt in tokens)
    return [[tokenizer.decode(s, skip_special_tokens=True).strip() for s in per_prompt] for per_prompt in tokens]


_EOS = object()  # sample_ids' default end token: the tokenizer's


def sample_ids(model, tokenizer, ids: list[list[int]], k: int, temperature: float, max_new_tokens: int,
               batch_size: int = 64, end_token_id=_EOS, seeds: list[int] | None = None,
               progress: str | None = None, logprobs: list | None = None) -> list[list[list[int]]]:
    """Per prompt (token ids), ``k`` sampled token lists, each ending with ``end_token_id`` when it ended on its own
    (default: the tokenizer's end token; None: every response runs to ``max_new_tokens``). ``batch_size`` prompts of
    similar length are sampled together. Draws come from the global torch RNG, or with ``seeds`` (one per prompt)
    from a generator per sampled sequence: then a prompt's samples do not depend on which prompts share its batch
    or process (PPO's rollouts come out the same on any number of processes). ``progress``: a label; then a bar on
    stderr counts prompts done / total with sampled tokens per second and the time left (tqdm; off with
    ``TQDM_DISABLE=1``): sampling a real model's comparisons takes minutes, and silence looks like a hang.
    ``logprobs``: a list to extend with, per prompt, each sample's log pi(y_t | ...) of its tokens under the model's
    own distribution (temperature 1, whatever ``temperature`` drew them), read off the decoding logits: the k1 KL
    estimate needs them, and a second forward over the samples would cost as much as this one's prefill and more."""
    from rlhf_kit.core import work
    from rlhf_kit.data.datasets import length_batches

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    model.eval()
    end = tokenizer.eos_token_id if end_token_id is _EOS else end_token_id
    tokens: list[list[list[int]]] = [[] for _ in ids]
    scores: list[list[list[float]]] = [[] for _ in ids]
    bar = None
    if progress:
        import time

        from tqdm.auto import tqdm

        bar, started, drawn = tqdm(total=len(ids), desc=progress, unit="prompt", mininterval=2), time.perf_counter(), 0
    for batch in length_batches(ids, batch_size):  # similar lengths together: little padding
        batch_seeds = None if seeds is None else [seeds[i] for i in batch]
        got = _sample_batch(model, tokenizer, [ids[i] for i in batch], k, temperature, max_new_tokens, end,
                            batch_seeds, logprobs is not None)
        for i, (sampled, logps) in zip(batch, got):
            tokens[i], scores[i] = sampled, logps
        work.count("sampled", sum(len(s) for i in batch for s in tokens[i]))
        if bar is not None:
            drawn += sum(len(s) for i in batch for s in tokens[i])
            bar.set_postfix_str(f"{drawn / (time.perf_counter() - started):.0f} tokens/s", refresh=False)
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if logprobs is not None:
        logprobs.extend(scores)
    return tokens


def _sample_batch(model, tokenizer, ids: list[list[int]], k: int, temperature: float,
                  max_new_tokens: int, eos: int | None, seeds: list[int] | None = None,
                  logprobs: bool = False) -> list[tuple[list[list[int]], list[list[float]]]]:
    """Per prompt, (``k`` sampled token lists, each ending with ``eos`` when it ended on its own; their tokens'
    log-probabilities at temperature 1 when ``logprobs``, else empty lists); ``seeds``: one per prompt, sample j of
    prompt i drawn from a generator seeded with (seeds[i], j)."""
    import torch
    from transformers import DynamicCache

    # Left padding: every prompt's last token is in the last column, where decoding continues.
    padded = tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt").to(model.device)
    input_ids, mask = padded["input_ids"], padded["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        if k > 1:  # one prefill per prompt, then its k samples part ways
            logits, mask, positions = (t.repeat_interleave(k, 0) for t in (logits, mask, positions))
            cache.batch_repeat_interleave(k)
        rows = list(range(len(ids) * k))  # the sequence each remaining batch row belongs to
        generators = None if seeds is None else [
            torch.Generator(device=logits.device).manual_seed(seeds[j // k] * 1009 + j % k) for j in rows]
        sampled: list[list[int]] = [[] for _ in rows]
        scores: list[list[float]] = [[] for _ in rows]
        position = positions[:, -1]
        for step in range(max_new_tokens):
            next_tokens = draw_tokens(logits, temperature, generators and [generators[row] for row in rows])
            for row, token in zip(rows, next_tokens.tolist()):
                sampled[row].append(token)
            if logprobs:
                # log softmax at the drawn token only: its logit less the log-sum-exp, no vocabulary-wide tensor
                full = logits.float()
                read = full.gather(1, next_tokens[:, None])[:, 0] - full.logsumexp(-1)
                for row, score in zip(rows, read.tolist()):
                    scores[row].append(score)
            going = next_tokens != eos if eos is not None else torch.ones_like(next_tokens, dtype=torch.bool)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):  # ended responses leave the batch (and the cache) instead of decoding on
                keep = going.nonzero().squeeze(1)
                rows = [rows[j] for j in keep.tolist()]
                next_tokens, mask, position = next_tokens[keep], mask[keep], position[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            position = position + 1
            logits = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                           cache=cache, use_cache=True).logits[:, -1]
    return [(sampled[j * k : (j + 1) * k], scores[j * k : (j + 1) * k]) for j in range(len(ids))]


def draw_tokens(logits, temperature: float, generators: list | None = None):
    """One token per row of ``logits``, drawn from softmax(logits / temperature) by inverting its CDF with one
    uniform number per row (from ``generators[row]`` when given, else the global torch RNG).

    ``torch.multinomial`` draws the same distribution, but for one sample it draws an exponential number for every
    vocabulary entry of every row, serially: 98 ms a step for 64 rows of SmolLM2's 49,152 tokens on 2 CPU cores,
    against 7 ms for a softmax, a cumulative sum and a binary search (docs/benchmarks.md, *Sampling and precision*).
    The sum runs in float64 so that the rarest tokens keep their probability."""
    import torch

    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1, dtype=torch.float64)
    if generators is None:
        u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device)
    else:
        u = torch.cat([torch.rand(1, 1, dtype=torch.float64, device=cdf.device, generator=g) for g in generators])
    # right=True: the first entry whose CDF exceeds u, so a token of probability 0 is never drawn.
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(1)

