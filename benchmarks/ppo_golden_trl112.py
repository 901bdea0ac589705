"""Record TRL 1.12's ``PPOTrainer.train()`` on the oracle's inputs as tests/golden/ppo_trl112.json.

Runs only where ``trl==1.12.0`` is installed (TRL deleted its PPO trainer in 1.13): ``make ppo-golden`` builds a
throw-away virtualenv with it beside the project's packages and runs this script there. The golden file holds every
metric TRL logged per update and, per trainable tensor (policy LoRA adapter, value model), its sum, absolute sum and
first values; tests/test_ppo_golden.py holds rlhf_kit's own trainer to them.

    make ppo-golden        # or: <venv with trl==1.12.0>/bin/python benchmarks/ppo_golden_trl112.py
"""

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    import peft
    import transformers
    import trl
    from ppo_golden import CONFIG, GOLDEN, LORA, build_inputs, weight_stats

    if trl.__version__ != "1.12.0":
        sys.exit(f"error: the oracle is TRL 1.12.0's PPOTrainer, found trl {trl.__version__}; run `make ppo-golden`")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        transformers.set_seed(CONFIG["seed"])
        inputs = build_inputs(tmp)
        args = PPOConfig(output_dir=str(Path(tmp) / "ppo"), **CONFIG)
        trainer = PPOTrainer(args=args, processing_class=inputs["tokenizer"], model=inputs["policy"], ref_model=None,
                             reward_model=inputs["reward_model"], value_model=inputs["value_model"],
                             train_dataset=inputs["train_dataset"], peft_config=peft.LoraConfig(**LORA))
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
        golden = {
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                         "torch": __import__("torch").__version__, "peft": peft.__version__},
            # Matmul results depend on the thread count (the kernels' blocking): the test replays it with this many.
            "torch_threads": __import__("torch").get_num_threads(),
            "config": CONFIG, "lora": LORA,
            "log_history": trainer.state.log_history,
            "policy": weight_stats(model.policy.named_parameters()),
            "value_model": weight_stats(model.value_model.named_parameters()),
        }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"-> {GOLDEN} ({len(golden['log_history'])} updates)")


if __name__ == "__main__":
    main()
