"""PPO-ptx, the adaptive KL controller, and the PPO stage's bad-input checks."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_bad_input import _single_error_line
from test_ppo_loop import max_abs_diff, run_ppo

from rlhf_kit.core.errors import UserError

from conftest import TINY, config_args, run_cli, run_inprocess, stage_paths


def _args(root, out, *extra) -> list[str]:
    return config_args("ppo") + stage_paths(root, "ppo") + TINY["ppo"] + ["--output_dir", str(out), *map(str, extra)]


def test_adaptive_kl_controller_follows_ziegler():
    from rlhf_kit.ppo.trainer import AdaptiveKLController

    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_episodes=512)  # error clipped to +0.2: beta grows by 1 + 0.2 * 512 / 10000
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 512 / 10000))
    ctl.load_state_dict({"value": 0.2})
    ctl.update(current_kl=5.4, n_episodes=1000)  # error -0.1
    assert ctl.value == pytest.approx(0.2 * (1 - 0.1 * 0.1))


def test_ptx_batches_resume_their_draws():
    from rlhf_kit.ppo.ptx import PtxBatches

    batches = PtxBatches([[1, 2, 3], [4, 5], [6, 7, 8, 9]], batch_size=2, pad_token_id=0, seed=3)
    batches.next_batch("cpu")
    state = batches.state_dict()
    expected = batches.next_batch("cpu")
    batches.next_batch("cpu")
    batches.load_state_dict(state)
    again = batches.next_batch("cpu")
    assert all(torch.equal(expected[k], again[k]) for k in expected)
    assert (again["labels"][again["attention_mask"] == 0] == -100).all()


def test_ptx_and_adaptive_kl_change_the_run(pipeline, tmp_path):
    """gamma > 0 adds the LM loss on pretraining text (logged as losses/ptx) and changes the policy; with a KL
    target the logged beta moves towards it (KL below target: beta shrinks)."""
    w_plain, logs_plain = run_ppo(pipeline, tmp_path / "plain")
    pretrain = pipeline / "data" / "pretrain.jsonl"
    extras = ["--ptx_coef", "1.0", "--ptx_dataset", str(pretrain), "--kl_target", "5.0", "--kl_horizon", "100"]
    w_ptx, logs_ptx = run_ppo(pipeline, tmp_path / "ptx", extras)
    assert "losses/ptx" not in logs_plain[-1] and logs_ptx[-1]["losses/ptx"] > 0
    assert max_abs_diff(w_plain, w_ptx) > 1e-4
    betas = [r["ppo/kl_coef"] for r in logs_ptx if "ppo/kl_coef" in r]  # the updates (not the first probe)
    assert betas[0] == 0.2 and all(b2 < b1 for b1, b2 in zip(betas, betas[1:]))
    assert {r["ppo/kl_coef"] for r in logs_plain if "ppo/kl_coef" in r} == {0.2}


def test_ptx_coef_without_dataset_is_one_line(tmp_path):
    line = _single_error_line(run_cli("ppo", config_args("ppo") + ["--ptx_coef", "0.5", "--output_dir", tmp_path]))
    assert "needs a ptx_dataset" in line


@pytest.mark.parametrize("kl_target", ["0", "-1"])
def test_nonpositive_kl_target_is_refused(kl_target, tmp_path):
    with pytest.raises(UserError, match="kl_target"):
        run_inprocess("ppo", config_args("ppo") + ["--kl_target", kl_target, "--output_dir", str(tmp_path)])


def test_reward_model_without_trained_head_is_one_line(pipeline, tmp_path):
    """An SFT checkpoint as reward model would load with a fresh random head; refused in one line, exit 2."""
    proc = run_cli("ppo", _args(pipeline, tmp_path / "out", "--reward_model_path", pipeline / "runs" / "sft"))
    line = _single_error_line(proc)
    assert "no trained reward head" in line and "score" in line


def test_ptx_stage_with_another_tokenizer_is_refused(pipeline, tmp_path):
    from transformers import AutoTokenizer

    sft = tmp_path / "sft"
    shutil.copytree(pipeline / "runs" / "sft", sft)
    tok = AutoTokenizer.from_pretrained(sft)
    tok.chat_template = tok.chat_template.replace("<|assistant|> ", "<|assistant|>: ")
    tok.save_pretrained(sft)
    with pytest.raises(UserError, match="another chat template"):
        run_inprocess("ppo", _args(pipeline, tmp_path / "out", "--ptx_coef", "0.5", "--ptx_dataset", sft))


def test_ptx_text_of_another_vocabulary_is_refused(pipeline, tmp_path):
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"text": "der schnelle braune Fuchs springt"}\n' * 4)
    with pytest.raises(UserError, match="unknown to the policy's tokenizer"):
        run_inprocess("ppo", _args(pipeline, tmp_path / "out", "--ptx_coef", "0.5", "--ptx_dataset", foreign))
