"""Best-of-n: no training; per prompt, n samples from the SFT policy and the one the reward model scores highest.

Rejection sampling as Llama 2 uses it (Touvron et al. 2023, Sec. 3.2.3) and AlpacaFarm's strongest cheap baseline
(Dubois et al. 2023, Table 2): all its cost is at inference, n times SFT's sampling plus n reward-model passes per
prompt. Its KL to the policy it samples from has a closed-form bound, log n - (n - 1)/n nats per response
(Stiennon et al. 2020, App. G.3; shown an upper bound by Beirami et al. 2024), reported in place of a sampled KL:
the best-of-n distribution has no log-probability to evaluate.
"""

from __future__ import annotations

import functools
import math

from rlhf_kit.core.errors import UserError


def kl_bound(n: int) -> float:
    """KL(best-of-n || policy) <= log n - (n - 1)/n nats per response."""
    return math.log(n) - (n - 1) / n


def pick_best(scores: list[list[float]]) -> list[int]:
    """Per prompt, the index of the highest reward-model score among its n samples (the first one on a tie)."""
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


CHUNK = 16  # prompts per kept chunk: 256 samples at n = 16, a few minutes of a CPU's sampling


def best_of_n(policy, reward_model, tokenizer, prompts: list[list[dict]], n: int, temperature: float,
              max_new_tokens: int, batch_size: int, seed: int, score=None, keep=None) -> dict:
    """n samples per prompt from ``policy``, the reward model's favourite kept. Returns ``responses`` (one per
    prompt), ``finished`` (whether each kept one ended on its own), and the cost: ``samples`` and
    ``tokens_sampled`` (every sample's tokens, kept or not), ``rm_passes`` and ``wall_seconds``.
    ``score(prompts, responses)`` replaces the reward model (tests pass a stub whose scores are known).

    The prompts go in chunks of ``CHUNK``, each sampled and scored on its own, and ``keep(index, make)`` may keep a
    chunk's ``make()`` (the eval stage keeps each on disk: best-of-16 on the real track's 420 prompts is 6,720
    samples, hours of a CPU, and a killed eval resumes at the chunk it was on). Each prompt's samples come from
    generators seeded by the prompt's index, so the draws do not depend on the chunking or on what was resumed."""
    if n < 2:
        raise UserError(f"best_of_n={n}: best-of-n needs n >= 2 samples per prompt (16 is the usual choice)")
    keep, chunks, made = keep or (lambda index, make: make()), [], []

    def make(first: int) -> dict:
        made.append(_chunk(policy, reward_model, tokenizer, prompts[first:first + CHUNK], first, n, temperature,
                           max_new_tokens, batch_size, seed, score))
        return made[-1]

    starts = range(0, len(prompts), CHUNK)
    for index, first in enumerate(starts):
        chunks.append(keep(index, functools.partial(make, first)))
        if len(starts) > 1:  # one line a chunk: the whole draw's progress and time left (each bar is one chunk's)
            # the time left from the chunks made in this run: a kept chunk read back took no time
            eta = "time left known after the first chunk made"
            if made:
                left = sum(c["wall_seconds"] for c in made) / len(made) * (len(starts) - index - 1)
                eta = f"about {left / 60:.0f} min left"
            print(f"best-of-{n}: chunk {index + 1}/{len(starts)} done, {eta}", flush=True)
    samples = [s for c in chunks for s in c["samples"]]
    finished = [f for c in chunks for f in c["finished"]]
    best = pick_best([s for c in chunks for s in c["scores"]])
    return {"responses": [s[b] for s, b in zip(samples, best)],
            "finished": [f[b] for f, b in zip(finished, best)],
            "samples": n * len(prompts), "rm_passes": n * len(prompts),
            "tokens_sampled": sum(c["tokens_sampled"] for c in chunks),
            "kl_bound": kl_bound(n), "wall_seconds": round(sum(c["wall_seconds"] for c in chunks), 2)}


def _chunk(policy, reward_model, tokenizer, prompts, first: int, n: int, temperature: float, max_new_tokens: int,
           batch_size: int, seed: int, score) -> dict:
    """``prompts`` (the chunk starting at prompt ``first``): their n samples, whether each ended on its own, the
    scores, the tokens sampled (as drawn, end tokens included) and the seconds it took."""
    import time

    from rlhf_kit.core import work
    from rlhf_kit.eval.evaluation import score_with_reward_model
    from rlhf_kit.sampling.generation import sample_responses

    started, sampled_before, finished = time.time(), work.record()["tokens_sampled"], []
    seeds = [seed * 1_000_003 + first + i for i in range(len(prompts))]  # a prompt's own, whatever its chunk
    samples = sample_responses(policy, tokenizer, prompts, n, temperature, max_new_tokens, max(1, batch_size // n),
                               seed, finished=finished, progress=f"best-of-{n} sampling", seeds=seeds)
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s]
    flat = [r for s in samples for r in s]
    if score is None:
        score = lambda ps, rs: score_with_reward_model(  # noqa: E731
            reward_model, tokenizer, ps, rs, batch_size)
    flat_scores = score(flat_prompts, flat)
    return {"samples": samples, "finished": finished,
            "scores": [flat_scores[i * n:(i + 1) * n] for i in range(len(prompts))],
            "tokens_sampled": work.record()["tokens_sampled"] - sampled_before,
            "wall_seconds": round(time.time() - started, 2)}
