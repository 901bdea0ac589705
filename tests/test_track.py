"""benchmarks/track.py: the per-stage table of where a track's time goes, from the stages' completion records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _track():
    spec = importlib.util.spec_from_file_location("track", REPO / "benchmarks" / "track.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_orders_stages_and_divides_tokens_by_wall_time(tmp_path):
    track = _track()
    records = {"ppo": {"wall_seconds": 100.0, "tokens_sampled": 1000, "tokens_scored": 3000, "tokens_trained": 6000},
               "sft": {"wall_seconds": 50.0, "tokens_sampled": 0, "tokens_scored": 0, "tokens_trained": 2500},
               "heldout-types/eval": {"wall_seconds": 10.0, "tokens_sampled": 200, "tokens_scored": 100,
                                      "tokens_trained": 0},
               "import": {"wall_seconds": 2.0}}  # an older record, without counts
    for name, record in records.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "stage_complete.json").write_text(json.dumps(record))
    (tmp_path / "ppo" / "checkpoint-4").mkdir()
    (tmp_path / "ppo" / "checkpoint-4" / "stage_complete.json").write_text("{}")  # not a stage
    cpu = {"flags": ["avx512_bf16"], "gflops": {"float32": 150.0, "bfloat16": 140.0}}
    text = track.table(tmp_path, cpu)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["import", "sft", "ppo", "heldout-types/eval", "**all**"]
    assert rows[0] == "| import | 2 | - | - | - | - |"
    assert rows[2] == "| ppo | 100 | 1,000 | 3,000 | 6,000 | 100 |"  # (1000 + 3000 + 6000) / 100 s
    assert rows[1].endswith("| 50 |") and rows[-1].startswith("| **all** | **162** (2.7 min) | 1,200 | 3,100 | 8,500")
    assert "avx512_bf16; matmul 150 GFLOP/s float32, 140 GFLOP/s bf16" in text


def test_matmul_throughput_is_measured():
    from rlhf_kit.integrations.hardware import matmul_gflops

    assert matmul_gflops("float32", n=128, seconds=0.05) > 0.1
