"""Shared fixtures: a tiny end-to-end pipeline built once per session through the real recipe entry points."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rlhf_kit, whichever checkout was pip-installed last
TEST_ENV = {
    "HF_HUB_OFFLINE": "1",  # tests never touch the network
    "HF_DATASETS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs one pytest-xdist worker per core
    # Each worker (and the recipes it starts) gets its share of the cores: two workers with two OpenMP threads each
    # on two cores spin-wait on each other and run several times slower than one thread each.
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    TEST_ENV["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))
    os.environ["OMP_NUM_THREADS"] = TEST_ENV["OMP_NUM_THREADS"]  # before torch is imported in this worker


@pytest.fixture(scope="session", autouse=True)
def offline_env():
    """The test session's environment, set through monkeypatch and restored when the session ends."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TEST_ENV.items():
            mp.setenv(key, value)
        yield


# Each test's measured call time in seconds (tests/durations.json, written by `make test-durations` from a full
# `make test` run): a test over SLOW_S is marked `slow`. Marked from a measurement, never by guess; a new test is
# not slow until the file is re-recorded.
SLOW_S = 30.0
DURATIONS = REPO / "tests" / "durations.json"


def pytest_collection_modifyitems(items):
    """``slow``: measured over 30 s (tests/durations.json). ``pipeline``: needs the tiny end-to-end pipeline, built
    once per session (about a minute). ``pytest -m "not slow and not pipeline"`` is the quick loop."""
    import json

    measured = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    for item in items:
        if measured.get(item.nodeid, 0.0) > SLOW_S:
            item.add_marker(pytest.mark.slow)
        if "pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)
    # Longest files first (their measured seconds), each file's tests in their own order: `make test` hands whole
    # files to the workers in this order (--dist loadfile --no-loadscope-reorder), so no worker starts a long file
    # while the other is nearly done (longest-processing-time-first scheduling, Graham 1969). Right after the first
    # file come those that never use the pipeline: while one worker builds it, the others run them instead of
    # waiting on its lock.
    per_file: Counter = Counter()
    for nodeid, seconds in measured.items():
        per_file[nodeid.split("::")[0]] += seconds
    file_of = lambda item: item.nodeid.split("::")[0]  # noqa: E731
    uses_pipeline = {file_of(item) for item in items if item.get_closest_marker("pipeline")}
    order = sorted({file_of(item) for item in items}, key=lambda f: (-per_file[f], f))  # every worker alike
    order = order[:1] + [f for f in order[1:] if f not in uses_pipeline] + [f for f in order[1:] if f in uses_pipeline]
    rank = {f: i for i, f in enumerate(order)}
    items.sort(key=lambda item: rank[file_of(item)])

# Per-stage overrides that make each stage a few steps on a very small model.
TINY = {
    "base": ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--max_steps", "30",
             "--per_device_train_batch_size", "32", "--save_steps", "10"],
    "sft": ["--max_steps", "20", "--per_device_train_batch_size", "16", "--lora_r", "4", "--lora_alpha", "8",
            "--save_steps", "10"],
    "compare": ["--num_responses", "4", "--max_new_tokens", "12"],
    "reward": ["--max_steps", "10", "--per_device_train_batch_size", "16", "--lora_r", "4", "--lora_alpha", "8",
               "--per_device_eval_batch_size", "5"],  # held-out batches of unequal pair counts: accuracy is pooled
    **dict.fromkeys(("rloo", "grpo"), ["--max_steps", "2", "--per_device_train_batch_size", "4",
                                       "--gradient_accumulation_steps", "1", "--num_generations", "2",
                                       "--max_completion_length", "8", "--lora_r", "4", "--lora_alpha", "8"]),
    "dpo": ["--max_steps", "2", "--per_device_train_batch_size", "8", "--lora_r", "4", "--lora_alpha", "8"],
    "ppo": ["--total_episodes", "32", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--num_ppo_epochs", "1", "--response_length", "12", "--lora_r", "4", "--lora_alpha", "8"],
}


