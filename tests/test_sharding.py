"""Sharded training run for real on two CPU processes: FSDP2 and DeepSpeed ZeRO-2/3 (the GPU configs themselves, with
two processes and float32 given on the launch line), two "machines" on 127.0.0.1, and the hardware mistakes that are
refused at launch with one line."""

import subprocess

import pytest
import yaml
from test_scale import DP, _adapter, _marker

from rlhf_kit.run.launch import free_port

from conftest import (
    REPO,
    cli_env,
    config_args,
    launch_cmd,
    load_recipe,
    recipe_dataclasses,
    run_cli,
    run_inprocess,
    stage_paths,
)

CPU2 = ["--num_processes", "2", "--mixed_precision", "no"]  # a GPU config as two CPU processes, float32
ACCELERATE = REPO / "recipes" / "accelerate"


@pytest.fixture(scope="module")
def one_process(pipeline, tmp_path_factory):
    """1-process SFT and reward runs with the same global batch as the sharded ones (the references)."""
    root = tmp_path_factory.mktemp("one_process")
    for stage in ("sft", "reward"):
        run_inprocess(stage, config_args(stage) + stage_paths(pipeline, stage) + DP[stage][0]
                      + ["--output_dir", str(root / stage)])
    return root


@pytest.fixture(scope="module")
def wide(pipeline, tmp_path_factory):
    """A base wide enough for ZeRO-3 to partition (its MLP matrices, 256 x 512, exceed DeepSpeed's default
    stage3_param_persistence_threshold of 1e5 elements; every tensor of the tiny pipeline's base is below it and
    stays whole), and its 1-process SFT reference."""
    root = tmp_path_factory.mktemp("wide")
    run_inprocess("base", config_args("base") + ["--output_dir", str(root / "base"), "--data_dir", str(root / "data"),
                                                 "--hidden_size", "256", "--intermediate_size", "512",
                                                 "--num_hidden_layers", "1", "--max_steps", "3",
                                                 "--per_device_train_batch_size", "8"])
    run_inprocess("sft", config_args("sft") + _wide_sft(pipeline, root) + ["--output_dir", str(root / "sft")])
    return root


def _wide_sft(pipeline, root):
    """SFT overrides for the wide base (later flags win: its path, 4 steps)."""
    return stage_paths(pipeline, "sft") + DP["sft"][0] + ["--max_steps", "4",
                                                          "--model_name_or_path", str(root / "base")]


@pytest.mark.parametrize("config,stage,kind", [("fsdp.yaml", "sft", "FSDP"), ("fsdp.yaml", "reward", "FSDP"),
                                               ("zero2.yaml", "reward", "DEEPSPEED"),
                                               ("zero3.yaml", "sft", "DEEPSPEED")])
