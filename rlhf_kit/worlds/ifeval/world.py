"""An IFEval task world: shipped base tasks combined with IFEval's verifiable instructions, judged by IFEval's own
checkers (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models").

The checker code is Google's, as the ``if-verifiable`` package ships it (``if_verifiable.ifeval``): each instruction
class writes its own text with ``build_description(**kwargs)`` and verifies a response with ``check_following``;
strict and loose checks are the package's ``evaluate_instructions``. rlhf_kit adds only what IFEval's data would
otherwise come from the Hub for:

- **base tasks**: ``tasks.txt`` (shipped with the package), >= 400 requests (write, explain, advise,
  summarise, list, letter, poem, ...), split into training and held-out tasks;
- **prompts**: a base task plus one or two non-conflicting instructions (IFEval's own conflict table), their text
  written by the checker from seeded arguments; the arguments are kept in the row's ``meta`` so the judge rebuilds
  exactly that checker;
- **held-out instruction types**: types that no training prompt carries (never seen by SFT, comparisons or PPO),
  evaluated on held-out tasks to measure generalisation.

Rows are the canonical ``prompts`` rows of :mod:`rlhf_kit.data.rows` (``prompt`` + ``meta``), so the existing stages
(compare, reward, ppo, eval) read them; the judge is registered as ``ifeval`` and the labeler as ``ifeval``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from rlhf_kit.core.errors import UserError
from rlhf_kit.worlds import Judgement
from rlhf_kit.worlds.ifeval.task_check import REASONS, check_row

TASKS_FILE = Path(__file__).resolve().parent / "tasks.txt"
INSTALL = "pip install -e '.[real]' (if-verifiable==0.1.2)"

# Instruction types a 135M instruct model can sometimes follow within ~100 new tokens (measured: SmolLM2-135M-Instruct
# follows one IFEval instruction on ~29% of prompts). Each held-out type has a trained sibling (capitals ->
# lowercase, end phrase -> postscript, keywords -> forbidden words, title -> quotation) so generalisation is
# measurable.
TRAIN_TYPES = ("punctuation:no_comma", "change_case:english_capital", "detectable_format:title",
               "startend:end_checker", "keywords:existence", "length_constraints:number_words",
               "detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections")
HELDOUT_TYPES = ("change_case:english_lowercase", "detectable_content:postscript", "keywords:forbidden_words",
                 "startend:quotation")
MIN_HELDOUT_TYPES = 4

# Arguments within reach of ~100 new tokens (the package draws up to 500 words, 7 bullets); drawn from the world's
# seeded stream and handed to build_description, which still writes the text. Other types take the package's draw.
ARGUMENTS = {
    "length_constraints:number_words": lambda rng: {"num_words": rng.choice([40, 50, 60, 80]),
                                                    "relation": "less than"},
    "detectable_format:number_bullet_lists": lambda rng: {"num_bullets": rng.randint(2, 4)},
    "detectable_format:number_highlighted_sections": lambda rng: {"num_highlights": rng.randint(1, 3)},
    "detectable_format:multiple_sections": lambda rng: {"section_spliter": "Section",
                                                        "num_sections": rng.randint(2, 3)},
    "length_constraints:number_paragraphs": lambda rng: {"num_paragraphs": rng.randint(2, 3)},
}
PROBE = "Hello there, my friend. This is a short reply. It has three sentences.\nP.S. See you soon."


def _registry():
    """IFEval's instruction classes and conflict table (if-verifiable); a missing package is one line."""
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, INSTRUCTION_DICT
    except ImportError as err:
        # if-verifiable declares Python >= 3.11: below that, pip would not install it, so name the Python instead.
        fix = (f"it needs Python >= 3.11 (this is {sys.version.split()[0]}): run the real-model track with 3.11 or "
               f"later") if sys.version_info < (3, 11) else f"install it with {INSTALL}"
        raise UserError(f"the IFEval world needs the if-verifiable package ({err}); {fix}")
    return INSTRUCTION_DICT, INSTRUCTION_CONFLICTS


