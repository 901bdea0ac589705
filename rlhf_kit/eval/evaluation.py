"""Evaluation of a run's policies against a judge that the reward model and PPO never saw.

Per policy (any finished stage folders, e.g. base, sft, ppo or later rounds) on held-out prompts: mean judge score
with its per-rule breakdown, mean reward-model score, mean response length; each policy's win rate against a
baseline policy with a 95% CI and its per-token KL to the baseline; reward-model pairwise accuracy on held-out
comparisons against the judge's order. Comparing judge and reward-model scores exposes reward over-optimisation
(Gao et al. 2023, Scaling Laws for Reward Model Overoptimization).
"""

from __future__ import annotations

from rlhf_kit.core.errors import UserError
from rlhf_kit.data.datasets import chat_ids, length_batches, pad_right, reply_ids
from rlhf_kit.data.rows import prompt_key

# The data each kind of stage trained on, by the card stage it was read as: evaluation prompts must avoid them all.


def compare_policies(rows: list[dict], responses: dict[str, list[str]], models: dict, tokenizer, judge, baseline: str,
                     reward_model=None, heldout_rankings: list[dict] | None = None, batch_size: int = 128,
                     kl_bounds: dict[str, float] | None = None, sampled: dict[str, dict] | None = None):
    """The summary's metrics for policies' ``responses`` to prompt ``rows`` (policies in ``responses`` order).

    Returns (summary, judge scores per policy, RM scores per policy or {}). Win rates count ties as half and carry
    a normal-approximation 95% CI; KL is the k1 estimate per token of each policy to the baseline on the policy's
    own samples, except for a policy in ``kl_bounds`` (no model to score its samples, e.g. best-of-n): its bound
    in nats per response, spread over its mean response length; RM accuracy is measured on held-out rankings
    against the judge's order. ``sampled``: per policy, the sampler's ``ids`` and ``logprobs`` of its responses
    (:meth:`KeptDraws.sample`); the KL then reads log pi off them and scores the same tokens under the baseline,
    one forward instead of two.
    """
    policies = list(responses)
    prompts = [r["prompt"] for r in rows]
    judged = {p: [judge.judge(row, resp) for row, resp in zip(rows, responses[p])] for p in policies}
    scores = {p: [j.score for j in judged[p]] for p in policies}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    summary = {
        "policies": policies,
        "baseline": baseline,
        "judge_score": {p: mean(scores[p]) for p in policies},
        "judge_score_ci95": {p: mean_ci95(scores[p]) for p in policies},
        "judge_rules": {p: {k: mean([j.rules[k] for j in judged[p]]) for k in judge.rule_names} for p in policies},
        "response_length": {p: mean([len(tokenizer(r)["input_ids"]) for r in responses[p]]) for p in policies},
        "eval_prompts": len(rows),
        "win_rate_vs_baseline": {},
        "vs_baseline": {},  # per rule, the paired difference to the baseline on the same prompts
        "kl_to_baseline": {},
    }
    for p in policies:
        if p == baseline:
            continue
        summary["win_rate_vs_baseline"][p] = head_to_head(scores, p, [baseline])[baseline]
        summary["vs_baseline"][p] = paired_by_rule(judged[p], judged[baseline], judge.rule_names)
        if p in (kl_bounds or {}):
            summary["kl_to_baseline"][p] = kl_bounds[p] / max(summary["response_length"][p], 1.0)
            continue
        kept = (sampled or {}).get(p)
        if kept is not None:
            own = kept["logprobs"]
            ref = response_logprobs(models[baseline], tokenizer, prompts, response_ids=kept["ids"],
                                    progress=f"KL {p}: log pi_{baseline}")
        else:
            own = response_logprobs(models[p], tokenizer, prompts, responses[p], progress=f"KL {p}: log pi_{p}")
            ref = response_logprobs(models[baseline], tokenizer, prompts, responses[p],
                                    progress=f"KL {p}: log pi_{baseline}")
        summary["kl_to_baseline"][p] = per_token_kl(own, ref)
    rm_scores = {}
    if reward_model is not None:
        # Every policy's answers in one pass: a prompt's answers share one packed row (score_with_reward_model).
        flat = score_with_reward_model(reward_model, tokenizer, prompts * len(policies),
                                       [r for p in policies for r in responses[p]], batch_size, progress="RM score")
        rm_scores = {p: flat[i * len(prompts): (i + 1) * len(prompts)] for i, p in enumerate(policies)}
        summary["rm_score"] = {p: mean(rm_scores[p]) for p in policies}
        if heldout_rankings is not None:
            pairs = heldout_judged_pairs(heldout_rankings, judge)
            summary["rm_accuracy"], summary["rm_accuracy_pairs"] = rm_accuracy(reward_model, tokenizer, pairs)
        summary["rm_accuracy_between_policies"] = rm_accuracy_between_policies(scores, rm_scores)
    return summary, scores, rm_scores


