"""Every command README.md and docs/benchmarks.md show still names what exists: each ``make`` target (and each
variable set on its command line) is in the Makefile, each repository path a command names is there, each
``python -m rlhf_kit...`` module is a file, and each ``rlhf-kit`` subcommand is one the CLI accepts, with options
its parser takes (a recipe's options go to TRL's parser, which needs TRL imported: not checked here). Static: the
commands are read from the docs' fenced shell blocks and nothing is run."""

import argparse
import contextlib
import io
import re
import shlex

import pytest

from conftest import REPO

DOCS = ("README.md", "docs/benchmarks.md")
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}  # "": a plain ``` block, read only for lines of COMMANDS
COMMANDS = ("make", "python", "python3", "rlhf-kit", "accelerate")  # accelerate: `accelerate launch` only
REPO_DIRS = ("recipes/", "data_cards/", "tests/", "benchmarks/", "docs/", "rlhf_kit/")  # runs/ holds outputs
PLACEHOLDER = re.compile(r"[<>*$]|\.\.\.")  # recipes/configs/<model>/sft.yaml, $M, ...: not a path to check
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
SEPARATORS = {"&&", "||", ";", "|"}
FENCE = re.compile(r"^(\s*)```\s*([\w-]*)\s*$")


def shell_commands(text: str, source: str) -> list[tuple[str, list[str]]]:
    """(where, tokens) of each command in ``text``'s fenced shell blocks whose first word (after any ``VAR=value``)
    is one of COMMANDS; ``where`` is ``source:line`` of its first line. Continuation lines are joined, comments and
    ``$ `` prompts dropped, ``a && b`` split in two."""
    commands, lang, start, pending, first = [], None, 0, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence and lang is None:
            lang, start = fence.group(2).lower(), number
            continue
        if fence:
            lang = None
            continue
        if lang not in SHELL_FENCES:
            continue
        line = line.strip()
        line = line[2:] if lang == "console" and line.startswith("$ ") else line
        if lang == "" and not pending and not line.startswith(COMMANDS):
            continue
        first = first if pending else number  # a command is named by its first line
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise AssertionError(f"{source}:{first}: cannot read {line!r} as a shell command ({e})") from None
        part = []
        for token in tokens + [";"]:
            if token in SEPARATORS:
                words = [w for w in part if not ASSIGNMENT.match(w)] if part else []
                if words and words[0] in COMMANDS and (words[0] != "accelerate" or words[1:2] == ["launch"]):
                    commands.append((f"{source}:{first} (block at line {start})", part))
                part = []
            else:
                part.append(token)
    return commands


def makefile_targets() -> set[str]:
    """Every target a ``target:`` line of the Makefile defines (variables and pattern rules left out)."""
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s#:=][^:=]*):(?!=)", line)
        if rule:
            targets |= {t for t in rule.group(1).split() if "$" not in t and not t.startswith(".")}
    return targets


def cli_commands() -> dict[str, set[str]]:
    """``rlhf-kit``'s subcommands, each with its own subcommands (``label serve``, ``data validate``) or none."""
    from rlhf_kit.cli import RECIPES, build_parser

    def subcommands(parser):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return {name: sub for a in actions for name, sub in a.choices.items()}

    accepted = {name: set(subcommands(sub)) for name, sub in subcommands(build_parser()).items()}
    return accepted | {recipe: set() for recipe in RECIPES}  # `rlhf-kit sft --config ...`: the recipe's parser


def cli_parse_error(args: list[str]) -> str | None:
    """argparse's complaint about ``rlhf-kit <args>`` (its options and arguments), or None when they parse."""
    from rlhf_kit.cli import build_parser

    parser, stderr = build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(args)
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


def path_problem(token: str) -> str | None:
    """Why a path-like word does not name a file or folder of the repository (None if it does, or is not one)."""
    path = token.removeprefix("./")
    if not path.startswith(REPO_DIRS) or PLACEHOLDER.search(path):
        return None
    return None if (REPO / path).exists() else f"{token} does not exist in the repository"


