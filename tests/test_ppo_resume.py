"""Kill PPO with SIGKILL mid-run, rerun the same command: it resumes from the last complete checkpoint and ends
with exactly the adapter and metrics of a run that was never interrupted (CPU, fixed seed) -- on 1 process, and on
2 under DDP, ZeRO-2 and FSDP2 (Accelerate's save_state keeps each process's optimizer shard). The checkpoint to
kill after is drawn from a seed that the test prints (RLHF_KIT_KILL_SEED replays it)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, config_args, stage_paths

# 10 updates of 16 episodes (on any number of processes), a checkpoint every 2, the newest 2 kept.
RESUMABLE = ["--total_episodes", "160", "--global_batch_size", "16", "--save_strategy", "steps", "--save_steps", "2",
             "--save_total_limit", "2", "--report_to", "none"]


def _args(root, out) -> list[str]:
    """With PPO-ptx and the adaptive KL controller on, so their state is checkpointed and restored too."""
    extras = ["--ptx_coef", "0.5", "--ptx_dataset", str(root / "data" / "pretrain.jsonl"), "--kl_target", "1.0",
              "--kl_horizon", "200"]
    return (config_args("ppo") + stage_paths(root, "ppo") + TINY["ppo"] + RESUMABLE + extras
            + ["--output_dir", str(out)])


def _complete(out) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "checkpoint_complete.json").is_file())


def _outcome(out) -> tuple[bytes, list[dict]]:
    from rlhf_kit.ppo import TIMING_METRICS

    logs = json.loads((out / "log_history.json").read_text())
    return ((out / "adapter" / "adapter_model.safetensors").read_bytes(),
            [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in logs])


def _command(args: list[str], launcher: str) -> list[str]:
    """The PPO recipe as a user runs it: python, or `make ppo`'s launcher with two processes (cpu_2proc.yaml, or a
    sharded config's name as two float32 CPU processes)."""
    script = [str(REPO / "recipes" / "ppo.py")]
    if launcher == "accelerate-2proc":
        script = ["-m", "rlhf_kit.run.launch", "--config_file", str(REPO / "recipes/accelerate/cpu_2proc.yaml"),
                  *script]
    elif launcher.endswith(".yaml"):
        script = ["-m", "rlhf_kit.run.launch", "--config_file", str(REPO / "recipes/accelerate" / launcher),
                  "--num_processes", "2", "--mixed_precision", "no", *script]
    return [sys.executable, *script, *args]


_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _run(args: list[str], launcher: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args, launcher), cwd=REPO, env=_ENV, capture_output=True, text=True, timeout=600)


def _start(args: list[str], launcher: str) -> subprocess.Popen:
    return subprocess.Popen(_command(args, launcher), cwd=REPO, env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torch's elastic agent starts ranks in sessions of their
    own, so a process-group kill would leave them running)."""
    import psutil  # an accelerate dependency

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


@pytest.mark.parametrize("launcher", ["python", "accelerate-2proc", "zero2.yaml", "fsdp.yaml"])
def test_sigkill_then_rerun_matches_uninterrupted_run(pipeline, tmp_path, launcher):
    full = _run(_args(pipeline, tmp_path / "full"), launcher)
    assert full.returncode == 0, full.stderr[-3000:]
    assert _complete(tmp_path / "full") == [8, 10]  # rotated to save_total_limit

    out = tmp_path / "killed"
    seed = int(os.environ.get("RLHF_KIT_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    kill_after = rng.choice([2, 4, 6])  # kill right after this checkpoint appears, at a random moment
    print(f"{launcher}: RLHF_KIT_KILL_SEED={seed} -> kill after checkpoint-{kill_after}")
    proc = _start(_args(pipeline, out), launcher)
    deadline = time.time() + 300
    while kill_after not in _complete(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.2))
    assert proc.poll() is None, f"the run ended before it could be killed after checkpoint-{kill_after}"
    _kill_tree(proc)
    assert not (out / "stage_complete.json").exists()
    last = _complete(out)[-1]
    kept = json.loads((out / f"checkpoint-{last}" / "work.json").read_text())  # the work and seconds up to it
    (out / "checkpoint-999").mkdir()  # an incomplete checkpoint (no completion record) is skipped, and said so

    if launcher == "python":  # a changed optimisation is refused (the check is the same on every launch)
        changed = _run(_args(pipeline, out) + ["--learning_rate", "5e-4"], launcher)
        assert changed.returncode == 2 and "learning_rate" in changed.stderr and "Traceback" not in changed.stderr
    if launcher == "accelerate-2proc":  # another launch (1 process) is refused in one line that says what to do
        other = _run(_args(pipeline, out), "python")
        errors = [line for line in other.stderr.splitlines() if line.startswith("error:")]
        assert other.returncode == 2 and len(errors) == 1 and "relaunch with the checkpoint's" in errors[0], errors

    resumed = _run(_args(pipeline, out) + ["--logging_steps", "2"], launcher)  # logging may change
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ignoring incomplete checkpoint" in resumed.stdout and f"checkpoint-{last} (update {last}" in resumed.stdout
    adapter_full, logs_full = _outcome(tmp_path / "full")
    adapter_resumed, logs_resumed = _outcome(out)
    updates = [r for r in logs_full if "ppo/kl_coef" in r]  # (the monitor's probes are in the log too)
    assert len(updates) == 10 and logs_resumed == logs_full
    assert len({r["ppo/kl_coef"] for r in updates}) == 10 and "losses/ptx" in logs_full[-1]
    assert adapter_resumed == adapter_full
    # the record counts the whole run: the seconds before the checkpoint, and its tokens as the unbroken run's
    record, unbroken = (json.loads((d / "stage_complete.json").read_text()) for d in (out, tmp_path / "full"))
    assert record["resumed_seconds"] == kept["wall_seconds"] < record["wall_seconds"]
    tokens = lambda r: [r[f"tokens_{k}"] for k in ("sampled", "scored", "trained")]  # noqa: E731
    assert tokens(record) == tokens(unbroken) and 0 < kept["tokens_sampled"] < record["tokens_sampled"]


@pytest.mark.parametrize("save_total_limit", [1])
def test_rotation_keeps_newest(tmp_path, save_total_limit):
    from rlhf_kit.ppo.checkpoint import COMPLETE, PPOCheckpointer, last_complete_checkpoint

    for n in (2, 4, 6):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()
    PPOCheckpointer(str(tmp_path), {}, save_total_limit=save_total_limit)._rotate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    messages = []
    assert last_complete_checkpoint(tmp_path, say=messages.append).name == "checkpoint-6"
    assert "checkpoint-8" in messages[0]
    for n in (10, 12):  # select_checkpoint: judge -- the best-judged checkpoint (6) outlives the rotation
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / COMPLETE).write_text("{}")
    PPOCheckpointer(str(tmp_path), {}, save_total_limit=save_total_limit)._rotate(keep=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12", "checkpoint-6", "checkpoint-8"]
