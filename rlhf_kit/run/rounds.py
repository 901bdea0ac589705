"""RLHF rounds: "We performed several iterations of this process" (OpenAI, ChatGPT, 2022).

After the setup stages (the demo: ``base``, ``sft``), each round r = 1..R runs, in ``<run_dir>/round-<r>/``:

1. ``compare``: K samples per prompt from the current policy (round 1: SFT; later: the previous round's PPO policy),
   ranked by the configured labeler, so the reward model keeps seeing the distribution it must judge (Llama 2,
   Touvron et al. 2023, Sec. 3.2.2: "new batches of human preference data" from the latest RLHF-V<n> model; Bai et
   al. 2022, Sec. 4.5, "iterated online RLHF");
2. ``reward``: initialised from SFT, as in InstructGPT (Ouyang et al. 2022, Sec. 3.5), trained on every round's
   rankings so far (written to ``round-<r>/data/rankings.jsonl``; the newest round optionally repeated);
3. ``ppo``: from the previous round's policy (or SFT), value model from the new reward model, KL penalty to SFT;
4. ``eval``: held-out prompts, SFT vs earlier rounds vs this round, and the previous reward model's accuracy on
   this round's held-out comparisons (before retraining) next to the new one's (after).

Every stage runs as its own recipe process with its track config (copied into ``<run_dir>/configs/`` when the run
starts) plus overrides (``plan``), so a killed run,
rerun with the same command, continues at its first unfinished stage. ``rounds.json`` and ``rounds.md`` gather the
per-round figures (``collect``, ``write_rounds_report``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf_kit.core import runs
from rlhf_kit.core.errors import UserError
from rlhf_kit.core.runs import changed_keys, write_atomic
from rlhf_kit.core.stages import ROUND
from rlhf_kit.data.rows import read_jsonl, write_jsonl

RUN_CONFIG = "rounds_config.yaml"
# Keys of the rounds configuration that may change between invocations of one run (more rounds, other hardware).
ROUNDS_FREE = ("rounds", "accelerate_config")


@dataclass
class Step:
    """One stage process of a rounds run: round 0 is the setup."""

    round: int
    stage: str
    config: Path
    output_dir: str
    overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage if self.round == 0 else f"round {self.round} {self.stage}"


def round_dir(run_dir: str, r: int) -> str:
    """``<run_dir>/round-<r>``."""
    return f"{run_dir}/round-{r}"


def read_stage_configs(folder: str, stages) -> dict[str, dict]:
    """The track's ``<stage>.yaml`` mappings; a missing one is refused by name."""
    configs = {}
    for stage in stages:
        path = Path(folder) / f"{stage}.yaml"
        if not path.is_file():
            raise UserError(f"{path} not found; stage_configs must hold a config per stage ({', '.join(stages)})")
        configs[stage] = yaml.safe_load(path.read_text()) or {}
    return configs


def source_run(configs: dict[str, dict], setup_stages: list[str]) -> str:
    """The run folder the track's configs write into (the parent of the last setup stage's output_dir)."""
    out = configs[setup_stages[-1]].get("output_dir")
    if not out:
        raise UserError(f"the {setup_stages[-1]} config has no output_dir; rounds moves every stage's paths from it")
    return str(Path(out).parent)


def reroot(config: dict, source: str, run_dir: str) -> dict:
    """Overrides moving every path of ``config`` under ``source`` (e.g. runs/demo) into ``run_dir``."""
    def move(value):
        if isinstance(value, str) and (value == source or value.startswith(source + "/")):
            return run_dir + value[len(source):]
        return [move(v) for v in value] if isinstance(value, list) else value

    moved = {key: move(value) for key, value in config.items()}
    return {key: value for key, value in moved.items() if value != config[key]}