class KeptDraws:
    """A policy's eval responses, kept in ``parts/<name>.json`` as soon as they are drawn, so that a killed eval
    (an hour per policy on the real track's CPU) resumes at the policy it was on. The draws equal an unbroken run's:
    each policy's sampling is seeded on its own (``sample_responses``). A kept file is reused only for the same
    prompts, sampling settings, precision and policy checkpoint (its stage's completion record); ``fresh``
    (``--force``) draws everything again."""

    def __init__(self, parts, stages: dict[str, str], prompts: list[list[dict]], args, fresh: bool = False):
        import hashlib
        import json
        import shutil
        from pathlib import Path

        self.parts, self.stages, self.prompts, self.args = Path(parts), stages, prompts, args
        if fresh:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.key = {"prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(), "seed": args.seed,
                    "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                    "batch_size": args.batch_size}

    def get(self, name: str, policy: str, model, draw, key: dict | None = None) -> dict:
        """``draw()`` (a dict with ``wall_seconds``) for ``name`` from ``policy``'s ``model``, or its kept copy."""
        from rlhf_kit.core import runs, work

        key = self.key | (key or {}) | {"policy": self.stages[policy], "dtype": str(model.dtype),
                                        "trained": runs.read_marker(self.stages[policy])}
        value, reused = runs.resumable(self.parts / f"{name}.json", key, draw, f"[eval] {name}'s responses")
        if reused:  # what the killed attempt spent on it: the stage's cost includes it
            work.carry(value["wall_seconds"])
        return value

    def sample(self, model, tokenizer, name: str) -> dict:
        """One response per prompt from ``model``: ``responses``, ``finished`` ([ended on its own] per prompt),
        and the sampled token ``ids`` with their ``logprobs`` (the KL to the baseline reads them)."""
        import time

        from rlhf_kit.sampling.generation import sample_responses

        a, started, finished, ids, logprobs = self.args, time.time(), [], [], []
        got = sample_responses(model, tokenizer, self.prompts, 1, a.temperature, a.max_new_tokens, a.batch_size,
                               a.seed, finished=finished, progress=f"eval {name}", ids=ids, logprobs=logprobs)
        return {"responses": [r[0] for r in got], "finished": finished, "ids": [i[0] for i in ids],
                "logprobs": [lp[0] for lp in logprobs], "wall_seconds": round(time.time() - started, 2)}


def mean_ci95(xs: list[float]) -> list[float]:
    """95% normal-approximation interval of the mean of per-prompt scores (t would widen it by <1% at n >= 200)."""
    import math

    n = len(xs)
    if n < 2:
        return [float("nan"), float("nan")]
    m = sum(xs) / n
    half = 1.96 * math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)
    return [m - half, m + half]


def paired_difference(xs: list[float], ys: list[float]) -> dict:
    """The mean per-prompt difference ``xs - ys`` of two policies' scores on the same prompts, with its 95%
    interval (:func:`mean_ci95` over the differences): a policy beats another by more than the noise when the
    interval is above 0. Paired, it is tighter than two policies' own intervals side by side, which ignore that both
    answered the same prompts (the prompts' difficulty is shared noise)."""
    differences = [x - y for x, y in zip(xs, ys, strict=True)]
    return {"diff": sum(differences) / len(differences), "ci95": mean_ci95(differences)}


def paired_by_rule(judged: list, baseline: list, rule_names) -> dict:
    """:func:`paired_difference` of two policies' judgements of the same prompts: for the judge score and each of
    ``rule_names``."""
    pairs = {"judge_score": ([j.score for j in judged], [j.score for j in baseline])}
    pairs |= {k: ([j.rules[k] for j in judged], [j.rules[k] for j in baseline]) for k in rule_names}
    return {k: paired_difference(a, b) for k, (a, b) in pairs.items()}


def head_to_head(scores: dict[str, list[float]], policy: str, opponents: list[str]) -> dict:
    """``policy``'s win rate (ties half, 95% CI) against each opponent on the same prompts, by judge score."""
    from rlhf_kit.eval.metrics import load_metric

    win_rate = load_metric("win_rate")
    out = {}
    for other in opponents:
        win = win_rate.compute(predictions=scores[policy], references=scores[other])
        out[other] = {"win_rate": win["win_rate"], "ci95": [win["ci95_low"], win["ci95_high"]],
                      "win_tie_loss": [win["wins"], win["ties"], win["losses"]]}
    return out


