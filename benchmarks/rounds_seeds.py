"""The demo's headline figures over seeds, after one round and after the last: mean, spread (min-max) and each
seed (issue 12). Reads ``runs/rounds-seed<s>/rounds.json`` as written by ``make rounds SEED=<s>``.

    make bench-rounds            # = make rounds SEED=0, 1, 2, then this script
    python benchmarks/rounds_seeds.py runs/rounds-seed0 runs/rounds-seed1 runs/rounds-seed2
"""

import json
import statistics
import sys
from pathlib import Path

FIGURES = [  # (key in a round's row, label)
    ("win_rate_vs_sft", "win rate vs SFT"),
    ("win_rate_vs_sft_ci_low", "  95% CI low"),
    ("judge_score", "judge score"),
    ("rm_accuracy_after", "RM accuracy"),
    ("rm_accuracy_before", "RM accuracy before retraining"),
    ("rm_accuracy_round1_comparisons", "RM accuracy on round 1's comparisons"),
    ("win_rate_vs_round1", "win rate vs round 1"),
    ("win_rate_vs_round1_ci_low", "  95% CI low"),
    ("kl_to_sft", "KL to SFT (per token)"),
    ("wall", "wall time of the rounds (s)"),
]


def figures(row: dict) -> dict:
    """A round's row with the derived figures (CI lows, wall time)."""
    out = dict(row)
    out["win_rate_vs_sft_ci_low"] = row["win_rate_vs_sft_ci95"][0]
    if "win_rate_vs_round1_ci95" in row:
        out["win_rate_vs_round1_ci_low"] = row["win_rate_vs_round1_ci95"][0]
    out["wall"] = sum(row["wall_seconds"].values())
    return out


def main(run_dirs: list[str]) -> None:
    runs = {Path(d).name: json.loads((Path(d) / "rounds.json").read_text())["rounds"] for d in run_dirs}
    for label, pick in (("round 1", lambda rows: rows[0]), ("last round", lambda rows: rows[-1])):
        rows = {name: figures(pick(r)) for name, r in runs.items()}
        last = {name: r["round"] for name, r in rows.items()}
        print(f"\n## {label} ({', '.join(f'{n}: round {r}' for n, r in last.items())})\n")
        print("| figure | mean | min | max | " + " | ".join(rows) + " |")
        print("|---" * (4 + len(rows)) + "|")
        for key, name in FIGURES:
            values = [r.get(key) for r in rows.values()]
            if any(v is None for v in values):
                continue
            mean, lo, hi = statistics.mean(values), min(values), max(values)
            print(f"| {name} | {mean:.3f} | {lo:.3f} | {hi:.3f} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    cum = {name: sum(sum(r["wall_seconds"].values()) for r in rows) for name, rows in runs.items()}
    print("\nwall time of all rounds (s, setup stages excluded): " + ", ".join(f"{n} {v:.0f}" for n, v in cum.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