def command_problems(commands: list[tuple[str, list[str]]]) -> list[str]:
    """One line per broken command: where it is, the command, and what it names that does not exist."""
    from rlhf_kit.cli import RECIPES

    targets, makefile, cli = makefile_targets(), (REPO / "Makefile").read_text(), cli_commands()
    problems = []
    for where, tokens in commands:
        env = 0
        while ASSIGNMENT.match(tokens[env]):
            env += 1
        program, args = tokens[env], tokens[env + 1:]
        found = []
        values = [ASSIGNMENT.match(a).group(2) if ASSIGNMENT.match(a) else a for a in tokens]
        values = [v.split("=", 1)[1] if v.startswith("--") and "=" in v else v for v in values]
        found += [p for p in map(path_problem, values) if p]
        if program == "make":
            for arg in args:
                if (setting := ASSIGNMENT.match(arg)) and f"$({setting.group(1)})" not in makefile:
                    found.append(f"the Makefile never reads {setting.group(1)}")
                elif not setting and not arg.startswith("-") and arg not in targets:
                    found.append(f"no Makefile target {arg!r}")
        elif program in ("python", "python3") and args[:1] == ["-m"] and args[1:2]:
            module = args[1]
            file = REPO / module.replace(".", "/")
            if module.startswith("rlhf_kit") and not (file.with_suffix(".py").is_file()
                                                      or (file / "__init__.py").is_file()):
                found.append(f"no module {module} in rlhf_kit/")
        elif program == "rlhf-kit":
            words = [a for a in args if not a.startswith("-")]
            if not words or words[0] not in cli:
                found.append(f"rlhf-kit has no subcommand {words[0] if words else '(none)'!r}")
            elif cli[words[0]] and (len(words) < 2 or words[1] not in cli[words[0]]):
                found.append(f"rlhf-kit {words[0]} takes one of {sorted(cli[words[0]])}, not "
                             f"{words[1] if len(words) > 1 else '(none)'!r}")
            elif words[0] not in RECIPES and (error := cli_parse_error(args)):
                found.append(error)
        problems += [f"{where}: `{shlex.join(tokens)}`: {p}" for p in found]
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_names_what_exists(doc):
    commands = shell_commands((REPO / doc).read_text(), doc)
    assert len(commands) >= 5, f"{doc}: found only {len(commands)} commands; is the block parser still right?"
    problems = command_problems(commands)
    assert not problems, "\n".join(problems)


def test_a_broken_command_is_caught():
    """The check can fail: a fake doc naming what does not exist gets one problem per mistake, and no other."""
    fake = "\n".join([
        "```bash",
        "make demo && make no-such-target      # the first half is fine",
        "make ppo ACCELERATE_CONFG=recipes/accelerate/cpu.yaml",
        "python recipes/no_such.py --config recipes/configs/demo/sft.yaml \\",
        "    --output_dir runs/demo/no_such   # outputs under runs/ are not checked",
        "python -m rlhf_kit.no_such_module",
        "rlhf-kit no-such-sub --config recipes/configs/demo/sft.yaml",
        "rlhf-kit label no-such-action",
        "rlhf-kit push runs/demo/ppo you/name --adapter-olny",
        "accelerate launch --config_file recipes/accelerate/<x>.yaml recipes/sft.py   # a placeholder",
        "pip install rlhf_kit               # not a command this test reads",
        "```",
        "```",
        "make plain-block-target",
        "```",
        "```yaml",
        "make: not-a-command",
        "```",
    ])
    problems = command_problems(shell_commands(fake, "FAKE.md"))
    expected = ["no Makefile target 'no-such-target'", "the Makefile never reads ACCELERATE_CONFG",
                "recipes/no_such.py does not exist", "no module rlhf_kit.no_such_module",
                "rlhf-kit has no subcommand 'no-such-sub'", "rlhf-kit label takes one of",
                "unrecognized arguments: --adapter-olny",
                "no Makefile target 'plain-block-target'"]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, what in zip(problems, expected):
        assert what in problem, (what, problem)
    assert problems[0].startswith("FAKE.md:2 (block at line 1): `make no-such-target`")
    assert problems[2].startswith("FAKE.md:4 ")  # a continued command is named by its first line


def test_readme_opens_with_the_two_commands_and_reaches_ppo_on_your_checkpoint_early():
    readme = (REPO / "README.md").read_text()
    first = [tokens for _, tokens in shell_commands(readme, "README.md")[:2]]
    assert first == [["make", "demo"], ["make", "test"]]
    assert "PPO on my own checkpoint" in "\n".join(readme.splitlines()[:80])


def test_plain_make_prints_help_and_an_empty_stage_list_runs_no_stage():
    """`make` alone is `make help` (not the first target in the file), and `make compare-algorithms
    COMPARE_STAGES=` runs the comparison on what exists: a recursive `$(MAKE)` with no target would run the default
    goal again, without end."""
    import subprocess

    def dry(*args):
        make = ["make", "-n", "--no-print-directory", "-o", ".install.stamp", "PYTHON=python3"]
        proc = subprocess.run([*make, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.splitlines()

    assert dry()[0] == "python3 -m rlhf_kit.cli stages"
    lines = dry("compare-algorithms", "COMPARE_STAGES=", "RUN_CONFIGS=recipes/configs/smollm2-135m-ifeval")
    assert lines[0] == "python3 recipes/eval.py --config recipes/configs/smollm2-135m-ifeval/algorithms/eval.yaml"
    assert lines[-1].endswith("heldout-types/eval.yaml")  # the held-out types' comparison, where the track has one
    assert not any("make" in line for line in lines)