def rm_accuracy(reward_model, tokenizer, pairs: list[tuple[list[dict], str, str]]) -> tuple[float, int]:
    """(accuracy, pairs): how often the reward model scores the judge-preferred response of a pair higher."""
    from rlhf_kit.eval.metrics import load_metric

    # A response sits in up to K-1 pairs of its ranking: score each distinct (prompt, response) once.
    keyed = [((prompt_key(p), w), (prompt_key(p), lo)) for p, w, lo in pairs]
    unique: dict[tuple[str, str], tuple[list[dict], str]] = {}
    for (prompt, w, lo), (key_w, key_l) in zip(pairs, keyed):
        unique.setdefault(key_w, (prompt, w))
        unique.setdefault(key_l, (prompt, lo))
    scores = dict(zip(unique, score_with_reward_model(reward_model, tokenizer, [p for p, _ in unique.values()],
                                                      [r for _, r in unique.values()])))
    accuracy = load_metric("pairwise_accuracy").compute(predictions=[scores[k] for k, _ in keyed],
                                                        references=[scores[k] for _, k in keyed])
    return accuracy["accuracy"], accuracy["n"]


def rm_accuracy_between_policies(judge_scores: dict[str, list[float]], rm_scores: dict[str, list[float]]) -> dict:
    """RM accuracy against the judge's order on pairs of two policies' responses to the same held-out prompt, per
    pair of policies (``"sft vs ppo"``: accuracy, pairs; a prompt the judge scores alike makes no pair).

    It costs no model call (both scores exist already) and its pairs come from every evaluation prompt, many more
    than the held-out comparisons. Between policies the RM was not optimised against (base, SFT) it is a second
    held-out accuracy; a pair with the PPO policy, which was optimised against the RM, shows over-optimisation
    (Gao et al. 2023): a lower accuracy there means the RM prefers PPO's responses where the judge does not.
    """
    from itertools import combinations

    from rlhf_kit.eval.metrics import load_metric

    metric, out = load_metric("pairwise_accuracy"), {}
    for a, b in combinations(judge_scores, 2):
        pairs = [(ra, rb) if ga > gb else (rb, ra)  # (RM score of the judge's choice, RM score of the other)
                 for ga, gb, ra, rb in zip(judge_scores[a], judge_scores[b], rm_scores[a], rm_scores[b]) if ga != gb]
        if pairs:
            accuracy = metric.compute(predictions=[w for w, _ in pairs], references=[lo for _, lo in pairs])
            out[f"{a} vs {b}"] = {"accuracy": accuracy["accuracy"], "pairs": accuracy["n"]}
    return out


def stage_rows(stage_dir: str, card_stage: str) -> list[dict]:
    """The rows a finished stage trained on (dataset file or data cards), read back through its resolved config."""
    from types import SimpleNamespace

    from rlhf_kit.core.runs import read_config
    from rlhf_kit.data.cards import load_stage_rows

    config = read_config(stage_dir)
    source = SimpleNamespace(**{k: config.get(k) for k in ("dataset_path", "dataset_cards", "card_data_dir")},
                             dataset_split=config.get("dataset_split") or "train")
    return load_stage_rows(source, card_stage)[0].to_list()


def prompt_texts(rows: list[dict]) -> set[str]:
    """The user turns of prompt or conversation rows (what overlap is judged on)."""
    texts = set()
    for row in rows:
        messages = row.get("prompt") or row.get("messages") or []
        texts.update(m["content"] for m in messages if m["role"] == "user")
    return texts


def prompt_text(row: dict) -> str:
    """The last user turn of a prompt row (how reports and sample files show a prompt)."""
    return [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]


def require_disjoint(eval_rows: list[dict], others: dict[str, list[dict]]) -> None:
    """Refuse evaluation prompts that also appear in training data (they would measure memorisation)."""
    eval_texts = prompt_texts(eval_rows)
    for name, rows in others.items():
        shared = eval_texts & prompt_texts(rows)
        if shared:
            example = sorted(shared)[0]
            raise UserError(f"{len(shared)} evaluation prompt(s) also appear in the {name} data (e.g. '{example}'); "
                            "evaluate on held-out prompts")


def _batches(seqs: list[list[int]], batch_size: int, progress: str | None):
    """``length_batches`` of ``seqs``, behind a tqdm bar (responses done / total, time left) when ``progress``
    names one: scoring a real model's answers takes minutes."""
    from tqdm.auto import tqdm

    from rlhf_kit.core import work

    off = {} if progress else {"disable": True}  # a labelled bar leaves TQDM_DISABLE to tqdm
    with tqdm(total=len(seqs), desc=progress, unit="response", mininterval=2, **off) as bar:
        for batch in length_batches(seqs, batch_size):
            work.count("scored", sum(len(seqs[i]) for i in batch))
            yield batch
            bar.update(len(batch))


