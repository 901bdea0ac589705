"""Does a response do its prompt's base task? The IFEval world's task check.

IFEval's checkers look only at an instruction's constraint (no commas, an end phrase, three bullets), so an answer
that drops the request and keeps the constraint passes them: the real track's PPO learned to answer "Write a short
story about a sleepy cat. Finish your response with this exact phrase ..." with the phrase alone. InstructGPT's
labelers rated the *whole* response, following the instruction being one attribute among several (Ouyang et al.
2022, Sec. 3.4 and Table 3); IFBench (Pyatkin et al. 2025) reports this gaming for RLVR on IFEval. This check is the
other attribute: a response does the task when

- **on topic**: it uses at least one of the task's topic words (its content words once the request's frame, such
  as "Write a short paragraph about the benefits of", is cut), matched on a shared stem so *diaries* counts for
  *diary* and *cycling* for *cycle*; words the instructions make the response write (an end
  phrase, keywords) do not count, since the instructions, not the task, put them there;
- **long enough for the task**: a floor of words by the kind of request (a poem, a list, a story or letter, an
  explanation; :data:`MIN_WORDS`), the end phrase and any instruction text repeated back not counted;
- **not the prompt repeated back**: runs of four words of the instruction text with two content words in them
  ("refrain from the use of commas", "This is point 1") make up less than a third of its words, and with those of
  the task ("tips for a person who wants to learn a new language") no more than half, the end phrase and keywords
  aside;
- **not talk about the answer**: fewer than half of its lines and sentences talk about the requested text instead
  of being it ("The first point is about ...", "The letter ... should be simple yet impactful"), promise it ("Sure,
  I'd be happy to write a blog post about ...") or are a template's placeholders ("[Title]", "[Date]").

Rule-based on purpose: the labeler ranks thousands of samples and the judge scores every probe, so the check must be
cheap and deterministic, and a user can read why an answer failed (:func:`check_task` returns the reasons). The
alternatives measured against the hand labels (``benchmarks/task_check.py``, ``tests/fixtures/task_labels/``) and
the choice are in docs/benchmarks.md (the task check against hand labels).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from rlhf_kit.core.errors import UserError

# The request's frame, not its topic: a task's topic is what is left once its leading "Write a short poem about" /
# "Give advice to someone who wants to" and trailing "in a few sentences" are cut (the shipped tasks' frames; a
# task in no known frame keeps all its words).
FRAME = re.compile(r"^(write (a|an) (short )?(poem|story|paragraph|blog post|thank-you note|letter|email|note|"
                   r"invitation|announcement|postcard|product description|advertisement)( about| to| for)?"
                   r"( the benefits of)?|"
                   r"(give advice to|explain the first steps for|list a few tips for) (someone|a person) who wants to|"
                   r"summari[sz]e the main benefits of|describe|explain( how| why| what)?)\b"
                   r"|\b(in a few sentences|in simple words|to a ten-year-old)\W*$")
# Words too common to show a topic ("a new city": city is the topic).
GENERIC = frozenset("make new old good small little big first last someone person thing things way ways day time "
                    "use get better lot".split())
STOPWORDS = frozenset("""
a an the and or but of to in on at for from by with without as is are was were be been being it its this that these
those there here i me my we our you your he she they them their his her him do does did can could should would will
shall may might must not no so than then too very just also more most some any all each every other into over under
up down out off again once only own same such both between through during before after above below while if because
until against few many much one two three four five let lets about who what which when where why how has
have had
""".split())
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")

# Fewest words (end phrase and repeated instruction text not counted) an answer to each kind of request needs,
# first match wins: a poem or a list can be a few short lines; a paragraph, story, letter, explanation cannot. A
# request of no kind named here needs one word (a floor is a claim about the kind of request; none is made).
MIN_WORDS = (
    (re.compile(r"^write (a|an) short poem|^list "), 8, "poem or list"),
    (re.compile(r"^write (a|an) (short )?(story|paragraph|blog post|letter|email|note|invitation|announcement|"
                r"postcard|thank-you|product description|advertisement)"), 15, "paragraph, story, letter, post or ad"),
    (re.compile(r"^(explain|describe|summari[sz]e|give advice) "), 10, "explanation, description or advice"),
)
DEFAULT_MIN_WORDS = 1
NGRAM = 4  # words of the instruction text repeated in a row that count as repeating it back
# An answer repeats the instruction back when copied runs make up at least a third of its words: a template prefix
# ("* This is point 1: A wooden chess set is ...") in an answer that goes on to do the task is not the answer.
COPIED_SHARE = 3
TASK_SAID_BACK_SHARE = 2  # with the task's runs: over half (a third would catch "Tips for ... a new language: ...")
# Instruction arguments whose text the instruction makes the response contain (IFEval's kwargs names).
REQUIRED_TEXT = ("end_phrase", "keywords", "postscript_marker", "first_word")
REASONS = ("off_task", "too_short", "instruction_repeated", "about_the_answer")
# A line that talks about the requested text instead of being it: "The first point is about the impact of a broken
# umbrella", "This is point 1, which is about ...", "The letter to the local newspaper should be simple yet
# impactful", "The blog post is about a broken umbrella" -- what the real track's PPO learned once the check asked for
# the topic (tests/fixtures/task_labels/README.md). "The first point is to feed the puppy well" is advice, not talk
# about it: the verb decides.
_KINDS = (r"letter|blog post|post|poem|story|email|e-mail|note|paragraph|postcard|advertisement|ad|description|"
          r"invitation|announcement|summary|list|answer|response")
_PARTS = r"point|tip|bullet|section|paragraph|line|stanza|verse|sentence|part"
_TALK = (r"is about|is the mention|is a mention|mentions|is point|highlights|represents|emphasi[sz]es|describes|"
         r"discusses|concludes|focuses on|refers to|is meant|"
         r"is to (?:highlight|emphasi[sz]e|discuss|describe|mention)")  # "the first tip should be to ..." is a tip
# "the letter should be simple yet impactful", "the story begins with a scene set in ..." narrate the text, not it
_KIND_TALK = _TALK + r"|should|will|would|could|is going to|begins|follows|revolves around"
ABOUT_THE_ANSWER = re.compile(
    rf"^(?:this is |the |my |our )?(?:(?:first|second|third|fourth|fifth|next|last|final) )?(?:highlighted )?"
    rf"(?:{_PARTS})(?: \d+)?\b.{{0,24}}?\b(?:{_TALK})\b"
    rf"|(?:^|, (?:and )?)(?:the|this|my|our) (?:{_KINDS}|plot)\b[^.\n]{{0,48}}?\b(?:{_KIND_TALK})\b"
    # a promise of the text in its place: "Sure, I'd be happy to write a blog post about ...", "I'll include ..."
    rf"|^(?:(?:sure|certainly|of course|okay|ok)\W+)?(?:i'd|i would|i'll|i will|i'm|i am|let me)\b.{{0,30}}?"
    rf"\b(?:write|provide|create|include|draft|compose)\b")
# Placeholders: a template's slots ("[Title]"; a sentence with two, "including [benefit1] and [benefit2]", is a
# template's sentence) and IFEval's own example of a highlight said back ("*highlighted section*": two words, under
# the repeated-instruction test's four-word runs). A line that is a slot and a word or two ("Dear [Teacher's Name],",
# "*Highlighted section: Tips*") frames a real answer; a slot alone does not.
SLOT = re.compile(r"\[[^\]\n]{1,40}\]")
EXAMPLE_HIGHLIGHT = re.compile(r"\bhighlighted section\b")
LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022#>]+|\d+[.)])\s*|\*+")
# An answer is talk about the answer when such lines are at least half of its lines and sentences: a real letter
# signed "[Your Name]", or a poem that ends "This poem is about the passage of time", is still the letter or poem.
ABOUT_SHARE = 2


@dataclass(frozen=True)
class TaskVerdict:
    """Whether a response does its task, and the failed conditions (a subset of :data:`REASONS`)."""

    does_task: bool
    reasons: tuple[str, ...]
    words: int


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return WORD.findall(text.lower())


def stem(word: str) -> str:
    """A light English stem: plural and possessive endings off (*diaries* -> *diary*, *bees* -> *bee*)."""
    word = word.removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def same_stem(a: str, b: str) -> bool:
    """Two stems of one word: equal, or sharing a prefix of at least four letters that covers all but two letters of
    the shorter (*cycling* / *cycle*, *travelling* / *travel*; it also pairs *start* / *star*, a rare false match
    the check accepts for catching inflections without a dictionary)."""
    return a == b or len(os.path.commonprefix([a, b])) >= max(4, min(len(a), len(b)) - 2)


def topic_words(task: str, exclude: set[str] = frozenset()) -> set[str]:
    """The task's topic words, stemmed: the content words left once the request's :data:`FRAME` is cut (all its
    content words when nothing is left), less ``exclude`` (words the instructions make the response write)."""
    def content(text: str) -> set[str]:
        return {stem(w) for w in words(text) if w not in STOPWORDS and not w.isdigit()} - {stem(w) for w in exclude}

    return content(FRAME.sub(" ", task.strip().lower())) - GENERIC or content(task)


def min_words(task: str) -> tuple[int, str]:
    """The word floor for ``task`` and the kind of request it is."""
    lowered = task.strip().lower()
    for pattern, n, kind in MIN_WORDS:
        if pattern.search(lowered):
            return n, kind
    return DEFAULT_MIN_WORDS, "request"


def required_texts(kwargs_list: list[dict]) -> list[str]:
    """The strings the instructions make the response contain (end phrase, keywords, ...)."""
    out: list[str] = []
    for kwargs in kwargs_list:
        for key in REQUIRED_TEXT:
            value = kwargs.get(key)
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out.extend(str(v) for v in value)
    return out


def _without(text: str, phrases: list[str]) -> str:
    """``text`` with every occurrence of the multi-word ``phrases`` removed (case-insensitive)."""
    for phrase in sorted(phrases, key=len, reverse=True):
        if len(words(phrase)) > 1:
            text = re.sub(re.escape(phrase), " ", text, flags=re.IGNORECASE)
    return text


def repeated_instruction(response_words: list[str], instruction_words: list[str]) -> set[int]:
    """Positions of ``response_words`` inside a run of :data:`NGRAM` words copied from the instruction text with at
    least two content words in it (a run of stopwords such as "at the end of" is not a copy)."""
    grams = {tuple(instruction_words[i:i + NGRAM]) for i in range(len(instruction_words) - NGRAM + 1)}
    copied: set[int] = set()
    for i in range(len(response_words) - NGRAM + 1):
        gram = tuple(response_words[i:i + NGRAM])
        if gram in grams and sum(w not in STOPWORDS for w in gram) >= 2:
            copied.update(range(i, i + NGRAM))
    return copied


def segments(text: str) -> list[str]:
    """The response's lines and sentences, lower-cased, list markers and emphasis off, empty ones dropped."""
    out = []
    for line in text.splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            sentence = LIST_MARKER.sub("", sentence).strip().lower()
            if words(sentence) or sentence.startswith("["):
                out.append(sentence)
    return out


