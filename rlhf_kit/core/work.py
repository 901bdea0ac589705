"""What a stage's process computed, counted where the work happens: tokens **sampled** (decoded by
``rlhf_kit.sampling.generation``), **scored** (forward passes over given text: reward model, value model,
log-probabilities under a policy or its reference; each model's pass counted) and **trained** (the tokens of the
batches a forward and backward pass went over, once per pass). A stage's completion record
(``stage_complete.json``) carries the counts, so a track's wall time per stage reads as tokens per second
(``benchmarks/track.py``, ``make bench-track``): where a stage's time goes, comparable across CPUs once divided by
the machine's own matmul throughput.

Counts are this process's (one of several under DDP or sharding). A resumed stage counts its whole run: each
checkpoint keeps the work and wall time spent up to it (``work.json``, :func:`save`), and the resumed attempt carries
them over (:func:`resume`), so the record reads as an unbroken run's, less the work lost between the checkpoint and the
kill; an eval's kept parts carry their seconds the same way (:func:`carry`). Training tokens that a TRL trainer logs
itself (from the start) are counted at the end, not carried.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

KINDS = ("sampled", "scored", "trained")
FILE = "work.json"  # in a checkpoint folder: the work and seconds spent up to that checkpoint
_TOKENS: Counter = Counter()
_CLOCK = {"started": time.time(), "carried": 0.0}


def count(kind: str, tokens: int) -> None:
    """Add ``tokens`` of work of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of work {kind!r}; one of {KINDS}")
    _TOKENS[kind] += int(tokens)


def reset(started: float | None = None) -> None:
    """Start counting afresh (a stage's start, at ``started``, a ``time.time()``; default now)."""
    _TOKENS.clear()
    _CLOCK.update(started=time.time() if started is None else started, carried=0.0)


def carried_seconds() -> float:
    """Wall seconds a resumed stage spent before the checkpoint it resumed from (0 for an unbroken one)."""
    return _CLOCK["carried"]


def elapsed() -> float:
    """Wall seconds of the stage so far: since its start, plus what a resume carried over."""
    return _CLOCK["carried"] + time.time() - _CLOCK["started"]


def save(folder: str | Path) -> None:
    """Keep the work and wall time so far in checkpoint ``folder`` (the main process calls this as it saves)."""
    Path(folder, FILE).write_text(json.dumps({"wall_seconds": round(elapsed(), 2), **record()}))


def resume(folder: str | Path) -> None:
    """Carry over the work and wall time that checkpoint ``folder`` kept (nothing when it kept none: a checkpoint
    from before they were kept, or one killed between its save and this file)."""
    path = Path(folder, FILE)
    if not path.is_file():
        return
    kept = json.loads(path.read_text())
    carry(kept["wall_seconds"])
    for kind in KINDS:
        _TOKENS[kind] += kept.get(f"tokens_{kind}", 0)


def carry(seconds: float) -> None:
    """Count ``seconds`` an earlier attempt spent on work this one reuses (a checkpoint, an eval's kept part)."""
    _CLOCK["carried"] += seconds


def record() -> dict[str, int]:
    """``tokens_sampled``, ``tokens_scored``, ``tokens_trained`` so far (the completion record's fields)."""
    return {f"tokens_{k}": _TOKENS[k] for k in KINDS}
