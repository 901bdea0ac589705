"""SFT, reward and PPO on a CUDA device in bf16 (marked ``gpu``: never run in CI, which has no GPU; ``make test``
deselects them, ``make test-gpu`` runs them where a GPU is). Each stage must train (its adapter moves), keep its
model on the GPU, and save a model that loads with plain ``from_pretrained``."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, config_args, run_cli, stage_paths

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu)")]
BF16 = ["--bf16", "true", "--dtype", "bfloat16", "--report_to", "none"]


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_stage_trains_on_cuda_in_bf16(pipeline, tmp_path, stage):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / stage
    proc = run_cli(stage, config_args(stage) + stage_paths(pipeline, stage) + TINY[stage] + BF16
                   + ["--output_dir", str(out)], launcher="single_gpu.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(NO)" in proc.stdout or "rank 0/1" in proc.stdout
    marker = json.loads((out / "stage_complete.json").read_text())
    assert marker["world_size"] == 1
    adapter = _adapter(out)
    assert max(v.float().abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 0  # it trained
    cls = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
    model = cls.from_pretrained(out, **({"num_labels": 1} if stage == "reward" else {}))
    assert all(torch.isfinite(p).all() for p in model.parameters())