def plan(args, configs: dict[str, dict]) -> list[Step]:
    """Every stage process of the run, in order, with the overrides that place it in the run."""
    run, setup = args.run_dir, list(args.setup_stages)
    source, folder = source_run(configs, setup), Path(run) / "configs"  # the run's own copies (see run_rounds)
    sft = f"{run}/{Path(configs[setup[-1]]['output_dir']).name}"

    def seeded(stage: str) -> dict:
        if args.seed is None:
            return {}
        return {"seed": args.seed} | ({"world_seed": args.seed} if "world_seed" in configs[stage] else {})

    steps = [Step(0, s, folder / f"{s}.yaml", f"{run}/{Path(configs[s]['output_dir']).name}",
                  reroot(configs[s], source, run) | seeded(s)) for s in setup]
    for r in range(1, args.rounds + 1):
        here, prev = round_dir(run, r), round_dir(run, r - 1)
        policy = sft if r == 1 else f"{prev}/ppo"
        moved = {s: reroot(configs[s], source, run) | seeded(s) for s in ROUND}
        compare = moved["compare"] | {"model_name_or_path": policy, "output_dir": f"{here}/compare"}
        if args.comparison_prompts == "fresh":
            compare |= {"prompt_chunk": r - 1, "num_prompt_chunks": args.rounds}
        if r > 1 and configs["compare"].get("other_samples"):  # other policies' samples join round 1 only: later
            compare["other_samples"] = []  # rounds' reward data already holds round 1's rankings
        ranked = f"{here}/{rankings_folder(configs)}"  # where this round's rankings are
        reward = moved["reward"] | {"model_name_or_path": sft, "dataset_path": f"{here}/data/rankings.jsonl",
                                    "eval_dataset_path": f"{ranked}/rankings_heldout.jsonl",
                                    "output_dir": f"{here}/reward"}
        start = policy if args.ppo_init == "previous" else sft
        ppo = moved["ppo"] | {"model_name_or_path": start, "ref_model_path": sft,
                              "reward_model_path": f"{here}/reward", "output_dir": f"{here}/ppo"}
        rel = lambda path: str(Path(path).relative_to(run))  # noqa: E731 - eval names stage folders inside run_dir
        eval_policies = [p for p in configs["eval"].get("policies", ["base", "sft"]) if p != "ppo"]
        earlier = [f"round-{q}/ppo" for q in sorted({1, r - 1}) if 0 < q < r]
        evaluate = moved["eval"] | {
            "run_dir": run, "output_dir": f"{here}/eval", "policies": eval_policies + earlier + [f"round-{r}/ppo"],
            "reward_model": rel(f"{here}/reward"), "comparisons": rel(f"{here}/compare"), "versus": earlier,
        }
        if is_human(configs):  # people's rankings have no judge order to measure the RM against
            evaluate["comparisons"] = ""
        elif r > 1:  # the previous RM on this round's samples; this RM on round 1's (SFT) samples as well
            evaluate["previous_reward_model"] = rel(f"{prev}/reward")
            evaluate["reference_comparisons"] = "round-1/compare"
        for stage, overrides in zip(ROUND, (compare, reward, ppo, evaluate)):
            steps.append(Step(r, stage, folder / f"{stage}.yaml", overrides["output_dir"], overrides))
    return steps


def resolved(args, configs: dict[str, dict]) -> dict:
    """What a run is: its rounds settings and its stage configs (compared when a run is continued)."""
    from dataclasses import asdict

    return {"rounds": asdict(args), "stage_configs": configs}


def check_run_config(run_dir: str, current: dict) -> None:
    """Refuse to continue a run made with another configuration, naming what differs: rounds may grow, hardware
    and precision may change (rlhf_kit.core.runs.MAY_CHANGE), nothing that changes the optimisation may."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return
    before = yaml.safe_load(path.read_text())
    old, new = before.get("rounds", {}), current["rounds"]
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed_keys(old, new, ROUNDS_FREE, one_sided=True)]
    old_stages, new_stages = before.get("stage_configs", {}), current["stage_configs"]
    for stage in sorted(set(old_stages) | set(new_stages)):
        if keys := changed_keys(old_stages.get(stage) or {}, new_stages.get(stage) or {}, one_sided=True):
            diffs.append(f"{stage}.yaml: {', '.join(keys)}")
    if diffs:
        raise UserError(f"{run_dir} was made with another configuration ({'; '.join(diffs)}); rerun with the same "
                        "settings, or choose a new run_dir")


def check_progress(steps: list[Step]) -> None:
    """Refuse a run whose later stage started while an earlier one is unfinished (its inputs would change)."""
    unfinished = next((s for s in steps if not runs.is_complete(s.output_dir)), None)
    if unfinished is None:
        return
    later = steps[steps.index(unfinished) + 1 :]
    started = next((s for s in later if s.round > unfinished.round and Path(s.output_dir).exists()), None)
    if started is not None:
        raise UserError(f"{unfinished.name} ({unfinished.output_dir}) is unfinished but {started.name} has started "
                        f"({started.output_dir}); finish the earlier round first (delete {started.output_dir} and "
                        "rerun)")


def is_human(configs: dict[str, dict]) -> bool:
    """Whether people rank the samples (``labeler: human``): the labeling app's export holds the rankings."""
    return configs["compare"].get("labeler") == "human"


