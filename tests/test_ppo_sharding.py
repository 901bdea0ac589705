"""PPO on 2 CPU processes -- data parallel (DDP), FSDP2, ZeRO-3 -- against 1 process with the same global batch.

Every rollout is sampled with a seed of its own (its position in the run), prompts are ordered and padded per
global batch, and each process holds the whole gathered batch for whitening and minibatches, so 2 processes take
the same optimisation steps as 1 (same micro-batch size: 4 rows; 1 process accumulates 4 of them, 2 processes 2
each). The trained adapters agree to float noise, and the merged policy loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import json

import pytest
from test_sharding import wide  # noqa: F401  (the fixture)

from conftest import config_args, run_cli, run_inprocess, stage_paths

# 2 updates of 16 rollouts, 2 PPO epochs of 2 minibatches, micro-batches of 4 on every process count.
COMMON = ["--total_episodes", "32", "--per_device_train_batch_size", "4", "--num_ppo_epochs", "2",
          "--num_mini_batches", "2", "--response_length", "12", "--lora_r", "4", "--lora_alpha", "8",
          "--save_strategy", "no", "--report_to", "none"]
CPU2 = ["--num_processes", "2", "--mixed_precision", "no"]
LORA_VALUE = ["--value_use_peft", "true"]  # the value model as LoRA adapters and its head (the real track's)
TOL = 1e-5


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def _args(pipeline, policy=None) -> list[str]:
    args = config_args("ppo") + stage_paths(pipeline, "ppo") + COMMON
    return args + (["--model_name_or_path", str(policy)] if policy else [])


@pytest.fixture(scope="module")
def wide_sft(wide):  # noqa: F811  (the imported fixture)
    """The wide SFT policy of tests/test_sharding.py: ZeRO-3 partitions its MLP matrices (256 x 512, over
    DeepSpeed's stage3_param_persistence_threshold of 1e5 elements); the tiny pipeline's tensors all stay whole."""
    return wide / "sft"


@pytest.fixture(scope="module")
def one_process(pipeline, wide_sft, tmp_path_factory):
    """1-process PPO runs (4 micro-batches accumulated): on the tiny SFT policy, on the wide one, and on the tiny
    one with a LoRA value model (``value_use_peft``)."""
    root = tmp_path_factory.mktemp("one_process")
    for name, policy, extra in (("tiny", None, []), ("wide", wide_sft, []), ("tiny-lora-value", None, LORA_VALUE)):
        run_inprocess("ppo", _args(pipeline, policy) + extra + ["--gradient_accumulation_steps", "4",
                                                                "--output_dir", str(root / name)])
    return root


@pytest.mark.parametrize("launcher,kind,extra", [
    pytest.param("accelerate-2proc", "MULTI_CPU", [], id="accelerate-2proc-MULTI_CPU"),
    pytest.param("fsdp.yaml", "FSDP", [], id="fsdp.yaml-FSDP"),
    pytest.param("zero3.yaml", "DEEPSPEED", [], id="zero3.yaml-DEEPSPEED"),
    pytest.param("fsdp.yaml", "FSDP", LORA_VALUE, id="fsdp.yaml-FSDP-lora-value")])
def test_two_process_ppo_matches_one(pipeline, wide_sft, one_process, tmp_path, launcher, kind, extra):
    from transformers import AutoModelForCausalLM

    # ZeRO-3 on the wide policy: the tiny one's tensors are all under DeepSpeed's persistence threshold.
    policy = wide_sft if launcher == "zero3.yaml" else None
    one = one_process / ("wide" if policy else "tiny-lora-value" if extra else "tiny")
    two = tmp_path / "two"
    proc = run_cli("ppo", _args(pipeline, policy) + extra + ["--gradient_accumulation_steps", "2",
                                                             "--output_dir", str(two)],
                   launcher=launcher, launch_args=[] if launcher == "accelerate-2proc" else CPU2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # both ranks trained, under the sharding asked for (not a silent fallback)
        assert f"[ppo] rank {rank}/2 trained 2 steps ({kind})" in proc.stdout, proc.stdout[-2000:]
    a, b = _adapter(one), _adapter(two)
    assert sorted(a) == sorted(b)
    delta = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)
    print(launcher, "max |adapter delta|", delta, "max |lora_B|", moved)
    assert moved > 1e-4 and delta <= TOL, "the 2-process adapter drifted from the 1-process one"
    logs = [json.loads((p / "log_history.json").read_text()) for p in (one, two)]
    scores = [[r["ppo/scores"] for r in log if "ppo/scores" in r] for log in logs]
    assert len(scores[0]) == 2 and scores[1] == pytest.approx(scores[0], abs=1e-4)
    merged, reference = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (two, one))
    assert max((merged[k] - reference[k]).abs().max().item() for k in reference) <= TOL
