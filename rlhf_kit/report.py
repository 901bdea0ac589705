"""The run report: ``summary.json``, ``report.md`` and its PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def headline(summary: dict) -> str:
    """One line with the numbers that say whether RLHF helped (policies ordered by gold score)."""
    g, (lo, hi) = summary["gold_score"], summary["win_rate_ci95"]
    order = " < ".join(f"{p} {g[p]:.3f}" for p in sorted(g, key=g.get))
    return (f"PPO beats SFT on {summary['win_rate_ppo_vs_sft']:.0%} of held-out prompts (95% CI {lo:.0%}-{hi:.0%}); "
            f"gold score {order}; RM accuracy {summary['rm_accuracy']:.2f}; KL(ppo||sft) "
            f"{summary['kl_ppo_sft']:.3f}/token")


def plot_ppo_training(log_history: list[dict], path: Path) -> None:
    """Reward-model score and KL to the reference over PPO updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in log_history if "ppo/scores" in r]  # metric names: rlhf_kit/ppo.py
    episodes = [r["ppo/episode"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(episodes, [r["ppo/scores"] for r in rows], label="RM score")
    ax1.plot(episodes, [r["ppo/rlhf_reward"] for r in rows], label="RM score - KL penalty")
    ax1.set(xlabel="episodes", ylabel="reward", title="PPO reward")
    ax1.legend(fontsize=8)
    ax2.plot(episodes, [r["ppo/kl"] for r in rows], color="tab:red")
    ax2.set(xlabel="episodes", ylabel="KL (nats / response)", title="KL to SFT reference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gold_vs_rm(per_policy: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Per-policy gold vs reward-model score: a policy whose RM score rises more than its gold score is
    over-optimising the reward model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (name, scores) in enumerate(per_policy.items()):
        ax.scatter(scores["rm"], scores["gold"], s=6, alpha=0.25, color=f"C{i}")
        mean_rm, mean_gold = sum(scores["rm"]) / len(scores["rm"]), sum(scores["gold"]) / len(scores["gold"])
        ax.scatter([mean_rm], [mean_gold], s=90, color=f"C{i}", edgecolor="black", label=f"{name} (responses, mean)")
    ax.set(xlabel="reward-model score", ylabel="gold score", title="Gold vs reward model, per policy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path, summary: dict, rules: dict[str, dict[str, float]], samples: list[dict]) -> Path:
    """``report.md`` next to ``summary.json``, with the plots written by the functions above."""
    g, rm = summary["gold_score"], summary["rm_score"]
    lines = [
        f"# RLHF report: {run_dir.name}",
        "",
        f"**{headline(summary)}**",
        "",
        "Scores are on held-out prompts; the gold labeler (rlhf_kit/gold.py) is never seen by the reward model or PPO.",
        "",
        "| policy | gold score | reward-model score | response length (tokens) |",
        "|---|---|---|---|",
    ]
    for p in ("base", "sft", "ppo"):
        lines.append(f"| {p} | {g[p]:.3f} | {rm.get(p, float('nan')):.3f} | {summary['response_length'][p]:.1f} |")
    lines += [
        "",
        f"- PPO vs SFT gold win rate (ties half): {summary['win_rate_ppo_vs_sft']:.3f}, 95% CI "
        f"[{summary['win_rate_ci95'][0]:.3f}, {summary['win_rate_ci95'][1]:.3f}]",
        f"- Reward-model pairwise accuracy against the gold order on held-out comparisons: "
        f"{summary['rm_accuracy']:.3f} "
        f"({summary['rm_accuracy_pairs']} pairs)",
        f"- Per-token KL of PPO to SFT (on PPO samples): {summary['kl_ppo_sft']:.4f}",
        "",
        "## Gold score by rule",
        "",
        "| rule | " + " | ".join(rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    for rule in next(iter(rules.values())):
        lines.append(f"| {rule} | " + " | ".join(f"{rules[p][rule]:.3f}" for p in rules) + " |")
    lines += ["", "## PPO training", "", "![PPO reward and KL](eval/ppo_training.png)", "",
              "## Over-optimisation check", "", "![gold vs reward model](eval/gold_vs_rm.png)", "",
              "## Samples (same prompts)", "", "| prompt | SFT | PPO |", "|---|---|---|"]
    for s in samples:
        cells = [s["prompt"], f"{s['sft']} ({s['gold_sft']:.2f})", f"{s['ppo']} ({s['gold_ppo']:.2f})"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary["wall_seconds"].items())]
    from rlhf_kit.runs import write_atomic

    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def write_summary(run_dir: Path, summary: dict) -> Path:
    """``summary.json`` (written atomically)."""
    from rlhf_kit.runs import write_atomic

    path = run_dir / "summary.json"
    write_atomic(path, json.dumps(summary, indent=2, sort_keys=True))
    return path
