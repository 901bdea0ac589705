"""Metrics shipped as local ``evaluate`` modules (Hub metrics cannot load offline)."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def load_metric(name: str):
    """``evaluate.load`` of a metric folder inside this package: ``win_rate`` or ``pairwise_accuracy``."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))