def stage_paths(root: Path, stage: str) -> list[str]:
    """Overrides that point a stage's inputs and outputs into ``root`` instead of runs/demo."""
    data, runs = root / "data", root / "runs"
    paths = {
        "base": ["--output_dir", runs / "base", "--data_dir", data],
        "sft": ["--output_dir", runs / "sft", "--model_name_or_path", runs / "base",
                "--dataset_path", data / "sft.jsonl"],
        "compare": ["--output_dir", runs / "compare", "--model_name_or_path", runs / "sft",
                    "--dataset_path", data / "prompts.jsonl"],
        "reward": ["--output_dir", runs / "reward", "--model_name_or_path", runs / "sft",
                   "--dataset_path", runs / "compare" / "rankings.jsonl",
                   "--eval_dataset_path", runs / "compare" / "rankings_heldout.jsonl"],
        "ppo": ["--output_dir", runs / "ppo", "--model_name_or_path", runs / "sft",
                "--reward_model_path", runs / "reward", "--dataset_path", data / "prompts.jsonl",
                "--probe_dataset_path", data / "probe.jsonl"],
        **{s: ["--output_dir", runs / s, "--model_name_or_path", runs / "sft", "--reward_model_path", runs / "reward",
               "--dataset_path", data / "prompts.jsonl"] for s in ("rloo", "grpo")},
        "dpo": ["--output_dir", runs / "dpo", "--model_name_or_path", runs / "sft",
                "--dataset_path", runs / "compare" / "rankings.jsonl",
                "--eval_dataset_path", runs / "compare" / "rankings_heldout.jsonl"],
    }
    return [str(x) for x in paths[stage]]


def launch_cmd(stage: str, launcher: str = "python", launch_args: list[str] = ()) -> list[str]:
    """The command that starts ``recipes/<stage>.py``: python, ``accelerate launch`` (cpu.yaml, or cpu_2proc.yaml
    for "accelerate-2proc"), or ``python -m rlhf_kit.run.launch`` (what make runs) for an accelerate YAML's name."""
    script = str(REPO / "recipes" / f"{stage}.py")
    if launcher == "python":
        return [sys.executable, script]
    if launcher.endswith(".yaml"):
        return [sys.executable, "-m", "rlhf_kit.run.launch", "--config_file",
                str(REPO / "recipes/accelerate" / launcher), *launch_args, script]
    hardware = "cpu_2proc.yaml" if launcher == "accelerate-2proc" else "cpu.yaml"
    if launcher == "accelerate-2proc" and "--main_process_port" not in launch_args:  # plain accelerate: 29500 else
        from rlhf_kit.run.launch import free_port

        launch_args = [*launch_args, "--main_process_port", str(free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "recipes/accelerate" / hardware), *launch_args, script]


def cli_env(env: dict | None = None) -> dict:
    """The environment a recipe subprocess gets: ours, this checkout first on PYTHONPATH."""
    return {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run_cli(stage: str, args: list[str], launcher: str = "python", timeout: int = 600,
            env: dict | None = None, launch_args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run ``recipes/<stage>.py`` as a user would (see ``launch_cmd``), from the repository root."""
    return subprocess.run(launch_cmd(stage, launcher, launch_args) + args, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(env))


def load_recipe(stage: str):
    """Import ``recipes/<stage>.py`` as a module (to call its ``main`` in-process)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{stage}", REPO / "recipes" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_inprocess(stage: str, args: list[str]) -> None:
    """Parse ``args`` with the stage's dataclasses and call its ``main`` (UserError propagates)."""
    from rlhf_kit.run.configs import parse_stage_args

    module = load_recipe(stage)
    module.main(*parse_stage_args(recipe_dataclasses(module), args))


def recipe_dataclasses(module) -> tuple:
    """The dataclasses a recipe's ``main`` takes, in order (from its annotations)."""
    code = module.main.__code__
    return tuple(module.main.__annotations__[k] for k in code.co_varnames[: code.co_argcount])


def config_args(stage: str) -> list[str]:
    return ["--config", str(REPO / "recipes/configs/demo" / f"{stage}.yaml")]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """Run base -> sft -> compare -> reward -> ppo on tiny settings through the real entry points, once per test
    session: under pytest-xdist the first worker that needs it builds it while the others wait on a file lock
    (pytest-xdist's documented pattern for a session fixture run once), instead of every worker building its own
    copy on the same cores. Tests read it and copy what they change."""
    from filelock import FileLock  # a dependency of transformers, datasets and huggingface_hub

    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "pipeline"  # the folder all workers of this session share
    else:
        root = tmp_path_factory.mktemp("pipeline")
    with FileLock(f"{root}.lock"):
        if not (root / "runs" / "ppo" / "stage_complete.json").is_file():  # the last stage's completion record
            _build_pipeline(root)
    return root


def _build_pipeline(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stage in ("base", "sft", "compare", "reward", "ppo"):
        launcher = "accelerate" if stage in ("sft", "ppo") else "python"
        proc = run_cli(stage, config_args(stage) + stage_paths(root, stage) + TINY[stage], launcher)
        (root / f"{stage}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
