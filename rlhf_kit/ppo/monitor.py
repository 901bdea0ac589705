"""Over-optimisation caught while PPO runs: a fixed probe set answered every few updates and scored by the judge.

PPO maximises the reward model's score, a proxy; past some KL the proxy keeps rising while the quality it stands for
falls (Gao et al. 2023, "Scaling laws for reward model overoptimization"; Stiennon et al. 2020, Fig. 5). Training
reward and KL -- all that TRL, OpenRLHF or verl log -- cannot show it. So every ``probe_steps`` updates (and before
the first and after the last) the policy answers the same held-out prompts with the same seeds, and each answer gets
the judge's score (the evaluation stage's judge, which the reward model never saw) and the reward model's; with
length and distinct-n (Li et al. 2016) they go into the log history as ``probe/*`` metrics:

- ``probe/judge_score``, ``probe/rm_score``: mean judge and RM score of the probe answers;
- ``probe/length``: mean answer length in tokens; ``probe/distinct_1``, ``probe/distinct_2``: distinct word 1- and
  2-grams over all answers / all of them (falls when the policy repeats itself);
- ``probe/overoptimised``: 1.0 when the judge has fallen ``probe_warn_drop`` below its best probe while the RM
  score has risen above its value there (a warning line says so).

Common random numbers (fixed prompts and seeds) make successive probes differ by the policy only, and the probe
draws from its own generators, so a run with a monitor trains exactly as one without. ``select_checkpoint: judge``
(which probes every checkpointed update too) then makes the stage's output the checkpoint (or the final policy)
with the best probe judge score: the model selection on held-out data that supervised training has and RLHF
toolkits lack. ``probe_patience: N`` (with ``select_checkpoint: judge``) goes one step further and stops PPO once N
probes in a row are flagged over-optimised: the updates after that only buy reward-model score the judge does not
confirm, and the policy kept is an earlier one anyway (early stopping, as transformers' ``EarlyStoppingCallback``
with ``load_best_model_at_end``, but on Gao et al.'s signal: judge down *and* proxy up, not a noisy judge alone).
Up to the stop, the run is the one without it, update for update.
"""

from __future__ import annotations

import torch

from rlhf_kit.core.errors import UserError

