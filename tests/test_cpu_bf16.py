"""bf16 on a CPU: taken where the CPU computes in bf16 natively (AMX-BF16 / AVX512-BF16), refused in one line where
it does not (PyTorch would emulate it many times slower than float32). The detector is monkeypatched for each branch;
the real one reads /proc/cpuinfo (tests/test_sharding.py)."""

from __future__ import annotations

import pytest
import torch
import yaml

from rlhf_kit.core.errors import UserError

from conftest import config_args, load_recipe, recipe_dataclasses


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """The CPU branches run on any machine: a GPU, if there is one, is hidden from the parser."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _parse(stage: str, extra: list[str]):
    from rlhf_kit.run.configs import parse_stage_args

    return parse_stage_args(recipe_dataclasses(load_recipe(stage)), config_args(stage) + extra)


@pytest.fixture
def bf16_cpu(monkeypatch, request):
    from rlhf_kit.integrations import hardware as scaling

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


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from rlhf_kit.integrations.hardware import cpu_supports_bf16

    info = tmp_path / "cpuinfo"
    for flags, native in [("fpu avx512f avx512_bf16", True), ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True),
                          ("fpu avx2", False)]:
        info.write_text(f"flags\t\t: {flags}\n")
        assert cpu_supports_bf16(str(info)) is native
    assert cpu_supports_bf16(str(tmp_path / "missing"))  # unreadable: refuse only what we know cannot run well


def test_the_bf16_speedup_is_measured_once_per_process(monkeypatch):
    """The measurement behind ``bf16: auto`` for training without AMX: bf16 over float32 matmul throughput, taken
    once (a stage resolves ``bf16`` and ``dtype`` from it), from two real measurements."""
    from rlhf_kit.integrations import hardware

    calls = []
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, **kw: calls.append(dtype) or
                        {"bfloat16": 863.0, "float32": 204.0}[dtype])
    hardware.bf16_matmul_speedup.cache_clear()
    try:
        assert hardware.bf16_matmul_speedup() == pytest.approx(863 / 204)
        assert hardware.bf16_matmul_speedup() == pytest.approx(863 / 204)
        assert calls == ["bfloat16", "float32"]
    finally:
        hardware.bf16_matmul_speedup.cache_clear()



@pytest.mark.parametrize("bf16_cpu", [False], indirect=True)
def test_float32_runs_are_untouched_on_a_cpu_without_bf16(bf16_cpu):
    assert _parse("sft", ["--bf16", "false"])[1].bf16 is False
    assert _parse("compare", [])[0].dtype == "float32"


def test_a_bf16_refusal_is_one_line_from_the_command(tmp_path):
    """The refusal as a user sees it, on this machine's detector: exit 2 and one line when the CPU lacks bf16;
    with bf16 the stage runs on to its next check (here: the missing base model)."""
    from rlhf_kit.integrations.hardware import cpu_supports_bf16

    from conftest import run_cli

    proc = run_cli("sft", config_args("sft") + ["--bf16", "true", "--model_name_or_path", str(tmp_path / "none"),
                                                "--output_dir", str(tmp_path / "sft")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and lines[-1].startswith("error: ")
    assert ("not found" in lines[-1]) if cpu_supports_bf16() else ("bf16: false" in lines[-1])


# --------------------------------------------------------------------------- bf16: auto / dtype: auto (by hardware)

REAL = "recipes/configs/smollm2-135m-ifeval"
# name -> (flags, bf16 for training, bf16 for sampling, bf16 / float32 matmul throughput measured; None: not measured)
CPUS = {"neither": ("fpu avx512f avx2", False, False, None),
        "avx512_bf16": ("fpu avx512f avx512_bf16", False, True, 0.94),   # 75 vs 80 GFLOP/s (2026-11)
        "avx512_bf16_fast": ("fpu avx512f avx512_bf16", True, True, 4.23),  # 863 vs 204 GFLOP/s (2026-12-04)
        "amx": ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True, True, None)}
SAMPLING = ("demos", "compare", "eval")


def _fake_cpu(monkeypatch, tmp_path, flags: str) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: {flags}\n\n")
    monkeypatch.setenv("RLHF_KIT_CPUINFO", str(info))


def _measured(monkeypatch, speedup: float | None) -> None:
    """The bf16 matmul speedup a faked CPU measures; None: the flags decide, and measuring is a failure."""
    from rlhf_kit.integrations import hardware

    def measure():
        assert speedup is not None, "measured the bf16 speedup where the CPU's flags decide"
        return speedup

    monkeypatch.setattr(hardware, "bf16_matmul_speedup", measure)


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_a_launch_measures_once_for_all_its_ranks(cpu, monkeypatch, tmp_path):
    """The launcher measures before its ranks start (a CPU where auto measures) and every rank reads that figure, so
    two ranks cannot choose different precisions; where the flags decide, nothing is measured or set."""
    from rlhf_kit.integrations import hardware

    _fake_cpu(monkeypatch, tmp_path, CPUS[cpu][0])
    monkeypatch.delenv(hardware.SPEEDUP_ENV, raising=False)
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, **kw: {"bfloat16": 863.0, "float32": 204.0}[dtype])
    hardware.bf16_matmul_speedup.cache_clear()
    env = {}
    try:
        hardware.share_bf16_speedup(env)
        assert env == ({hardware.SPEEDUP_ENV: "4.230"} if cpu.startswith("avx512_bf16") else {})
        if env:  # a rank: a new process (empty cache) that reads the launcher's figure, not its own measurement
            hardware.bf16_matmul_speedup.cache_clear()
            monkeypatch.setenv(hardware.SPEEDUP_ENV, "1.2")
            monkeypatch.setattr(hardware, "matmul_gflops", lambda *a, **kw: pytest.fail("a rank measured again"))
            assert hardware.bf16_matmul_speedup() == 1.2
            assert hardware.auto_precision("training")[0] is False
    finally:
        hardware.bf16_matmul_speedup.cache_clear()


@pytest.mark.parametrize("cpu", ["amx", "avx512_bf16", "avx512_bf16_fast"])
def test_explicit_bf16_training_gets_one_note_where_float32_is_faster(cpu, monkeypatch, tmp_path,
                                                                      capsys):
    _fake_cpu(monkeypatch, tmp_path, CPUS[cpu][0])
    _measured(monkeypatch, CPUS[cpu][3])
    assert _parse("ppo", ["--bf16", "true"])[1].bf16  # taken either way
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: bf16")]
    assert notes == ([] if CPUS[cpu][1] else [
        "note: bf16: true gains nothing here (training on a CPU with AVX512-BF16, no AMX: bf16 matmuls measured 0.9x "
        "float32 here, no faster than float32); `bf16: false` is the faster choice"])
    _parse("ppo", ["--bf16", "false", "--dtype", "float32"])
    assert "note:" not in capsys.readouterr().err
    _parse("compare", ["--dtype", "bfloat16"])  # sampling in bf16 pays with AVX512-BF16 alone: no note
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("cpu", sorted(CPUS))
@pytest.mark.parametrize("stage", ["demos", "sft", "compare", "reward", "ppo", "eval"])
def test_the_real_track_configs_choose_precision_by_the_cpu(cpu, stage, monkeypatch, tmp_path, capsys):
    """The real track unedited, on a faked /proc/cpuinfo: training in bf16 with AMX, or with AVX512-BF16 where its
    bf16 matmuls measure faster than float32's; sampling in bf16 with AVX512-BF16 too; float32 on a CPU with neither
    (no refusal there, no "float32 is faster" note); and one line saying what was chosen."""
    from rlhf_kit.run.configs import parse_stage_args

    flags, train_bf16, sample_bf16, speedup = CPUS[cpu]
    bf16 = sample_bf16 if stage in SAMPLING else train_bf16
    _fake_cpu(monkeypatch, tmp_path, flags)
    _measured(monkeypatch, speedup)
    parsed = parse_stage_args(recipe_dataclasses(load_recipe(stage)), ["--config", f"{REAL}/{stage}.yaml"])
    config = yaml.safe_load(open(f"{REAL}/{stage}.yaml"))
    assert "auto" in (config.get("dtype"), config.get("bf16"))  # every sampling or training stage of the track
    if "dtype" in config:
        assert {a.dtype for a in parsed if hasattr(a, "dtype")} == {"bfloat16" if bf16 else "float32"}
    if "bf16" in config:
        assert next(a.bf16 for a in parsed if hasattr(a, "bf16")) is bf16
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("precision: ")]
    assert len(lines) == 1 and ("-> bfloat16" in lines[0] or "-> true" in lines[0]) is bf16
    why = {"neither": "would be emulated", "amx": "AMX-BF16",
           "avx512_bf16": "reads half the bytes" if bf16 else "measured 0.9x float32 here, no faster than float32",
           "avx512_bf16_fast": "reads half the bytes" if stage in SAMPLING else "measured 4.2x float32 here"}[cpu]
    assert why in lines[0]
    assert "note:" not in err and "error" not in err


def test_an_unreadable_cpuinfo_falls_back_to_float32_and_says_so(monkeypatch, tmp_path, capsys):
    from rlhf_kit.run.configs import parse_stage_args

    monkeypatch.setenv("RLHF_KIT_CPUINFO", str(tmp_path / "missing"))
    parsed = parse_stage_args(recipe_dataclasses(load_recipe("ppo")), ["--config", f"{REAL}/ppo.yaml"])
    assert parsed[1].bf16 is False and parsed[2].dtype == "float32"
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("precision: "))
    assert line.startswith("precision: bf16: auto -> false, dtype: auto -> float32 (cannot read ")  # one reason
    assert line.count("cannot read") == 1 and "float32 is the safe choice" in line


@pytest.mark.parametrize("flags,bf16", [(["--bf16", "auto"], True), (["--bf16=auto"], True),
                                        (["--bf16", "false"], False)])
def test_the_command_line_overrides_the_config_either_way(flags, bf16, monkeypatch, tmp_path, capsys):
    """``--bf16 auto`` over the demo's ``bf16: false`` picks by hardware; ``--bf16 false`` over the real track's
    ``bf16: auto`` is taken as given (no precision line for bf16)."""
    from rlhf_kit.run.configs import parse_stage_args

    _fake_cpu(monkeypatch, tmp_path, CPUS["amx"][0])
    config = config_args("sft") if "auto" in "".join(flags) else ["--config", f"{REAL}/sft.yaml"]
    assert parse_stage_args(recipe_dataclasses(load_recipe("sft")), config + flags)[1].bf16 is bf16
    assert ("bf16: auto -> true" in capsys.readouterr().err) is bf16


def test_explicit_bf16_is_still_refused_where_auto_would_pick_float32(monkeypatch, tmp_path):
    from rlhf_kit.run.configs import parse_stage_args

    _fake_cpu(monkeypatch, tmp_path, CPUS["neither"][0])
    with pytest.raises(UserError, match=r"^bf16: true needs a GPU or a CPU with native bf16"):
        parse_stage_args(recipe_dataclasses(load_recipe("ppo")), ["--config", f"{REAL}/ppo.yaml", "--bf16", "true"])


def test_a_ppo_resume_may_change_precision():
    """Precision is hardware: an ``auto`` run resumed on another CPU gets the other precision, and is resumed."""
    from rlhf_kit.core.runs import changed_keys

    saved = {"bf16": True, "dtype": "bfloat16", "learning_rate": 1e-5}
    assert changed_keys(saved, {"bf16": False, "dtype": "float32", "learning_rate": 1e-5}) == []
    assert changed_keys(saved, {"bf16": False, "dtype": "float32", "learning_rate": 2e-5}) == ["learning_rate"]
