"""The library's layering: packages are floors, each importing only from floors below it; the demo world is one
implementation of the labeler and judge interfaces, imported by nothing else in rlhf_kit; no import cycles; a reward
model trained on a public card never loads the demo."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY, config_args, stage_paths

PACKAGE = REPO / "rlhf_kit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """rlhf_kit module -> the rlhf_kit modules it imports (at any depth of the file: function-level imports count)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t != "rlhf_kit":
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# rlhf_kit's packages as floors, lowest first (each package's __init__ says what it holds). A module imports only
# from its own floor and the floors below: the pipeline's order (data, then what samples it, then what trains and
# judges on it), with the libraries underneath and the command line on top.
FLOORS = ("core", "integrations", "data", "worlds", "sampling", "reward", "eval", "ppo", "algorithms", "run", "label",
          "cli")


def floor(module: str) -> str:
    """A module's floor: its package under rlhf_kit (``rlhf_kit.cli`` is the top floor)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"  # rlhf_kit/__init__.py imports nothing of its own


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher floor, as 'importer -> imported'."""
    return [f"{m} -> {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
            if FLOORS.index(floor(d)) > FLOORS.index(floor(m))]


def test_rlhf_kit_top_level_is_packages_and_the_cli():
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert top == {"__init__.py", "cli.py"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(FLOORS) - {"cli"}, "a new package needs a floor in FLOORS"


def test_no_package_imports_a_higher_floor():
    assert upward_imports(import_graph()) == []


def test_the_floor_rule_fails_on_an_upward_import():
    """The mutation: the data floor importing the PPO floor is caught; the reverse is allowed."""
    graph = import_graph()
    graph["rlhf_kit.data.rows"] = graph["rlhf_kit.data.rows"] | {"rlhf_kit.ppo.core"}
    assert upward_imports(graph) == ["rlhf_kit.data.rows -> rlhf_kit.ppo.core"]
    assert "rlhf_kit.data.datasets" in graph["rlhf_kit.ppo.monitor"]  # a higher floor importing a lower one is fine


def test_nothing_outside_the_demo_package_imports_it():
    offenders = {m: sorted(d for d in deps if d.startswith("rlhf_kit.worlds.demo"))
                 for m, deps in import_graph().items() if not m.startswith("rlhf_kit.worlds.demo")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycles_in_rlhf_kit():
    assert find_cycle(import_graph()) is None


def test_the_checks_see_a_cycle_and_a_demo_import():
    graph = {"rlhf_kit.a": {"rlhf_kit.b"}, "rlhf_kit.b": {"rlhf_kit.c"}, "rlhf_kit.c": {"rlhf_kit.a"}}
    assert find_cycle(graph) == ["rlhf_kit.a", "rlhf_kit.b", "rlhf_kit.c", "rlhf_kit.a"]
    # function-level imports are seen too
    assert "rlhf_kit.worlds.demo.world" in import_graph()["rlhf_kit.worlds.demo.gold"]


def test_reward_training_on_a_public_card_never_imports_the_demo(pipeline, tmp_path):
    """The reward stage trained on hh-rlhf fixtures in a fresh interpreter where importing rlhf_kit.worlds.demo
    fails."""
    args = config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + [
        "--dataset_cards", "hh_rlhf", "--card_data_dir", str(REPO / "tests" / "fixtures" / "cards"),
        "--ranking_loss", "pairwise", "--eval_dataset_path", "", "--max_steps", "2", "--max_length", "512",
        "--output_dir", str(tmp_path / "reward")]
    script = f"""
import runpy, sys
class NoDemo:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("rlhf_kit.worlds.demo"):
            raise ImportError("rlhf_kit.worlds.demo imported by the reward stage")
sys.meta_path.insert(0, NoDemo())
sys.argv = [{str(REPO / 'recipes' / 'reward.py')!r}] + {args!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "reward" / "stage_complete.json").read_text())["rows"] > 0


def test_every_subpackage_ships_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert {"rlhf_kit.recipes", "rlhf_kit.data_cards"} <= listed


def test_every_registered_stage_has_its_recipe_parser_and_make_target():
    """The one registry (rlhf_kit/core/stages.py) against what uses it: each stage's recipe parses the dataclasses
    its entry names and its main() takes them, the Makefile has its target, launched stages (and only they) go
    through accelerate, `make demo` and `make real` run the registry's orders."""
    import inspect
    import re

    from rlhf_kit.cli import load_recipe
    from rlhf_kit.core.stages import DEMO, REAL, ROUND, STAGES

    makefile = (REPO / "Makefile").read_text()
    for name, stage in STAGES.items():
        named = list(stage.dataclasses())
        recipe = load_recipe(name)
        assert list(recipe.make_parser().dataclass_types) == named, name
        assert [p.annotation for p in inspect.signature(recipe.main).parameters.values()] == named, name
        target = re.search(rf"^{name}: install\n\t(.*)$", makefile, re.M)
        assert target, f"Makefile has no `{name}:` target"
        assert ("$(LAUNCH)" in target.group(1)) == stage.launched, name
    assert set(DEMO) | set(REAL) | set(ROUND) <= set(STAGES)
    assert f"$(MAKE) --no-print-directory {' '.join(DEMO)}\n" in makefile
    assert f"$(MAKE) --no-print-directory {' '.join(REAL)} RUN_CONFIGS=$(REAL_CONFIGS)\n" in makefile


def test_rlhf_kit_stage_subcommand_runs_the_recipe():
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "sft", "--help"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "usage: rlhf-kit sft" in proc.stdout
    assert "--dataset_cards" in proc.stdout and "--lora_r" in proc.stdout  # rlhf_kit's, TRL's and peft's options
