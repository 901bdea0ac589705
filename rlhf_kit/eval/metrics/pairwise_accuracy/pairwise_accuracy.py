"""Reward-model pairwise accuracy: how often r(x, y_w) > r(x, y_l) for pairs ordered by a reference labeler.

The reward-model validation accuracy of InstructGPT (Ouyang et al. 2022, Sec. 3.5 and Appendix C.2). A margin of
exactly zero counts half.
"""

import datasets
import evaluate

_KWARGS = """
Args:
    predictions: reward of the preferred response, one per pair.
    references: reward of the dispreferred response of the same pair.
Returns:
    accuracy, n.
"""


class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of pairs where the preferred response gets the higher reward.",
            citation="Ouyang et al. 2022, Training language models to follow instructions with human feedback",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        hits = [1.0 if w > lo else 0.5 if w == lo else 0.0 for w, lo in zip(predictions, references)]
        return {"accuracy": sum(hits) / len(hits) if hits else float("nan"), "n": len(hits)}