def rankings_folder(configs: dict[str, dict]) -> str:
    """The folder of a round that holds its rankings: ``compare``, or ``labels`` (the app's export) for people."""
    return "labels" if is_human(configs) else "compare"


def human_labels_pending(run_dir: str, r: int, label_db: str) -> str | None:
    """What to do when round ``r``'s samples wait in the labeling app and no export is there yet (else None)."""
    labels = Path(round_dir(run_dir, r)) / "labels"
    if (labels / "rankings.jsonl").is_file():
        return None
    return (f"[rounds] round {r}'s samples wait in {label_db} for people to rank: `rlhf-kit label serve --db "
            f"{label_db}`, then `rlhf-kit label export --db {label_db} --output-dir {labels} --heldout-fraction "
            f"0.15`, then rerun this command to continue with round {r}'s reward model")


def write_reward_data(run_dir: str, r: int, newest_weight: int, folder: str = "compare") -> Path:
    """``round-<r>/data/rankings.jsonl``: the training rankings of rounds 1..r, the newest ``newest_weight`` times.
    People's rankings (``folder="labels"``) come from one export of the whole label database: the newest holds
    every round's, so it is taken alone."""
    rows = []
    for q in range(1 if folder == "compare" else r, r + 1):
        part = read_jsonl(Path(round_dir(run_dir, q)) / folder / "rankings.jsonl")
        rows += [row | {"round": q} for row in part] * (newest_weight if q == r else 1)
    path = Path(round_dir(run_dir, r)) / "data" / "rankings.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return path


def check_heldout(run_dir: str, steps: list[Step]) -> None:
    """Held-out evaluation prompts must not be among the prompts the rounds train on (checked before round 1)."""
    from rlhf_kit.data.datasets import load_rows
    from rlhf_kit.eval.evaluation import require_disjoint

    first = {s.stage: s for s in steps if s.round == 1}
    config = lambda s: yaml.safe_load(s.config.read_text()) | s.overrides  # noqa: E731
    eval_rows = load_rows(config(first["eval"])["eval_dataset_path"]).to_list()
    require_disjoint(eval_rows, {f"{stage} prompts": load_rows(config(first[stage])["dataset_path"]).to_list()
                                 for stage in ("compare", "ppo")})


def compare_setting(steps: list[Step], r: int, key: str):
    """A setting of round ``r``'s compare stage: its override, else its track config's value."""
    step = next(s for s in steps if s.round == r and s.stage == "compare")
    return step.overrides.get(key, yaml.safe_load(step.config.read_text()).get(key))


def step_config(step: Step) -> Path:
    """The one YAML a step's process reads: the run's copy of the stage config with the step's values written in,
    ``<run_dir>/configs/round-<r>/<stage>.yaml`` (round 0: the setup stages). Nothing is re-serialised into flags, so
    a value such as an empty list reaches the stage as it is (flags dropped it, and from round 2 the real track's
    compare still ranked the first run's ``other_samples``)."""
    merged = (yaml.safe_load(step.config.read_text()) or {}) | step.overrides
    path = step.config.parent / f"round-{step.round}" / step.config.name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(merged, sort_keys=False))
    return path


def command(step: Step, accelerate_config: str | None) -> list[str]:
    """The process that runs ``step``: its recipe with its merged config alone (training stages via accelerate)."""
    from rlhf_kit.run.launch import stage_command

    return stage_command(step.stage, str(step_config(step)), [], accelerate_config)


