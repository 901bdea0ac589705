"""rlhf_kit's PPO trainer vs TRL 1.12's ``PPOTrainer.train()`` on the same work: episodes per second and their ratio.

TRL removed its PPO trainer in 1.13, so its side runs in the throw-away virtualenv with ``trl==1.12.0`` that
``make ppo-golden`` uses (``make bench-ppo`` builds it on first use); rlhf_kit's side runs here. Both get the same
models, prompts, seed and config (benchmarks/ppo_loop.yaml, built through rlhf_kit's PPO seam), run one after the
other on an otherwise idle CPU, in ``--repeats`` alternating pairs (3). Prints each run's episodes/s, each pair's ratio
rlhf_kit / TRL and their median, rlhf_kit's share of wall time spent sampling and in the whole rollout phase, and
each run's last RM score. Needs ``make sft reward``.

    make bench-ppo
    python benchmarks/ppo_loop.py --config benchmarks/ppo_loop.yaml --trl_python <venv with trl 1.12>/bin/python \
        [--repeats 3]
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_side(side: str, argv: list[str]) -> dict:
    """Train once (``side``: rlhf_kit, or trl where trl==1.12.0 is installed); wall time and episodes."""
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.integrations.trl import ModelConfig
    from rlhf_kit.ppo import build_ppo_trainer, load_ppo_inputs
    from rlhf_kit.ppo.config import PPOConfig
    from rlhf_kit.run.configs import PPOArguments, parse_stage_args

    script_args, training_args, model_args = parse_stage_args((PPOArguments, PPOConfig, ModelConfig), argv)
    setup_run(training_args)  # the same seed for both sides, before LoRA is initialised
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    if side == "trl":
        from trl.experimental.ppo import PPOConfig as TRLConfig
        from trl.experimental.ppo import PPOTrainer as TRLTrainer

        # Every init field both configs share (not to_dict(): it masks keys ending in _token, stop_token too).
        fields = TRLConfig.__dataclass_fields__
        trl_args = TRLConfig(**{k: getattr(training_args, k) for k, f in fields.items()
                                if f.init and k in PPOConfig.__dataclass_fields__})
        trainer = TRLTrainer(args=trl_args, processing_class=inputs["tokenizer"], model=inputs["policy"],
                             ref_model=inputs["ref_policy"], reward_model=inputs["reward_model"],
                             value_model=inputs["value_model"], train_dataset=inputs["train_dataset"],
                             peft_config=inputs["peft_config"])
        key, timings = "objective/scores", {}
    else:
        trainer = build_ppo_trainer(training_args, **inputs)
        key = "ppo/scores"
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    if side == "rlhf_kit":
        timings = {f"{k}_share": v / wall for k, v in trainer.timings.items()}
    return {"wall_s": wall, "episodes": trainer.state.episode, "episodes_per_s": trainer.state.episode / wall,
            "last_score": trainer.state.log_history[-1][key], **timings}


def main(argv: list[str]) -> None:
    if "--side" in argv:  # one side, in this interpreter; the result on stdout's last line
        i = argv.index("--side")
        result = run_side(argv[i + 1], argv[:i] + argv[i + 2:])
        print(json.dumps(result))
        return
    i = argv.index("--trl_python") if "--trl_python" in argv else None
    if i is None:
        sys.exit("error: pass --trl_python <python of a venv with trl==1.12.0> (make bench-ppo builds one)")
    trl_python, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    repeats = 3
    if "--repeats" in argv:
        j = argv.index("--repeats")
        repeats, argv = int(argv[j + 1]), argv[:j] + argv[j + 2:]
    # The sides alternate, and each pair gives one ratio: this CPU's speed drifts by a quarter within minutes, so
    # one pair can say 1.4 or 1.7 for the same code; the median of the pairs is the figure.
    runs = {"trl": [], "rlhf_kit": []}
    for repeat in range(repeats):
        for side, python in (("trl", trl_python), ("rlhf_kit", sys.executable)):
            print(f"pair {repeat + 1}/{repeats}: {side} ...", flush=True)
            proc = subprocess.run([python, __file__, *argv, "--side", side], cwd=REPO, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"error: the {side} side failed:\n{proc.stderr[-2000:]}")
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ratios = [k["episodes_per_s"] / t["episodes_per_s"] for t, k in zip(runs["trl"], runs["rlhf_kit"])]
    results = {"runs": runs, "ratios": ratios, "ratio_rlhf_kit_over_trl": statistics.median(ratios)}
    print(f"\n{'pair':>4} {'side':>9} {'episodes':>8} {'wall s':>8} {'episodes/s':>10} {'last RM score':>13} ratio")
    for p, ratio in enumerate(ratios):
        for side in ("trl", "rlhf_kit"):
            r = runs[side][p]
            print(f"{p + 1:>4} {side:>9} {r['episodes']:>8} {r['wall_s']:>8.1f} {r['episodes_per_s']:>10.2f} "
                  f"{r['last_score']:>13.3f} {f'{ratio:.2f}' if side == 'rlhf_kit' else ''}")
    share = {k: statistics.median(r[f"{k}_share"] for r in runs["rlhf_kit"]) for k in ("generate", "rollout")}
    print(f"ratio rlhf_kit / TRL 1.12, median of {repeats} pairs: {results['ratio_rlhf_kit_over_trl']:.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); rlhf_kit's wall time sampling {share['generate']:.0%}, "
          f"whole rollout phase {share['rollout']:.0%}")
    out = REPO / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppo_loop.json").write_text(json.dumps(results, indent=2))
    print(f"-> {out / 'ppo_loop.json'}")


if __name__ == "__main__":
    from rlhf_kit.core.errors import exit_on_user_error

    exit_on_user_error(lambda: main(sys.argv[1:]))
