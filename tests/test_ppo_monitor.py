"""The over-optimisation monitor (rlhf_kit/ppo/monitor.py): probes scored by a judge during PPO, the warning when the
reward model and the judge part ways, ``select_checkpoint: judge`` and ``probe_patience``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from rlhf_kit.core.errors import UserError
from rlhf_kit.ppo.monitor import best_update, distinct_n, overoptimised, probes, stop_due
from rlhf_kit.worlds import Judgement

from conftest import TINY, config_args, run_cli, stage_paths


def test_distinct_n_counts_repeated_ngrams():
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4  # (a b) twice
    assert distinct_n(["x", ""], 2) == 1.0  # no bigram at all


def _probe(step, judge, rm):
    return {"step": step, "probe/judge_score": judge, "probe/rm_score": rm}


def test_warning_needs_the_judge_to_fall_while_the_rm_rises():
    history = [_probe(0, 0.5, 0.0), _probe(8, 0.7, 1.0)]
    assert overoptimised(history + [_probe(16, 0.6, 2.0)], drop=0.05)["step"] == 8  # judge -0.1, RM +1
    assert overoptimised(history + [_probe(16, 0.6, 0.5)], drop=0.05) is None  # both fell: not the RM's gain
    assert overoptimised(history + [_probe(16, 0.68, 2.0)], drop=0.05) is None  # within the allowed drop
    assert overoptimised(history[:1], drop=0.05) is None


def test_best_update_is_the_earliest_best_among_candidates():
    log = [_probe(0, 0.9, 0), {"step": 1}, _probe(2, 0.6, 0), _probe(4, 0.8, 0), _probe(6, 0.8, 0)]
    assert best_update(log, {2, 4, 6}) == 4  # update 0 is not a candidate; 4 and 6 tie, the earlier wins
    assert best_update(log, {2}) == 2
    assert best_update(log, {3}) is None


class ShortAnswerReward(torch.nn.Module):
    """A stub reward (and value) model paying for short answers: the score at a position is -0.1 x the real tokens up
    to it, so r(x, y) = -0.1 (|x| + |y|). Its one trainable weight lets it serve as PPO's value model too."""

    base_model_prefix = "backbone"

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
            # Real tokens so far: the position + 1 (packed PPO rows pass no attention mask), else the mask's count.
            count = (position_ids + 1 if position_ids is not None else attention_mask.long().cumsum(1))
            count = count.float().unsqueeze(-1)
            return SimpleNamespace(hidden_states=[-0.1 * count + self.offset])

    def __init__(self):
        super().__init__()
        self.backbone, self.score = self.Backbone(), torch.nn.Identity()

    @property
    def device(self):
        return self.backbone.offset.device

    def forward(self, input_ids, attention_mask, position_ids=None, **_):  # as a sequence classifier
        scores = self.score(self.backbone(input_ids, attention_mask, position_ids).hidden_states[-1])
        if position_ids is not None:  # packed rows (a 4D mask): the caller reads the score head at each sequence's end
            return SimpleNamespace(logits=scores[:, -1])
        last = attention_mask.long().sum(1) - 1  # the score at the last real token
        return SimpleNamespace(logits=scores[torch.arange(len(last)), last])


class LongAnswerJudge:
    """A stub judge paying for long answers: words / 6, at most 1."""

    rule_names = ("long",)

    def check_rows(self, rows, source):
        pass

    def judge(self, row, response):
        return Judgement(min(1.0, len(response.split()) / 6))


def _ppo(pipeline, out, extra=()):
    from rlhf_kit.integrations.training import setup_run
    from rlhf_kit.integrations.trl import ModelConfig
    from rlhf_kit.ppo import build_loop_extras, build_ppo_trainer, load_ppo_inputs
    from rlhf_kit.ppo.checkpoint import PPOCheckpointer
    from rlhf_kit.ppo.config import PPOConfig
    from rlhf_kit.run.configs import PPOArguments, parse_stage_args

    argv = (config_args("ppo") + stage_paths(pipeline, "ppo") + TINY["ppo"] + [
        "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
        "--probe_dataset_path", str(pipeline / "data" / "probe.jsonl"), "--judge", "gold"] + list(extra))
    script_args, training_args, model_args = parse_stage_args((PPOArguments, PPOConfig, ModelConfig), argv)
    setup_run(training_args)
    inputs = load_ppo_inputs(script_args, training_args, model_args)
    return script_args, training_args, inputs, build_loop_extras, build_ppo_trainer, PPOCheckpointer