def run_rounds(args) -> int:
    """Run (or continue) a rounds run; the exit status of the first stage that fails, else 0."""
    stages = list(dict.fromkeys(list(args.setup_stages) + list(ROUND)))
    configs = read_stage_configs(args.stage_configs, stages)
    steps = plan(args, configs)
    check_run_config(args.run_dir, resolved(args, configs))
    check_progress(steps)
    Path(args.run_dir, "configs").mkdir(parents=True, exist_ok=True)
    for stage in stages:  # every stage reads the run's copy: editing the track's configs mid-run changes nothing
        shutil.copyfile(Path(args.stage_configs) / f"{stage}.yaml", Path(args.run_dir) / "configs" / f"{stage}.yaml")
    write_atomic(Path(args.run_dir) / RUN_CONFIG, yaml.safe_dump(resolved(args, configs), sort_keys=True))
    for step in steps:
        if runs.is_complete(step.output_dir):
            print(f"[rounds] {step.name}: already complete in {step.output_dir}")
            continue
        if step.round == 1 and step.stage == "compare":
            check_heldout(args.run_dir, steps)
        if step.stage == "reward":
            if is_human(configs):
                pending = human_labels_pending(args.run_dir, step.round, compare_setting(steps, step.round, "label_db"))
                if pending:  # a pause, not a failure: nothing of the round's reward stage is written
                    print(pending)
                    return 0
            write_reward_data(args.run_dir, step.round, args.newest_round_weight, rankings_folder(configs))
        print(f"[rounds] {step.name} -> {step.output_dir}", flush=True)
        code = subprocess.call(command(step, args.accelerate_config))
        if code:
            print(f"error: the rounds run stopped at {step.name} (exit {code}); fix what it printed and rerun the "
                  "same command to continue", file=sys.stderr)
            return code
    summary = collect(args.run_dir, args.rounds)
    write_atomic(Path(args.run_dir) / "rounds.json", json.dumps(summary, indent=2, sort_keys=True))
    print(f"[rounds] report: {write_rounds_report(args.run_dir, summary)}")
    print(rounds_headline(summary))
    return 0


def collect(run_dir: str, n_rounds: int) -> dict:
    """Per-round figures from each round's eval summary (``round-<r>/summary.json``)."""
    per_round = []
    for r in range(1, n_rounds + 1):
        s = json.loads((Path(round_dir(run_dir, r)) / "summary.json").read_text())
        policy, baseline, earlier = f"round-{r}/ppo", s["baseline"], f"round-{r - 1}/ppo"
        win = s["win_rate_vs_baseline"][policy]
        row = {
            "round": r,
            "judge_score": s["judge_score"][policy],
            f"judge_score_{baseline}": s["judge_score"][baseline],
            f"win_rate_vs_{baseline}": win["win_rate"], f"win_rate_vs_{baseline}_ci95": win["ci95"],
            f"kl_to_{baseline}": s["kl_to_baseline"][policy],
            "response_length": s["response_length"][policy],
            "rm_accuracy_after": s.get("rm_accuracy"), "rm_accuracy_pairs": s.get("rm_accuracy_pairs"),
            "rm_accuracy_before": (s.get("rm_accuracy_previous") or {}).get("accuracy"),
            # one yardstick for every round's RM: round 1's held-out comparisons (SFT samples)
            "rm_accuracy_round1_comparisons": (s.get("rm_accuracy_reference") or {}).get("accuracy",
                                                                                     s.get("rm_accuracy")),
            # eval records each stage folder's time under the name it evaluated it by (PPO: round-<r>/ppo)
            "wall_seconds": {stage: s["wall_seconds"].get(policy if stage == "ppo" else stage)
                             for stage in ROUND},
        }
        for name, h2h in s.get("head_to_head", {}).items():
            key = "previous" if name == earlier else name.split("/")[0].replace("-", "")
            row[f"win_rate_vs_{key}"], row[f"win_rate_vs_{key}_ci95"] = h2h["win_rate"], h2h["ci95"]
        per_round.append(row)
    first = json.loads((Path(round_dir(run_dir, 1)) / "summary.json").read_text())
    return {"run_dir": run_dir, "baseline": first["baseline"], "rounds": per_round,
            "setup_judge_score": {p: first["judge_score"][p] for p in first["policies"] if not p.startswith("round-")}}


