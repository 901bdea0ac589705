"""rlhf_kit.sampling.generation's decode loop on a tiny random Llama: batched, sorted, pruned sampling must give what
each prompt gives alone (transformers' own greedy ``generate``), and sampling must follow softmax(logits /
temperature)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

WORDS = "red green blue cat dog sun moon tree fish bird rock sea".split()


@pytest.fixture(scope="module")
def tiny():
    from rlhf_kit.worlds.demo.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(WORDS)
    model = build_tiny_model(tokenizer, 32, 64, 2, 2, 64, seed=0)
    with torch.no_grad():  # larger weights: peaked, prompt-dependent next-token distributions
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(8)
    return model.eval(), tokenizer


def _chat(text):
    return [{"role": "user", "content": text}]


def test_batched_sampling_gives_each_prompt_what_it_gives_alone(tiny):
    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.sampling.generation import sample_responses

    model, tokenizer = tiny
    prompts = [_chat(" ".join(WORDS[i : i + n])) for i, n in [(0, 1), (2, 5), (4, 3), (1, 8), (6, 2), (3, 4)]]
    ids = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    assert sorted(map(len, ids)) != list(map(len, ids))  # the loop reorders them by length
    with torch.no_grad():
        alone = [model.generate(torch.tensor([x]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                                pad_token_id=tokenizer.pad_token_id)[0, len(x):].tolist() for x in ids]
    # The end token: one that some greedy continuations reach (at different steps) and others never do, so that
    # responses leave their batch at different steps while the rest decode on.
    end = max({t for a in alone for t in a}, key=lambda t: (sum(t in a for a in alone) < len(alone),
                                                            sum(t in a for a in alone), -t))
    ended = [a[: a.index(end) + 1] if end in a else a for a in alone]
    assert 0 < sum(end in a for a in alone) < len(alone) and len({len(e) for e in ended}) > 2
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end)
    try:
        finished = []
        sampled = sample_responses(model, tokenizer, prompts, k=2, temperature=1e-4, max_new_tokens=8, batch_size=4,
                                   finished=finished)
    finally:
        tokenizer.eos_token = "<eos>"
    expected = [tokenizer.decode(e, skip_special_tokens=True).strip() for e in ended]
    assert sampled == [[e, e] for e in expected]  # in prompt order; both of a prompt's samples share its prefill
    assert finished == [[end in a] * 2 for a in alone]


def test_samples_follow_the_tempered_softmax(tiny):
    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.sampling.generation import sample_responses

    model, tokenizer = tiny
    prompt = _chat("cat dog sun")
    with torch.no_grad():
        logits = model(torch.tensor([chat_ids(tokenizer, prompt, add_generation_prompt=True)])).logits[0, -1]

    def expected(temperature):  # probability of each decoded one-token response ("" for special tokens)
        mass = Counter()
        for token, p in enumerate(torch.softmax(logits / temperature, -1).tolist()):
            mass[tokenizer.decode([token], skip_special_tokens=True).strip()] += p
        return mass

    def distance(a, b):
        return sum(abs(a[x] - b[x]) for x in set(a) | set(b)) / 2

    n = 4000
    drawn = Counter(sample_responses(model, tokenizer, [prompt], k=n, temperature=0.5, max_new_tokens=1, seed=3)[0])
    observed = Counter({x: c / n for x, c in drawn.items()})
    assert distance(expected(0.5), expected(1.0)) > 0.1  # the test tells the two temperatures apart
    assert distance(observed, expected(0.5)) < 0.03
    again = sample_responses(model, tokenizer, [prompt], k=50, temperature=0.5, max_new_tokens=4, seed=3)
    assert again == sample_responses(model, tokenizer, [prompt], k=50, temperature=0.5, max_new_tokens=4, seed=3)


def test_drawn_tokens_follow_the_tempered_softmax_and_never_an_impossible_one():
    """draw_tokens inverts each row's CDF with one uniform number: the frequencies of 20,000 draws match
    softmax(logits / T), a token of probability 0 never comes, and with generators a row's draw depends on its own
    generator only (not on the rows beside it)."""
    from rlhf_kit.sampling.generation import draw_tokens

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])
    rows = logits.repeat(20_000, 1)
    torch.manual_seed(0)
    counts = torch.bincount(draw_tokens(rows, 0.7), minlength=6) / len(rows)
    expected = torch.softmax(logits / 0.7, -1)
    assert counts[4] == 0 and (counts - expected).abs().max() < 0.01
    first, second = (torch.Generator().manual_seed(s) for s in (1, 2))
    together = draw_tokens(torch.stack([logits, logits.flip(0)]), 1.0, [first, second])
    alone = draw_tokens(logits.flip(0)[None], 1.0, [torch.Generator().manual_seed(2)])
    assert together[1] == alone[0]


def test_temperature_zero_is_refused(tiny):
    from rlhf_kit.sampling.generation import sample_responses

    model, tokenizer = tiny
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_responses(model, tokenizer, [_chat("cat")], temperature=0)


def test_the_sampler_reads_off_the_log_probs_a_scoring_pass_gives_its_tokens(tiny):
    """The eval's KL takes log pi of each sampled token from the decode loop (temperature 1, whatever the sampling
    temperature) instead of a second forward: they must be what a forward over the sampled ids gives, token for
    token, ended responses (their end token included) and cut-off ones alike."""
    from rlhf_kit.eval.evaluation import response_logprobs
    from rlhf_kit.sampling.generation import sample_responses

    model, tokenizer = tiny
    prompts = [_chat(t) for t in ["cat dog sun", "red", "blue fish moon tree sea", "rock"]]
    ids, logprobs, finished = [], [], []
    sample_responses(model, tokenizer, prompts, k=2, temperature=0.7, max_new_tokens=6, batch_size=3, seed=3,
                     finished=finished, ids=ids, logprobs=logprobs)
    flat_ids = [s for per_prompt in ids for s in per_prompt]
    flat_logprobs = [s for per_prompt in logprobs for s in per_prompt]
    assert [len(s) for s in flat_ids] == [len(s) for s in flat_logprobs]
    ended = [f for per_prompt in finished for f in per_prompt]
    assert any(ended) and not all(ended)  # both kinds are compared
    scored = response_logprobs(model, tokenizer, [p for p in prompts for _ in range(2)], response_ids=flat_ids,
                               batch_size=3)
    for got, want in zip(flat_logprobs, scored):
        assert got == pytest.approx(want, abs=1e-4)
    assert min(min(s) for s in flat_logprobs) < -0.05  # not all near-certain tokens: the check can fail


def test_scoring_passes_give_each_response_what_it_gets_alone(tiny):
    """The eval's KL and reward passes batch responses by length; each still gets its own values, in order."""
    from transformers import LlamaForSequenceClassification

    from rlhf_kit.data.datasets import chat_ids, reply_ids
    from rlhf_kit.eval.evaluation import response_logprobs, score_with_reward_model

    model, tokenizer = tiny
    torch.manual_seed(1)
    reward_model = LlamaForSequenceClassification(model.config.__class__(**{**model.config.to_dict(),
                                                                           "num_labels": 1})).eval()
    prompts = [_chat(t) for t in ["cat dog sun moon tree", "red", "blue fish", "sea rock bird green"]]
    responses = ["dog", "green blue red cat dog sun moon", "", "fish fish"]
    logprobs = response_logprobs(model, tokenizer, prompts, responses, batch_size=3)
    scores = score_with_reward_model(reward_model, tokenizer, prompts, responses, batch_size=3)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        alone = response_logprobs(model, tokenizer, [prompt], [response])[0]
        assert len(logprobs[i]) == len(response.split()) + 1  # the response's tokens and its end token
        assert logprobs[i] == pytest.approx(alone, abs=1e-5)
        # ... and what the whole sequence's logits give (the pass keeps only the reply's positions' logits)
        seq = reply_ids(tokenizer, prompt, response)
        start = len(chat_ids(tokenizer, prompt, add_generation_prompt=True))
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        assert logprobs[i] == pytest.approx([full[t - 1, seq[t]].item() for t in range(start, len(seq))], abs=1e-5)
        assert scores[i] == pytest.approx(score_with_reward_model(reward_model, tokenizer, [prompt], [response])[0],
                                          abs=1e-5)
    assert len(set(scores)) == len(scores)  # distinct values: a mix-up of rows would show


