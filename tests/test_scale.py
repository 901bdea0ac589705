"""Scaling out: 2-process CPU data parallelism (gloo) vs 1 process with the same global batch; QLoRA on CPU;
accelerate configs for DDP, DeepSpeed and FSDP."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TINY, cli_env, config_args, run_cli, run_inprocess, stage_paths

# Stage -> (overrides giving the same global batch on any process count, tolerance on the trained adapter).
# SFT and reward see the same examples in each global step either way (accelerate shards every global batch) and
# DDP averages the ranks' gradients, so the adapters agree to float noise (docs/benchmarks.md). PPO here changes its
# micro-batch size with the process count (16 vs 8 rows), and its losses are means over a micro-batch's tokens, so
# the two runs agree in scale only; with one micro-batch size they agree to float noise (tests/test_ppo_sharding.py).
DP = {
    "sft": (["--global_batch_size", "16", "--max_steps", "8", "--lora_r", "4", "--lora_alpha", "8"], 1e-5),
    "reward": (["--global_batch_size", "8", "--max_steps", "6", "--lora_r", "4", "--lora_alpha", "8"], 1e-5),
    "ppo": (["--global_batch_size", "16", "--total_episodes", "64", "--num_ppo_epochs", "1", "--response_length", "12",
             "--lora_r", "4", "--lora_alpha", "8", "--gradient_accumulation_steps", "1"], None),
}


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def _marker(path):
    return json.loads((path / "stage_complete.json").read_text())


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_two_processes_match_one(pipeline, tmp_path, stage):
    overrides, tol = DP[stage]
    args = config_args(stage) + stage_paths(pipeline, stage) + overrides
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli(stage, args + ["--output_dir", str(one)])
    p2 = run_cli(stage, args + ["--output_dir", str(two)], launcher="accelerate-2proc")
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert p2.returncode == 0, p2.stderr[-3000:]
    m1, m2 = _marker(one), _marker(two)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert f"[{stage}] rank 0/2 trained" in p2.stdout and f"[{stage}] rank 1/2 trained" in p2.stdout
    assert p2.stdout.count(f"[{stage}] done in") == 1  # only the main process writes and reports
    assert not list(two.glob("*.tmp"))
    if tol is not None:
        a, b = _adapter(one), _adapter(two)
        delta = max((a[k] - b[k]).abs().max().item() for k in a)
        print(stage, m1["train_loss"], m2["train_loss"], "max |adapter delta|", delta)
        assert delta <= tol, "the 2-process model drifted from the 1-process one"
    else:
        print(stage, m1, m2)
        assert m1["episode"] == m2["episode"] == 64
        assert abs(m1["scores"] - m2["scores"]) < 1.0 and m2["kl"] == m2["kl"]


def test_qlora_runs_sft_reward_and_ppo_on_cpu(pipeline, tmp_path):
    """4-bit NF4 base (bitsandbytes CPU backend) + LoRA for all three stages; merged outputs are full precision."""
    from transformers import AutoModelForCausalLM

    from rlhf_kit.core.errors import UserError

    runs = tmp_path / "runs"
    q = ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]
    with pytest.raises(UserError, match="multiples of 64, but .* has hidden_size=32"):  # the tiny pipeline's base
        run_inprocess("sft", config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + q
                      + ["--output_dir", str(runs / "refused")])
    # bitsandbytes' CPU kernels take widths in multiples of 64: a 64-wide base for this test
    base_args = [a if a != "32" else "64" for a in TINY["base"]]
    run_inprocess("base", config_args("base") + base_args + ["--output_dir", str(runs / "base"),
                                                            "--data_dir", str(tmp_path / "data"), "--max_steps", "5"])
    # As a command: bitsandbytes, kept out of a command's imports until a 4-bit load asks for it, loads then
    sft = run_cli("sft", config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + q
                  + ["--output_dir", str(runs / "sft"), "--model_name_or_path", str(runs / "base")],
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert _imported("bitsandbytes", sft.stderr)
    run_inprocess("reward", config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + q
                  + ["--output_dir", str(runs / "reward"), "--model_name_or_path", str(runs / "sft")])
    run_inprocess("ppo", config_args("ppo") + stage_paths(pipeline, "ppo") + TINY["ppo"] + q
                  + ["--output_dir", str(runs / "ppo"), "--model_name_or_path", str(runs / "sft"),
                     "--reward_model_path", str(runs / "reward")])
    for stage in ("sft", "reward", "ppo"):
        assert _marker(runs / stage)["stage"] == stage
        config = yaml.safe_load((runs / stage / "rlhf_kit_config.yaml").read_text())
        assert config["load_in_4bit"] is True
    merged = AutoModelForCausalLM.from_pretrained(runs / "ppo")
    assert getattr(merged, "is_loaded_in_4bit", False) is False  # exported merged, not quantized
    assert all(p.dtype.is_floating_point for p in merged.parameters())


def _imported(package: str, importtime: str) -> bool:
    """Whether ``python -X importtime``'s report (stderr) lists a module of ``package``: the package's own line
    is there for a refused import too, its modules only once its ``__init__`` ran."""
    return any(line.rsplit("|", 1)[-1].strip().startswith(f"{package}.") for line in importtime.splitlines()
               if line.startswith("import time:"))


def test_a_lora_stage_never_imports_bitsandbytes(pipeline, tmp_path):
    """peft imports bitsandbytes eagerly (about 2 s of a command's start here); a stage without 4-bit loading runs,
    LoRA included, without it (``rlhf_kit.defer_bitsandbytes``), and so does ``rlhf-kit <stage>``."""
    args = config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + ["--max_steps", "1"]
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    proc = run_cli("sft", args + ["--output_dir", str(tmp_path / "sft")], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _marker(tmp_path / "sft")["stage"] == "sft"
    assert _imported("peft", proc.stderr) and not _imported("bitsandbytes", proc.stderr)
    cli = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "sft", *args, "--output_dir", str(tmp_path / "cli")],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=cli_env(env))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert _imported("peft", cli.stderr) and not _imported("bitsandbytes", cli.stderr)


def test_global_batch_must_divide_over_processes(monkeypatch):
    from types import SimpleNamespace

    from accelerate import PartialState

    from rlhf_kit.core.errors import UserError
    from rlhf_kit.integrations.training import apply_global_batch

    PartialState()  # initialised before the patch (run alone, its first init would assign num_processes)
    monkeypatch.setattr(PartialState, "num_processes", property(lambda self: 2), raising=False)
    args = SimpleNamespace(gradient_accumulation_steps=2, per_device_train_batch_size=1)
    apply_global_batch(16, args)
    assert args.per_device_train_batch_size == 4
    with pytest.raises(UserError, match=r"global_batch_size=18 is not divisible by world size 2 x "
                                        r"gradient_accumulation_steps 2; use a multiple of 4"):
        apply_global_batch(18, args)


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_with_accelerate(path):
    """Every hardware config is one accelerate itself accepts (DeepSpeed / FSDP included)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert str(config.distributed_type).split(".")[-1] == yaml.safe_load(path.read_text())["distributed_type"]
    if "zero" in path.name:
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    if path.name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2


def test_launcher_wrapper_exits_with_the_recipe_status_and_no_traceback():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.run.launch", "--config_file",
                           str(REPO / "recipes/accelerate/cpu.yaml"), str(REPO / "recipes/sft.py"),
                           "--config", "recipes/configs/demo/nope.yaml"], cwd=REPO, capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: config file recipes/configs/demo/nope.yaml not found" in proc.stderr