def rounds_headline(summary: dict) -> str:
    """One line: the last round against the first and against the baseline."""
    first, last, base = summary["rounds"][0], summary["rounds"][-1], summary["baseline"]
    lo, hi = last[f"win_rate_vs_{base}_ci95"]
    line = (f"after {last['round']} round(s): PPO beats {base.upper()} on {last[f'win_rate_vs_{base}']:.0%} of "
            f"held-out prompts (95% CI {lo:.0%}-{hi:.0%}; round 1: {first[f'win_rate_vs_{base}']:.0%}); judge score "
            f"{first['judge_score']:.3f} -> {last['judge_score']:.3f}")
    if last["rm_accuracy_after"] is not None:
        line += f"; RM accuracy {last['rm_accuracy_after']:.2f}"
    if "win_rate_vs_round1" in last:
        line += f"; vs round 1 {last['win_rate_vs_round1']:.0%}"
    return line


def write_rounds_report(run_dir: str, summary: dict) -> Path:
    """``rounds.md`` with a per-round table and ``rounds.png`` (judge score, win rate, RM accuracy, KL by round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, rows, setup = summary["baseline"], summary["rounds"], summary["setup_judge_score"]
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"# RLHF rounds: {Path(run_dir).name}", "", f"**{rounds_headline(summary)}**", "",
             "Held-out prompts, scored by the judge that the reward models and PPO never see. RM accuracy is measured "
             "against the judge's order on the round's held-out comparisons, i.e. on samples of the policy the round "
             "started from: *before* is the previous round's reward model, *after* the one retrained this round; "
             "the next column measures each round's reward model on round 1's held-out comparisons (SFT samples).",
             "",
             "Setup policies' judge score: " + ", ".join(f"{p} {v:.3f}" for p, v in setup.items()),
             "", f"| round | judge score | win rate vs {base} (95% CI) | vs previous round | vs round 1 "
             f"| KL to {base} | length | RM accuracy before | after | on round 1's comparisons | wall (s) |",
             "|---" * 11 + "|"]
    for row in rows:
        lo, hi = row[f"win_rate_vs_{base}_ci95"]
        lines.append(f"| {row['round']} | {row['judge_score']:.3f} | {row[f'win_rate_vs_{base}']:.3f} [{lo:.3f}, "
                     f"{hi:.3f}] | {fmt(row.get('win_rate_vs_previous'))} | {fmt(row.get('win_rate_vs_round1'))} | "
                     f"{row[f'kl_to_{base}']:.4f} | {row['response_length']:.1f} | "
                     f"{fmt(row['rm_accuracy_before'])} | {fmt(row['rm_accuracy_after'])} | "
                     f"{fmt(row['rm_accuracy_round1_comparisons'])} | "
                     f"{sum(row['wall_seconds'].values()):.0f} |")
    x = [row["round"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(x, [row["judge_score"] for row in rows], "o-", label="judge score")
    axes[0].plot(x, [row[f"win_rate_vs_{base}"] for row in rows], "s-", label=f"win rate vs {base}")
    axes[0].set(xlabel="round", title="Policy")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [row["rm_accuracy_before"] for row in rows], "o-", label="before retraining")
    axes[1].plot(x, [row["rm_accuracy_after"] for row in rows], "s-", label="after")
    axes[1].set(xlabel="round", title="RM accuracy on the round's samples")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [row[f"kl_to_{base}"] for row in rows], "o-", color="tab:red")
    axes[2].set(xlabel="round", title=f"KL to {base} (per token)")
    for ax in axes:
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "rounds.png", dpi=110)
    plt.close(fig)
    lines += ["", "![per-round figures](rounds.png)", "",
              "Each round's own report: " + ", ".join(f"[round {r}](round-{r}/report.md)" for r in x)]
    path = Path(run_dir) / "rounds.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