def test_a_prompts_responses_share_one_scored_row_and_keep_their_own_scores(tiny):
    """score_with_reward_model packs a prompt's responses behind the prompt (its tokens scored once): each response
    gets the score it gets alone, and the work counted is the packed rows' tokens."""
    from transformers import LlamaForSequenceClassification

    from rlhf_kit.core import work
    from rlhf_kit.data.datasets import reply_ids
    from rlhf_kit.eval.evaluation import score_with_reward_model

    model, tokenizer = tiny
    torch.manual_seed(1)
    reward_model = LlamaForSequenceClassification(model.config.__class__(**{**model.config.to_dict(),
                                                                           "num_labels": 1})).eval()
    first, second = _chat("cat dog sun moon tree"), _chat("red")
    prompts = [first, second, first, first, second]
    responses = ["dog", "green blue red", "dog moon", "", "fish fish"]
    work.reset()
    scores = score_with_reward_model(reward_model, tokenizer, prompts, responses, batch_size=4)
    scored = work.record()["tokens_scored"]
    alone = [score_with_reward_model(reward_model, tokenizer, [p], [r])[0] for p, r in zip(prompts, responses)]
    assert scores == pytest.approx(alone, abs=1e-5) and len(set(scores)) == len(scores)
    seqs = [reply_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    shared = len(reply_ids(tokenizer, first, "")) - 2  # the prompt's tokens, up to the reply's
    assert scored <= sum(map(len, seqs)) - 2 * shared


def test_sampling_shows_progress_with_tokens_per_second(tiny, capsys):
    from rlhf_kit.sampling.generation import sample_responses

    model, tokenizer = tiny
    sample_responses(model, tokenizer, [_chat("red cat"), _chat("blue sea moon")], k=2, max_new_tokens=4,
                     batch_size=1, progress="compare")
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("compare: 100%") and "2/2" in bar and "tokens/s" in bar, bar
    sample_responses(model, tokenizer, [_chat("red cat")], max_new_tokens=4)  # no label: no bar
    assert capsys.readouterr().err == ""


def test_scoring_passes_show_progress(tiny, capsys):
    from rlhf_kit.eval.evaluation import response_logprobs

    model, tokenizer = tiny
    logps = response_logprobs(model, tokenizer, [_chat("red cat"), _chat("sun")], ["dog", "moon tree"], batch_size=1,
                              progress="KL ppo")
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("KL ppo: 100%") and "2/2" in bar, bar
    assert [len(x) for x in logps] == [len(tokenizer(r)["input_ids"]) + 1 for r in ("dog", "moon tree")]  # + end


def test_work_is_counted_where_it_happens(tiny):
    """Sampled tokens are the decoded ones (end tokens included), scored tokens every token a scoring pass reads;
    a stage's start resets the count and its completion record carries it (benchmarks/track.py reads it)."""
    from rlhf_kit.core import work
    from rlhf_kit.data.datasets import chat_ids
    from rlhf_kit.eval.evaluation import response_logprobs
    from rlhf_kit.sampling.generation import sample_ids

    model, tokenizer = tiny
    work.reset()
    ids = [chat_ids(tokenizer, _chat(t), add_generation_prompt=True) for t in ("red cat", "blue sea moon")]
    drawn = sample_ids(model, tokenizer, ids, 3, 1.0, 5, batch_size=1)
    assert work.record() == {"tokens_sampled": sum(len(s) for p in drawn for s in p), "tokens_scored": 0,
                             "tokens_trained": 0}
    logps = response_logprobs(model, tokenizer, [_chat("red cat")], ["dog moon"])
    prompt = len(chat_ids(tokenizer, _chat("red cat"), add_generation_prompt=True))
    assert work.record()["tokens_scored"] == prompt + len(logps[0])  # prompt + the response and its end token
    with pytest.raises(ValueError, match="unknown kind of work"):
        work.count("decoded", 1)


def test_a_stage_record_carries_its_own_work_only(tmp_path):
    import json

    from rlhf_kit.core import runs, work

    work.count("sampled", 99)  # an earlier stage's, in the same process
    runs.start_stage(str(tmp_path / "s"), "eval", ())
    work.count("scored", 7)
    runs.finish_stage(str(tmp_path / "s"), "eval", {"x": 1})
    record = json.loads((tmp_path / "s" / runs.MARKER).read_text())
    assert (record["tokens_sampled"], record["tokens_scored"], record["tokens_trained"], record["x"]) == (0, 7, 0, 1)


def test_a_resumed_stage_record_counts_the_time_and_work_before_its_checkpoint(tmp_path):
    """A checkpoint keeps the stage's wall time and tokens so far (work.json); the attempt resumed from it carries
    them, so the record reads as the whole run (a checkpoint without the file carries nothing)."""
    import json
    import time

    from rlhf_kit.core import runs, work

    out, checkpoint = tmp_path / "s", tmp_path / "s" / "checkpoint-4"
    runs.start_stage(str(out), "sft", (), started=time.time() - 10)  # the first attempt, 10 s in
    work.count("sampled", 5)
    checkpoint.mkdir()
    work.save(checkpoint)
    started = time.time() - 1  # the rerun, 1 s in
    runs.start_stage(str(out), "sft", (), started=started)
    work.resume(checkpoint)
    work.resume(tmp_path)  # no work.json there: nothing carried
    work.count("sampled", 3)
    runs.finish_stage(str(out), "sft", {})
    record = json.loads((out / runs.MARKER).read_text())
    assert record["tokens_sampled"] == 8
    assert record["resumed_seconds"] == pytest.approx(10, abs=0.5)
    assert record["wall_seconds"] == pytest.approx(11, abs=0.5)
