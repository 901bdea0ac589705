"""bf16 on a CPU: taken where the CPU computes in bf16 natively (AMX-BF16 / AVX512-BF16), refused in one line where
it does not (PyTorch would emulate it many times slower than float32). The detector is monkeypatched for each branch;
the real one reads /proc/cpuinfo (tests/test_sharding.py)."""

from __future__ import annotations

import pytest
import torch

from rlhf_kit.errors import UserError

from conftest import config_args, load_recipe, recipe_dataclasses


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """The CPU branches run on any machine: a GPU, if there is one, is hidden from the parser."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _parse(stage: str, extra: list[str]):
    from rlhf_kit.configs import parse_stage_args

    return parse_stage_args(recipe_dataclasses(load_recipe(stage)), config_args(stage) + extra)


@pytest.fixture
def bf16_cpu(monkeypatch, request):
    from rlhf_kit import scaling

    monkeypatch.setattr(scaling, "cpu_supports_bf16", lambda *a: request.param)
    return request.param


@pytest.mark.parametrize("bf16_cpu", [True], indirect=True)
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_bf16_training_is_taken_on_a_cpu_with_native_bf16(bf16_cpu, stage):
    parsed = _parse(stage, ["--bf16", "true"])
    training_args = parsed[1]
    assert training_args.bf16 and training_args.use_cpu
    assert training_args.mixed_precision == "bf16"  # accelerate trains under CPU autocast in bf16


@pytest.mark.parametrize("bf16_cpu", [True], indirect=True)
@pytest.mark.parametrize("stage", ["compare", "eval"])
def test_bf16_sampling_is_taken_on_a_cpu_with_native_bf16(bf16_cpu, stage):
    assert _parse(stage, ["--dtype", "bfloat16"])[0].dtype == "bfloat16"


@pytest.mark.parametrize("bf16_cpu", [False], indirect=True)
@pytest.mark.parametrize("stage,flags,fix", [
    ("sft", ["--bf16", "true"], "bf16: false"), ("ppo", ["--bf16", "true"], "bf16: false"),
    ("compare", ["--dtype", "bfloat16"], "dtype: float32"), ("eval", ["--dtype", "bfloat16"], "dtype: float32"),
])
def test_bf16_is_refused_on_a_cpu_without_it(bf16_cpu, stage, flags, fix):
    key = flags[0].lstrip("-")
    with pytest.raises(UserError, match=rf"^{key}: (true|bfloat16) needs a GPU or a CPU with native bf16 .*`{fix}`"):
        _parse(stage, flags)


@pytest.mark.parametrize("bf16_cpu", [True], indirect=True)
@pytest.mark.parametrize("amx", [True, False])
def test_bf16_without_amx_gets_one_note_that_float32_is_faster(bf16_cpu, amx, monkeypatch, capsys):
    from rlhf_kit import scaling

    monkeypatch.setattr(scaling, "cpu_has_amx", lambda *a: amx)
    assert _parse("ppo", ["--bf16", "true"])[1].bf16  # taken either way
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: bf16")]
    assert notes == ([] if amx else ["note: bf16: true on a CPU with AVX512-BF16 but no AMX runs no faster than "
                                     "float32 (and rounds more); `bf16: false` is the faster choice here"])
    _parse("ppo", ["--bf16", "false", "--dtype", "float32"])
    assert "note:" not in capsys.readouterr().err


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    from rlhf_kit.scaling import cpu_has_amx, cpu_supports_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_supports_bf16(str(info)) and not cpu_has_amx(str(info))
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_amx(str(info))
    info.write_text("flags\t\t: fpu avx2\n")
    assert not cpu_supports_bf16(str(info)) and not cpu_has_amx(str(info))
    assert cpu_has_amx(str(tmp_path / "missing"))


@pytest.mark.parametrize("bf16_cpu", [False], indirect=True)
def test_float32_runs_are_untouched_on_a_cpu_without_bf16(bf16_cpu):
    assert _parse("sft", ["--bf16", "false"])[1].bf16 is False
    assert _parse("compare", [])[0].dtype == "float32"


def test_a_bf16_refusal_is_one_line_from_the_command(tmp_path):
    """The refusal as a user sees it, on this machine's detector: exit 2 and one line when the CPU lacks bf16;
    with bf16 the stage runs on to its next check (here: the missing base model)."""
    from rlhf_kit.scaling import cpu_supports_bf16

    from conftest import run_cli

    proc = run_cli("sft", config_args("sft") + ["--bf16", "true", "--model_name_or_path", str(tmp_path / "none"),
                                                "--output_dir", str(tmp_path / "sft")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and lines[-1].startswith("error: ")
    assert ("not found" in lines[-1]) if cpu_supports_bf16() else ("bf16: false" in lines[-1])
