"""What a stage's process computed, counted where the work happens: tokens **sampled** (decoded by
``rlhf_kit.sampling.generation``), **scored** (forward passes over given text: reward model, value model,
log-probabilities under a policy or its reference; each model's pass counted) and **trained** (the tokens of the
batches a forward and backward pass went over, once per pass). A stage's completion record
(``stage_complete.json``) carries the counts, so a track's wall time per stage reads as tokens per second
(``benchmarks/track.py``, ``make bench-track``): where a stage's time goes, comparable across CPUs once divided by
the machine's own matmul throughput.

Counts are this process's (one of several under DDP or sharding) and this attempt's (a resumed stage counts from
where it resumed, except training tokens that the trainer itself logs from the start).
"""

from __future__ import annotations

from collections import Counter

KINDS = ("sampled", "scored", "trained")
_TOKENS: Counter = Counter()


def count(kind: str, tokens: int) -> None:
    """Add ``tokens`` of work of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of work {kind!r}; one of {KINDS}")
    _TOKENS[kind] += int(tokens)


def reset() -> None:
    """Start counting afresh (a stage's start)."""
    _TOKENS.clear()


def record() -> dict[str, int]:
    """``tokens_sampled``, ``tokens_scored``, ``tokens_trained`` so far (the completion record's fields)."""
    return {f"tokens_{k}": _TOKENS[k] for k in KINDS}
