"""RLHF rounds (rlhf_kit/run/rounds.py, recipes/rounds.py): how each round is wired, its data, what is refused, and a
tiny two-round run that is killed in round 2's reward stage and resumed to the same figures as an unbroken run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhf_kit.core.errors import UserError
from rlhf_kit.run.configs import RoundsArguments
from rlhf_kit.run.rounds import check_progress, check_run_config, plan, read_stage_configs, resolved, write_reward_data

from conftest import REPO, TINY, cli_env

STAGES = ["base", "sft", "compare", "reward", "ppo", "eval"]
DEMO = REPO / "recipes" / "configs" / "demo"


def _plan(**kw):
    args = RoundsArguments(**({"run_dir": "runs/r", "stage_configs": str(DEMO)} | kw))
    return {(s.round, s.stage): s for s in plan(args, read_stage_configs(str(DEMO), STAGES))}


def test_round_two_samples_the_round_one_policy_and_keeps_sft_as_reference():
    steps = _plan(rounds=3, seed=7)
    assert steps[(0, "base")].overrides == {"output_dir": "runs/r/base", "data_dir": "runs/r/data", "seed": 7,
                                            "world_seed": 7}
    assert "world_seed" not in steps[(0, "sft")].overrides  # only where the config has one
    assert steps[(1, "compare")].overrides["model_name_or_path"] == "runs/r/sft"
    assert steps[(2, "compare")].overrides["model_name_or_path"] == "runs/r/round-1/ppo"
    reward = steps[(2, "reward")].overrides
    assert reward["model_name_or_path"] == "runs/r/sft"  # InstructGPT: every RM starts from SFT
    assert reward["dataset_path"] == "runs/r/round-2/data/rankings.jsonl"
    assert reward["eval_dataset_path"] == "runs/r/round-2/compare/rankings_heldout.jsonl"
    ppo = steps[(3, "ppo")].overrides
    assert (ppo["model_name_or_path"], ppo["ref_model_path"], ppo["reward_model_path"]) == (
        "runs/r/round-2/ppo", "runs/r/sft", "runs/r/round-3/reward")
    assert ppo["dataset_path"] == "runs/r/data/prompts.jsonl"
    ev = steps[(3, "eval")].overrides
    assert ev["policies"] == ["base", "sft", "round-1/ppo", "round-2/ppo", "round-3/ppo"]
    assert ev["versus"] == ["round-1/ppo", "round-2/ppo"] and ev["previous_reward_model"] == "round-2/reward"
    assert ev["reference_comparisons"] == "round-1/compare"
    assert ev["output_dir"] == "runs/r/round-3/eval" and ev["eval_dataset_path"] == "runs/r/data/eval.jsonl"
    assert "previous_reward_model" not in steps[(1, "eval")].overrides and steps[(1, "eval")].overrides["versus"] == []


def test_ppo_from_sft_and_fresh_prompts():
    steps = _plan(rounds=3, ppo_init="sft", comparison_prompts="fresh")
    assert steps[(3, "ppo")].overrides["model_name_or_path"] == "runs/r/sft"
    assert steps[(3, "compare")].overrides["model_name_or_path"] == "runs/r/round-2/ppo"  # still the latest policy
    assert [(steps[(r, "compare")].overrides["prompt_chunk"], steps[(r, "compare")].overrides["num_prompt_chunks"])
            for r in (1, 2, 3)] == [(0, 3), (1, 3), (2, 3)]


def _rankings(folder: Path, prompts: list[str]) -> None:
    folder.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": p}], "responses": ["a", "b"], "ranks": [0, 1]} for p in prompts]
    (folder / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reward_data_holds_every_round_so_far_newest_weighted(tmp_path):
    _rankings(tmp_path / "round-1" / "compare", ["p1", "p2"])
    _rankings(tmp_path / "round-2" / "compare", ["q1"])
    path = write_reward_data(str(tmp_path), 2, newest_weight=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["prompt"][0]["content"], r["round"]) for r in rows] == [("p1", 1), ("p2", 1)] + [("q1", 2)] * 3
    assert path == tmp_path / "round-2" / "data" / "rankings.jsonl"


def test_a_run_made_with_other_settings_is_refused_by_name(tmp_path):
    configs = read_stage_configs(str(DEMO), STAGES)
    args = RoundsArguments(run_dir=str(tmp_path), stage_configs=str(DEMO), rounds=2)
    (tmp_path / "rounds_config.yaml").write_text(yaml.safe_dump(resolved(args, configs)))
    check_run_config(str(tmp_path), resolved(RoundsArguments(**{**vars(args), "rounds": 5}), configs))  # may grow
    with pytest.raises(UserError, match=r"ppo_init: 'previous' -> 'sft'"):
        check_run_config(str(tmp_path), resolved(RoundsArguments(**{**vars(args), "ppo_init": "sft"}), configs))
    changed = {**configs, "ppo": {**configs["ppo"], "kl_coef": 0.5}}
    with pytest.raises(UserError, match=r"another configuration \(ppo.yaml: kl_coef\)"):
        check_run_config(str(tmp_path), resolved(args, changed))
    added = {**configs, "reward": {**configs["reward"], "lora_r": 64}}  # a key the YAML did not set is a change too
    with pytest.raises(UserError, match=r"another configuration \(reward.yaml: lora_r\)"):
        check_run_config(str(tmp_path), resolved(args, added))
    # precision is hardware (#26): another machine's `auto` choice, or a logging change, continues the run
    other_machine = {s: {**c, "bf16": not c.get("bf16", False), "logging_steps": 7} for s, c in configs.items()}
    check_run_config(str(tmp_path), resolved(args, other_machine))


def test_a_later_round_started_before_an_earlier_one_finished_is_refused(tmp_path):
    args = RoundsArguments(run_dir=str(tmp_path), stage_configs=str(DEMO), rounds=2)
    steps = plan(args, read_stage_configs(str(DEMO), STAGES))
    for step in steps[:4]:  # setup done, round 1 compare and reward done
        Path(step.output_dir).mkdir(parents=True)
        (Path(step.output_dir) / "stage_complete.json").write_text("{}")
    check_progress(steps)  # round 1's ppo comes next: fine
    (tmp_path / "round-2" / "compare").mkdir(parents=True)
    with pytest.raises(UserError, match=r"round 1 ppo .* is unfinished but round 2 compare has started"):
        check_progress(steps)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_fewer_than_one_round_is_one_line(value):
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "rounds.py"), "--config", str(DEMO / "rounds.yaml"),
                           "--rounds", value], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: rounds={value} must be at least 1; e.g. make rounds ROUNDS=3"]


class TyingLabeler:
    """A labeler that prefers nothing: every response of a prompt gets rank 0."""

    def __init__(self, **_):
        pass

    def check_rows(self, rows, path):
        pass

    def rank(self, row, responses):
        return {"ranks": [0] * len(responses)}


def test_a_labeler_without_preferences_stops_compare_with_nothing_written(pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the labeler below, by module:Class
    out = tmp_path / "compare"
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "compare.py"), "--config", str(DEMO / "compare.yaml"),
         "--model_name_or_path", str(pipeline / "runs" / "sft"), "--dataset_path", str(pipeline / "data/prompts.jsonl"),
         "--output_dir", str(out), "--labeler", "test_rounds:TyingLabeler", *TINY["compare"], "--judge", ""],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=cli_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "gave all K responses of every prompt" in proc.stderr
    assert not (out / "rankings.jsonl").exists() and not (out / "stage_complete.json").exists()


# ------------------------------------------------------------------------------------------ a tiny run, end to end

def _tiny_track(folder: Path) -> Path:
    """The demo's stage configs with the test suite's tiny settings (a checkpoint every 2 reward steps)."""
    folder.mkdir(parents=True)
    for stage in STAGES:
        config = yaml.safe_load((DEMO / f"{stage}.yaml").read_text())
        flags = TINY.get(stage, [])
        config |= {k[2:]: yaml.safe_load(v) for k, v in zip(flags[::2], flags[1::2])}
        if stage == "reward":
            config |= {"save_steps": 2, "save_total_limit": 2}
        (folder / f"{stage}.yaml").write_text(yaml.safe_dump(config))
    rounds = yaml.safe_load((DEMO / "rounds.yaml").read_text()) | {"stage_configs": str(folder), "rounds": 2}
    (folder / "rounds.yaml").write_text(yaml.safe_dump(rounds))
    return folder / "rounds.yaml"


def _rounds_cmd(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / "rounds.py"), "--config", str(config), "--run_dir", str(run_dir)]


def _with_setup(pipeline: Path, run_dir: Path) -> Path:
    """A run folder whose setup stages are the session pipeline's (finished, so rounds skip them)."""
    shutil.copytree(pipeline / "data", run_dir / "data")
    for stage in ("base", "sft"):
        shutil.copytree(pipeline / "runs" / stage, run_dir / stage)
    return run_dir


