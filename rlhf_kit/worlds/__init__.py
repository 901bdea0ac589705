"""Who ranks comparisons and who judges policies: the labeler and judge interfaces, and how a config names one.

InstructGPT's data comes from two kinds of people (Ouyang et al. 2022, Sec. 3.4-3.5): labelers who rank K
responses to a prompt (the comparison stage), and held-out labelers whose preferences judge the final policies
(the evaluation stage). rlhf_kit keeps both behind small interfaces so that a simulated labeler, a benchmark's own
checker, or people using a labeling app plug in the same way:

- a :class:`Labeler` ranks the K responses to a prompt row (``compare`` stage, config key ``labeler:``);
- a :class:`Judge` scores one response to a prompt row in [0, 1], with a per-rule breakdown (``eval`` stage,
  config key ``judge:``).

A config names one by its registered name (``simulated``, ``gold``; ``ifeval`` for both; ``ifeval-constraints``,
the labeler that sees only the instructions) or by ``package.module:Class``. Implementations are imported only when
named, so a stage that uses none (e.g. a reward model trained on hh-rlhf) never imports the demo world.

The implementations live in this package's worlds: :mod:`rlhf_kit.worlds.demo` and :mod:`rlhf_kit.worlds.ifeval`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

from rlhf_kit.core.errors import UserError


@dataclass
class Judgement:
    """A judge's verdict on one response: ``score`` in [0, 1] and each rule's score (the score's breakdown)."""

    score: float
    rules: dict[str, float] = field(default_factory=dict)


class Labeler(Protocol):
    """Ranks K responses to one prompt row: returns ``ranks`` (0 = best, ties share a rank) and, when the labeler
    grades as well as orders, ``scores`` (higher is better). Rows carry ``prompt`` and whatever the labeler reads
    (e.g. the demo world's ``meta``); :meth:`check_rows` refuses rows it cannot label before any sampling."""

    def check_rows(self, rows: list[dict], source: str) -> None: ...

    def rank(self, row: dict, responses: list[str]) -> dict: ...


class Judge(Protocol):
    """Scores one response to one prompt row; ``rule_names`` lists the breakdown's keys in report order."""

    rule_names: tuple[str, ...]

    def check_rows(self, rows: list[dict], source: str) -> None: ...

    def judge(self, row: dict, response: str) -> Judgement: ...


LABELERS = {"simulated": "rlhf_kit.worlds.demo.simulated:SimulatedLabeler",
            "ifeval": "rlhf_kit.worlds.ifeval.world:IFEvalLabeler",
            "ifeval-constraints": "rlhf_kit.worlds.ifeval.world:IFEvalConstraintsLabeler"}
JUDGES = {"gold": "rlhf_kit.worlds.demo.gold:GoldJudge", "ifeval": "rlhf_kit.worlds.ifeval.world:IFEvalJudge"}


def _resolve(name: str, registry: dict[str, str], kind: str):
    target = registry.get(name, name)
    module_name, _, attr = target.partition(":")
    if not attr:
        raise UserError(f"unknown {kind} '{name}'; use one of {', '.join(sorted(registry))} or package.module:Class")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{kind} '{name}' could not be imported ({err}); check the module path and class name")


def load_labeler(name: str, **kwargs) -> Labeler:
    """The labeler a config names, built with ``kwargs`` (e.g. ``noise`` and ``seed`` for the simulated one)."""
    return _resolve(name, LABELERS, "labeler")(**kwargs)


def load_judge(name: str, **kwargs) -> Judge:
    """The judge a config names."""
    return _resolve(name, JUDGES, "judge")(**kwargs)


def judge_agreement(rankings: list[dict], judge: Judge) -> float:
    """Share of a labeler's pairs whose order the judge agrees with (pairs the judge ties are excluded).

    InstructGPT reports labeler agreement the same way: over pairs, ties left out (Ouyang et al. 2022, Sec. 5.1).
    """
    from rlhf_kit.data.rows import expand_pairs

    agree = total = 0
    for r in rankings:
        score = {response: judge.judge(r, response).score for response in set(r["responses"])}  # each judged once
        for p in expand_pairs(r):
            g_c, g_r = score[p["chosen"][0]["content"]], score[p["rejected"][0]["content"]]
            if g_c != g_r:
                total += 1
                agree += g_c > g_r
    return agree / total if total else float("nan")