def score_with_reward_model(model, tokenizer, prompts: list[list[dict]], responses: list[str],
                            batch_size: int = 128, progress: str | None = None) -> list[float]:
    """r(x, y) for each (prompt, response), read at the last token as in training; a prompt's several responses
    share one packed row (:func:`score_ids`). ``progress``: a bar's label."""
    seqs = [reply_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return score_ids(model, seqs, tokenizer.pad_token_id, batch_size, progress, [prompt_key(p) for p in prompts])


def score_ids(model, seqs: list[list[int]], pad_token_id: int, batch_size: int = 128,
              progress: str | None = None, groups: list | None = None) -> list[float]:
    """The reward model's score of each token sequence, read at its last token. ``groups``: a key per sequence;
    the sequences of one key (a prompt's responses) are scored in one row, the tokens they share computed once, as
    the reward stage trains (:func:`rlhf_kit.reward.ranking.pack_shared_prefix`): the same scores within float
    rounding, a prompt's K responses for about the price of one prompt and K responses. ``batch_size``: sequences
    per forward."""
    import torch

    from rlhf_kit.reward.ranking import completion_rewards, pack_row, pack_shared_prefix

    by_key: dict = {}
    for i, key in enumerate(range(len(seqs)) if groups is None else groups):
        by_key.setdefault(key, []).append(i)
    members = list(by_key.values())
    rows = [pack_row([seqs[i] for i in group]) for group in members]
    per_row = max(1, batch_size * len(rows) // max(len(seqs), 1))  # rows per forward: about batch_size sequences
    scores = [0.0] * len(seqs)
    model.eval()
    # Rows batched by their packed lengths (the shared tokens once), which the bar and the work count see too.
    for batch in _batches([row.ids for row in rows], per_row, progress):
        inputs = {k: v.to(model.device) for k, v in pack_shared_prefix([rows[b] for b in batch], pad_token_id).items()}
        with torch.no_grad():
            values = completion_rewards(model, inputs).float().tolist()
        for i, score in zip((i for b in batch for i in members[b]), values):
            scores[i] = score
    return scores


def response_logprobs(model, tokenizer, prompts: list[list[dict]], responses: list[str] | None = None,
                      batch_size: int = 128, progress: str | None = None,
                      response_ids: list[list[int]] | None = None) -> list[list[float]]:
    """Per-token log-probabilities of each response (its tokens and end-of-turn) given its prompt (``progress``: a
    bar's label); ``response_ids`` instead of ``responses``: those tokens as sampled (the end token where the
    response ended), not the text tokenized again."""
    import torch

    heads = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    if response_ids is not None:
        seqs = [head + list(ids) for head, ids in zip(heads, response_ids)]
    else:
        seqs = [reply_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    starts = [len(head) for head in heads]
    out: list[list[float]] = [[] for _ in seqs]
    model.eval()
    for batch in _batches(seqs, batch_size, progress):
        input_ids, mask = pad_right([seqs[i] for i in batch], tokenizer.pad_token_id)
        # Logits only from the position before the batch's earliest reply token: the prompt's positions predict
        # nothing we read, and the vocabulary projection there is a fifth of SmolLM2's forward per token (as PPO's
        # ``forward`` keeps only the response's logits).
        first = min(starts[i] for i in batch) - 1  # position p's logits sit at column p - first
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                           logits_to_keep=input_ids.shape[1] - first).logits
            # Row by row, reply positions only: a batch's float log-softmax over a 49k vocabulary is GBs (SmolLM2:
            # 6 GB at 128 x 250).
            for row, i in enumerate(batch):
                targets = input_ids[row, starts[i] : len(seqs[i]), None].to(model.device)
                scores = logits[row, starts[i] - 1 - first : len(seqs[i]) - 1 - first].float()
                out[i] = torch.log_softmax(scores, -1).gather(-1, targets)[..., 0].tolist()
    return out


def per_token_kl(policy_logprobs: list[list[float]], ref_logprobs: list[list[float]]) -> float:
    """Mean over tokens of log pi(y_t) - log pi_ref(y_t) on samples from pi: the k1 KL estimate per token."""
    diffs = [a - b for pa, pr in zip(policy_logprobs, ref_logprobs) for a, b in zip(pa, pr)]
    return sum(diffs) / len(diffs) if diffs else 0.0


def heldout_judged_pairs(rankings: list[dict], judge) -> list[tuple[list[dict], str, str]]:
    """(prompt, judge-preferred, judge-dispreferred) for every pair of distinct held-out responses the judge
    separates (the order a reward model's accuracy is measured against)."""
    pairs = []
    for r in rankings:
        score = {response: judge.judge(r, response).score for response in r["responses"]}  # each scored once
        unique = list(score)
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                ga, gb = score[a], score[b]
                if ga != gb:
                    pairs.append((r["prompt"], a, b) if ga > gb else (r["prompt"], b, a))
    return pairs
