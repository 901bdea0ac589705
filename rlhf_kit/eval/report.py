"""The run report: ``summary.json``, ``report.md`` and its PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def compared(summary: dict) -> tuple[str, str]:
    """(policy, baseline) of the headline: the last policy that is not the baseline."""
    baseline = summary["baseline"]
    untrained = (summary.get("best_of_n") or {}).get("policy")  # compared in the table, not the headline
    return [p for p in summary["policies"] if p not in (baseline, untrained)][-1], baseline


def headline(summary: dict) -> str:
    """One line with the numbers that say whether RLHF helped (policies ordered by judge score)."""
    policy, baseline = compared(summary)
    win = summary["win_rate_vs_baseline"][policy]
    g, (lo, hi) = summary["judge_score"], win["ci95"]
    order = " < ".join(f"{p} {g[p]:.3f}" for p in sorted(g, key=g.get))
    rm = f"; RM accuracy {summary['rm_accuracy']:.2f}" if "rm_accuracy" in summary else ""
    line = (f"{policy.upper()} beats {baseline.upper()} on {win['win_rate']:.0%} of held-out prompts "
            f"(95% CI {lo:.0%}-{hi:.0%}); judge score {order}{rm}; KL({policy}||{baseline}) "
            f"{summary['kl_to_baseline'][policy]:.3f}/token")
    reports = summary.get("judge_report") or {}
    if all("follows_and_task" in r for r in reports.values()) and reports:  # a judge that sees the whole answer
        cells = [f"{p} {r['follows_and_task']['accuracy']:.3f} [{r['follows_and_task']['ci95'][0]:.3f}, "
                 f"{r['follows_and_task']['ci95'][1]:.3f}]" for p, r in reports.items()]
        line += f"; follows and does the task: {', '.join(cells)}"
    return line


def plot_training(stage_dir: str, path: Path, selected: int | None = None) -> bool:
    """Reward-model score and KL to the reference over PPO updates, from a PPO stage's ``log_history.json``, and
    with the over-optimisation monitor's probes (rlhf_kit/ppo/monitor.py) the judge's score against the RM's on the
    same answers, their length and distinct-2, the kept update (``selected``, or the finished stage's
    ``selected_update``) marked; False (and no plot) when the stage logged no PPO metrics."""
    from rlhf_kit.core.runs import MARKER

    stage = Path(stage_dir)
    log = stage / "log_history.json"
    history = json.loads(log.read_text()) if log.is_file() else []
    rows = [r for r in history if "ppo/scores" in r]  # rlhf_kit/ppo/__init__.py
    if not rows:
        return False
    probes = [r for r in history if "probe/judge_score" in r]
    if selected is None and (stage / MARKER).is_file():
        selected = json.loads((stage / MARKER).read_text()).get("selected_update")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = [r["ppo/episode"] for r in rows]
    fig, axes = plt.subplots(2 if probes else 1, 2, figsize=(9, 6.4 if probes else 3.2), squeeze=False)
    (ax1, ax2) = axes[0]
    ax1.plot(episodes, [r["ppo/scores"] for r in rows], label="RM score")
    ax1.plot(episodes, [r["ppo/rlhf_reward"] for r in rows], label="RM score - KL penalty")
    ax1.set(xlabel="episodes", ylabel="reward", title="PPO reward")
    ax1.legend(fontsize=8)
    ax2.plot(episodes, [r["ppo/kl"] for r in rows], color="tab:red")
    ax2.set(xlabel="episodes", ylabel="KL (nats / response)", title="KL to SFT reference")
    if probes:
        ax3, ax4 = axes[1]
        _twin_panel(ax3, probes, ("probe/judge_score", "judge score", "tab:green"),
                    ("probe/rm_score", "RM score", "tab:blue"), "Probe answers: judge vs reward model")
        _twin_panel(ax4, probes, ("probe/length", "length (tokens)", "tab:purple"),
                    ("probe/distinct_2", "distinct-2", "tab:orange"), "Probe answers: length and distinct-2")
        for r in probes:
            if r.get("probe/overoptimised"):
                ax3.axvline(r["ppo/episode"], color="tab:red", alpha=0.3)
    if selected is not None:
        kept = [r["ppo/episode"] for r in history if r.get("step") == selected and "ppo/episode" in r]
        for ax in axes.flat:
            for x in kept[:1]:
                ax.axvline(x, color="black", linestyle=":", label="kept")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _twin_panel(ax, records: list[dict], left: tuple, right: tuple, title: str) -> None:
    """Two metrics of ``records`` over episodes on one panel, each on its own y axis; ``left``/``right``: (key,
    label, colour)."""
    at = [r["ppo/episode"] for r in records]
    twin = ax.twinx()
    for axis, (key, label, colour), style in ((ax, left, "o-"), (twin, right, "s--")):
        axis.plot(at, [r[key] for r in records], style, color=colour, label=label)
        axis.set_ylabel(label)
    ax.set(xlabel="episodes", title=title)
    ax.legend(handles=ax.get_lines() + twin.get_lines(), fontsize=8)


def plot_judge_vs_rm(per_policy: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Per-policy judge vs reward-model score: a policy whose RM score rises more than its judge score is
    over-optimising the reward model (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (name, scores) in enumerate(per_policy.items()):
        ax.scatter(scores["rm"], scores["judge"], s=6, alpha=0.25, color=f"C{i}")
        mean_rm, mean_judge = sum(scores["rm"]) / len(scores["rm"]), sum(scores["judge"]) / len(scores["judge"])
        ax.scatter([mean_rm], [mean_judge], s=90, color=f"C{i}", edgecolor="black", label=f"{name} (responses, mean)")
    ax.set(xlabel="reward-model score", ylabel="judge score", title="Judge vs reward model, per policy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_type(judge_report: dict[str, dict], path: Path) -> None:
    """Per instruction type, each policy's strict accuracy (a benchmark judge's ``per_type`` table, e.g. IFEval's):
    shows which instructions RLHF taught and whether any got worse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(judge_report)
    types = list(judge_report[policies[0]]["per_type"])  # every policy answered the same prompts
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(types) + 2), 3.8))
    for i, p in enumerate(policies):
        per_type = judge_report[p]["per_type"]
        ax.bar([x + i * width for x in range(len(types))], [per_type[t]["strict"] for t in types],
               width, label=p, color=f"C{i}")
    ax.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(types))])
    ax.set_xticklabels([t.split(":")[-1] for t in types], rotation=35, ha="right", fontsize=8)
    ax.set(ylabel="followed (strict)", ylim=(0, 1), title="Instructions followed, by type (held-out prompts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def benchmark_lines(summary: dict, eval_dir: str) -> list[str]:
    """The report section of a benchmark judge (``summary["judge_report"]``, e.g. IFEval): its own accuracies per
    policy with 95% intervals (with a task check: the task rate and "follows and does the task", the headline), the
    shares of empty and cut-off responses (a policy can "follow" *no commas* by saying nothing), the degenerate
    shares when the judge reports them, and the per-type table."""
    reports = summary.get("judge_report")
    if not reports:
        return []
    first = next(iter(reports.values()))
    keys = tuple(k for k in ("follows_and_task", "prompt_strict", "prompt_loose", "instruction_strict",
                             "instruction_loose", "does_task") if k in first)
    n = first["prompt_strict"]["n"]  # every policy answered the same prompts
    lines = ["", f"## {summary['judge']} accuracy ({n} held-out prompts, 95% Wilson intervals)", "",
             "| policy | " + " | ".join(k.replace("_", " ") for k in keys) + " | empty | cut off |",
             "|---|" + "---|" * (len(keys) + 2)]
    for p, r in reports.items():
        cells = [f"{r[k]['accuracy']:.3f} [{r[k]['ci95'][0]:.3f}, {r[k]['ci95'][1]:.3f}]" for k in keys]
        shares = [f"{summary.get(s, {}).get(p, float('nan')):.3f}" for s in ("empty_share", "cut_off_share")]
        lines.append(f"| {p} | " + " | ".join(cells + shares) + " |")
    if "degenerate" in first:
        reasons = list(first["degenerate"])
        lines += ["", "Degenerate responses (share of prompts; `any`: the task check fails):", "",
                  "| policy | " + " | ".join(k.replace("_", " ") for k in reasons) + " |",
                  "|---|" + "---|" * len(reasons)]
        lines += [f"| {p} | " + " | ".join(f"{r['degenerate'][k]:.3f}" for k in reasons) + " |"
                  for p, r in reports.items()]
    per_type = first["per_type"]  # the same prompts, so the same types and counts
    columns = [("strict", "strict")] + ([("strict_and_task", "strict and task")]
                                        if "strict_and_task" in next(iter(per_type.values()), {}) else [])
    for key, label in columns:
        lines += ["", f"| instruction type ({label}) | n | " + " | ".join(reports) + " |",
                  "|---|---|" + "---|" * len(reports)]
        for t in per_type:
            lines.append(f"| {t} | {per_type[t]['n']} | " + " | ".join(f"{r['per_type'][t][key]:.3f}"
                                                                     for r in reports.values()) + " |")
    return lines + ["", f"![instructions followed by type]({eval_dir}/per_type.png)"]


def write_report(run_dir: Path, summary: dict, samples: list[dict], eval_dir: str = "eval") -> Path:
    """``report.md`` next to ``summary.json``, with the plots the functions above wrote in ``run_dir/eval_dir``."""
    from rlhf_kit.core.runs import write_atomic

    policy, baseline = compared(summary)
    g, rm, rules = summary["judge_score"], summary.get("rm_score", {}), summary["judge_rules"]
    lines = [
        f"# RLHF report: {run_dir.name}",
        "",
        f"**{headline(summary)}**",
        "",
        f"Scores are on held-out prompts, by the `{summary['judge']}` judge, which the reward model and PPO never see.",
        "",
        f"| policy | judge score | reward-model score | win rate vs {baseline} (95% CI) | KL to {baseline} "
        "| response length (tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for p in summary["policies"]:
        win = summary["win_rate_vs_baseline"].get(p)
        win_cell = f"{win['win_rate']:.3f} [{win['ci95'][0]:.3f}, {win['ci95'][1]:.3f}]" if win else "baseline"
        kl = summary["kl_to_baseline"].get(p)
        lines.append(f"| {p} | {g[p]:.3f} | {rm.get(p, float('nan')):.3f} | {win_cell} | "
                     f"{'' if kl is None else f'{kl:.4f}'} | {summary['response_length'][p]:.1f} |")
    lines += [""]
    if "rm_accuracy" in summary:
        lines += [f"- Reward-model pairwise accuracy against the judge's order on held-out comparisons: "
                  f"{summary['rm_accuracy']:.3f} ({summary['rm_accuracy_pairs']} pairs)"]
    between = summary.get("rm_accuracy_between_policies")
    if between:
        lines += ["- The same, on two policies' responses to the same held-out prompt (pairs the judge separates): "
                  + "; ".join(f"{k} {v['accuracy']:.3f} ({v['pairs']} pairs)" for k, v in between.items())
                  + ". A pair with a policy trained against the reward model tests over-optimisation."]
    lines += [
        f"- Win rates count ties as half; KL is per token, of each policy to {baseline}, on the policy's samples.",
        "",
        "## Judge score by rule",
        "",
        "| rule | " + " | ".join(rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    for rule in next(iter(rules.values())):
        lines.append(f"| {rule} | " + " | ".join(f"{rules[p][rule]:.3f}" for p in rules) + " |")
    if "rm_accuracy_previous" in summary:
        prev = summary["rm_accuracy_previous"]
        lines += [f"- The same comparisons scored by the earlier reward model {prev['reward_model']}: "
                  f"{prev['accuracy']:.3f} (before retraining)"]
    if "rm_accuracy_reference" in summary:
        ref = summary["rm_accuracy_reference"]
        lines += [f"- On the held-out comparisons of {ref['comparisons']}: {ref['accuracy']:.3f} "
                  f"({ref['pairs']} pairs)"]
    for opponent, h2h in summary.get("head_to_head", {}).items():
        lines += [f"- {policy} against {opponent}, head to head: {h2h['win_rate']:.3f} "
                  f"[{h2h['ci95'][0]:.3f}, {h2h['ci95'][1]:.3f}]"]
    lines += benchmark_lines(summary, eval_dir)
    if (run_dir / eval_dir / "ppo_training.png").is_file():
        lines += ["", "## PPO training", "", f"![PPO reward and KL]({eval_dir}/ppo_training.png)"]
    if (run_dir / eval_dir / "judge_vs_rm.png").is_file():
        lines += ["", "## Over-optimisation check", "", f"![judge vs reward model]({eval_dir}/judge_vs_rm.png)"]
    lines += ["", "## Samples (same prompts)", "", f"| prompt | {baseline.upper()} | {policy.upper()} |",
              "|---|---|---|"]
    for s in samples:
        cells = [s["prompt"], f"{s['baseline']} ({s['score_baseline']:.2f})",
                 f"{s['policy']} ({s['score_policy']:.2f})"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary["wall_seconds"].items())]
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def write_summary(run_dir: Path, summary: dict) -> Path:
    """``summary.json`` (written atomically)."""
    from rlhf_kit.core.runs import write_atomic

    path = run_dir / "summary.json"
    write_atomic(path, json.dumps(summary, indent=2, sort_keys=True))
    return path
