"""Which method wins on your data: every policy of one eval (base, SFT, PPO, DPO, RLOO, GRPO, best-of-n) in one
table with 95% intervals, a bar chart and a cost-vs-gain plot (``make compare-algorithms``).

Fair by construction: the methods start from one SFT policy and share the rankings (DPO) or the reward model
(PPO, RLOO, GRPO, best-of-n), the prompts, the response length and the eval's seed; each stage's YAML says where
its hyperparameters come from. Cost is what each method spent: its stage's wall time, the responses it sampled
(training rollouts; best-of-n's n per eval prompt) and its optimizer steps. A method that sampled more responses
than PPO is marked, as is one that took more optimizer steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import read_config, write_atomic

TRAINED = ("ppo", "dpo", "rloo", "grpo")


def _last(log: list[dict], key: str) -> int | None:
    """The largest ``key`` a log history holds; None without it."""
    values = [r[key] for r in log if key in r]
    return max(values) if values else None


def training_cost(stage_dir: Path, config: dict) -> dict:
    """What a trained method spent: responses sampled while training (0 for DPO) and optimizer steps. PPO logs one
    step per update (a batch of rollouts) and takes num_ppo_epochs x num_mini_batches optimizer steps in each (TRL
    1.12's loop); TRL's trainers log optimizer steps. Counts are per process. ``config``: the stage's resolved
    config."""
    path = stage_dir / "log_history.json"
    log = json.loads(path.read_text()) if path.is_file() else []
    steps, stage = _last(log, "step"), config.get("stage")
    if stage == "ppo":  # the episodes logged: probe_patience may stop PPO before total_episodes
        sampled = _last(log, "ppo/episode") or config.get("total_episodes")
        steps = steps and steps * config.get("num_ppo_epochs", 4) * config.get("num_mini_batches", 1)
    elif stage in ("rloo", "grpo"):
        # TRL samples per_device_train_batch_size x steps_per_generation completions every steps_per_generation x
        # num_iterations micro-batches (GRPOTrainer._prepare_inputs), so each batch is reused num_iterations times
        micro_batches = config["max_steps"] * config["gradient_accumulation_steps"]
        sampled = micro_batches * config["per_device_train_batch_size"] // config.get("num_iterations", 1)
    else:
        sampled = 0
    return {"responses_sampled": sampled, "optimizer_steps": steps}


def _pair(between: dict, a: str, b: str) -> dict | None:
    return between.get(f"{a} vs {b}") or between.get(f"{b} vs {a}")


def comparison_rows(run_dir: Path, summary: dict) -> list[dict]:
    """One row per policy of the summary: the judge's figures with intervals and each method's cost."""
    base = summary["baseline"]
    best = summary.get("best_of_n") or {}
    between = summary.get("rm_accuracy_between_policies", {})
    rows = []
    for p in summary["policies"]:
        row = {"policy": p, "judge_score": summary["judge_score"][p], "judge_ci95": summary["judge_score_ci95"][p],
               "win_rate": None, "win_ci95": None, "kl": summary["kl_to_baseline"].get(p),
               "length": summary["response_length"][p], "cut_off": summary["cut_off_share"][p],
               "empty": summary["empty_share"][p], "wall_seconds": summary["wall_seconds"].get(p),
               "responses_sampled": 0, "optimizer_steps": 0}
        if p != base:
            win = summary["win_rate_vs_baseline"][p]
            row["win_rate"], row["win_ci95"] = win["win_rate"], win["ci95"]
            pair = _pair(between, base, p)
            row["rm_accuracy_vs_baseline"] = pair["accuracy"] if pair else None
            # the headline's paired difference (IFEval's "follows and does the task", else the judge score): a
            # method beats SFT by more than the noise when its interval is above 0
            diffs = summary.get("vs_baseline", {}).get(p) or {}
            row["vs_baseline"] = diffs.get("follows_and_task") or diffs.get("judge_score")
        report = (summary.get("judge_report") or {}).get(p)
        if report:  # a benchmark judge's own figures, e.g. IFEval's (the real track's headline first)
            row["follows_and_task"] = report["follows_and_task"]
            row["strict"] = report.get("prompt_strict")
            row["degenerate"] = report["degenerate"]["any"]
        stage_dir = run_dir / p
        if p == best.get("policy"):
            row |= {"responses_sampled": best["samples"], "wall_seconds": best["wall_seconds"], "optimizer_steps": 0}
        elif (stage_dir / "rlhf_kit_config.yaml").is_file():
            config = read_config(str(stage_dir))
            row |= training_cost(stage_dir, config) if config.get("stage") in TRAINED else {}
        rows.append(row)
    ppo = next((r for r in rows if r["policy"] == "ppo"), None)
    for r in rows:
        r["more_compute_than_ppo"] = bool(ppo and r["policy"] != "ppo" and (
            (r["responses_sampled"] or 0) > (ppo["responses_sampled"] or 0)
            or (r["optimizer_steps"] or 0) > (ppo["optimizer_steps"] or 0)))
    return rows


def _ci(x, ci) -> str:
    return "-" if x is None else f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _signed(d: dict | None) -> str:
    return "-" if not d else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _num(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def write_comparison(out_dir: str | Path, run_dir: str | Path) -> Path:
    """``algorithms.md``, ``algorithms.png`` (judge score per method with its 95% interval) and
    ``cost_vs_gain.png`` (win rate over SFT against wall time) in ``out_dir``, next to the eval's ``summary.json``;
    the policies' stage folders are in ``run_dir``."""
    out_dir = Path(out_dir)
    path = out_dir / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} not found; run the comparison's eval first (make compare-algorithms)")
    summary = json.loads(path.read_text())
    rows = comparison_rows(Path(run_dir), summary)
    ifeval = any("follows_and_task" in r for r in rows)
    head = ["policy", "judge score [95% CI]", f"win rate vs {summary['baseline']} [95% CI]",
            f"headline - {summary['baseline']} [95% CI, paired]"]
    head += ["follows and does the task [95% CI]", "IFEval strict [95% CI]", "degenerate"] if ifeval else []
    head += ["KL to SFT /token", "length", "cut off", "empty", "RM acc. vs SFT's", "wall s", "responses sampled",
             "optimizer steps"]
    lines = [f"# Which method wins: {len(rows)} policies on {summary['eval_prompts']} held-out prompts", "",
             f"Judge: {summary['judge']}. Every method starts from SFT; † marks a method that sampled more responses "
             "or took more optimizer steps than PPO.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["policy"] + (" †" if r["more_compute_than_ppo"] else ""), _ci(r["judge_score"], r["judge_ci95"]),
                 _ci(r["win_rate"], r["win_ci95"]), _signed(r.get("vs_baseline"))]
        if ifeval:
            f, s = r.get("follows_and_task"), r.get("strict")
            cells += [_ci(f["accuracy"], f["ci95"]) if f else "-", _ci(s["accuracy"], s["ci95"]) if s else "-",
                      _num(r.get("degenerate"), "{:.1%}")]
        cells += [_num(r["kl"]), _num(r["length"], "{:.1f}"), _num(r["cut_off"], "{:.1%}"),
                  _num(r["empty"], "{:.1%}"), _num(r.get("rm_accuracy_vs_baseline")),
                  _num(r["wall_seconds"], "{:.0f}"), _num(r["responses_sampled"], "{:,}"),
                  _num(r["optimizer_steps"], "{:,}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![judge score per method](algorithms.png)", "", "![cost vs gain](cost_vs_gain.png)", ""]
    _plots(rows, out_dir)
    out = out_dir / "algorithms.md"
    write_atomic(out, "\n".join(lines))
    write_atomic(out_dir / "algorithms.json", json.dumps(rows, indent=1))
    return out


def _plots(rows: list[dict], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.6))
    names = [r["policy"] for r in rows]
    means = [r["judge_score"] for r in rows]
    err = [[m - r["judge_ci95"][0] for m, r in zip(means, rows)],
           [r["judge_ci95"][1] - m for m, r in zip(means, rows)]]
    ax.bar(names, means, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(rows))])
    ax.set(ylabel="judge score (95% CI)", title="Judge score per method")
    fig.tight_layout()
    fig.savefig(run_dir / "algorithms.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for i, r in enumerate(rows):
        if r["win_rate"] is None or r["wall_seconds"] is None:
            continue
        lo, hi = r["win_ci95"]
        ax.errorbar([r["wall_seconds"]], [r["win_rate"]], yerr=[[r["win_rate"] - lo], [hi - r["win_rate"]]],
                    fmt="o", color=f"C{i}", capsize=3, label=r["policy"])
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="wall time of the method (s)", ylabel="win rate vs SFT (95% CI)", title="Cost vs gain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "cost_vs_gain.png", dpi=110)
    plt.close(fig)


def locate(config_or_dir: str) -> tuple[Path, Path]:
    """(where the eval wrote summary.json, the run folder holding the policies' stages): from an eval config, the
    parent of its ``output_dir`` (default ``<run_dir>/eval``) and its ``run_dir``, as the eval stage resolves them;
    from a folder, the folder and its parent (``runs/demo/algorithms`` in ``runs/demo``)."""
    import yaml

    path = Path(config_or_dir)
    if path.suffix not in (".yaml", ".yml"):
        return path, path.parent
    if not path.is_file():
        raise UserError(f"eval config {path} not found; pass the comparison's eval YAML or its output folder")
    config = yaml.safe_load(path.read_text()) or {}
    run_dir = config.get("run_dir", "runs/demo")
    return Path(config.get("output_dir") or f"{run_dir}/eval").parent, Path(run_dir)


def main(argv: list[str] | None = None) -> None:
    """``python -m rlhf_kit.algorithms.compare <eval.yaml or folder>``: the comparison report of that eval."""
    import argparse

    from rlhf_kit.core.errors import exit_on_user_error

    parser = argparse.ArgumentParser(prog="python -m rlhf_kit.algorithms.compare", description=main.__doc__)
    parser.add_argument("eval", help="the comparison's eval config (recipes/configs/demo/algorithms/eval.yaml) or "
                                     "the folder holding its summary.json (runs/demo/algorithms)")
    args = parser.parse_args(argv)
    print(f"wrote {exit_on_user_error(lambda: write_comparison(*locate(args.eval)))}")


if __name__ == "__main__":
    main()