def _short_answer_ppo(pipeline, out, extra=()):
    """PPO where the RM pays for short answers and the judge for long ones (no KL penalty; the whole tiny policy
    trained, as LoRA r=4 on it barely moves its end-token odds): the answers shorten, the RM score on the probes
    rises and the judge's falls -- Gao et al.'s over-optimisation in miniature (the figures: docs/benchmarks.md).
    12 updates, probed and checkpointed every 2. Returns the trained trainer and its monitor."""
    script_args, training_args, inputs, build_extras, build_trainer, Checkpointer = _ppo(pipeline, out, [
        "--total_episodes", "192", "--num_ppo_epochs", "4", "--learning_rate", "1e-3", "--kl_coef", "0",
        "--use_peft", "false", "--response_length", "24",
        "--missing_eos_penalty", "0", "--probe_steps", "2", "--save_steps", "2", "--save_total_limit", "1",
        "--select_checkpoint", "judge", *extra])
    inputs["reward_model"], inputs["value_model"] = ShortAnswerReward(), ShortAnswerReward()
    extras = build_extras(script_args, training_args, inputs["tokenizer"], inputs["train_dataset"])
    extras["monitor"].judge = LongAnswerJudge()
    checkpointer = Checkpointer(str(out), {"seed": 0}, "steps", 1)
    trainer = build_trainer(training_args, **inputs, checkpointer=checkpointer, **extras)
    trainer.train()
    return trainer, extras["monitor"]


