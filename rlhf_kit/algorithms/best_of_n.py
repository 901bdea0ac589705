"""Best-of-n: no training; per prompt, n samples from the SFT policy and the one the reward model scores highest.

Rejection sampling as Llama 2 uses it (Touvron et al. 2023, Sec. 3.2.3) and AlpacaFarm's strongest cheap baseline
(Dubois et al. 2023, Table 2): all its cost is at inference, n times SFT's sampling plus n reward-model passes per
prompt. Its KL to the policy it samples from has a closed-form bound, log n - (n - 1)/n nats per response
(Stiennon et al. 2020, App. G.3; shown an upper bound by Beirami et al. 2024), reported in place of a sampled KL:
the best-of-n distribution has no log-probability to evaluate.
"""

from __future__ import annotations

import math

from rlhf_kit.core.errors import UserError


def kl_bound(n: int) -> float:
    """KL(best-of-n || policy) <= log n - (n - 1)/n nats per response."""
    return math.log(n) - (n - 1) / n


def pick_best(scores: list[list[float]]) -> list[int]:
    """Per prompt, the index of the highest reward-model score among its n samples (the first one on a tie)."""
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


def best_of_n(policy, reward_model, tokenizer, prompts: list[list[dict]], n: int, temperature: float,
              max_new_tokens: int, batch_size: int, seed: int, score=None) -> dict:
    """n samples per prompt from ``policy``, the reward model's favourite kept. Returns ``responses`` (one per
    prompt), ``finished`` (whether each kept one ended on its own), and the cost: ``samples`` and
    ``tokens_sampled`` (every sample's tokens, kept or not), ``rm_passes`` and ``wall_seconds``.
    ``score(prompts, responses)`` replaces the reward model (tests pass a stub whose scores are known)."""
    import time

    from rlhf_kit.core import work
    from rlhf_kit.eval.evaluation import score_with_reward_model
    from rlhf_kit.sampling.generation import sample_responses

    started, sampled_before = time.time(), work.record()["tokens_sampled"]
    if n < 2:
        raise UserError(f"best_of_n={n}: best-of-n needs n >= 2 samples per prompt (16 is the usual choice)")
    finished: list[list[bool]] = []
    samples = sample_responses(policy, tokenizer, prompts, n, temperature, max_new_tokens,
                               max(1, batch_size // n), seed, finished=finished, progress=f"best-of-{n} sampling")
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s]
    flat = [r for s in samples for r in s]
    if score is None:
        score = lambda ps, rs: score_with_reward_model(  # noqa: E731
            reward_model, tokenizer, ps, rs, batch_size, progress=f"best-of-{n} RM")
    flat_scores = score(flat_prompts, flat)
    scores = [flat_scores[i * n:(i + 1) * n] for i in range(len(prompts))]
    best = pick_best(scores)
    return {"responses": [s[b] for s, b in zip(samples, best)],
            "finished": [f[b] for f, b in zip(finished, best)],
            "samples": len(flat), "rm_passes": len(flat),
            "tokens_sampled": work.record()["tokens_sampled"] - sampled_before,  # as drawn, end tokens included
            "kl_bound": kl_bound(n), "wall_seconds": round(time.time() - started, 2)}