def test_sharded_run_matches_one_process(pipeline, one_process, wide, tmp_path, config, stage, kind):
    """Same global batch, same data order: the sharded adapter equals the 1-process one to float noise (as DDP);
    the merged model is gathered from the shards and loads with plain from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    overrides, tol = DP[stage]
    out = tmp_path / stage
    args = config_args(stage) + stage_paths(pipeline, stage) + overrides
    steps = 8 if stage == "sft" else 6
    if config == "zero3.yaml":
        args, steps, one_process = config_args(stage) + _wide_sft(pipeline, wide), 4, wide
    proc = run_cli(stage, args + ["--output_dir", str(out)], launcher=config, launch_args=CPU2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # both ranks trained, and under the sharding asked for (not a silent fallback to DDP)
        assert f"[{stage}] rank {rank}/2 trained {steps} steps ({kind})" in proc.stdout
    assert proc.stdout.count(f"[{stage}] done in") == 1 and _marker(out)["world_size"] == 2
    a, b = _adapter(one_process / stage), _adapter(out)
    assert sorted(a) == sorted(b)
    delta = max((a[k] - b[k]).abs().max().item() for k in a)
    print(config, stage, "max |adapter delta|", delta)
    assert delta <= tol, "the sharded model drifted from the 1-process one"
    cls = AutoModelForCausalLM if stage == "sft" else AutoModelForSequenceClassification
    merged, reference = cls.from_pretrained(out).state_dict(), cls.from_pretrained(one_process / stage).state_dict()
    assert max((merged[k] - reference[k]).abs().max().item() for k in reference) <= tol


def test_ppo_trains_under_zero2_on_both_ranks_and_saves_a_loadable_policy(pipeline, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ppo"
    proc = run_cli("ppo", config_args("ppo") + stage_paths(pipeline, "ppo") + DP["ppo"][0] + ["--output_dir", str(out)],
                   launcher="zero2.yaml", launch_args=CPU2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ppo] rank 0/2 trained 4 steps (DEEPSPEED)" in proc.stdout
    assert "[ppo] rank 1/2 trained 4 steps (DEEPSPEED)" in proc.stdout
    marker = _marker(out)
    assert marker["episode"] == 64 and marker["world_size"] == 2 and marker["kl"] == marker["kl"]
    policy = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(pipeline / "runs" / "sft").state_dict()
    moved = max((p - sft[k]).abs().max().item() for k, p in policy.state_dict().items())
    assert 0 < moved < 1, "the saved policy should be the SFT model, changed by a few PPO steps"


def test_two_machines_on_localhost_train_together_and_only_machine_0_writes(pipeline, tmp_path):
    """multi_node.yaml as the README runs it on each node, both "nodes" on 127.0.0.1. Each node gets its own
    output_dir (as machines without a shared disk), so a file written by machine 1 shows up in its folder."""
    port, procs = str(free_port()), []
    overrides = config_args("sft") + stage_paths(pipeline, "sft") + DP["sft"][0]
    for rank in (0, 1):
        launch = CPU2 + ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port]
        args = overrides + ["--output_dir", str(tmp_path / f"n{rank}")]
        procs.append(subprocess.Popen(launch_cmd("sft", "multi_node.yaml", launch) + args, cwd=REPO, env=cli_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    (out0, err0), (out1, err1) = (p.communicate(timeout=600) for p in procs)
    assert procs[0].returncode == 0, err0[-3000:]
    assert procs[1].returncode == 0, err1[-3000:]
    assert "[sft] rank 0/2 trained 8 steps (MULTI_CPU)" in out0 and "rank 1/2" not in out0
    assert "[sft] rank 1/2 trained 8 steps (MULTI_CPU)" in out1 and "rank 0/2" not in out1
    assert "[sft] done in" in out0 and "done in" not in out1
    assert _marker(tmp_path / "n0")["world_size"] == 2
    # Trainer has every process keep its own RNG state in each checkpoint (to resume exactly); nothing else of the
    # stage (model, adapter, config, marker, logs) comes from machine 1.
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "n1").rglob("*") if p.is_file())
    assert written == ["n1/checkpoint-8/rng_state_1.pth"], f"machine 1 wrote {written}"
    assert (tmp_path / "n0" / "checkpoint-8" / "rng_state_0.pth").is_file()
    assert not (tmp_path / "n0" / "checkpoint-8" / "rng_state_1.pth").exists()


# --- bad input: refused before any process starts or any model loads -------------------------------------------


def _launch_args(*argv):
    from accelerate.commands.launch import launch_command_parser

    return launch_command_parser().parse_args([*argv, "recipes/sft.py"])


def test_bf16_sharding_refused_on_a_cpu_without_bf16(monkeypatch):
    from rlhf_kit.core.errors import UserError
    from rlhf_kit.integrations import hardware as scaling
    from rlhf_kit.run.launch import check_launch

    monkeypatch.setattr(scaling, "has_gpu", lambda: False)
    monkeypatch.setattr(scaling, "cpu_supports_bf16", lambda: True)  # this machine's Xeon (AMX-BF16)
    for config in ("fsdp.yaml", "zero2.yaml", "zero3.yaml"):
        check_launch(_launch_args("--config_file", str(ACCELERATE / config)))
    monkeypatch.setattr(scaling, "cpu_supports_bf16", lambda: False)
    with pytest.raises(UserError, match=r"fsdp.yaml: mixed_precision bf16 with FSDP on a CPU without bf16 support"):
        check_launch(_launch_args("--config_file", str(ACCELERATE / "fsdp.yaml")))
    with pytest.raises(UserError, match=r"zero3.yaml: mixed_precision bf16 with DEEPSPEED"):
        check_launch(_launch_args("--config_file", str(ACCELERATE / "zero3.yaml")))
    check_launch(_launch_args("--config_file", str(ACCELERATE / "fsdp.yaml"), "--mixed_precision", "no"))


@pytest.mark.parametrize("flags,supported", [("fpu sse avx512f avx512_bf16 amx_tile", True), ("fpu amx_bf16", True),
                                             ("fpu sse avx2 avx512f", False)])
def test_cpu_bf16_detector_reads_cpuinfo_flags(tmp_path, flags, supported):
    from rlhf_kit.integrations.hardware import cpu_supports_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    assert cpu_supports_bf16(str(cpuinfo)) is supported


def test_processes_not_divisible_by_machines_refused():
    from rlhf_kit.core.errors import UserError
    from rlhf_kit.run.launch import check_launch

    with pytest.raises(UserError, match=r"num_processes=3 \(all machines together\) is not divisible by "
                                        r"num_machines=2"):
        check_launch(_launch_args("--config_file", str(ACCELERATE / "multi_node.yaml"), "--num_processes", "3",
                                  "--main_process_ip", "127.0.0.1"))


def test_multi_node_without_main_process_ip_refused_in_one_line():
    proc = subprocess.run([*launch_cmd("sft", "multi_node.yaml", ["--machine_rank", "1"]), *config_args("sft")],
                          cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {ACCELERATE / 'multi_node.yaml'}: num_machines=2 but no main_process_ip; pass --main_process_ip "
        "<address of the machine_rank 0 node> (and the same --main_process_port) on every node")


FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "RLHF_KIT_ACCELERATE_CONFIG": "recipes/accelerate/fsdp.yaml"}
ZERO_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "RLHF_KIT_ACCELERATE_CONFIG": "recipes/accelerate/zero3.yaml"}


@pytest.mark.parametrize("env,stage,extra,match", [
    (FSDP_ENV, "sft", ["--load_in_4bit", "true"], r"load_in_4bit \(QLoRA\) cannot run under FSDP \(recipes/acc"),
    ({**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "reward", ["--load_in_4bit", "true"],
     r"load_in_4bit \(QLoRA\) cannot run under ZeRO-3 \(recipes/accelerate/zero3.yaml\)"),
    ({**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ppo", ["--load_in_4bit", "true"],
     r"load_in_4bit \(QLoRA\) cannot run under ZeRO-3"),
    ({**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ppo", [], None),
    ({**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "reward", ["--load_in_4bit", "true"], None),
    ({**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "ppo", [], None),
    ({"ACCELERATE_USE_FSDP": "true"}, "ppo", [], None),
])
def test_stage_refused_under_a_sharding_it_cannot_run(env, stage, extra, match):
    """The check on a recipe's parsed arguments against the environment accelerate gives its processes (the
    environment is passed in: setting it here would make this process a DeepSpeed/FSDP one for later tests)."""
    from rlhf_kit.core.errors import UserError
    from rlhf_kit.integrations.hardware import check_stage_hardware
    from rlhf_kit.run.configs import parse_stage_args

    parsed = parse_stage_args(recipe_dataclasses(load_recipe(stage)), config_args(stage) + extra)
    if match is None:  # ZeRO-2 does not shard the weights (QLoRA runs); PPO runs under all (tests/test_ppo_sharding.py)
        check_stage_hardware(parsed, env)
        return
    with pytest.raises(UserError, match=match):
        check_stage_hardware(parsed, env)


def test_ppo_qlora_under_fsdp_refused_at_launch_in_one_line(pipeline, tmp_path):
    """The same check inside the launched processes: exit 2, one line naming the config, nothing written."""
    out = tmp_path / "ppo"
    proc = run_cli("ppo", config_args("ppo") + stage_paths(pipeline, "ppo") + ["--output_dir", str(out),
                                                                               "--load_in_4bit", "true"],
                   launcher="fsdp.yaml", launch_args=CPU2)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: load_in_4bit (QLoRA) cannot run under FSDP ({ACCELERATE / 'fsdp.yaml'})"), lines
    assert not out.exists()


def test_every_accelerate_config_is_documented_with_what_ran_here():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| config | what | run here |"):].split("\n\n")[0]
    for path in ACCELERATE.glob("*.yaml"):
        assert f"`{path.name}`" in table, f"{path.name} missing from README's scale-out table"
        yaml.safe_load(path.read_text())


def test_hardware_is_configured_once_by_the_runner_and_parsing_changes_nothing(monkeypatch, capsys):
    """Side effects where they are seen: rlhf_kit.integrations.hardware.configure sets the launch's environment and
    says so in one line (on rank 0 of a multi-process launch); parsing a stage's config leaves os.environ alone."""
    import os

    from rlhf_kit.integrations import hardware
    from rlhf_kit.run.configs import parse_stage_args

    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    env = {"RANK": "0", "WORLD_SIZE": "2"}
    line = hardware.configure(env)
    assert env["ACCELERATE_USE_CPU"] == "true" and line == "hardware: no GPU; set ACCELERATE_USE_CPU=true"
    assert capsys.readouterr().err == line + "\n"
    zero = {"ACCELERATE_USE_DEEPSPEED": "true", "RANK": "1", "WORLD_SIZE": "2"}
    assert "DS_ACCELERATOR=cpu" in hardware.configure(zero) and capsys.readouterr().err == ""  # rank 1: silent
    assert zero["ACCELERATE_USE_CPU"] == "false" and zero["DS_ACCELERATOR"] == "cpu"
    assert hardware.cpu_defaults((), zero) == {"ddp_backend": "gloo"}
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    assert hardware.configure({}) is None and hardware.cpu_defaults((), {}) == {}

    before = dict(os.environ)
    parse_stage_args(recipe_dataclasses(load_recipe("ppo")), config_args("ppo"))
    assert dict(os.environ) == before
