"""rlhf_kit's PPO trainer against TRL 1.12's ``PPOTrainer.train()``, recorded in tests/golden/ppo_trl112.json.

TRL removed its PPO trainer in 1.13; ``make ppo-golden`` recorded its run on fixed inputs (tests/ppo_golden.py) in
a throw-away virtualenv with trl==1.12.0. Here rlhf_kit's own trainer runs on the same inputs. With TRL's sampler
selected (``sampler="trl"``: ``model.generate`` in chunks, its scores as log pi_RL) the draws are TRL's, and every
metric of every update and every trainable weight must match. With rlhf_kit's sampler (the default) the draws
differ -- another sampling loop (rlhf_kit/sampling/generation.py), and log pi_RL from a forward pass -- so that run is
checked for what must still hold: same batches and steps, finite metrics, weights that moved.
"""

from __future__ import annotations

import json
import math

import pytest
from ppo_golden import CONFIG, GOLDEN, LORA, build_inputs, weight_stats

# The per-minibatch statistics TRL averaged over an array sized (epochs, minibatches, gradient_accumulation_steps);
# with num_mini_batches > 1 a minibatch has fewer micro-batches than that, and TRL left the rest of the array at 0.
# rlhf_kit averages over the micro-batches that ran; the golden values are converted below.
AVERAGED = ("policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
            "policy/entropy_avg", "val/ratio")
TIMING = ("eps",)  # wall-time dependent


def run(tmp_path, sampler: str, padding_free: bool = False):
    import peft
    import transformers

    from rlhf_kit.ppo import build_ppo_trainer, train_ppo
    from rlhf_kit.ppo.config import PPOConfig

    transformers.set_seed(CONFIG["seed"])
    inputs = build_inputs(tmp_path / "inputs")
    # TRL's padded forward unless asked (test_trainer_reproduces_trl_112 runs both).
    args = PPOConfig(output_dir=str(tmp_path / "ppo"), **CONFIG, padding_free=padding_free)
    trainer = build_ppo_trainer(args, inputs["tokenizer"], inputs["policy"], None, inputs["reward_model"],
                                inputs["value_model"], inputs["train_dataset"], peft_config=peft.LoraConfig(**LORA),
                                sampler=sampler)
    train_ppo(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    return trainer, weight_stats(model.policy.named_parameters()), weight_stats(model.value_model.named_parameters())


def expected_metrics(record: dict, slots: int, filled: int) -> dict:
    """TRL's logged record in rlhf_kit's names, with the zero-padded averages undone (mean over the filled slots;
    the variance of the ratio from TRL's sum and sum of squares over all slots)."""
    from rlhf_kit.ppo import rename_metrics

    out = dict(record)
    mean_all, var_all = record["val/ratio"], record["val/ratio_var"]
    for key in AVERAGED:
        out[key] = record[key] * slots / filled
    total, squares = mean_all * slots, var_all * (slots - 1) + slots * mean_all**2
    out["val/ratio_var"] = (squares - total**2 / filled) / (filled - 1)
    return rename_metrics({k: v for k, v in out.items() if k not in TIMING})


def close(a: float, b: float, rel: float, abs_: float = 1e-7) -> bool:
    return abs(a - b) <= max(rel * abs(b), abs_)


# The clipped policy loss is a mean of O(1) terms (whitened advantages times ratios near 1) that cancels to ~1e-3:
# its float32 rounding is absolute, about 1e-7, and moves with the matmul kernels' blocking -- thread count, and the
# CPU (an AVX2 AMD EPYC gives -8.06131e-4 where the AVX-512 Xeon that recorded the file gave -8.06351e-4).
ABSOLUTE = {"losses/policy": 1e-6}


def test_golden_file_is_trl_112():
    golden = json.loads(GOLDEN.read_text())
    assert golden["versions"]["trl"] == "1.12.0" and len(golden["log_history"]) == 4
    assert golden["config"] == CONFIG and golden["lora"] == LORA  # recorded on today's inputs


# padding_free: the PPO epochs' forwards on the real tokens only, packed (rlhf_kit's default; not TRL's arithmetic, so
# the oracle's own replay runs padded): the same losses, metrics and weights within the same tolerances.
@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_trainer_reproduces_trl_112(tmp_path, padding_free):
    import torch

    golden = json.loads(GOLDEN.read_text())
    # With TRL's thread count: matmuls block (and round) by it, and a near-zero loss shows a 1-thread run's rounding
    # (under `make test`'s one thread per worker; docs/benchmarks.md, *The PPO oracle*).
    threads = torch.get_num_threads()
    torch.set_num_threads(golden["torch_threads"])
    try:
        trainer, policy, value = run(tmp_path, "trl", padding_free)
    finally:
        torch.set_num_threads(threads)
    args = trainer.args
    slots = args.num_ppo_epochs * args.num_mini_batches * args.gradient_accumulation_steps
    micro_batches = args.local_mini_batch_size // args.per_device_train_batch_size
    filled = args.num_ppo_epochs * args.num_mini_batches * micro_batches
    assert filled < slots  # the configuration exercises the difference
    logs = trainer.state.log_history
    assert len(logs) == len(golden["log_history"]) == 4
    worst = {}
    for ours, theirs in zip(logs, golden["log_history"]):
        expected = expected_metrics(theirs, slots, filled)
        for key, want in expected.items():
            assert key in ours, key
            worst[key] = max(worst.get(key, 0.0), abs(ours[key] - want) / max(abs(want), 1e-7))
            if padding_free and key == "charts/policy_entropy":
                continue  # padding-free averages over real tokens only (TRL's mean counts padded positions too)
            assert close(ours[key], want, 1e-5, ABSOLUTE.get(key, 1e-7)), (key, ours[key], want)
    assert {"ppo/kl", "ppo/scores", "losses/policy", "losses/value", "charts/ratio_var"} <= set(worst)
    for name, stats in (("policy", policy), ("value_model", value)):
        assert stats.keys() == golden[name].keys(), name
        for key, want in golden[name].items():
            assert all(close(a, b, 1e-6, 1e-6) for a, b in zip(stats[key], want)), (name, key, stats[key], want)
    lora_b = [v for k, v in policy.items() if "lora_B" in k]
    assert lora_b and max(abs(v[1]) for v in lora_b) > 1e-3  # the adapter moved: equality proves something


def test_own_sampler_trains_the_same_shape(tmp_path):
    trainer, policy, value = run(tmp_path, "rlhf_kit")
    golden = json.loads(GOLDEN.read_text())
    logs = trainer.state.log_history
    assert [r["ppo/episode"] for r in logs] == [r["episode"] for r in golden["log_history"]]
    assert [r["charts/learning_rate"] for r in logs] == pytest.approx([r["lr"] for r in golden["log_history"]])
    assert all(math.isfinite(v) for r in logs for v in r.values())
    # New draws, so other responses and other weights -- but an adapter that moved by a like amount.
    lora_b = [v[1] for k, v in policy.items() if "lora_B" in k]
    golden_b = [v[1] for k, v in golden["policy"].items() if "lora_B" in k]
    assert 0.2 < sum(lora_b) / sum(golden_b) < 5