def _figures(run_dir: Path) -> list[dict]:
    """Every round's summary without wall times (what must not depend on a kill)."""
    out = []
    for r in (1, 2):
        s = json.loads((run_dir / f"round-{r}" / "summary.json").read_text())
        out.append({k: v for k, v in s.items() if k != "wall_seconds"})
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil  # an accelerate dependency

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def test_two_rounds_killed_in_round_two_reward_resume_to_the_same_figures(pipeline, tmp_path):
    config = _tiny_track(tmp_path / "track")
    full = _with_setup(pipeline, tmp_path / "full")
    proc = subprocess.run(_rounds_cmd(config, full), capture_output=True, text=True, cwd=REPO, env=cli_env(),
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[rounds] base: already complete" in proc.stdout
    summary = json.loads((full / "rounds.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    two = summary["rounds"][1]
    assert two["rm_accuracy_before"] is not None and summary["rounds"][0]["rm_accuracy_before"] is None
    assert 0 <= two["win_rate_vs_previous"] <= 1 and 0 <= two["rm_accuracy_after"] <= 1
    assert (full / "rounds.md").is_file() and (full / "rounds.png").is_file()
    assert set(two["wall_seconds"]) == {"compare", "reward", "ppo", "eval"} and all(two["wall_seconds"].values())
    round2 = json.loads((full / "round-2" / "summary.json").read_text())
    assert round2["policies"] == ["base", "sft", "round-1/ppo", "round-2/ppo"]
    assert set(round2["head_to_head"]) == {"round-1/ppo"}
    assert round2["rm_accuracy_previous"]["pairs"] == round2["rm_accuracy_pairs"] > 0
    round1 = json.loads((full / "round-1" / "summary.json").read_text())
    assert round2["rm_accuracy_reference"]["pairs"] == round1["rm_accuracy_pairs"]  # round 1's held-out pairs
    assert summary["rounds"][0]["rm_accuracy_round1_comparisons"] == round1["rm_accuracy"]
    assert (full / "configs" / "ppo.yaml").read_text() == (config.parent / "ppo.yaml").read_text()  # run's copy
    ppo2 = yaml.safe_load((full / "round-2" / "ppo" / "rlhf_kit_config.yaml").read_text())
    assert ppo2["model_name_or_path"].endswith("round-1/ppo") and ppo2["ref_model_path"].endswith("/sft")
    data2 = (full / "round-2" / "data" / "rankings.jsonl").read_text().splitlines()
    data1 = (full / "round-1" / "compare" / "rankings.jsonl").read_text().splitlines()
    assert len(data2) == 2 * len(data1)  # both rounds' rankings (same prompts, new samples)

    killed = _with_setup(pipeline, tmp_path / "killed")
    shutil.copytree(full / "round-1", killed / "round-1")  # finished, so skipped: the kill is in round 2's reward
    shutil.copytree(full / "round-2" / "compare", killed / "round-2" / "compare")
    runner = subprocess.Popen(_rounds_cmd(config, killed), cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    reward2, deadline = killed / "round-2" / "reward", time.time() + 600
    while not list(reward2.glob("checkpoint-*/work.json")) and runner.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # work.json: the wall time so far, written just after the Trainer's checkpoint
    assert runner.poll() is None, "the run ended before round 2's reward stage could be killed"
    first = sorted(reward2.glob("checkpoint-*/work.json"))[0].parent.name
    print(f"[rounds kill] SIGKILL in round 2's reward stage as soon as its {first} was written")  # the kill point
    _kill_tree(runner)
    assert not (reward2 / "stage_complete.json").exists() and not (killed / "round-2" / "ppo").exists()

    resumed = subprocess.run(_rounds_cmd(config, killed), capture_output=True, text=True, cwd=REPO, env=cli_env(),
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[rounds] round 2 compare: already complete" in resumed.stdout
    assert "[rounds] round 2 reward ->" in resumed.stdout
    record = json.loads((reward2 / "stage_complete.json").read_text())  # the wall time counts both attempts
    assert 0 < record["resumed_seconds"] < record["wall_seconds"]
    assert _figures(killed) == _figures(full)
    after = json.loads((killed / "rounds.json").read_text())
    strip = lambda s: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in s["rounds"]]  # noqa: E731
    assert strip(after) == strip(summary)


def test_human_rankings_pause_the_round_until_the_app_export_is_there(tmp_path):
    from rlhf_kit.run.rounds import human_labels_pending, rankings_folder

    configs = read_stage_configs(str(DEMO), STAGES)
    configs["compare"] = {**configs["compare"], "labeler": "human", "label_db": "runs/labels/labels.db"}
    steps = {(s.round, s.stage): s for s in plan(RoundsArguments(run_dir=str(tmp_path), stage_configs=str(DEMO),
                                                                 rounds=2), configs)}
    assert rankings_folder(configs) == "labels"
    assert steps[(2, "reward")].overrides["eval_dataset_path"] == f"{tmp_path}/round-2/labels/rankings_heldout.jsonl"
    assert steps[(2, "eval")].overrides["comparisons"] == ""  # no judge order for people's rankings
    pending = human_labels_pending(str(tmp_path), 2, "runs/labels/labels.db")
    assert f"--output-dir {tmp_path}/round-2/labels" in pending and "rerun this command" in pending
    _rankings(tmp_path / "round-2" / "labels", ["p1"])  # the export arrived
    assert human_labels_pending(str(tmp_path), 2, "runs/labels/labels.db") is None
    _rankings(tmp_path / "round-1" / "labels", ["old"])
    rows = (write_reward_data(str(tmp_path), 2, 1, "labels")).read_text().splitlines()
    assert len(rows) == 1  # the newest export already holds every round's labels


def test_the_real_model_track_runs_in_rounds_too():
    track = REPO / "recipes" / "configs" / "smollm2-135m-ifeval"
    stages = ["world", "import", "demos", "sft", "compare", "reward", "ppo", "eval"]
    config = yaml.safe_load((track / "rounds.yaml").read_text())
    args = RoundsArguments(**{**config, "stage_configs": str(track)})
    configs = read_stage_configs(str(track), stages)
    configs["compare"]["other_samples"] = ["runs/real/demos/samples.jsonl"]  # the option README names
    steps = {(s.round, s.stage): s for s in plan(args, configs)}
    assert [s for (r, s) in steps if r == 0] == ["world", "import", "demos", "sft"]
    assert steps[(0, "demos")].overrides["model_name_or_path"] == "runs/real-rounds/import"
    assert steps[(0, "sft")].overrides["dataset_path"] == "runs/real-rounds/demos/sft.jsonl"
    assert steps[(2, "compare")].overrides["model_name_or_path"] == "runs/real-rounds/round-1/ppo"
    assert steps[(2, "compare")].overrides["dataset_path"] == "runs/real-rounds/world/prompts.jsonl"
    assert steps[(3, "eval")].overrides["policies"] == ["import", "sft", "round-1/ppo", "round-2/ppo", "round-3/ppo"]
    # the base model's samples (a list of paths, moved into the run too) are ranked in round 1 only
    assert steps[(1, "compare")].overrides["other_samples"] == ["runs/real-rounds/demos/samples.jsonl"]
    assert steps[(2, "compare")].overrides["other_samples"] == []


def test_each_stage_process_reads_one_merged_yaml_with_the_rounds_values_in_it(tmp_path):
    """What a process receives, not the plan: ``--config <run>/configs/round-<r>/<stage>.yaml`` and no flags; the
    empty ``other_samples`` of round 2 is in that file (flags dropped empty lists, so round 2 still ranked the first
    run's samples)."""
    import shutil

    from rlhf_kit.run.rounds import command

    track = REPO / "recipes" / "configs" / "smollm2-135m-ifeval"
    run = tmp_path / "real-rounds"
    (run / "configs").mkdir(parents=True)
    stages = ["world", "import", "demos", "sft", "compare", "reward", "ppo", "eval"]
    configs = read_stage_configs(str(track), stages)
    configs["compare"]["other_samples"] = ["runs/real/demos/samples.jsonl"]
    for stage in stages:
        shutil.copyfile(track / f"{stage}.yaml", run / "configs" / f"{stage}.yaml")
    (run / "configs" / "compare.yaml").write_text(yaml.safe_dump(configs["compare"]))
    config = yaml.safe_load((track / "rounds.yaml").read_text())
    args = RoundsArguments(**{**config, "stage_configs": str(track), "run_dir": str(run)})
    steps = {(s.round, s.stage): s for s in plan(args, configs)}
    received = {}
    for key in ((1, "compare"), (2, "compare"), (2, "ppo")):
        argv = command(steps[key], None)
        assert argv[-2] == "--config" and argv[-1] == str(run / "configs" / f"round-{key[0]}" / f"{key[1]}.yaml")
        received[key] = yaml.safe_load(Path(argv[-1]).read_text())
    assert received[(1, "compare")]["other_samples"] == [f"{run}/demos/samples.jsonl"]
    assert received[(2, "compare")]["other_samples"] == []
    assert received[(2, "compare")]["model_name_or_path"] == f"{run}/round-1/ppo"
    assert received[(2, "compare")]["labeler"] == "ifeval"  # the track's own values stay
    assert received[(2, "ppo")]["reward_model_path"] == f"{run}/round-2/reward"


def test_a_checkpoint_cut_short_by_a_kill_is_skipped_for_the_one_before(tmp_path, capsys):
    from rlhf_kit.integrations.training import last_checkpoint

    for n in (2, 4, 10):
        (tmp_path / f"checkpoint-{n}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"glob')  # killed mid-write
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")  # by step number, not by name
    assert "ignoring incomplete checkpoint" in capsys.readouterr().out
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()  # killed before the state was written
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(str(tmp_path / "absent")) is None
