"""Each gold rule on hand-written cases; the simulated labeler; the demo world's splits."""

import json
import random

import pytest

from rlhf_kit.worlds.demo import gold, world
from rlhf_kit.worlds.demo.simulated import rank_responses

LIST3 = {"task": "brainstorming", "text": "name three fruits", "category": "fruits", "n": 3}
QA = {"task": "open_qa", "text": "what sound does a dog make", "answer": "a dog says woof"}
REWRITE = {"task": "rewrite", "text": "rewrite politely : give me the cat", "answer": "please give me the cat"}
HARM = {"task": "harmful", "text": "how do i hurt the cat", "verb": "hurt", "x": "cat"}


@pytest.mark.parametrize("prompt,response,expected", [
    (QA, "a dog says woof", 1.0),
    (QA, "a dog says moo", 0.0),
    (QA, "a dog says woof , you are dumb", 1.0),  # rudeness is another rule's business
    (QA, world.DECLINE, 0.0),
    (LIST3, "apple , pear , plum", 1.0),
    (LIST3, "apple , pear , cat , dog", 0.5),
    (LIST3, "", 0.0),
    (HARM, world.DECLINE, 1.0),
    (HARM, "ok , here is how : hurt the cat now", 0.0),
])
def test_rule_correct(prompt, response, expected):
    assert gold.rule_correct(prompt, response) == pytest.approx(expected)


@pytest.mark.parametrize("prompt,response,expected", [
    (LIST3, "apple , pear , plum", 1.0),
    (LIST3, "apple , pear", 0.0),
    (LIST3, "apple , pear , plum , lime", 0.0),
    (REWRITE, "please give me the cat", 1.0),
    (REWRITE, "give me the cat", 0.0),
    (QA, "anything", 1.0),  # no stated constraint
])
def test_rule_constraint(prompt, response, expected):
    assert gold.rule_constraint(prompt, response) == expected


@pytest.mark.parametrize("response,expected", [
    ("a dog says woof", 1.0),
    ("a dog says woof . a dog says woof", 0.0),
    ("apple , apple , pear", 0.0),
])
def test_rule_no_repetition(response, expected):
    assert gold.rule_no_repetition(QA, response) == expected


@pytest.mark.parametrize("response,expected", [
    ("a dog says woof", 1.0), ("a dog says woof , you are dumb", 0.0), ("ugh , stupid question", 0.0)])
def test_rule_not_rude(response, expected):
    assert gold.rule_not_rude(QA, response) == expected


@pytest.mark.parametrize("response,expected", [("a dog says woof", 1.0), ("a dog says woof . i like cheese", 0.0)])
def test_rule_on_topic(response, expected):
    assert gold.rule_on_topic(QA, response) == expected


@pytest.mark.parametrize("prompt,response,expected", [
    (HARM, world.DECLINE, 1.0), (HARM, "ok , here is how : hurt the cat now", 0.0),
    (QA, world.DECLINE, 0.0), (QA, "a dog says woof", 1.0)])
def test_rule_refusal(prompt, response, expected):
    assert gold.rule_refusal(prompt, response) == expected


def test_score_gold_is_weighted_mean_of_rules():
    assert gold.score_gold(QA, "a dog says woof") == 1.0
    # correct, constraint, no_repetition, on_topic, refusal hold; not_rude fails (weight 1 of 9)
    assert gold.score_gold(QA, "a dog says woof , you are dumb") == pytest.approx(8 / 9)
    assert gold.score_gold(HARM, "ok , here is how : hurt the cat now") == pytest.approx(4 / 9)


def test_labeler_without_noise_ranks_by_gold_and_ties_identical():
    responses = ["a dog says woof , you are dumb", "a dog says woof", "a dog says moo", "a dog says woof"]
    ranks = rank_responses(QA, responses, noise=0.0, rng=random.Random(0))
    assert ranks[1] == ranks[3] == 0 and ranks[0] < ranks[2]


def test_labeler_noise_flips_some_orders():
    good, bad = "a dog says woof", "a dog says woof , you are dumb"  # gold gap 1/9
    rng = random.Random(0)
    flips = sum(rank_responses(QA, [good, bad], noise=0.2, rng=rng)[0] == 1 for _ in range(400))
    assert 40 < flips < 200


def test_world_is_deterministic_and_splits_are_disjoint():
    a, b = world.build_demo_data(seed=3), world.build_demo_data(seed=3)
    assert a == b
    assert world.build_demo_data(seed=4)["sft"] != a["sft"]
    text = lambda rows, key: {r[key][0]["content"] for r in rows}  # noqa: E731
    sft, prompts, evals = text(a["sft"], "messages"), text(a["prompts"], "prompt"), text(a["eval"], "prompt")
    assert not (evals & sft) and not (evals & prompts)  # evaluation prompts are held out from every stage
    probes = text(a["probe"], "prompt")  # PPO's monitor: a validation set, held out from training and from eval
    assert len(probes) == 32 and not probes & (sft | prompts | evals)
    assert sft < prompts and len(prompts - sft) >= 100  # comparisons and PPO revisit the SFT prompts, and more
    assert len(evals) >= 256
    tasks = {json.loads(r["meta"])["task"] for r in a["eval"]}
    assert len(tasks - {"harmful"}) >= 4  # at least four InstructGPT use-case categories


def test_demonstrations_carry_flaws_at_the_configured_rate():
    rows = world.build_demo_data(seed=0, flaw_rate=0.2)["sft"]
    scores = [gold.score_gold(json.loads(r["meta"]), r["messages"][-1]["content"]) for r in rows]
    flawed = sum(s < 1.0 for s in scores) / len(scores)
    assert 0.3 < flawed < 0.7
    clean = world.build_demo_data(seed=0, flaw_rate=0.0)["sft"]
    assert all(gold.score_gold(json.loads(r["meta"]), r["messages"][-1]["content"]) == 1.0 for r in clean)


def test_tokenizer_covers_the_world_vocabulary():
    from rlhf_kit.worlds.demo.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer(world.vocabulary())
    data = world.build_demo_data(seed=0)
    for row in data["sft"][:200]:
        ids = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        assert tok.unk_token_id not in ids
    text = data["sft"][0]["messages"][-1]["content"]
    assert tok.decode(tok(text)["input_ids"]) == text
