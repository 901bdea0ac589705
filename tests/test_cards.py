"""Data cards: every card validates; each adapter on fixture files in its dataset's exact row schema (multi-turn,
non-ASCII, awkward rows); mixtures; bad cards and mismatched data; the recipes on public-dataset cards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.cards import canonical_rows, load_card, load_mixture, parse_mixture

from conftest import REPO, TINY, config_args, run_inprocess, stage_paths

FIXTURES = str(REPO / "tests" / "fixtures" / "cards")
HUB_CARDS = ["hh_rlhf", "ultrafeedback_binarized", "oasst1", "ultrachat_200k", "shp", "tldr", "tldr_preference"]
ALL_CARDS = sorted(p.stem for p in (REPO / "data_cards").glob("*.md") if p.stem != "README")


def _split(card):
    return load_card(card).splits[0]


def test_every_shipped_card_has_a_fixture_or_local_files():
    assert set(HUB_CARDS) | {"demo_sft", "demo_prompts", "demo_comparisons"} == set(ALL_CARDS)


@pytest.mark.parametrize("name", HUB_CARDS)
def test_hub_card_validates_on_its_fixture(name):
    card = load_card(name)
    assert card.prose and card.license and card.provenance and card.source["revision"]
    for stage in card.stages:
        rows, dropped, read = canonical_rows(card, stage, _split(name), FIXTURES)
        assert rows
        if card.adapter != "oasst1":  # oasst1 rows are messages, several per conversation
            assert read == len(rows) + sum(dropped.values())
        key = {"sft": "messages", "prompts": "prompt", "comparisons": "prompt"}[stage]
        assert all(key in r for r in rows)


def test_demo_cards_validate_on_a_run(pipeline, tmp_path, monkeypatch):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "data").symlink_to(pipeline / "data")
    (tmp_path / "runs" / "demo" / "compare").symlink_to(pipeline / "runs" / "compare")
    monkeypatch.chdir(tmp_path)
    for name in ("demo_sft", "demo_prompts", "demo_comparisons"):
        card = load_card(name)
        rows, dropped, read = canonical_rows(card, card.stages[0], card.splits[0])
        assert len(rows) == read - sum(dropped.values()) > 0
    comparisons, _, _ = canonical_rows(load_card("demo_comparisons"), "comparisons")
    assert {"prompt", "responses", "ranks"} <= set(comparisons[0])


def test_hh_rlhf_shared_prompt_multi_turn_and_non_ascii():
    rows, dropped, _ = canonical_rows(load_card("hh_rlhf"), "comparisons", "train", FIXTURES)
    german = next(r for r in rows if "Witz" in r["prompt"][-1]["content"])
    assert [m["role"] for m in german["prompt"]] == ["user", "assistant", "user"]
    assert german["chosen"] == [{"role": "assistant", "content": "Warum können Geister so schlecht lügen? "
                                                                 "Man sieht durch sie hindurch."}]
    assert german["rejected"][0]["content"] == "Nein."
    assert dropped == {"chosen identical to rejected": 1, "no final assistant turn": 1,
                       "transcript does not parse": 1, "transcripts differ before the last turn": 1}


def test_ultrafeedback_splits_the_prompt_off():
    rows, dropped, _ = canonical_rows(load_card("ultrafeedback_binarized"), "comparisons", "train", FIXTURES)
    assert rows[1]["prompt"] == [{"role": "user", "content": "Traduis « bonjour »."}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "« Hello »."}]
    assert dropped["chosen and rejected prompts differ"] == 1 and dropped["malformed or empty messages"] == 1


def test_oasst1_best_path_conversations_and_kwise_rankings():
    card = load_card("oasst1")
    sft, _, _ = canonical_rows(card, "sft", "train", FIXTURES)
    assert [m["content"] for m in sft[0]["messages"]] == ["What is the capital of France?", "Paris.",
                                                          "And of Spain?", "Madrid."]
    rankings, dropped, _ = canonical_rows(card, "comparisons", "train", FIXTURES)
    first = next(r for r in rankings if r["prompt"][-1]["content"] == "What is the capital of France?")
    assert dict(zip(first["responses"], first["ranks"])) == {"Paris.": 0, "Lyon.": 2, "It is Paris, on the Seine.": 1}
    follow_up = next(r for r in rankings if r["prompt"][-1]["content"] == "And of Spain?")
    assert [m["role"] for m in follow_up["prompt"]] == ["user", "assistant", "user"]
    assert dropped["duplicate responses in a ranking"] == 1 and dropped["fewer than two distinct ranks"] == 1
    assert dropped["language other than en"] == 2  # the Spanish tree


def test_shp_orders_by_label_and_drops_close_calls():
    rows, dropped, _ = canonical_rows(load_card("shp"), "comparisons", "train", FIXTURES)
    assert rows[0]["chosen"][0]["content"] == "Rayleigh scattering."
    assert rows[1]["chosen"][0]["content"] == "Les poissons." and rows[1]["prompt"][0]["content"].endswith("salée ?")
    assert dropped == {"score ratio under 2.0": 1}


def test_tldr_cards():
    sft, _, _ = canonical_rows(load_card("tldr"), "sft", "train", FIXTURES)
    assert sft[1]["messages"][1] == {"role": "assistant", "content": "Kana is hard to learn."}
    pairs, dropped, _ = canonical_rows(load_card("tldr_preference"), "comparisons", "train", FIXTURES)
    assert len(pairs) == 2 and dropped == {"chosen identical to rejected": 1}


def test_ultrachat_keeps_alternating_conversations():
    rows, dropped, _ = canonical_rows(load_card("ultrachat_200k"), "sft", "train_sft", FIXTURES)
    assert len(rows[0]["messages"]) == 4 and rows[0]["messages"][-1]["content"].endswith("嵐山.")
    assert dropped == {"turns do not alternate or end with the assistant": 2}


def test_mixture_weights_and_row_limits():
    assert parse_mixture("hh_rlhf:0.5:100, shp") == [("hh_rlhf", 0.5, 100), ("shp", 1.0, None)]
    ds = load_mixture("hh_rlhf:0.5,shp::1", "comparisons", data_dir=FIXTURES)
    assert len(ds) == 1 + 1  # half of hh_rlhf's 2 rows, shp capped at 1
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"}
    with pytest.raises(UserError, match="weight must be in"):
        parse_mixture("hh_rlhf:2")
    # alignment-handbook's form: a YAML list of cards, each a name or {card, weight, max_rows}
    assert parse_mixture([{"card": "hh_rlhf", "weight": 0.5, "max_rows": 100}, "shp"]) == parse_mixture(
        "hh_rlhf:0.5:100, shp")
    with pytest.raises(UserError, match="needs `card`.*unknown: weigth"):
        parse_mixture([{"card": "shp", "weigth": 0.5}])


def test_mixture_as_a_yaml_list_reaches_the_recipe(tmp_path):
    from rlhf_kit.integrations.trl import ModelConfig, SFTConfig
    from rlhf_kit.run.configs import DataArguments, parse_stage_args

    config = tmp_path / "sft.yaml"
    config.write_text("output_dir: runs/x/sft\nbf16: false\ndataset_cards:\n  - card: ultrachat_200k\n    weight: 0.5\n"
                      "  - shp\n")
    script_args, _, _ = parse_stage_args((DataArguments, SFTConfig, ModelConfig), ["--config", str(config)])
    assert parse_mixture(script_args.dataset_cards) == [("ultrachat_200k", 0.5, None), ("shp", 1.0, None)]


def _card(tmp_path, text):
    path = tmp_path / "card.md"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,message", [
    ("---\nname: [unclosed\n---\n", "front matter is not valid YAML"),
    ("no front matter", "has no YAML front matter"),
    ("---\nname: x\nstages: [sft]\n---\n", "lacks required field\\(s\\) source, splits, adapter, license, provenance"),
    ("---\nname: x\nstages: [sft]\nsource: {hub_id: a/b}\nsplits: [train]\nadapter: nope\nlicense: MIT\n"
     "provenance: me\n---\n", "unknown adapter 'nope'"),
    ("---\nname: x\nstages: [rl]\nsource: {hub_id: a/b}\nsplits: [train]\nadapter: shp\nlicense: MIT\n"
     "provenance: me\n---\n", "unknown stage"),
])
def test_bad_cards(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_card(_card(tmp_path, text))


def test_data_that_does_not_match_the_adapter_names_column_and_card(tmp_path):
    (tmp_path / "hh_rlhf").mkdir()
    (tmp_path / "hh_rlhf" / "train.jsonl").write_text(json.dumps({"messages": []}) + "\n")
    with pytest.raises(UserError, match="data card hh_rlhf: its data lacks column\\(s\\) chosen, rejected"):
        canonical_rows(load_card("hh_rlhf"), "comparisons", "train", str(tmp_path))


def test_unreachable_hub_card_suggests_local_files():
    with pytest.raises(UserError, match="could not be loaded from the Hub .*offline.*card_data_dir"):
        canonical_rows(load_card("shp"), "comparisons", "train")


def test_unknown_card_lists_the_known_ones():
    with pytest.raises(UserError, match="data card 'nope' not found; use a path or one of: .*hh_rlhf"):
        load_card("nope")


def test_validate_command_prints_counts_by_reason():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "data", "validate", "oasst1", "--data-dir", FIXTURES],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "comparisons  split train: 17 rows read, 2 kept" in proc.stdout
    assert "1 duplicate responses in a ranking" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "data", "preview", "hh_rlhf", "--stage", "sft",
                           "-n", "1", "--data-dir", FIXTURES], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "data", "validate", "nope"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_recipes_run_from_public_dataset_cards(pipeline, tmp_path):
    cards = ["--card_data_dir", FIXTURES]
    run_inprocess("sft", config_args("sft") + stage_paths(pipeline, "sft") + TINY["sft"] + cards + [
        "--dataset_cards", "ultrachat_200k", "--dataset_split", "train_sft", "--output_dir", str(tmp_path / "sft"),
        "--max_length", "512"])
    run_inprocess("reward", config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + cards + [
        "--dataset_cards", "oasst1", "--eval_dataset_path", "", "--output_dir", str(tmp_path / "reward"),
        "--max_length", "512"])
    run_inprocess("reward", config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + cards + [
        "--dataset_cards", "hh_rlhf,shp,ultrafeedback_binarized", "--ranking_loss", "pairwise",
        "--eval_dataset_path", "", "--output_dir", str(tmp_path / "reward_pairs"), "--max_length", "512"])
    run_inprocess("ppo", config_args("ppo") + stage_paths(pipeline, "ppo") + TINY["ppo"] + cards + [
        "--dataset_cards", "tldr,hh_rlhf", "--output_dir", str(tmp_path / "ppo"), "--max_prompt_length", "512",
        "--per_device_train_batch_size", "2", "--total_episodes", "8"])
    for stage, rows in (("sft", 2), ("reward", 2), ("reward_pairs", 6)):
        assert json.loads((tmp_path / stage / "stage_complete.json").read_text())["rows"] == rows
    assert json.loads((tmp_path / "ppo" / "stage_complete.json").read_text())["episode"] >= 8


def _card_tracks() -> list[Path]:
    """The model tracks whose data comes from data cards (the demo and the IFEval track build their own)."""
    return [d for d in (REPO / "recipes" / "configs").iterdir()
            if (d / "sft.yaml").is_file() and yaml.safe_load((d / "sft.yaml").read_text()).get("dataset_cards")]


@pytest.mark.parametrize("path", sorted(p for d in _card_tracks() for p in d.glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_model_configs_resolve_their_cards_on_fixtures(path):
    config = yaml.safe_load(path.read_text())
    stage = {"sft": "sft", "reward": "comparisons", "ppo": "prompts"}[path.stem]
    assert config["dataset_cards"], "real-model configs name their data by card"
    if path.stem == "sft":  # SFT starts from the pretrained checkpoint, named by Hub id
        assert "/" in config["model_name_or_path"] and not config["model_name_or_path"].startswith("runs/")
    else:  # reward and PPO start from this track's SFT output
        assert config["model_name_or_path"] == str(Path(config["output_dir"]).parent / "sft")
    ds = load_mixture(config["dataset_cards"], stage, config.get("dataset_split", "train"), FIXTURES)
    assert len(ds) > 0
    assert (path.parent / "README.md").is_file() and "accelerate launch" in (path.parent / "README.md").read_text()
    assert Path(config["output_dir"]).name == path.stem
