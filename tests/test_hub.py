"""Export and push: merged export equals base + adapter, the model card's fields, the upload path against a local
stand-in for the Hub API (no network), and the no-token / malformed-id / unfinished-stage cases."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from hub_stub import HubStub

from rlhf_kit.core.errors import UserError
from rlhf_kit.run.hub import export_stage, validate_hub_id

from conftest import REPO, TINY, config_args, stage_paths


def _push(args, env_extra, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", **env_extra,
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "push", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_merged_export_matches_base_plus_adapter(pipeline, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runs = pipeline / "runs"
    out = export_stage(str(runs / "sft"), str(tmp_path / "export"), "someone/tiny-sft")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(runs / "base")
    unmerged = PeftModel.from_pretrained(base, runs / "sft" / "adapter").eval()
    ids = torch.tensor([[4, 20, 31, 40, 5, 22, 7, 2], [4, 60, 61, 62, 63, 5, 30, 2]])
    with torch.no_grad():
        diff = (merged(ids).logits - unmerged(ids).logits).abs().max().item()
    assert diff < 1e-4, diff
    assert not (out / "adapter_config.json").exists()


def test_adapter_only_export_and_model_card_fields(pipeline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline / "runs" / "sft", run / "sft")
    (run / "summary.json").write_text(json.dumps({
        "policies": ["base", "sft", "ppo"], "baseline": "sft", "judge_score": {"base": 0.5, "sft": 0.6, "ppo": 0.8},
        "win_rate_vs_baseline": {"base": {"win_rate": 0.3, "ci95": [0.25, 0.35]},
                                 "ppo": {"win_rate": 0.8, "ci95": [0.75, 0.85]}},
        "kl_to_baseline": {"base": 0.3, "ppo": 0.2}, "rm_accuracy": 0.9}))
    out = export_stage(str(run / "sft"), str(tmp_path / "export"), "someone/tiny-sft", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"trl", "rlhf", "sft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local base path is not a Hub id
    assert "Base model: `" in card and str(pipeline / "runs" / "base") in card
    assert "| lora_r | 4 |" in card and "| learning_rate |" in card
    assert str(pipeline / "data" / "sft.jsonl") in card
    assert "PPO beats SFT on 80%" in card  # the run's eval summary


def test_upload_to_local_hub_stand_in(pipeline, tmp_path):
    with HubStub() as hub:
        proc = _push([str(pipeline / "runs" / "reward"), "someone/tiny-rm", "--export-dir", str(tmp_path / "e")],
                     {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf")})
        assert proc.returncode == 0, proc.stderr[-2000:]
        uploaded = hub.files["someone/tiny-rm"]
    assert "someone/tiny-rm" in hub.repos
    assert uploaded["model.safetensors"] == (pipeline / "runs" / "reward" / "model.safetensors").read_bytes()
    card = uploaded["README.md"].decode()
    assert "reward-model" in card and "pipeline_tag: text-classification" in card


def test_no_token_uploads_nothing_and_says_how_to_log_in(pipeline, tmp_path):
    with HubStub() as hub:
        proc = _push([str(pipeline / "runs" / "sft"), "someone/tiny-sft"],
                     {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no Hub token: run `hf auth login` or set HF_TOKEN" in proc.stderr
    assert not hub.files and not any(method == "POST" for method, _ in hub.requests)


@pytest.mark.parametrize("hub_id", ["no-owner", "a/b/c", "owner/na me", "-owner/x", "owner/x--y", ""])
def test_malformed_hub_id(hub_id):
    with pytest.raises(UserError, match="not a valid Hub id"):
        validate_hub_id(hub_id)


def test_malformed_hub_id_from_cli_uploads_nothing(pipeline, tmp_path):
    with HubStub() as hub:
        proc = _push([str(pipeline / "runs" / "sft"), "not a repo"], {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x"})
    assert proc.returncode == 2 and "is not a valid Hub id" in proc.stderr and not hub.requests


def test_exporting_an_unfinished_stage_is_refused(pipeline, tmp_path):
    stage = tmp_path / "ppo"
    shutil.copytree(pipeline / "runs" / "ppo", stage)
    (stage / "stage_complete.json").unlink()
    with pytest.raises(UserError, match="is unfinished"):
        export_stage(str(stage), str(tmp_path / "export"), "someone/x")
    assert not (tmp_path / "export").exists()


def test_recipe_push_to_hub_passes_through(pipeline, tmp_path, monkeypatch):
    """TRL's push_to_hub / hub_model_id options: checked before training, the finished stage pushed after it."""
    from conftest import run_cli

    args = config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + [
        "--output_dir", str(tmp_path / "sft"), "--push_to_hub", "true", "--hub_model_id", "someone/tiny-sft"]
    with HubStub() as hub:
        for key, value in {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                           "HF_HOME": str(tmp_path / "hf")}.items():
            monkeypatch.setenv(key, value)
        refused = run_cli("sft", args + ["--output_dir", str(tmp_path / "refused")], env={"HF_TOKEN": ""})
        done = run_cli("sft", args, env={"HF_TOKEN": "hf_test"})
    assert refused.returncode == 2 and "no Hub token" in refused.stderr
    assert not (tmp_path / "refused" / "stage_complete.json").exists()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model.safetensors" in hub.files["someone/tiny-sft"]
    resolved = yaml.safe_load((tmp_path / "sft" / "rlhf_kit_config.yaml").read_text())
    assert resolved["push_to_hub"] is True and resolved["hub_model_id"] == "someone/tiny-sft"  # recorded as asked
