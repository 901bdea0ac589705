"""The alignment tax of PPO vs PPO-ptx in the demo world (issue 11): perplexity of each policy on held-out SFT-style
demonstrations (fresh labeler demonstrations for the held-out eval prompts, which no stage trained on), the gold
score from each run's ``summary.json`` (``make eval`` / recipes/eval.py --run_dir ...), and PPO's last logged KL
and beta (the adaptive controller's end point).

    python benchmarks/ppo_alignment_tax.py runs/demo runs/demo_ptx runs/demo_adaptive
"""

import json
import math
import random
import sys
from pathlib import Path


def heldout_demonstrations(eval_path: str, seed: int = 1, flaw_rate: float = 0.2):
    """(prompt messages, demonstration) for every held-out eval prompt, written by the demo world's labeler."""
    from rlhf_kit.worlds.demo import world

    rng = random.Random(seed)
    rows = [json.loads(line) for line in Path(eval_path).read_text().splitlines() if line.strip()]
    return [(r["prompt"], world.labeler_demonstration(json.loads(r["meta"]), rng, flaw_rate)) for r in rows]


def perplexity(policy_dir: str, demos) -> float:
    """exp of the mean negative log-likelihood per response token."""
    from rlhf_kit.eval.evaluation import response_logprobs
    from rlhf_kit.integrations import modeling

    tokenizer, model = modeling.load_tokenizer(policy_dir), modeling.load_causal_lm(policy_dir)
    logps = response_logprobs(model, tokenizer, [p for p, _ in demos], [d for _, d in demos])
    tokens = [x for lp in logps for x in lp]
    return math.exp(-sum(tokens) / len(tokens))


def main(run_dirs: list[str]) -> None:
    demos = heldout_demonstrations("runs/demo/data/eval.jsonl")
    sft = str(Path(run_dirs[0]) / "sft")
    print(f"held-out demonstrations: {len(demos)}; SFT perplexity {perplexity(sft, demos):.4f}")
    for run in map(Path, run_dirs):
        line = f"{run}: PPO perplexity {perplexity(str(run / 'ppo'), demos):.4f}"
        logs = [r for r in json.loads((run / "ppo" / "log_history.json").read_text()) if "ppo/kl" in r]
        line += f"; last ppo/kl {logs[-1]['ppo/kl']:.3f}, ppo/kl_coef {logs[-1].get('ppo/kl_coef', float('nan')):.4f}"
        if (run / "summary.json").is_file():
            gold = json.loads((run / "summary.json").read_text())["judge_score"]
            line += f"; gold sft {gold['sft']:.4f}, ppo {gold['ppo']:.4f}"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/demo"])
