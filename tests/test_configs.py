"""Every YAML under recipes/ parses with its recipe's dataclasses; accelerate YAMLs hold hardware only."""

from pathlib import Path

import pytest
import yaml

from rlhf_kit.run.configs import parse_stage_args

from conftest import REPO, load_recipe, recipe_dataclasses

RECIPE_CONFIGS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
EXPERIMENT_KEYS = {"learning_rate", "model_name_or_path", "dataset_path", "output_dir", "num_train_epochs", "lora_r"}


def _dataclasses(stage):
    return recipe_dataclasses(load_recipe(stage))


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_config_parses(path: Path):
    import torch

    stage = path.stem
    # GPU recipes (bf16) parse here with the CPU overrides a user would pass (a CPU without native bf16 refuses
    # both keys); the demo configs parse as they are.
    raw = yaml.safe_load(path.read_text())
    on_cpu = not torch.cuda.is_available()
    cpu = ["--bf16", "false"] if raw.get("bf16") is True and on_cpu else []  # `auto` picks by hardware itself
    cpu += ["--dtype", "float32"] if raw.get("dtype") == "bfloat16" and on_cpu else []
    parsed = parse_stage_args(_dataclasses(stage), ["--config", str(path)] + cpu)
    if stage == "rounds":  # a rounds run is a run of its own: runs/<name>/round-<r>/<stage>/
        assert Path(parsed[0].run_dir).parent.name == "runs" and Path(parsed[0].stage_configs).is_dir()
    else:
        output_dirs = [p.output_dir for p in parsed if getattr(p, "output_dir", None)]
        output_dirs += [str(Path(p.run_dir) / "eval") for p in parsed if hasattr(p, "run_dir")]  # eval: run_dir/eval
        assert output_dirs and Path(output_dirs[0]).name == stage, "outputs go to runs/<name>/<stage>/"
    for cfg in parsed:  # every YAML value reached its dataclass
        for key, value in raw.items():
            if hasattr(cfg, key) and not isinstance(value, (dict, list)) and f"--{key}" not in cpu:
                got = getattr(cfg, key)
                if value == "auto" and key in ("dtype", "bf16"):  # resolved by hardware (tests/test_cpu_bf16.py)
                    assert got in ("bfloat16", "float32", True, False), (key, got)
                    continue
                got = getattr(got, "value", got)  # enums such as lr_scheduler_type
                assert got in (value, [value]) or str(got) == str(value), (key, got, value)


def test_demo_stages_chain_into_each_other():
    """Each demo stage reads exactly what the stage before it writes (a renamed folder breaks this test)."""
    cfg = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "recipes" / "configs" / "demo").glob("*.yaml")}
    out = {stage: c.get("output_dir") for stage, c in cfg.items()}
    data = cfg["base"]["data_dir"]
    assert cfg["sft"]["model_name_or_path"] == out["base"] and cfg["sft"]["dataset_path"] == f"{data}/sft.jsonl"
    assert cfg["compare"]["model_name_or_path"] == out["sft"] == cfg["reward"]["model_name_or_path"]
    assert cfg["compare"]["dataset_path"] == cfg["ppo"]["dataset_path"] == f"{data}/prompts.jsonl"
    assert cfg["reward"]["dataset_path"] == f"{out['compare']}/rankings.jsonl"
    assert cfg["reward"]["eval_dataset_path"] == f"{out['compare']}/rankings_heldout.jsonl"
    assert cfg["ppo"]["model_name_or_path"] == out["sft"] and cfg["ppo"]["reward_model_path"] == out["reward"]
    run_dir = cfg["eval"]["run_dir"]
    assert cfg["eval"]["eval_dataset_path"] == f"{data}/eval.jsonl"
    assert {str(Path(o).parent) for o in out.values() if o} == {run_dir}  # every stage under one run folder


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_hardware_only(path: Path):
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict) and "distributed_type" in config
    assert not EXPERIMENT_KEYS & set(config), "experiment settings belong in recipes/configs/"