@pytest.fixture(scope="module")
def short_answer_run(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("short_answer") / "ppo"
    return (*_short_answer_ppo(pipeline, out), out)


def test_stub_reward_for_short_answers_fires_the_warning_and_keeps_an_earlier_checkpoint(short_answer_run):
    trainer, monitor, out = short_answer_run
    probes = [r for r in trainer.state.log_history if "probe/judge_score" in r]
    assert [r["step"] for r in probes] == list(range(0, 13, 2))  # before the first update, then every 2
    first, last = probes[0], probes[-1]
    assert last["probe/length"] < first["probe/length"] - 1  # the answers got shorter ...
    assert last["probe/rm_score"] > first["probe/rm_score"]  # ... which the RM paid for ...
    assert last["probe/judge_score"] < max(p["probe/judge_score"] for p in probes[1:]) - 0.05  # ... the judge not
    assert any(r["probe/overoptimised"] == 1.0 for r in probes)
    assert trainer.state.stopped_update is None  # probe_patience 0: every update runs
    selected = trainer.state.selected_update
    assert selected is not None and selected < 12
    kept = {int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")}
    assert selected in kept and 12 in kept  # rotation (save_total_limit 1) spared the best-judged one
    # The trainer now holds the selected update's policy: its probe answers score what was logged then.
    again = monitor.probe(trainer)
    logged = next(r for r in probes if r["step"] == selected)
    assert again["probe/judge_score"] == pytest.approx(logged["probe/judge_score"])
    assert again["probe/length"] == pytest.approx(logged["probe/length"])


def test_stop_due_needs_patience_flagged_probes_in_a_row():
    log = [{"step": s, "probe/judge_score": 0.5, "probe/overoptimised": f} for s, f in
           [(0, 0.0), (2, 1.0), (4, 0.0), (6, 1.0), (8, 1.0)]]
    assert [stop_due(log[:n], 2) for n in range(1, 6)] == [False, False, False, False, True]
    assert stop_due(log[:2], 1) and not stop_due(log, 0) and not stop_due(log, 3)
    assert stop_due(log + [{"step": 9, "ppo/scores": 1.0}], 2)  # records between probes don't count


def test_probe_patience_stops_where_the_full_run_turned_and_trains_the_same_until_then(pipeline, short_answer_run,
                                                                                         tmp_path):
    full, _, _ = short_answer_run
    full_probes = probes(full.state.log_history)
    turned = [p["step"] for i, p in enumerate(full_probes) if stop_due(full_probes[: i + 1], 2)]
    assert turned and turned[0] < 12  # the full run had two flagged probes in a row before its end
    stopped, _ = _short_answer_ppo(pipeline, tmp_path / "ppo", ["--probe_patience", "2"])
    stop = turned[0]
    assert stopped.state.stopped_update == stopped.state.global_step == stop
    same = ("step", "ppo/scores", "ppo/kl", "probe/judge_score", "probe/rm_score", "probe/overoptimised")
    assert [{k: r[k] for k in same if k in r} for r in stopped.state.log_history] == [
        {k: r[k] for k in same if k in r} for r in full.state.log_history if r["step"] <= stop]
    expected = best_update(full.state.log_history, set(range(2, stop + 1, 2)))
    assert stopped.state.selected_update == expected  # the best-judged policy up to the stop


def test_monitor_bad_input_is_refused_in_one_line(pipeline, tmp_path):
    from rlhf_kit.ppo.monitor import build_monitor

    def refused(extra, match):
        script_args, training_args, inputs, *_ = _ppo(pipeline, tmp_path / "x", extra)
        with pytest.raises(UserError, match=match):
            build_monitor(script_args, training_args, inputs["tokenizer"], inputs["train_dataset"])

    refused(["--judge", ""], "needs a judge")
    refused(["--probe_dataset_path", "", "--select_checkpoint", "judge"], "needs probes")
    refused(["--select_checkpoint", "judge", "--save_strategy", "no"], "chooses among checkpoints")
    refused(["--select_checkpoint", "best"], "not one of last, judge")
    refused(["--probe_patience", "-1"], "must be a number of probes")
    refused(["--probe_patience", "2", "--select_checkpoint", "last"], "would keep that over-optimised policy")
    refused(["--probe_dataset_path", str(pipeline / "data" / "prompts.jsonl")], "also PPO prompts")


def test_ppo_stage_with_the_monitor_writes_its_plot_and_selection(pipeline, tmp_path):
    out = tmp_path / "ppo"
    proc = run_cli("ppo", config_args("ppo") + stage_paths(pipeline, "ppo") + TINY["ppo"] + [
        "--output_dir", str(out), "--total_episodes", "80", "--probe_steps", "4", "--save_steps", "3",
        "--save_total_limit", "5", "--select_checkpoint", "judge"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = json.loads((out / "stage_complete.json").read_text())
    log = json.loads((out / "log_history.json").read_text())
    probed = {r["step"]: r["probe/judge_score"] for r in log if "probe/judge_score" in r}
    assert sorted(probed) == [0, 3, 4, 5]  # every 4 updates, every checkpoint (3) and the last (5)
    assert marker["selected_update"] in (3, 5)  # checkpoint 3 or the final policy; 4 was probed, not saved
    assert probed[marker["selected_update"]] == max(probed[3], probed[5])
    assert (out / "monitor.png").stat().st_size > 10_000


def test_the_monitor_leaves_training_as_it_was(pipeline, tmp_path):
    from test_ppo_loop import max_abs_diff, run_ppo

    watched, log = run_ppo(pipeline, tmp_path / "on")  # the demo config probes every 8 updates, and at the ends
    plain, plain_log = run_ppo(pipeline, tmp_path / "off", ["--probe_dataset_path", "", "--select_checkpoint", "last"])
    assert max_abs_diff(watched, plain) == 0.0  # the probes draw from generators of their own
    assert [r["step"] for r in log if "probe/judge_score" in r] == [0, 4]
    assert [r["ppo/scores"] for r in log if "ppo/scores" in r] == [r["ppo/scores"] for r in plain_log]
