"""The demo world's simulated labeler: ranks responses by the gold score plus Gaussian noise."""

from __future__ import annotations

import json
import random

from rlhf_kit.core.errors import UserError
from rlhf_kit.worlds.demo.gold import score_gold


def rank_responses(prompt: dict, responses: list[str], noise: float, rng: random.Random) -> list[int]:
    """Simulated labeler: ranks (0 = best) from the gold score plus Gaussian noise of std ``noise``.

    Identical responses share a rank (a tie makes no comparison pair), as InstructGPT's interface let labelers
    mark ties. The noise models labeler disagreement (InstructGPT: ~73% inter-labeler agreement).
    """
    noisy: dict[str, float] = {}
    for r in responses:
        if r not in noisy:
            noisy[r] = score_gold(prompt, r) + rng.gauss(0.0, noise)
    order = sorted(noisy, key=lambda r: -noisy[r])
    rank_of = {r: i for i, r in enumerate(order)}
    return [rank_of[r] for r in responses]


class SimulatedLabeler:
    """:class:`rlhf_kit.worlds.Labeler` over demo-world prompt rows (they carry the task in ``meta``).

    One random stream for the whole collection, seeded once, so a run's rankings depend on its seed only.
    """

    def __init__(self, noise: float = 0.1, seed: int = 0):
        self.noise, self.rng = noise, random.Random(seed)

    def check_rows(self, rows: list[dict], source: str) -> None:
        if not rows or "meta" not in rows[0]:
            raise UserError(f"prompts {source} lack the `meta` column the simulated labeler reads; "
                            "use the demo world's prompts.jsonl or another labeler")

    def rank(self, row: dict, responses: list[str]) -> dict:
        return {"ranks": rank_responses(json.loads(row["meta"]), responses, self.noise, self.rng)}
