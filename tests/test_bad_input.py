"""Each user mistake gives one line (what is wrong, how to fix it), exit status 2, no traceback."""

import json
import shutil

import pytest

from rlhf_kit.core.errors import UserError

from conftest import TINY, config_args, load_recipe, run_cli, run_inprocess, stage_paths


def _single_error_line(proc):
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture
def recipe_cli(monkeypatch, capsys):
    """``recipes/<stage>.py`` with ``argv`` through its entry point (``run_recipe``: parse, ``main``, user errors
    as one line and exit 2) in this process, as a finished process: a recipe process spends ~8 s importing before
    it reaches a mistake in its arguments. One test below runs the real process (``test_unknown_config_key...``)."""
    import subprocess

    from rlhf_kit.run import configs

    monkeypatch.setattr(configs, "skip_exit_collection", lambda: None)  # a process-exit setting, not for pytest's
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # what the entry point sets, restored after the test

    def run(stage: str, argv: list[str]) -> subprocess.CompletedProcess:
        recipe = load_recipe(stage)
        capsys.readouterr()
        try:
            configs.run_recipe(recipe.main, recipe.make_parser, argv)
            code = 0
        except SystemExit as done:
            code = done.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([stage, *argv], code, out, err)

    return run


def _args(root, stage, out, **overrides):
    """The tiny pipeline's arguments for ``stage``, writing to the fresh folder ``out``."""
    args = config_args(stage) + stage_paths(root, stage) + TINY[stage] + ["--output_dir", str(out)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def test_missing_config_file_is_one_line(recipe_cli):
    line = _single_error_line(recipe_cli("sft", ["--config", "recipes/configs/demo/nope.yaml"]))
    assert "config file recipes/configs/demo/nope.yaml not found" in line


def test_unknown_config_key_names_the_key(tmp_path):
    """As a real process: the one line, exit status 2 and no traceback are what the user's shell sees."""
    config = tmp_path / "sft.yaml"
    config.write_text("model_name_or_path: runs/demo/base\nlearning_rat: 0.1\n")
    line = _single_error_line(run_cli("sft", ["--config", str(config)]))
    assert "learning_rat" in line and str(config) in line


def test_malformed_yaml_is_one_line(tmp_path, recipe_cli):
    config = tmp_path / "sft.yaml"
    config.write_text("model_name_or_path: [unclosed\n")
    assert "not valid YAML" in _single_error_line(recipe_cli("sft", ["--config", str(config)]))


def test_unknown_cli_flag_fails_cleanly(recipe_cli):
    proc = recipe_cli("sft", config_args("sft") + ["--learning_rat", "0.1"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--learning_rat" in proc.stderr


def test_missing_model_path_names_the_stage_to_run(pipeline, tmp_path):
    with pytest.raises(UserError, match=r"base model .*runs/nope/base not found; run `make base` first"):
        missing = pipeline / "runs" / "nope" / "base"
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", model_name_or_path=missing))


def test_unreachable_hub_id_suggests_local_path(pipeline, tmp_path):
    with pytest.raises(UserError, match=r"Hub \(offline\?\).*local path"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", model_name_or_path="some-org/some-model"))


def test_tokenizer_without_chat_template(pipeline, tmp_path):
    ckpt = tmp_path / "no_template"
    shutil.copytree(pipeline / "runs" / "base", ckpt, ignore=shutil.ignore_patterns("checkpoint-*"))
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "rlhf_kit_config.yaml").unlink()
    (ckpt / "stage_complete.json").unlink()
    with pytest.raises(UserError, match="has no chat template"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", model_name_or_path=ckpt))


def test_dataset_missing_columns_names_them(pipeline, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(UserError, match=r"lacks column\(s\) messages \(it has text\)"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", dataset_path=data))


def test_empty_dataset(pipeline, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(UserError, match="is empty"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", dataset_path=data))


def test_missing_dataset_file(pipeline, tmp_path):
    with pytest.raises(UserError, match="not found"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", dataset_path=tmp_path / "nope.jsonl"))


def test_overlong_prompts_are_dropped_and_counted(pipeline, capsys):
    from rlhf_kit.data.datasets import build_prompt_dataset, load_rows
    from rlhf_kit.integrations.modeling import load_tokenizer

    tok = load_tokenizer(str(pipeline / "runs" / "sft"))
    path = str(pipeline / "data" / "prompts.jsonl")
    rows = load_rows(path)
    lengths = [len(tok.apply_chat_template(r["prompt"], tokenize=True, return_dict=False, add_generation_prompt=True))
               for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    kept = build_prompt_dataset(rows, tok, limit, path)
    n_long = sum(n > limit for n in lengths)
    assert len(kept) == len(rows) - n_long > 0
    assert f"dropped {n_long} of {len(rows)} rows" in capsys.readouterr().out
    with pytest.raises(UserError, match="no usable rows"):
        build_prompt_dataset(rows, tok, 2, path)


def test_ppo_without_reward_model(pipeline, tmp_path):
    with pytest.raises(UserError, match=r"reward model .* not found; run `make reward` first"):
        run_inprocess("ppo", _args(pipeline, "ppo", tmp_path / "out", reward_model_path=tmp_path / "runs" / "reward"))


def test_ppo_with_reward_model_of_another_tokenizer(pipeline, tmp_path):
    from transformers import AutoTokenizer

    rm = tmp_path / "reward"
    shutil.copytree(pipeline / "runs" / "reward", rm)
    tok = AutoTokenizer.from_pretrained(rm)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(rm)
    with pytest.raises(UserError, match="tokenizers differ"):
        run_inprocess("ppo", _args(pipeline, "ppo", tmp_path / "out", reward_model_path=rm))


def test_unfinished_previous_stage_is_refused(pipeline, tmp_path):
    sft = tmp_path / "sft"
    shutil.copytree(pipeline / "runs" / "sft", sft)
    (sft / "stage_complete.json").unlink()
    with pytest.raises(UserError, match="is unfinished"):
        run_inprocess("reward", _args(pipeline, "reward", tmp_path / "out", model_name_or_path=sft))


@pytest.mark.parametrize("flag,value,expected", [
    ("--learning_rate", "-1", "learning_rate=-1.0 must be greater than 0"),
    ("--per_device_train_batch_size", "0", "per_device_train_batch_size=0 must be at least 1"),
])
def test_out_of_range_values_are_one_line_before_loading(flag, value, expected, recipe_cli):
    line = _single_error_line(recipe_cli("sft", config_args("sft") + [flag, value]))
    assert expected in line


def test_broken_jsonl_line_is_named(pipeline, tmp_path):
    data = tmp_path / "sft.jsonl"
    good = (pipeline / "data" / "sft.jsonl").read_text().splitlines()[:3]
    data.write_text("\n".join(good[:2] + ['{"messages": [broken'] + good[2:]) + "\n")
    with pytest.raises(UserError, match=rf"{data} line 3 is not valid JSON"):
        run_inprocess("sft", _args(pipeline, "sft", tmp_path / "out", dataset_path=data))
    assert not (tmp_path / "out" / "stage_complete.json").exists()


def test_margins_with_pairwise_loss_are_refused(pipeline, tmp_path):
    with pytest.raises(UserError, match="use_margins needs ranking_loss: kwise"):
        run_inprocess("reward", _args(pipeline, "reward", tmp_path / "out", ranking_loss="pairwise",
                                      use_margins="true"))