def conflicts(a: str, b: str) -> bool:
    """Whether two instruction types cannot be asked together (IFEval's table, read both ways)."""
    _, table = _registry()
    return a == b or b in table.get(a, ()) or a in table.get(b, ())


def load_tasks(path: str | Path = TASKS_FILE) -> list[str]:
    """The base tasks, one per line (``#`` lines are comments), duplicates refused."""
    tasks = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    if len(set(tasks)) != len(tasks):
        raise UserError(f"{path} repeats a base task; each line must be a distinct request")
    return tasks


def split_tasks(tasks: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training tasks, held-out tasks): a seeded shuffle, split by base task so no held-out request is trained on."""
    shuffled = list(tasks)
    random.Random(seed).shuffle(shuffled)
    n_heldout = int(round(len(shuffled) * heldout_fraction))
    if not 0 < n_heldout < len(shuffled):
        raise UserError(f"heldout_fraction={heldout_fraction} leaves no training or no held-out task; use e.g. 0.3")
    return shuffled[n_heldout:], shuffled[:n_heldout]


def check_types(train_types, heldout_types) -> None:
    """Refuse unknown types, a held-out type that is also trained, fewer than four held-out types, and any type
    whose checker cannot run here (NLTK's punkt data cannot be downloaded) -- by name, before anything is built."""
    registry, _ = _registry()
    unknown = sorted((set(train_types) | set(heldout_types)) - set(registry))
    if unknown:
        raise UserError(f"unknown IFEval instruction type(s) {', '.join(unknown)}; use types of "
                        "if_verifiable.ifeval.instructions_registry, e.g. punctuation:no_comma")
    shared = sorted(set(train_types) & set(heldout_types))
    if shared:
        raise UserError(f"instruction type(s) {', '.join(shared)} are both trained and held out; a held-out type "
                        "must never appear in training (remove it from train_types or heldout_types)")
    if len(set(heldout_types)) < MIN_HELDOUT_TYPES:
        raise UserError(f"{len(set(heldout_types))} held-out instruction type(s) given; hold out at least "
                        f"{MIN_HELDOUT_TYPES} to measure generalisation")
    if not train_types:
        raise UserError("no training instruction types; set train_types")
    unavailable = []
    for type_id in list(train_types) + list(heldout_types):
        checker = registry[type_id](type_id)
        _describe(checker, type_id, random.Random(0), "Write a poem.")
        try:
            checker.check_following(PROBE)
        except LookupError:  # nltk.data.load: the resource is not installed and cannot be fetched offline
            unavailable.append(type_id)
    if unavailable:
        raise UserError(f"instruction type(s) {', '.join(unavailable)} need NLTK data (punkt) that is not installed "
                        "and cannot be downloaded here; remove them from the world's types")


def _describe(checker, type_id: str, rng: random.Random, task: str) -> str:
    """``checker.build_description`` with arguments from ``rng``; the package's own random draws are seeded from it
    too (it uses the global ``random`` module, restored afterwards)."""
    kwargs = ARGUMENTS.get(type_id, lambda _: {})(rng)
    if type_id == "combination:repeat_prompt":
        kwargs = {"prompt_to_repeat": task}
    state = random.getstate()
    random.seed(rng.getrandbits(64))
    try:
        return checker.build_description(**kwargs)
    finally:
        random.setstate(state)


def build_instruction(type_id: str, rng: random.Random, task: str) -> dict:
    """One instruction: its type, the arguments its checker was built with, and the text the checker wrote."""
    registry, _ = _registry()
    checker = registry[type_id](type_id)
    text = _describe(checker, type_id, rng, task)
    args = {k: v for k, v in (checker.get_instruction_args() or {}).items() if v is not None}
    return {"id": type_id, "kwargs": args, "text": text}


def build_prompt(task: str, types: list[str], rng: random.Random) -> dict:
    """A canonical prompt row: the task followed by each instruction's text; ``meta`` keeps what the judge needs."""
    instructions = [build_instruction(t, rng, task) for t in types]
    content = task
    for i in instructions:  # after a multi-line instruction (a bullet example), the next one starts a new line
        content += ("\n" if "\n" in content else " ") + i["text"]
    meta = {"task": task, "instruction_id_list": [i["id"] for i in instructions],
            "kwargs": [i["kwargs"] for i in instructions]}
    return {"prompt": [{"role": "user", "content": content}], "meta": json.dumps(meta)}


def draw_types(types: list[str], rng: random.Random, max_instructions: int) -> list[str]:
    """One or up to ``max_instructions`` distinct, mutually compatible instruction types."""
    n = rng.randint(1, max_instructions)
    chosen: list[str] = []
    for t in rng.sample(list(types), len(types)):
        if len(chosen) == n:
            break
        if not any(conflicts(t, c) for c in chosen):
            chosen.append(t)
    return chosen


def build_split(tasks: list[str], types, per_task: int, max_instructions: int, rng: random.Random) -> list[dict]:
    """``per_task`` prompts for each task (distinct instruction sets, so no prompt repeats)."""
    rows, seen = [], set()
    for task in tasks:
        for _ in range(per_task):
            for _attempt in range(10):
                picked = draw_types(types, rng, max_instructions)
                if (task, tuple(sorted(picked))) not in seen:
                    seen.add((task, tuple(sorted(picked))))
                    rows.append(build_prompt(task, picked, rng))
                    break
    return rows


def build_world(train_types=TRAIN_TYPES, heldout_types=HELDOUT_TYPES, seed: int = 0, heldout_fraction: float = 0.3,
                train_prompts_per_task: int = 4, eval_prompts_per_task: int = 3, heldout_type_prompts_per_task: int = 2,
                max_instructions: int = 2, tasks_path: str | Path = TASKS_FILE,
                probe_prompts: int = 64) -> dict[str, list[dict]]:
    """The world's prompt rows: ``prompts`` (training tasks x training types; SFT demonstrations, comparisons and
    PPO), ``eval`` (held-out tasks x training types), ``eval_heldout_types`` (held-out tasks x one held-out type
    each) and ``probe`` (PPO's over-optimisation monitor: ``probe_prompts`` training tasks with instructions drawn
    afresh, none a PPO prompt, so the held-out tasks stay the test set's alone)."""
    check_types(train_types, heldout_types)
    train_tasks, heldout_tasks = split_tasks(load_tasks(tasks_path), heldout_fraction, seed)
    rng = random.Random(seed)
    world = {
        "prompts": build_split(train_tasks, train_types, train_prompts_per_task, max_instructions, rng),
        "eval": build_split(heldout_tasks, train_types, eval_prompts_per_task, max_instructions, rng),
        "eval_heldout_types": build_split(heldout_tasks, heldout_types, heldout_type_prompts_per_task, 1, rng),
    }
    # Drawn last, from the same generator: the splits above are the same with or without probes.
    trained = {r["prompt"][0]["content"] for r in world["prompts"]}
    probe = build_split(train_tasks[:probe_prompts], train_types, 1, max_instructions, rng)
    world["probe"] = [r for r in probe if r["prompt"][0]["content"] not in trained]
    return world


def write_world(output_dir: str | Path, world: dict[str, list[dict]]) -> dict:
    """Each split as ``<output_dir>/<split>.jsonl``; returns the row counts."""
    from rlhf_kit.data.rows import write_jsonl

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in world.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    return {name: len(rows) for name, rows in world.items()}


def instruction_types(rows: list[dict]) -> set[str]:
    """The instruction types some row of ``rows`` carries."""
    return {t for r in rows for t in json.loads(r["meta"])["instruction_id_list"]}


# ------------------------------------------------------------------------------------------------- judge, labeler

def check_instructions(row: dict, response: str) -> list:
    """IFEval's strict and loose verdict on each instruction of ``row`` (if-verifiable's ``InstructionResult``s;
    none for an empty response, which follows nothing)."""
    from if_verifiable.common import evaluate_instructions

    registry, _ = _registry()
    meta = json.loads(row["meta"])
    prompt = [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]
    results, _ = evaluate_instructions(response, meta["instruction_id_list"], meta["kwargs"], prompt, registry)
    return results


class IFEvalJudge:
    """:class:`rlhf_kit.worlds.Judge` of the whole answer: IFEval's checkers for the instructions and
    :mod:`rlhf_kit.worlds.ifeval.task_check` for the base task. The score is the fraction of the prompt's instructions
    followed (strict) when the response does its task, else 0 (an answer that drops the request helps no one, whatever
    it leaves out); the rules are IFEval's four accuracies for this prompt, ``does_task`` and ``follows_and_task``
    (every instruction followed, strict, and the task done: the track's headline)."""

    rule_names = ("instruction_strict", "instruction_loose", "prompt_strict", "prompt_loose", "does_task",
                  "follows_and_task")

    def check_rows(self, rows: list[dict], source: str) -> None:
        if not rows or "meta" not in rows[0] or "instruction_id_list" not in json.loads(rows[0]["meta"]):
            raise UserError(f"{source} lacks the IFEval `meta` (instruction_id_list, kwargs) the ifeval judge reads; "
                            "use the IFEval world's files (recipes/configs/smollm2-135m-ifeval/world.yaml)")
        for i, row in enumerate(rows):
            if not json.loads(row["meta"]).get("task"):
                raise UserError(f"{source}: row {i + 1} has no base task (`task` in its `meta`), which the ifeval "
                                "judge's task check reads; rebuild the prompts with the IFEval world (python "
                                "recipes/world.py --config recipes/configs/smollm2-135m-ifeval/world.yaml)")
        _registry()

    def report(self, rows: list[dict], responses: list[str]) -> dict:
        """IFEval's accuracies, the task check's and their conjunction with 95% intervals, the degenerate shares and
        the per-type table (:func:`score_responses`)."""
        return score_responses(rows, responses)

    def judge(self, row: dict, response: str) -> Judgement:
        n = len(json.loads(row["meta"])["instruction_id_list"])
        results = check_instructions(row, response)
        strict = sum(r.strict_pass for r in results) / n
        loose = sum(r.loose_pass for r in results) / n
        task = float(check_row(row, response).does_task)
        return Judgement(strict * task, {"instruction_strict": strict, "instruction_loose": loose,
                                         "prompt_strict": float(strict == 1.0), "prompt_loose": float(loose == 1.0),
                                         "does_task": task, "follows_and_task": float(strict == 1.0) * task})


class IFEvalLabeler:
    """:class:`rlhf_kit.worlds.Labeler` of the whole answer, as InstructGPT's labelers rated it (Ouyang et al.
    2022, Sec. 3.4: overall quality, following the instructions one attribute of it), plus labeler noise.

    How the two combine: the task is a gate. Every response that does its task
    (:mod:`rlhf_kit.worlds.ifeval.task_check`) ranks above every one that does not, and among those that do, more
    instructions followed (strict) ranks higher: level ``0.5 + 0.5 * fraction followed``. Responses that do not do the
    task all sit at level 0 and tie, so no pair teaches the reward model which way of dropping the task pays more (the
    instructions-only labeler, ``ifeval-constraints``, is what taught PPO to answer with the end phrase alone). Each
    distinct level is shifted by Gaussian noise of std ``noise`` (close levels sometimes swap, as labelers disagree);
    responses at one level share a rank, and a tie makes no comparison pair (InstructGPT's labelers could mark ties)."""

    whole_answer = True

    def __init__(self, noise: float = 0.1, seed: int = 0):
        self.judge_, self.noise, self.rng = IFEvalJudge(), noise, random.Random(seed)

    def check_rows(self, rows: list[dict], source: str) -> None:
        self.judge_.check_rows(rows, source)

    def level(self, row: dict, response: str) -> float:
        """The response's level before noise (see the class docstring)."""
        rules = self.judge_.judge(row, response).rules
        if not self.whole_answer:
            return rules["instruction_strict"]
        return 0.5 + 0.5 * rules["instruction_strict"] if rules["does_task"] else 0.0

    def rank(self, row: dict, responses: list[str]) -> dict:
        scores = [self.level(row, r) for r in responses]
        noisy = {s: s + self.rng.gauss(0.0, self.noise) for s in sorted(set(scores))}
        order = sorted(noisy, key=lambda s: -noisy[s])
        return {"ranks": [order.index(s) for s in scores], "scores": scores}


class IFEvalConstraintsLabeler(IFEvalLabeler):
    """The instructions-only labeler (ranks by the fraction of instructions followed, the task unseen): the real
    track's labeler before the task check, kept to reproduce how PPO games IFEval's checkers."""

    whole_answer = False


# ------------------------------------------------------------------------------------------------------- report

def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion (stays inside [0, 1] near 0 and 1, unlike the normal one)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def score_responses(rows: list[dict], responses: list[str]) -> dict:
    """One policy's responses judged whole: IFEval's four accuracies (Zhou et al. 2023, Sec. 3): prompt-level
    (every instruction followed) and instruction-level (pooled over instructions), strict and loose; ``does_task``
    (:mod:`rlhf_kit.worlds.ifeval.task_check`) and ``follows_and_task`` (prompt-level strict and the task done, the
    track's headline), each with a 95% Wilson interval; ``degenerate``: the shares of responses off the task's topic,
    too short for it, repeating the instruction back, and any of these; and per instruction type, strict, loose and
    strict-and-task. (Empty and cut-off shares are the eval stage's, for every judge.)"""
    keys = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "does_task",
            "follows_and_task")
    counts = {k: [0, 0] for k in keys}
    degenerate = {k: 0 for k in (*REASONS, "any")}
    per_type: dict[str, list[int]] = {}
    for row, response in zip(rows, responses):
        types = json.loads(row["meta"])["instruction_id_list"]
        verdicts = {r.instruction_id: r for r in check_instructions(row, response)}
        strict = [bool(verdicts.get(t) and verdicts[t].strict_pass) for t in types]
        loose = [bool(verdicts.get(t) and verdicts[t].loose_pass) for t in types]
        task = check_row(row, response)
        for key, hits in (("strict", strict), ("loose", loose)):
            counts[f"prompt_{key}"][0] += all(hits)
            counts[f"prompt_{key}"][1] += 1
            counts[f"instruction_{key}"][0] += sum(hits)
            counts[f"instruction_{key}"][1] += len(hits)
        for key, hit in (("does_task", task.does_task), ("follows_and_task", task.does_task and all(strict))):
            counts[key][0] += hit
            counts[key][1] += 1
        for reason in task.reasons:
            degenerate[reason] += 1
        degenerate["any"] += not task.does_task
        for t, s, lo in zip(types, strict, loose):
            n = per_type.setdefault(t, [0, 0, 0, 0])
            n[0], n[1], n[2], n[3] = n[0] + s, n[1] + lo, n[2] + (s and task.does_task), n[3] + 1
    report = {k: {"accuracy": hit / n if n else float("nan"), "ci95": wilson_interval(hit, n), "n": n}
              for k, (hit, n) in counts.items()}
    report["degenerate"] = {k: v / len(rows) if rows else float("nan") for k, v in degenerate.items()}
    report["per_type"] = {t: {"strict": s / n, "loose": lo / n, "strict_and_task": st / n, "n": n}
                          for t, (s, lo, st, n) in sorted(per_type.items())}
    return report