def placeholder(segment: str) -> bool:
    """Whether a line or sentence is a template's placeholder: nothing but slots and IFEval's example highlight, or
    two slots or more (:data:`SLOT`, :data:`EXAMPLE_HIGHLIGHT`)."""
    slots = len(SLOT.findall(segment))
    rest = EXAMPLE_HIGHLIGHT.sub(" ", SLOT.sub(" ", segment))
    return slots >= 2 or (rest != segment and not words(rest))


def about_the_answer(response: str) -> bool:
    """Whether at least half of the response's lines and sentences talk about the requested text
    (:data:`ABOUT_THE_ANSWER`) or are a template's placeholders (:func:`placeholder`) instead of being that text."""
    parts = segments(response)
    flagged = sum(bool(ABOUT_THE_ANSWER.search(p)) or placeholder(p) for p in parts)
    return bool(parts) and flagged * ABOUT_SHARE >= len(parts)


def check_task(task: str, instructions: str, response: str, kwargs_list: list[dict] = ()) -> TaskVerdict:
    """Whether ``response`` does ``task`` (see the module docstring); ``instructions`` is the prompt's text after the
    task and ``kwargs_list`` the instructions' arguments (IFEval's), whose required strings count for nothing."""
    required = required_texts(list(kwargs_list))
    exclude = {w for r in required for w in words(r)}
    response_words = words(_without(response, required))
    copied = repeated_instruction(response_words, words(_without(instructions, required)))
    own = [w for i, w in enumerate(response_words) if i not in copied]
    # The task said back counts as repeated too ("*tips for a person who wants to learn a new language*" five times),
    # from half of the answer's words, its words still the answer's own: an answer may open by restating its task.
    said_back = copied | repeated_instruction(response_words, words(task))
    topic = topic_words(task, exclude)
    floor, _ = min_words(task)
    reasons = []
    if not any(same_stem(stem(w), t) for w in own for t in topic):
        reasons.append("off_task")
    if len(own) < floor:
        reasons.append("too_short")
    if (len(copied) * COPIED_SHARE >= max(len(response_words), 1) and copied) or (
            len(said_back) * TASK_SAID_BACK_SHARE > len(response_words)):
        reasons.append("instruction_repeated")
    if about_the_answer(_without(response, required)):
        reasons.append("about_the_answer")
    return TaskVerdict(not reasons, tuple(reasons), len(own))


def row_task(row: dict) -> tuple[str, str, list[dict]]:
    """(base task, instruction text, instruction kwargs) of an IFEval-world row; a row without its base task is one
    line (the task check cannot run without it)."""
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else (row.get("meta") or {})
    task = meta.get("task")
    if not task:
        raise UserError("a prompt row has no base task (`task` in its `meta`), which the task check reads; rebuild the "
                        "prompts with the IFEval world (python recipes/world.py --config "
                        "recipes/configs/smollm2-135m-ifeval/world.yaml)")
    content = [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]
    instructions = content[len(task):] if content.startswith(task) else content.replace(task, " ")
    return task, instructions, list(meta.get("kwargs") or [])


def check_row(row: dict, response: str) -> TaskVerdict:
    """:func:`check_task` for an IFEval-world prompt row."""
    task, instructions, kwargs = row_task(row)
    return check_task(task, instructions, response, kwargs)
