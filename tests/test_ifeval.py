"""The IFEval task world (rlhf_kit/worlds/ifeval/world.py): its tasks and splits, its refusals, and IFEval's checkers
as judge and labeler on hand-written responses that pass and fail each instruction type the world uses."""

from __future__ import annotations

import json
import random
import sys

import pytest

from rlhf_kit.core.errors import UserError
from rlhf_kit.worlds.ifeval import world as ifeval

# type -> (checker arguments, a response that follows it, one that does not)
CASES = {
    "punctuation:no_comma": ({}, "I like tea and cake.", "I like tea, and cake."),
    "change_case:english_capital": ({}, "I LIKE TEA AND CAKE BECAUSE THEY ARE GOOD.", "I like tea and cake."),
    "change_case:english_lowercase": ({}, "i like tea and cake because they are good.", "I like tea and cake."),
    "detectable_format:title": ({}, "<<Tea Time>>\nI like tea.", "Tea Time\nI like tea."),
    "startend:end_checker": ({"end_phrase": "Any other questions?"}, "I like tea. Any other questions?",
                             "Any other questions? I like tea."),
    "keywords:existence": ({"keywords": ["rain", "garden"]}, "The rain fell on the garden.", "The sun shone here."),
    "keywords:forbidden_words": ({"forbidden_words": ["rain", "garden"]}, "The sun shone on the field.",
                                 "The rain fell."),
    "length_constraints:number_words": ({"num_words": 10, "relation": "less than"}, "A short answer.",
                                        "one two three four five six seven eight nine ten eleven"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* tea\n* cake", "* tea\n* cake\n* jam"),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "Tea is *hot* and *sweet*.",
                                                      "Tea is *hot*."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Hello.\nP.S. Bye.", "Hello. Bye."),
    "startend:quotation": ({}, '"Hello there."', 'Hello "there".'),
}


def _row(types: list[str], kwargs: list[dict], text: str = "Write about tea.") -> dict:
    meta = {"task": text, "instruction_id_list": types, "kwargs": kwargs}
    return {"prompt": [{"role": "user", "content": text}], "meta": json.dumps(meta)}


@pytest.fixture(scope="module")
def world():
    return ifeval.build_world()


def test_the_shipped_tasks_are_many_distinct_requests_of_many_kinds():
    tasks = ifeval.load_tasks()
    assert len(tasks) >= 400 and len(set(tasks)) == len(tasks)
    for kind in ("Write a short poem", "Write a letter", "Explain", "Give advice", "Summarise", "List a few tips",
                 "Write a short story", "Describe", "Write an email"):
        assert sum(t.startswith(kind) for t in tasks) >= 10, kind


def test_the_tasks_file_ships_in_the_wheel():
    from pathlib import Path

    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert ifeval.TASKS_FILE.name in config["tool"]["setuptools"]["package-data"]["rlhf_kit.worlds.ifeval"]
    assert ifeval.TASKS_FILE.parent == Path(ifeval.__file__).parent  # next to the module that reads it


def test_splits_share_no_task_and_held_out_types_are_never_trained(world):
    tasks = {name: {json.loads(r["meta"])["task"] for r in rows} for name, rows in world.items()}
    assert not tasks["prompts"] & tasks["eval"] and tasks["eval"] == tasks["eval_heldout_types"]
    assert ifeval.instruction_types(world["prompts"]) == set(ifeval.TRAIN_TYPES)
    assert ifeval.instruction_types(world["eval"]) == set(ifeval.TRAIN_TYPES)
    assert ifeval.instruction_types(world["eval_heldout_types"]) == set(ifeval.HELDOUT_TYPES)
    assert all(len(json.loads(r["meta"])["instruction_id_list"]) == 1 for r in world["eval_heldout_types"])
    assert len(world["eval"]) >= 300 and len(world["eval_heldout_types"]) >= 200 and len(world["prompts"]) >= 1000
    for rows in world.values():
        contents = [r["prompt"][0]["content"] for r in rows]
        assert len(set(contents)) == len(contents)  # no prompt repeats within a split


def test_instruction_text_is_the_checkers_own_and_the_world_is_seeded(world):
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    state = random.getstate()
    assert ifeval.build_world() == world and ifeval.build_world(seed=1) != world
    assert random.getstate() == state  # the package's draws are seeded without disturbing the global stream
    for row in world["prompts"][:50] + world["eval_heldout_types"][:50]:
        meta = json.loads(row["meta"])
        text = row["prompt"][0]["content"]
        assert text.startswith(meta["task"])
        for type_id, kwargs in zip(meta["instruction_id_list"], meta["kwargs"]):
            checker = INSTRUCTION_DICT[type_id](type_id)
            assert checker.build_description(**kwargs) in text  # the judge rebuilds exactly this instruction
        assert not any(ifeval.conflicts(a, b) for i, a in enumerate(meta["instruction_id_list"])
                       for b in meta["instruction_id_list"][i + 1:])


def test_checkers_that_need_nltk_data_are_refused_by_name():
    with pytest.raises(UserError, match=r"length_constraints:number_sentences, change_case:capital_word_frequency "
                                        r"need NLTK data"):
        ifeval.check_types(["punctuation:no_comma", "length_constraints:number_sentences"],
                           [*ifeval.HELDOUT_TYPES, "change_case:capital_word_frequency"])


@pytest.mark.parametrize("train,heldout,message", [
    (["punctuation:no_comma"], ["punctuation:no_comma", *ifeval.HELDOUT_TYPES[1:]], r"both trained and held out"),
    (["punctuation:no_comma"], list(ifeval.HELDOUT_TYPES[:3]), r"3 held-out instruction type\(s\).*at least 4"),
    (["punctuation:no_coma"], list(ifeval.HELDOUT_TYPES), r"unknown IFEval instruction type\(s\) punctuation:no_coma"),
])
def test_bad_world_types_are_one_line(train, heldout, message):
    with pytest.raises(UserError, match=message):
        ifeval.check_types(train, heldout)


@pytest.mark.parametrize("version, expected", [((3, 11, 7), "install it with pip install -e '.[real]'"),
                                               ((3, 10, 14), "needs Python >= 3.11 (this is 3.10.14)")])
def test_a_missing_checker_package_is_one_line_naming_the_fix(monkeypatch, version, expected):
    monkeypatch.setitem(sys.modules, "if_verifiable.ifeval.instructions_registry", None)  # import fails
    monkeypatch.setattr(sys, "version_info", version)
    monkeypatch.setattr(sys, "version", ".".join(map(str, version)) + " (main)")
    with pytest.raises(UserError, match=r"needs the if-verifiable package") as err:
        ifeval._registry()
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_every_type_the_world_uses_has_a_judge_case():
    assert set(ifeval.TRAIN_TYPES) | set(ifeval.HELDOUT_TYPES) <= set(CASES)


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_judge_passes_and_fails_each_instruction_type(type_id):
    kwargs, follows, breaks = CASES[type_id]
    judge, row = ifeval.IFEvalJudge(), _row([type_id], [kwargs])
    good, bad = judge.judge(row, follows), judge.judge(row, breaks)
    assert (good.rules["instruction_strict"], good.rules["prompt_strict"], good.rules["instruction_loose"]) == (1, 1, 1)
    assert (bad.score, bad.rules["prompt_strict"], bad.rules["follows_and_task"]) == (0.0, 0.0, 0.0)


def test_judge_scores_the_fraction_followed_strict_and_loose():
    judge = ifeval.IFEvalJudge()
    row = _row(["punctuation:no_comma", "startend:end_checker"], [{}, {"end_phrase": "Any other questions?"}])
    assert judge.judge(row, "Tea is good. Any other questions?").score == 1.0
    half = judge.judge(row, "Tea is good, hot. Any other questions?")
    assert half.score == 0.5 and half.rules["prompt_strict"] == 0.0
    # A trailing line breaks the strict check only: IFEval's loose check also tries the response without it.
    loose = judge.judge(row, "Tea is good. Any other questions?\n---")
    assert loose.score == 0.5
    assert loose.rules == {"instruction_strict": 0.5, "instruction_loose": 1.0, "prompt_strict": 0.0,
                           "prompt_loose": 1.0, "does_task": 1.0, "follows_and_task": 0.0}
    assert judge.judge(row, "").score == 0.0  # saying nothing follows nothing, not even "no commas"


def test_judge_refuses_rows_without_ifeval_meta():
    with pytest.raises(UserError, match=r"lacks the IFEval `meta`"):
        ifeval.IFEvalJudge().check_rows([{"prompt": [{"role": "user", "content": "hi"}]}], "prompts.jsonl")


def test_labeler_ranks_by_the_judge_ties_share_a_rank():
    from rlhf_kit.data.rows import expand_pairs
    from rlhf_kit.worlds import load_judge, load_labeler

    assert isinstance(load_judge("ifeval"), ifeval.IFEvalJudge)
    row = _row(["punctuation:no_comma", "change_case:english_capital"], [{}, {}])
    responses = ["TEA IS GOOD.", "Tea, good.", "TEA, GOOD.", "Tea is good."]
    ranked = load_labeler("ifeval", noise=0.0, seed=0).rank(row, responses)
    assert ranked == {"ranks": [0, 2, 1, 1], "scores": [1.0, 0.5, 0.75, 0.75]}  # all on task: 0.5 + 0.5 x followed
    pairs = expand_pairs({"prompt": row["prompt"], "responses": responses, **ranked})
    assert len(pairs) == 5  # six pairs minus the tie
    noisy = ifeval.IFEvalLabeler(noise=10.0, seed=0)
    orders = {tuple(noisy.rank(row, responses)["ranks"]) for _ in range(30)}
    assert len(orders) > 1 and all(o[2] == o[3] for o in orders)  # noise reorders levels, never splits a tie


def test_the_world_stage_writes_canonical_prompt_rows(tmp_path):
    from rlhf_kit.data.rows import check_prompt, read_jsonl

    from conftest import run_inprocess

    run_inprocess("world", ["--output_dir", str(tmp_path / "world"), "--train_prompts_per_task", "1",
                            "--eval_prompts_per_task", "1", "--heldout_type_prompts_per_task", "1"])
    marker = json.loads((tmp_path / "world" / "stage_complete.json").read_text())
    for name in ("prompts", "eval", "eval_heldout_types"):
        rows = read_jsonl(tmp_path / "world" / f"{name}.jsonl")
        assert len(rows) == marker[name] > 100 and all(check_prompt(r) is None for r in rows)


def test_rejection_sampling_keeps_finished_samples_that_follow_every_instruction():
    from rlhf_kit.sampling.demonstrations import select_demonstrations

    row = _row(["punctuation:no_comma", "change_case:english_capital"], [{}, {}])
    other = _row(["punctuation:no_comma"], [{}], "Write about jam.")
    samples = [["Tea, hot.", "TEA IS HOT", "TEA IS GOOD"], ["Jam, sweet.", "Jam is"]]
    finished = [[True, False, True], [True, False]]  # "TEA IS HOT" follows both but was cut off; "Jam is" too
    demos, counts = select_demonstrations([row, other], samples, finished, ifeval.IFEvalJudge())
    assert [d["messages"][-1] for d in demos] == [{"role": "assistant", "content": "TEA IS GOOD"}]
    assert demos[0]["messages"][:-1] == row["prompt"] and demos[0]["meta"] == row["meta"]
    assert counts == {"prompts": 2, "samples": 5, "cut_off": 2, "followed": 1, "demonstrations": 1,
                      "acceptance_rate": 0.5}


def test_other_policies_samples_join_the_training_rankings_never_a_held_out_prompt(tmp_path):
    from rlhf_kit.data.rows import read_jsonl, write_jsonl
    from rlhf_kit.sampling import compare

    types = ["punctuation:no_comma", "change_case:english_capital"]
    rows = [_row(types, [{}, {}], f"Write about tea number {i}.") for i in range(10)]
    labeler = ifeval.IFEvalLabeler(noise=0.0, seed=0)
    own = compare.rank_rows(rows, [["TEA IS GOOD.", "Tea, good."]] * 10, labeler)
    samples_file = tmp_path / "samples.jsonl"  # what the demos stage writes: every sample, unranked
    write_jsonl(samples_file, compare.sample_rows(rows, [["TEA, GOOD.", "Tea, fine.", "TEA IS FINE"]] * 10))
    others = compare.rank_samples(compare.read_samples([str(samples_file)]), labeler)
    assert others[0]["ranks"] == [1, 2, 0] and others[0]["meta"] == rows[0]["meta"]
    counts = compare.write_comparisons(str(tmp_path), own, 0.3, seed=0, other_rankings=others)
    heldout, train = read_jsonl(tmp_path / "rankings_heldout.jsonl"), read_jsonl(tmp_path / "rankings.jsonl")
    assert len(heldout) == 3 and all(r["responses"] == ["TEA IS GOOD.", "Tea, good."] for r in heldout)
    held = {r["prompt"][0]["content"] for r in heldout}
    extra = [r for r in train if len(r["responses"]) == 3]
    assert len(train) == 7 + 7 and len(extra) == 7 and not held & {r["prompt"][0]["content"] for r in extra}
    assert counts["prompts_train_other_samples"] == 7 and counts["other_samples_dropped_heldout_prompt"] == 3
    assert counts["pairs_train"] == 7 * 1 + 7 * 3 and counts["pairs_heldout"] == 3


@pytest.mark.parametrize("content, message", [
    (None, r"other_samples file .* does not exist; run the stage that writes it first"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "responses": ["only one"]}\n', r"row 1 is not a sample row"),
])
def test_bad_other_samples_are_one_line(tmp_path, content, message):
    from rlhf_kit.sampling import compare

    path = tmp_path / "samples.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        compare.read_samples([str(path)])


def test_report_gives_ifevals_prompt_and_instruction_level_accuracies():
    rows = [_row(["punctuation:no_comma", "change_case:english_capital"], [{}, {}]),
            _row(["punctuation:no_comma"], [{}]),
            _row(["startend:end_checker"], [{"end_phrase": "Any other questions?"}])]
    report = ifeval.IFEvalJudge().report(rows, ["TEA IS GOOD", "Tea, hot.", ""])
    assert report["prompt_strict"]["accuracy"] == pytest.approx(1 / 3) and report["prompt_strict"]["n"] == 3
    assert report["instruction_strict"]["accuracy"] == 0.5 and report["instruction_strict"]["n"] == 4  # pooled
    low, high = report["prompt_strict"]["ci95"]
    assert 0 < low < 1 / 3 < high < 1 and ifeval.wilson_interval(0, 10)[0] == 0.0
    assert report["per_type"] == {
        "change_case:english_capital": {"strict": 1.0, "loose": 1.0, "strict_and_task": 1.0, "n": 1},
        "punctuation:no_comma": {"strict": 0.5, "loose": 0.5, "strict_and_task": 0.5, "n": 2},
        "startend:end_checker": {"strict": 0.0, "loose": 0.0, "strict_and_task": 0.0, "n": 1}}
    assert report["does_task"]["accuracy"] == pytest.approx(2 / 3)  # the empty answer does no task
    assert report["follows_and_task"]["accuracy"] == pytest.approx(1 / 3)
    assert report["degenerate"] == {"off_task": pytest.approx(1 / 3), "too_short": pytest.approx(1 / 3),
                                    "instruction_repeated": 0.0, "about_the_answer": 0.0,
                                    "any": pytest.approx(1 / 3)}
    assert "empty_share" not in report  # the eval stage's, for every judge (tests/test_eval.py)


def test_the_run_report_shows_the_benchmarks_accuracies_shares_and_per_type_table(tmp_path):
    from rlhf_kit.eval import report as rep

    rows = [_row(["punctuation:no_comma"], [{}]), _row(["change_case:english_capital"], [{}])]
    capital = CASES["change_case:english_capital"]
    reports = {"import": ifeval.IFEvalJudge().report(rows, ["Tea, hot.", capital[2]]),
               "ppo": ifeval.IFEvalJudge().report(rows, ["Tea is hot.", capital[1]])}
    summary = {"judge": "ifeval", "judge_report": reports, "empty_share": {"import": 0.0, "ppo": 0.0},
               "cut_off_share": {"import": 0.5, "ppo": 0.0}}
    text = "\n".join(rep.benchmark_lines(summary, "eval"))
    assert "## ifeval accuracy (2 held-out prompts" in text
    assert "| import | 0.000 [0.000, 0.658] |" in text and "| ppo | 1.000 [0.342, 1.000] |" in text
    assert text.count("| 0.000 | 0.500 |") == 1  # import: nothing empty, half cut off
    assert "| punctuation:no_comma | 1 | 0.000 | 1.000 |" in text
    rep.plot_per_type(reports, tmp_path / "per_type.png")
    assert (tmp_path / "per_type.png").stat().st_size > 1000
    assert rep.benchmark_lines({"judge": "gold"}, "eval") == []  # judges without a report add nothing
