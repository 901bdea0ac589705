"""K-wise vs pairwise reward training on the same rankings, side by side in one run.

For each K: sample K responses per prompt from the SFT policy, rank them with the simulated labeler, hold out a
share of prompts, then train the reward model both ways for the same epochs with the same number of sequences per
step, and report wall time per epoch, forward passes (sequences) per epoch, and held-out pairwise accuracy against
the gold order. InstructGPT (Sec. 3.5) motivates K-wise: K forward passes per prompt instead of K(K-1).

    python benchmarks/reward_kwise.py --config benchmarks/reward_kwise.yaml      # or: make bench-reward
"""

import json
import time
from dataclasses import dataclass, field

from rlhf_kit.core.errors import exit_on_user_error
from rlhf_kit.run.configs import parse_stage_args


@dataclass
class BenchArguments:
    sft_path: str = field(default="runs/demo/sft", metadata={"help": "SFT policy (sampled) and RM initialisation."})
    prompts_path: str = field(default="runs/demo/data/prompts.jsonl", metadata={"help": "Demo-world prompts."})
    k_values: str = field(default="4,8", metadata={"help": "Comma-separated K to benchmark."})
    sequences_per_step: int = field(default=32, metadata={"help": "Sequences per forward, equal for both losses."})
    epochs: float = field(default=2.0, metadata={"help": "Epochs over the same comparisons, both losses."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate, both losses."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank, both losses."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Prompts held out for accuracy."})
    labeler_noise: float = field(default=0.1, metadata={"help": "Simulated labeler noise."})
    output: str = field(default="runs/bench/reward_kwise.json", metadata={"help": "Where the results go."})
    seed: int = field(default=0, metadata={"help": "Sampling, labeler and training seed."})


def train_once(args, loss: str, train_rows, heldout_pairs, tokenizer, out_dir):
    """Train one reward model; return wall seconds per epoch, sequences per epoch and held-out accuracy."""
    from datasets import Dataset
    from peft import LoraConfig

    from rlhf_kit.data.rows import expand_pairs
    from rlhf_kit.eval.evaluation import score_with_reward_model
    from rlhf_kit.eval.metrics import load_metric
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.trl import RewardConfig, RewardTrainer
    from rlhf_kit.reward.ranking import RankingRewardTrainer, build_ranking_dataset, dedupe_ranking

    rankings = build_ranking_dataset(Dataset.from_list(train_rows), tokenizer, None, "bench")
    k = max(len(r) for r in rankings["responses"])
    if loss == "kwise":
        data, batch = rankings, max(1, args.sequences_per_step // k)
        sequences = sum(len(dedupe_ranking(r, k_)["responses"]) for r, k_ in zip(rankings["responses"],
                                                                                   rankings["ranks"]))
    else:
        data = Dataset.from_list([p for row in rankings for p in expand_pairs(row)])
        batch, sequences = max(1, args.sequences_per_step // 2), 2 * len(data)
    config = RewardConfig(output_dir=str(out_dir), num_train_epochs=args.epochs, per_device_train_batch_size=batch,
                          learning_rate=args.learning_rate, lr_scheduler_type="cosine", bf16=False, report_to="none",
                          save_strategy="no", logging_steps=50, seed=args.seed, disable_tqdm=True, max_length=None)
    model = modeling.load_reward_model(args.sft_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                      modules_to_save=["score"])
    cls = RankingRewardTrainer if loss == "kwise" else RewardTrainer
    trainer = cls(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    model = trainer.model.eval()
    prompts = [p for p, _, _ in heldout_pairs]
    r_w = score_with_reward_model(model, tokenizer, prompts, [w for _, w, _ in heldout_pairs])
    r_l = score_with_reward_model(model, tokenizer, prompts, [lo for _, _, lo in heldout_pairs])
    accuracy = load_metric("pairwise_accuracy").compute(predictions=r_w, references=r_l)["accuracy"]
    return {"wall_s_per_epoch": wall / args.epochs, "forward_sequences_per_epoch": sequences,
            "optimizer_steps_per_epoch": -(-len(data) // batch), "heldout_accuracy": accuracy, "rows": len(data)}


def main(args: BenchArguments):
    import random
    from pathlib import Path

    from rlhf_kit.core import runs
    from rlhf_kit.data.datasets import load_rows
    from rlhf_kit.eval.evaluation import heldout_judged_pairs
    from rlhf_kit.integrations import modeling
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.sampling import compare
    from rlhf_kit.sampling.generation import sample_responses
    from rlhf_kit.worlds.demo.gold import GoldJudge
    from rlhf_kit.worlds.demo.simulated import SimulatedLabeler

    setup_run(seed=args.seed)
    runs.require_stage_output(args.sft_path, "SFT policy")
    tokenizer = modeling.load_tokenizer(args.sft_path)
    policy = modeling.load_causal_lm(args.sft_path)
    rows = load_rows(args.prompts_path).to_list()
    results = {}
    for k in [int(x) for x in args.k_values.split(",")]:
        prompts = [r["prompt"] for r in rows]
        responses = sample_responses(policy, tokenizer, prompts, k, seed=args.seed, max_new_tokens=24)
        rankings = compare.rank_rows(rows, responses, SimulatedLabeler(args.labeler_noise, args.seed))
        random.Random(args.seed).shuffle(rankings)
        n_held = int(len(rankings) * args.heldout_fraction)
        heldout, train = heldout_judged_pairs(rankings[:n_held], GoldJudge()), rankings[n_held:]
        results[k] = {loss: train_once(args, loss, train, heldout, tokenizer, Path(args.output).parent / f"k{k}_{loss}")
                      for loss in ("pairwise", "kwise")}
        kw, pw = results[k]["kwise"], results[k]["pairwise"]
        results[k]["speedup"] = pw["wall_s_per_epoch"] / kw["wall_s_per_epoch"]
        results[k]["accuracy_gap_points"] = 100 * (pw["heldout_accuracy"] - kw["heldout_accuracy"])
        results[k]["heldout_pairs"] = len(heldout)
    print(f"\n{'K':>2} {'loss':>8} {'s/epoch':>8} {'fwd seq/epoch':>13} {'steps/epoch':>11} {'heldout acc':>11}")
    for k, r in results.items():
        for loss in ("pairwise", "kwise"):
            m = r[loss]
            print(f"{k:>2} {loss:>8} {m['wall_s_per_epoch']:>8.2f} {m['forward_sequences_per_epoch']:>13} "
                  f"{m['optimizer_steps_per_epoch']:>11} {m['heldout_accuracy']:>11.3f}")
        print(f"{k:>2} kwise speed-up {r['speedup']:.2f}x, accuracy gap {r['accuracy_gap_points']:+.1f} points "
              f"(pairwise - kwise, {r['heldout_pairs']} held-out gold pairs)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    exit_on_user_error(lambda: main(*parse_stage_args((BenchArguments,))))
