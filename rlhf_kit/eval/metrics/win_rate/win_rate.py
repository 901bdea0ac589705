"""Win rate of policy A over policy B from per-prompt scores, ties counted half, with a 95% confidence interval.

InstructGPT (Ouyang et al. 2022, Sec. 4.1) reports how often labelers prefer one model's output to another's on
held-out prompts. The interval is the normal approximation over per-prompt outcomes in {0, 0.5, 1}.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Share of prompts where predictions (A's score) beat references (B's score); ties count 0.5."
_KWARGS = """
Args:
    predictions: scores of policy A, one per prompt.
    references: scores of policy B on the same prompts.
    z: normal quantile of the interval (1.96 for 95%).
Returns:
    win_rate, ci95_low, ci95_high, wins, ties, losses, n.
"""


class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Ouyang et al. 2022, Training language models to follow instructions with human feedback",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references, z: float = 1.96):
        outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(predictions, references)]
        n = len(outcomes)
        mean = sum(outcomes) / n
        var = sum((o - mean) ** 2 for o in outcomes) / (n - 1) if n > 1 else 0.0
        half = z * math.sqrt(var / n)
        return {
            "win_rate": mean,
            "ci95_low": max(0.0, mean - half),
            "ci95_high": min(1.0, mean + half),
            "wins": outcomes.count(1.0),
            "ties": outcomes.count(0.5),
            "losses": outcomes.count(0.0),
            "n": n,
        }