SELECT = ("last", "judge")
PROBE_METRICS = ("probe/judge_score", "probe/rm_score", "probe/length", "probe/distinct_1", "probe/distinct_2",
                 "probe/overoptimised")


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of the texts; 1.0 with none."""
    grams = [tuple(words[i: i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def overoptimised(probes: list[dict], drop: float) -> dict | None:
    """The earlier probe with the best judge score when the last probe's judge score is more than ``drop`` below it
    and its RM score above it (the reward model and the judge part ways); None otherwise."""
    if len(probes) < 2:
        return None
    *earlier, now = probes
    best = max(earlier, key=lambda p: p["probe/judge_score"])  # the first of equal bests
    if (now["probe/judge_score"] < best["probe/judge_score"] - drop
            and now["probe/rm_score"] > best["probe/rm_score"]):
        return best
    return None


def best_update(log_history: list[dict], updates: set[int]) -> int | None:
    """Of ``updates``, the one whose probe scored best with the judge (the earliest of equals: no evidence that
    more optimisation paid); None when none of them was probed."""
    probed = [(r["probe/judge_score"], -r["step"]) for r in log_history
              if "probe/judge_score" in r and r["step"] in updates]
    return -max(probed)[1] if probed else None


def probes(log_history: list[dict]) -> list[dict]:
    """The probe records of a log history, in update order."""
    return [r for r in log_history if "probe/judge_score" in r]


def stop_due(log_history: list[dict], patience: int) -> bool:
    """Whether the last ``patience`` probes of a log history were all flagged over-optimised (never with 0)."""
    flags = [r.get("probe/overoptimised", 0.0) for r in probes(log_history)][-patience:]
    return patience > 0 and len(flags) == patience and all(f == 1.0 for f in flags)


class ProbeMonitor:
    """Probes the policy during PPO (see the module docstring).

    ``rows``: the probe prompt rows, as the judge reads them; ``prompt_ids``: their chat-templated token ids;
    ``judge``: a :class:`rlhf_kit.worlds.Judge`; ``every``: updates between probes; ``warn_drop``: the judge
    score fall (absolute) that, with a rising RM score, counts as over-optimisation; ``select``: ``last`` or
    ``judge`` (which policy the stage keeps); ``seed``: the run's seed, from which each prompt's draw is seeded;
    ``patience``: flagged probes in a row that stop PPO (0: never stop early).
    """

    def __init__(self, rows: list[dict], prompt_ids: list[list[int]], judge, every: int, warn_drop: float = 0.05,
                 select: str = "last", seed: int = 0, patience: int = 0):
        if select not in SELECT:
            raise UserError(f"select_checkpoint: {select!r} is not one of {', '.join(SELECT)}")
        self.rows, self.prompt_ids, self.judge, self.every = rows, prompt_ids, judge, every
        self.warn_drop, self.select, self.patience = warn_drop, select, patience
        # Seeds of their own (far from the rollouts' seed * 1_000_003 + i): the same draws at every probe.
        self.seeds = [seed * 1_000_003 + 700_000_000 + i for i in range(len(rows))]

    def due(self, state, checkpoint: bool = False) -> bool:
        """Whether the update just finished is probed: every ``every`` updates, the last, and with
        ``select_checkpoint: judge`` every update that is checkpointed (``checkpoint``), which can then be chosen."""
        return (state.global_step % self.every == 0 or state.global_step == state.max_steps
                or (checkpoint and self.select == "judge"))

    @torch.no_grad()
    def probe(self, trainer) -> dict[str, float]:
        """The policy's answers to the probe prompts, scored: the ``probe/*`` metrics of this update (every process
        computes the same figures: same prompts, same seeds, same weights)."""
        from rlhf_kit.eval.evaluation import score_with_reward_model
        from rlhf_kit.sampling.generation import sample_ids

        args, tok = trainer.args, trainer.processing_class
        with trainer.unwrapped_for_sampling() as model:
            sampled = sample_ids(model.policy, tok, self.prompt_ids, 1, args.temperature, args.response_length,
                                 args.local_rollout_forward_batch_size, end_token_id=trainer.stop_token_id,
                                 seeds=self.seeds)
            model.policy.train(trainer.model.training)
        tokens = [s for (s,) in sampled]
        texts = [tok.decode(t, skip_special_tokens=True).strip() for t in tokens]
        judged = [self.judge.judge(row, text).score for row, text in zip(self.rows, texts)]
        rm = score_with_reward_model(trainer.reward_model, tok, [r["prompt"] for r in self.rows], texts)
        n = len(texts)
        metrics = {"probe/judge_score": sum(judged) / n, "probe/rm_score": sum(rm) / n,
                   "probe/length": sum(map(len, tokens)) / n,
                   "probe/distinct_1": distinct_n(texts, 1), "probe/distinct_2": distinct_n(texts, 2)}
        history = probes(trainer.state.log_history) + [metrics]
        best = overoptimised(history, self.warn_drop)
        metrics["probe/overoptimised"] = float(best is not None)
        if best is not None:
            trainer.accelerator.print(
                f"[ppo] warning: over-optimisation at update {trainer.state.global_step}: the reward model's score "
                f"on the probe prompts rose {best['probe/rm_score']:.3f} -> {metrics['probe/rm_score']:.3f} since "
                f"update {best['step']} while the judge's fell {best['probe/judge_score']:.3f} -> "
                f"{metrics['probe/judge_score']:.3f} (Gao et al. 2023)"
                + ("; select_checkpoint: judge keeps the best-judged checkpoint" if self.select == "judge" else
                   "; consider a larger kl_coef, fewer episodes, or select_checkpoint: judge"))
        return metrics

    def stop_due(self, log_history: list[dict]) -> bool:
        """Whether PPO stops here: ``patience`` probes in a row flagged over-optimised (:func:`stop_due`)."""
        return stop_due(log_history, self.patience)


def build_monitor(script_args, training_args, tokenizer, train_dataset):
    """The probe monitor a PPO config asks for (``probe_dataset_path`` and ``judge``), checked; None without one.
    Refuses a probe set that shares a prompt with PPO's, and ``select_checkpoint: judge`` without probes or without
    checkpoints to choose from."""
    a = script_args
    if a.select_checkpoint not in SELECT:
        raise UserError(f"select_checkpoint: {a.select_checkpoint!r} is not one of {', '.join(SELECT)}")
    if not a.probe_dataset_path:
        if a.select_checkpoint == "judge":
            raise UserError("select_checkpoint: judge needs probes to judge: set probe_dataset_path (held-out prompt "
                            "rows) and judge, or select_checkpoint: last")
        return None
    if not a.judge:
        raise UserError(f"probe_dataset_path {a.probe_dataset_path} needs a judge to score the probes: set judge "
                        "(e.g. gold for the demo world, ifeval for the IFEval world), or unset probe_dataset_path")
    if a.probe_steps <= 0:
        raise UserError(f"probe_steps={a.probe_steps} must be a positive number of updates")
    if a.probe_patience < 0:
        raise UserError(f"probe_patience={a.probe_patience} must be a number of probes (0: never stop early)")
    if a.probe_patience and a.select_checkpoint != "judge":
        raise UserError(f"probe_patience={a.probe_patience} stops PPO once it over-optimises, and select_checkpoint: "
                        f"{a.select_checkpoint} would keep that over-optimised policy; set select_checkpoint: judge "
                        "or probe_patience: 0")
    if a.select_checkpoint == "judge":
        strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
        if strategy != "steps" or not training_args.save_steps:
            raise UserError(f"select_checkpoint: judge chooses among checkpoints, and save_strategy is {strategy}; "
                            "set save_strategy: steps and save_steps, or select_checkpoint: last")
    from pathlib import Path

    from rlhf_kit.data.datasets import build_prompt_dataset, load_rows
    from rlhf_kit.worlds import load_judge

    if a.probe_dataset_path.endswith(".jsonl") and not Path(a.probe_dataset_path).is_file():
        raise UserError(f"probe_dataset_path {a.probe_dataset_path} not found: the world's data stage (base in the "
                        "demo, world in the IFEval track) writes probe.jsonl; rerun it with --force true if it "
                        "predates probes, or unset probe_dataset_path")
    judge = load_judge(a.judge)
    rows = load_rows(a.probe_dataset_path)
    probe = build_prompt_dataset(rows, tokenizer, a.max_prompt_length, a.probe_dataset_path, "probe",
                                 keep_columns=tuple(rows.column_names), max_rows=a.probe_rows)
    if len(probe) == 0:
        raise UserError(f"probe_dataset_path {a.probe_dataset_path} has no usable prompt; pass held-out prompt rows")
    kept = [{k: v for k, v in r.items() if k != "input_ids"} for r in probe.to_list()]
    judge.check_rows(kept, a.probe_dataset_path)
    trained = {tuple(ids) for ids in train_dataset["input_ids"]}
    shared = sum(tuple(ids) in trained for ids in probe["input_ids"])
    if shared:
        raise UserError(f"{shared} of {len(probe)} probe prompt(s) in {a.probe_dataset_path} are also PPO prompts "
                        f"({a.dataset_path or 'dataset_cards'}): probes must be held out, e.g. the world's probe.jsonl")
    return ProbeMonitor(kept, probe["input_ids"], judge, a.probe_steps, a.probe_warn_drop, a.select_checkpoint,
                        training_args.seed, a.probe_patience)
