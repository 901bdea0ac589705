"""SFT demonstrations by rejection sampling: the base model's own samples that a judge says are right.

Llama 2 (Touvron et al. 2023, Sec. 3.2.3) fine-tunes on the best of K samples per prompt. With a verifiable judge
(IFEval's checkers) the best is a sample that follows every instruction of its prompt (score 1.0) and ended on its
own, with the end token: a sample cut off at ``max_new_tokens`` may "follow" an instruction such as *no commas* by
stopping early, and would teach the policy to ramble. A prompt without such a sample gives no demonstration.
"""

from __future__ import annotations


def select_demonstrations(rows: list[dict], responses: list[list[str]], finished: list[list[bool]], judge
                          ) -> tuple[list[dict], dict]:
    """SFT rows (``messages``: the prompt plus the first accepted sample; ``meta`` carried) and the counts."""
    demos, counts = [], {"prompts": len(rows), "samples": 0, "cut_off": 0, "followed": 0}
    for row, samples, ended in zip(rows, responses, finished):
        accepted = []
        for text, done in zip(samples, ended):
            counts["samples"] += 1
            counts["cut_off"] += not done
            if done and text.strip() and judge.judge(row, text).score == 1.0:
                accepted.append(text)
        counts["followed"] += len(accepted)
        if accepted:  # samples come in random order: the first accepted one is a uniform draw among them
            demo = {"messages": row["prompt"] + [{"role": "assistant", "content": accepted[0]}]}
            demos.append(demo | ({"meta": row["meta"]} if "meta" in row else {}))
    counts["demonstrations"] = len(demos)
    counts["acceptance_rate"] = len(demos) / max(1, len(rows))
    return demos, counts
